"""Which model ids a server answers, and the one backend behind each.

Each run directory contributes its variants: ``<run>`` (the tuned adapter), ``<run>:base``
(the same base model without it) and ``<run>:<quant>`` for each GGUF file in ``gguf/``
(``q4_k_m``, ``f16`` ...). Runs over the same base model and chat format share **one** model
in memory: their adapters are loaded onto it by name and picked per request
(:class:`~specialize.infer.hf.HFBackend`'s mixed-adapter batches), so serving ten adapters
costs one base model, and requests for different adapters decode in the same batch.
A GGUF variant is a :class:`~specialize.infer.llamacpp.LlamaCppBackend` child process.

A run's ``tasks.json`` (the catalog its synthetic data was made with) is kept with its
variants, so the typed task API asks each model with the exact instructions it was trained on.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from specialize.data.tasks import Catalog
from specialize.errors import SpecializeError
from specialize.infer.types import Backend
from specialize.io import read_json


@dataclass(frozen=True)
class RunInfo:
    """What a run directory says about itself: name, base model, chat format, adapter, GGUFs."""

    name: str
    path: Path
    base: str
    chat_format: str
    adapter: Path
    targets: tuple[str, ...]
    ggufs: tuple[tuple[str, Path], ...]
    catalog: Catalog | None


@dataclass
class Variant:
    """One model id: its backend, and the adapter to ask for (None on a GGUF backend)."""

    id: str
    run: str
    kind: Literal["tuned", "base", "gguf"]
    backend: Backend
    adapter: str | None
    context: int
    tokenizer: Any = None  # the HF tokenizer (prompt lengths); None for GGUF
    catalog: Catalog | None = None


@dataclass
class Registry:
    """Model id -> :class:`Variant`; ``close`` ends every backend (GGUF children included)."""

    variants: dict[str, Variant] = field(default_factory=dict)
    _backends: list[Backend] = field(default_factory=list)

    def get(self, model_id: str) -> Variant | None:
        return self.variants.get(model_id)

    def add(self, v: Variant) -> None:
        if v.id in self.variants:
            raise SpecializeError(f"two runs give the model id '{v.id}'; rename one run folder")
        self.variants[v.id] = v

    def close(self) -> None:
        for b in self._backends:
            b.close()
        self._backends.clear()


def read_run(path: Path) -> RunInfo:
    """A run directory's serving facts, or one line saying what is missing."""
    cfg_path = path / "config.yaml"
    if not cfg_path.is_file():
        raise SpecializeError("not a run directory (no config.yaml)", path=path)
    adapter = path / "adapter"
    if not (adapter / "adapter_config.json").is_file():
        raise SpecializeError("the run has no adapter (adapter/adapter_config.json)", path=path)
    try:
        cfg = yaml.safe_load(cfg_path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as err:
        raise SpecializeError(f"not YAML: {err}", path=cfg_path) from None
    meta = read_json(adapter / "specialize.json") if (adapter / "specialize.json").is_file() else {}
    name = path.resolve().name
    ggufs = tuple(
        (_quant_name(p, name), p) for p in sorted((path / "gguf").glob("*.gguf")) if p.is_file()
    )
    tasks = [p for p in (path / "tasks.json", path / "data" / "tasks.json") if p.is_file()]
    return RunInfo(
        name=name,
        path=path,
        base=str(meta.get("base_model") or cfg.get("model", {}).get("base")),
        chat_format=str(meta.get("chat_format") or cfg.get("chat", {}).get("format", "chatml")),
        adapter=adapter,
        targets=tuple(meta.get("targets", ())),
        ggufs=ggufs,
        catalog=Catalog.from_json(read_json(tasks[0])) if tasks else None,
    )


def _quant_name(path: Path, run: str) -> str:
    """``space-qa-Q4_K_M.gguf`` -> ``q4_k_m`` (the model id suffix)."""
    stem = path.stem.removeprefix(f"{run}-").removeprefix(run).strip("-_.") or path.stem
    return re.sub(r"[^a-z0-9_.-]", "_", stem.lower())


def open_runs(
    paths: Sequence[Path], *, batch_size: int = 16, gguf: bool = True, max_context: int | None
) -> Registry:
    """Every variant of every run, with one HF model per (base model, chat format)."""
    runs = [read_run(Path(p)) for p in paths]
    names = [r.name for r in runs]
    if len(set(names)) != len(names):
        raise SpecializeError("two run folders have the same name; their model ids would clash")
    reg = Registry()
    try:
        groups: dict[tuple[str, str], list[RunInfo]] = {}
        for r in runs:
            groups.setdefault((r.base, r.chat_format), []).append(r)
        for (base, fmt), members in groups.items():
            _open_group(reg, base, fmt, members, batch_size, max_context)
        if gguf:
            for r in runs:
                for quant, path in r.ggufs:
                    _open_gguf(reg, r, quant, path, max_context)
    except BaseException:
        reg.close()
        raise
    return reg


def _open_group(
    reg: Registry,
    base: str,
    fmt: str,
    runs: list[RunInfo],
    batch_size: int,
    max_context: int | None,
) -> None:
    from specialize.infer.hf import HFBackend
    from specialize.models.load import is_tied, load_model, load_tokenizer, resolve
    from specialize.train.lora import untie_output_head

    source = resolve(base, runs[0].path)
    tokenizer = load_tokenizer(source)
    model = load_model(source, "float32")
    head = ("lm_head", "embed_out")
    if is_tied(model) and any(t.split(".")[-1] in head for r in runs for t in r.targets):
        untie_output_head(model)  # an adapter was trained on an untied head
    try:
        backend = HFBackend(
            model, tokenizer, fmt, batch_size, adapters={r.name: r.adapter for r in runs}
        )
    except (OSError, ValueError, RuntimeError) as e:
        raise SpecializeError(f"could not load the adapters over {base}: {e}") from None
    reg._backends.append(backend)
    limit = int(getattr(model.config, "max_position_embeddings", 0) or 2048)
    context = min(limit, max_context) if max_context else limit
    for r in runs:
        reg.add(Variant(r.name, r.name, "tuned", backend, r.name, context, tokenizer, r.catalog))
        reg.add(
            Variant(
                f"{r.name}:base", r.name, "base", backend, "base", context, tokenizer, r.catalog
            )
        )


def _open_gguf(
    reg: Registry, run: RunInfo, quant: str, path: Path, max_context: int | None
) -> None:
    from specialize.infer.llamacpp import LlamaCppBackend

    n_ctx = max_context or 4096
    backend = LlamaCppBackend(path, n_ctx, purpose="serving", restart=True)
    reg._backends.append(backend)
    reg.add(
        Variant(f"{run.name}:{quant}", run.name, "gguf", backend, None, n_ctx, None, run.catalog)
    )
