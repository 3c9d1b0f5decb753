"""Facts about the machine and the software, recorded with every run."""

from __future__ import annotations

import os
import platform
import time
from collections.abc import Iterator
from contextlib import contextmanager
from importlib import metadata
from typing import Any

PACKAGES = (
    "specialize",
    "torch",
    "transformers",
    "peft",
    "accelerate",
    "tokenizers",
    "safetensors",
    "gguf",
    "llama-cpp-python",
    "numpy",
)


def versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for p in PACKAGES:
        try:
            out[p] = metadata.version(p)
        except metadata.PackageNotFoundError:
            out[p] = "not installed"
    return out


def installed_stack() -> dict[str, Any]:
    """Every installed package's version, the lock they were installed against, and how
    llama.cpp was compiled (written by scripts/install_llama_cpp.py into the venv): two runs
    whose stacks differ say so in their manifests."""
    import hashlib
    import json
    import sys
    from pathlib import Path

    packages = {}
    for dist in metadata.distributions():
        name = dist.metadata.get("Name")
        if name:
            packages[name.lower()] = dist.version
    out: dict[str, Any] = {"packages": dict(sorted(packages.items()))}
    lock = Path(__file__).resolve().parent.parent / "requirements.lock"
    if lock.is_file():
        out["lock_sha256"] = hashlib.sha256(lock.read_bytes()).hexdigest()
        wanted = {}
        for line in lock.read_text().splitlines():
            if "==" in line and not line.startswith("#"):
                k, v = line.split("==", 1)
                wanted[k.strip().lower().replace("_", "-")] = v.strip()
        have = {k.replace("_", "-"): v for k, v in packages.items()}
        out["differs_from_lock"] = {
            k: {"lock": v, "installed": have.get(k, "not installed")}
            for k, v in sorted(wanted.items())
            if have.get(k) != v
        }
    build = Path(sys.prefix) / "llama-cpp-build.json"
    if build.is_file():
        try:
            info = json.loads(build.read_text())
            out["llama_cpp_build"] = {
                "tier": info.get("tier"),
                "cmake_args": info.get("cmake_args"),
                "system_info": (info.get("selftest") or {}).get("system_info"),
            }
        except (OSError, ValueError):
            pass
    return out


def hardware() -> dict[str, Any]:
    import torch

    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    mem_gib = None
    try:
        mem_gib = round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1)
    except (ValueError, OSError, AttributeError):
        pass
    info: dict[str, Any] = {
        "cpu": cpu,
        "cpu_cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "memory_gib": mem_gib,
        "gpu": None,
    }
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


class Timer:
    """Wall time per named stage, in the order the stages ran."""

    def __init__(self) -> None:
        self.stages: dict[str, float] = {}

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.stages[name] = self.stages.get(name, 0.0) + time.perf_counter() - t0

    def as_dict(self) -> dict[str, Any]:
        return {"stages_s": self.stages, "total_s": sum(self.stages.values())}
