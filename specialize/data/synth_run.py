"""The synthetic-data stage as ``specialize data generate`` and ``specialize run`` call it.

Both write to the same folder, ``<output_dir>/<name>.synth/`` (dataset, stats, samples,
catalog, and the teacher cache), outside the run directory on purpose: the cache must outlive a
failed or replaced run, so ``specialize run`` after ``specialize data generate`` (or after a
crash) asks the teacher nothing it has already answered.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

from specialize.config import RunConfig
from specialize.data.synth import Sources, SynthOutput, generate_dataset, read_sources
from specialize.data.teacher import open_teacher, teacher_name, uses_base_model
from specialize.errors import SpecializeError

log = logging.getLogger("specialize")


def synth_dir(cfg: RunConfig) -> Path:
    """Where a config's synthetic data lives (beside its run directory)."""
    return Path(cfg.output_dir) / f"{cfg.name}.synth"


def check_sources(cfg: RunConfig, tokenizer: Any = None) -> Sources:
    """Documents, chunks and the task catalog, read and checked before any model loads."""
    if cfg.synth is None:
        raise SpecializeError("the config has no synth section", field="synth")
    return read_sources(cfg.synth, cfg._base_dir, tokenizer)


def run_synth(
    cfg: RunConfig,
    *,
    sources: Sources | None = None,
    model: Any = None,
    tokenizer: Any = None,
    out_dir: Path | None = None,
    progress: bool = True,
) -> SynthOutput:
    """Generate the config's dataset. ``model``/``tokenizer`` are the run's loaded base model,
    used as the teacher when ``synth.teacher`` names the same model (loaded once)."""
    synth = cfg.synth
    if synth is None:
        raise SpecializeError("the config has no synth section", field="synth")
    src = sources or check_sources(cfg, tokenizer)
    same = uses_base_model(synth, cfg.model.base) and model is not None
    offline = int(os.environ.get("WORLD_SIZE", "1")) > 1
    teacher = open_teacher(
        synth,
        cfg._base_dir,
        model=model if same else None,
        tokenizer=tokenizer if same else None,
        chat_format=cfg.chat.format if same else "template",
    )
    try:
        out = generate_dataset(
            synth, cfg._base_dir, teacher, out_dir or synth_dir(cfg),
            teacher_name=teacher_name(synth), progress=progress, sources=src,
            cached_only=offline,
        )  # fmt: skip
    finally:
        teacher.close()
    t = out.stats["totals"]
    log.info(
        "synthetic data: %d records kept of %d planned (%d teacher calls, %d cached, "
        "%d invalid, %d removed by filters) -> %s",
        t["kept"], t["planned"], t["teacher_calls"], t["cached"], t["invalid"],
        sum(t["removed"].values()), out.out_dir / "dataset.jsonl",
    )  # fmt: skip
    return out
