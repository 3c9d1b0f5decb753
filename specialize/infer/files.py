"""Answer a file of prompts with any backend, optionally constrained: ``specialize generate``.

The command-line face of the inference layer: a JSONL of prompts in, a JSONL of answers out
(text, the validated value or why it is invalid, finish reason, attempts), with the counts in
``<output>.stats.json``. Useful on its own (label a dataset with a teacher under a schema, try
a GGUF file on a few prompts) and the place where a bad constraint is caught the way users
meet it: a schema the library cannot compile, or an input line that is not a prompt, is one
line and exit code 2 *before any model loads*.

The model is named the way a user thinks of it (:func:`open_backend`): an ``http(s)://`` URL
(an OpenAI-compatible server), a ``.gguf`` file (llama.cpp), a run directory (its merged model
and chat format), or any model spec :func:`specialize.models.load.resolve` accepts (a Hugging
Face folder, ``bundled:NAME``).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import yaml

from specialize.errors import SpecializeError
from specialize.infer.types import Backend, ChatMessage, Constraint, Counts, Request, Sampling
from specialize.io import atomic_path, text_lines, write_json


@dataclass(frozen=True)
class GenerateOptions:
    """How every prompt of the file is answered."""

    max_new_tokens: int = 256
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int | None = None
    retries: int = 2
    batch_size: int = 16
    chat_format: str = "chatml"
    model_name: str = "model"  # the ``model`` field sent to an HTTP server
    api_key: str | None = None


def load_constraint(
    schema: Path | None = None, regex: str | None = None, choices: str | None = None
) -> Constraint | None:
    """The constraint asked for on the command line, compiled by the decoding library now,
    so a bad one fails before any model loads."""
    from specialize.infer.constraints import check_constraint

    given = [x for x in (schema, regex, choices) if x is not None]
    if len(given) > 1:
        raise SpecializeError("give one of --schema, --regex or --choice", field="constraint")
    if not given:
        return None
    if schema is not None:
        try:
            data = json.loads(Path(schema).read_text(encoding="utf-8"))
        except OSError as err:
            raise SpecializeError(f"cannot read: {err.strerror or err}", path=schema) from None
        except (ValueError, RecursionError) as err:
            raise SpecializeError(f"not JSON: {err}", path=schema) from None
        if not isinstance(data, dict):
            raise SpecializeError("a JSON schema must be an object", path=schema)
        c = Constraint.json_schema(data, name=Path(schema).stem)
        where: str | Path = schema
    elif regex is not None:
        c, where = Constraint.regex(regex), "--regex"
    else:
        c, where = Constraint.choice([x for x in (choices or "").split(",") if x]), "--choice"
    try:
        check_constraint(c)
    except SpecializeError as err:
        raise SpecializeError(
            err.message,
            path=where if isinstance(where, Path) else None,
            field=None if isinstance(where, Path) else where,
        ) from None
    return c


def read_prompts(path: Path) -> list[tuple[str, list[ChatMessage]]]:
    """``(id, messages)`` per line: ``{"messages": [...]}`` or ``{"prompt": "..."}`` (a user
    turn; ``system`` optional), ``id`` optional (the line number). Any bad line is one error
    naming the line; nothing is skipped silently."""
    out: list[tuple[str, list[ChatMessage]]] = []
    for n, line in text_lines(path):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except (ValueError, RecursionError) as err:
            raise SpecializeError(f"not JSON: {err}", path=path, line=n) from None
        if not isinstance(row, dict):
            raise SpecializeError("each line must be a JSON object", path=path, line=n)
        rid = str(row.get("id", n))
        if isinstance(row.get("messages"), list) and row["messages"]:
            msgs = row["messages"]
            if not all(isinstance(m, dict) and isinstance(m.get("role"), str) for m in msgs):
                raise SpecializeError(
                    "every message needs a role", path=path, line=n, field="messages"
                )
            out.append((rid, [dict(m) for m in msgs]))  # type: ignore[misc]
        elif isinstance(row.get("prompt"), str) and row["prompt"].strip():
            msgs = [{"role": "user", "content": row["prompt"]}]
            if isinstance(row.get("system"), str):
                msgs.insert(0, {"role": "system", "content": row["system"]})
            out.append((rid, msgs))  # type: ignore[arg-type]
        else:
            raise SpecializeError(
                "needs 'messages' (a list) or 'prompt' (a string)", path=path, line=n
            )
    if not out:
        raise SpecializeError("no prompts in the file", path=path)
    return out


def open_backend(model: str, opts: GenerateOptions) -> Backend:
    """A backend for ``model``: a URL, a ``.gguf`` file, a run directory or a model spec."""
    if model.startswith(("http://", "https://")):
        from specialize.infer.http import OpenAIBackend

        return OpenAIBackend(model, opts.model_name, api_key=opts.api_key)
    if model.endswith(".gguf"):
        from specialize.infer.llamacpp import LlamaCppBackend

        return LlamaCppBackend(model)
    from specialize.infer.hf import HFBackend
    from specialize.models.load import load_model, load_tokenizer, resolve

    fmt, path = opts.chat_format, Path(model)
    if (path / "config.yaml").is_file() and (path / "merged").is_dir():
        cfg = yaml.safe_load((path / "config.yaml").read_text(encoding="utf-8")) or {}
        fmt = str((cfg.get("chat") or {}).get("format") or fmt)
        model = str(path / "merged")
    elif (path / "config.yaml").is_file():
        raise SpecializeError(
            "this run has no merged/ model; give one of its gguf/ files", path=path
        )
    source = resolve(model)
    return HFBackend(load_model(source, "float32"), load_tokenizer(source), fmt, opts.batch_size)


def generate_file(
    model: str,
    input_path: Path,
    output: Path,
    constraint: Constraint | None,
    opts: GenerateOptions,
    progress: bool = True,
) -> Counts:
    """Answer every prompt of ``input_path`` into ``output`` (written whole at the end,
    atomically) and ``<output>.stats.json``; returns the counts."""
    from specialize.infer.structured import generate_checked

    prompts = read_prompts(input_path)  # every input check before the model loads
    sampling = Sampling(opts.temperature, opts.top_p, opts.seed)
    requests = [
        Request(
            messages=m,
            max_new_tokens=opts.max_new_tokens,
            sampling=sampling,
            constraint=constraint,
            tag=rid,
        )
        for rid, m in prompts
    ]
    backend = open_backend(model, opts)
    counts = Counts()
    try:
        results = generate_checked(
            backend,
            requests,
            retries=opts.retries,
            counts=counts,
            progress=progress,
            desc="generate",
        )
    finally:
        backend.close()
    with atomic_path(output) as tmp, open(tmp, "w", encoding="utf-8") as f:
        for r in results:
            row: dict[str, Any] = {
                "id": r.tag,
                "text": r.text,
                "finish_reason": r.finish_reason,
                "new_tokens": r.new_tokens,
                "attempts": r.attempts,
            }
            if constraint is not None:
                row["value"] = _jsonable(r.value)
                row["invalid"] = r.invalid
            if r.error is not None:
                row["error"] = r.error
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
    write_json(
        output.with_name(output.name + ".stats.json"),
        {"model": model, "backend": backend.name, **asdict(counts)},
    )
    return counts


def _jsonable(value: Any) -> Any:
    dump = getattr(value, "model_dump", None)
    if callable(dump):
        return dump(mode="json")
    if isinstance(value, list):
        return [_jsonable(v) for v in value]
    return value
