"""Build, cache, install and self-test llama-cpp-python with deliberately chosen CPU flags.

Why not ``pip install llama-cpp-python``: pip compiles llama.cpp with ``-march=native``-style
autodetection, and on a CPU that advertises AMX the resulting AMX kernels segfault on quantized
GGUF files (measured on this project's machine in November 2026: Q8_0, Q4_K_M and the bundled
Q4_1 crashed in ``decode`` with ``logits_all``, F16 did not). pip's wheel cache also ignores
``CMAKE_ARGS``, so a wheel built with other flags (or on another CPU) is reused silently.

So this script:

1. picks the instruction-set *tier* of this CPU from ``/proc/cpuinfo`` (``avx512``, ``avx2``,
   ``sse42``, ``generic``) and turns it into explicit ``GGML_*`` flags with native detection
   off and AMX always off; ``LLAMA_CPU_TIER=avx2`` forces a tier and ``LLAMA_CMAKE_ARGS``
   replaces the flags entirely (Apple Silicon, a Raspberry Pi, a BLAS build...);
2. builds a wheel once per (version, flags) into ``~/.cache/specialize/llama-cpp-wheels/KEY/``
   so a second fresh clone on the same machine installs in seconds, and a change of flags
   never reuses a wheel built with other ones;
3. installs it and runs ``specialize.export.llama_selftest`` in a child process: a quantized
   GGUF is loaded and decoded with ``logits_all``, so a broken build fails ``make`` with one
   clear line instead of a segfault fifteen minutes into a run;
4. writes the flags and llama.cpp's own system-info line to ``VENV/llama-cpp-build.json``,
   which every run copies into its manifest and model card.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

VERSION = "0.3.36"

# Flags shared by every x86-64 tier: native detection off (it is what enabled AMX), no
# multimodal library (specialize does not use llava), no OpenMP-free surprises.
_COMMON = ["-DGGML_NATIVE=OFF", "-DLLAVA_BUILD=OFF"]
_OFF_AMX = ["-DGGML_AMX_TILE=OFF", "-DGGML_AMX_INT8=OFF", "-DGGML_AMX_BF16=OFF"]


def cpu_flags() -> set[str]:
    """The flags line of /proc/cpuinfo (Linux); empty elsewhere."""
    try:
        text = Path("/proc/cpuinfo").read_text(errors="replace")
    except OSError:
        return set()
    for line in text.splitlines():
        if line.startswith("flags"):
            return set(line.split(":", 1)[1].split())
    return set()


def _on(name: str, value: bool) -> str:
    return f"-DGGML_{name}={'ON' if value else 'OFF'}"


def tier_flags(tier: str, flags: set[str]) -> list[str]:
    """Explicit GGML flags for one tier. AMX is never enabled: its kernels crashed here."""
    avx2 = tier in ("avx2", "avx512")
    avx512 = tier == "avx512"
    out = list(_COMMON)
    out += [_on("SSE42", tier != "generic"), _on("AVX", avx2), _on("AVX2", avx2)]
    out += [_on("FMA", avx2), _on("F16C", avx2), _on("BMI2", avx2)]
    out += [_on("AVX_VNNI", avx2 and not avx512 and "avx_vnni" in flags)]
    out += [_on("AVX512", avx512)]
    out += [_on("AVX512_VBMI", avx512 and "avx512vbmi" in flags)]
    out += [_on("AVX512_VNNI", avx512 and "avx512_vnni" in flags)]
    out += [_on("AVX512_BF16", avx512 and "avx512_bf16" in flags)]
    return out + _OFF_AMX


def detect_tier(flags: set[str]) -> str:
    """The highest tier whose every instruction this CPU advertises."""
    if {"avx512f", "avx512bw", "avx512vl", "avx512dq", "avx512cd"} <= flags and _has_avx2(flags):
        return "avx512"
    if _has_avx2(flags):
        return "avx2"
    if "sse4_2" in flags:
        return "sse42"
    return "generic"


def _has_avx2(flags: set[str]) -> bool:
    return {"avx", "avx2", "fma", "f16c", "bmi2"} <= flags


def choose_cmake_args() -> tuple[str, list[str]]:
    """(tier name, CMAKE_ARGS list) from the environment and this CPU."""
    override = os.environ.get("LLAMA_CMAKE_ARGS", "").strip()
    if override:
        return "custom", override.split()
    machine = platform.machine().lower()
    if machine not in ("x86_64", "amd64"):
        # Arm (Apple Silicon, Graviton, Raspberry Pi): llama.cpp's native detection asks the
        # compiler, which is reliable there; no AMX-like extension is involved.
        return f"native-{machine}", ["-DLLAVA_BUILD=OFF"]
    flags = cpu_flags()
    tier = os.environ.get("LLAMA_CPU_TIER", "").strip() or detect_tier(flags)
    if tier not in ("avx512", "avx2", "sse42", "generic"):
        sys.exit(f"install_llama_cpp: LLAMA_CPU_TIER={tier!r}: use avx512, avx2, sse42 or generic")
    return tier, tier_flags(tier, flags)


def cache_dir(cmake_args: list[str]) -> Path:
    key = f"{VERSION}|{sys.implementation.cache_tag}|{platform.machine()}|{' '.join(cmake_args)}"
    digest = hashlib.sha256(key.encode()).hexdigest()[:16]
    root = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
    return root / "specialize" / "llama-cpp-wheels" / f"{VERSION}-{digest}"


def build_wheel(python: str, cmake_args: list[str], dest: Path) -> Path:
    """Compile once into dest (atomically: a killed build leaves no half wheel behind)."""
    wheels = sorted(dest.glob("llama_cpp_python-*.whl"))
    if wheels:
        print(f"install_llama_cpp: cached wheel {wheels[0]}")
        return wheels[0]
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".building-", dir=dest.parent))
    env = dict(os.environ, CMAKE_ARGS=" ".join(cmake_args))
    env.setdefault("CMAKE_BUILD_PARALLEL_LEVEL", str(os.cpu_count() or 1))
    print(f"install_llama_cpp: compiling llama-cpp-python {VERSION} (about 5 min on 2 cores)")
    print(f"install_llama_cpp: CMAKE_ARGS={env['CMAKE_ARGS']}")
    cmd = [python, "-m", "pip", "wheel", "-q", "--no-deps", "--no-cache-dir"]
    cmd += ["--no-binary", "llama-cpp-python", "-w", str(tmp), f"llama-cpp-python=={VERSION}"]
    subprocess.run(cmd, env=env, check=True)
    built = sorted(tmp.glob("llama_cpp_python-*.whl"))
    if not built:
        sys.exit("install_llama_cpp: pip wheel produced no wheel")
    if dest.exists():
        shutil.rmtree(dest)
    tmp.rename(dest)
    return dest / built[0].name


def main() -> int:
    python = sys.argv[1] if len(sys.argv) > 1 else sys.executable
    tier, cmake_args = choose_cmake_args()
    print(f"install_llama_cpp: CPU tier {tier}")
    wheel = build_wheel(python, cmake_args, cache_dir(cmake_args))
    pip = [python, "-m", "pip", "install", "-q", "--no-deps", "--force-reinstall", str(wheel)]
    subprocess.run(pip, check=True)
    # llama-cpp-python's own small dependencies (numpy, jinja2, diskcache, typing-extensions).
    subprocess.run([python, "-m", "pip", "install", "-q", f"{wheel}"], check=True)
    record = {"version": VERSION, "tier": tier, "cmake_args": cmake_args, "wheel": str(wheel)}
    prefix = subprocess.run(
        [python, "-c", "import sys; print(sys.prefix)"], text=True, capture_output=True, check=True
    )
    venv = Path(prefix.stdout.strip())  # the venv itself: its python is often a symlink
    test = subprocess.run(
        [python, "-m", "specialize.export.llama_selftest", "--json"], text=True, capture_output=True
    )
    if test.returncode != 0:
        sys.stderr.write(test.stderr)
        print(
            f"install_llama_cpp: error: the llama.cpp build (tier {tier}) fails its self-test: "
            f"{(test.stderr.strip().splitlines() or ['no output'])[-1]}\n"
            "  rebuild with a lower tier, e.g. `LLAMA_CPU_TIER=avx2 make setup`, or your own "
            'flags with `LLAMA_CMAKE_ARGS="-DGGML_NATIVE=OFF ..." make setup`',
            file=sys.stderr,
        )
        return 1
    record["selftest"] = json.loads(test.stdout)
    (venv / "llama-cpp-build.json").write_text(json.dumps(record, indent=2) + "\n")
    print(f"install_llama_cpp: self-test passed ({record['selftest']['summary']})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
