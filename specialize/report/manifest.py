"""manifest.json: every artifact of a run with its sha256, producing stage and the inputs."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from specialize.io import sha256_file, write_json
from specialize.runinfo import installed_stack, versions

STAGE_OF = {
    "config.yaml": "config",
    "data": "data",
    "adapter": "train",
    "train": "train",
    "eval": "evaluate",
    "merged": "export",
    "export": "export",
    "plots": "report",
    "MODEL_CARD.md": "report",
    "run.log": "run",
    "timings.json": "run",
    "env.json": "run",
}


def write_manifest(run_dir: Path, inputs: dict[str, Any]) -> dict[str, Any]:
    artifacts = []
    for path in sorted(p for p in run_dir.rglob("*") if p.is_file()):
        rel = path.relative_to(run_dir).as_posix()
        if rel == "manifest.json" or path.name.startswith("."):
            continue
        artifacts.append(
            {
                "path": rel,
                "sha256": sha256_file(path),
                "bytes": path.stat().st_size,
                "stage": STAGE_OF.get(rel.split("/", 1)[0], "other"),
            }
        )
    manifest = {
        "artifacts": artifacts,
        "inputs": inputs,
        "versions": versions(),
        "installed": installed_stack(),
    }
    write_json(run_dir / "manifest.json", manifest)
    return manifest
