"""Config: every shipped YAML validates; bad configs fail in one line naming line and field."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import ROOT, SHARED

from specialize.config import load_config
from specialize.errors import SpecializeError

SUITE_CONFIGS = ROOT / "examples" / "suites"
# Run configs; the eval-suite configs (another schema) are checked in test_eval_cli.py.
SHIPPED = sorted(p for p in (ROOT / "examples").rglob("*.yaml") if p.parent != SUITE_CONFIGS)


def test_there_are_shipped_configs():
    assert SHIPPED, "examples/ should ship at least one config"


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_shipped_yaml_validates(path: Path):
    cfg = load_config(path)
    data = cfg.resolve(cfg.data.path)
    if not data.exists() and "shared" in data.parts and not SHARED.is_dir():
        pytest.skip("reads ../shared/data, which is absent here")
    assert data.exists(), "data.path must point at shipped (or ../shared) data"


def write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "c.yaml"
    p.write_text(text, encoding="utf-8")
    return p


def test_unknown_key_names_nearest_valid_name_and_line(tmp_path):
    p = write(tmp_path, "data: {path: x.jsonl}\nlora:\n  r: 8\n  alpah: 16\n")
    with pytest.raises(SpecializeError) as e:
        load_config(p)
    msg = str(e.value)
    assert f"{p}:4" in msg and "lora.alpah" in msg and "did you mean 'alpha'" in msg


def test_misspelt_section_is_rejected(tmp_path):
    p = write(tmp_path, "data: {path: x.jsonl}\ntrian:\n  lr: 0.1\n")
    with pytest.raises(SpecializeError, match="did you mean 'train'"):
        load_config(p)


def test_malformed_yaml_reports_line(tmp_path):
    p = write(tmp_path, "data:\n  path: x.jsonl\nlora: {r: 8\n")
    with pytest.raises(SpecializeError, match=r"c\.yaml:\d+: malformed YAML"):
        load_config(p)


def test_missing_file_and_missing_required_field(tmp_path):
    with pytest.raises(SpecializeError, match="config file not found"):
        load_config(tmp_path / "nope.yaml")
    with pytest.raises(SpecializeError, match="data.path is required"):
        load_config(write(tmp_path, "name: x\n"))


def test_wrong_type_names_field(tmp_path):
    p = write(tmp_path, "data: {path: x.jsonl}\ntrain:\n  lr: fast\n")
    with pytest.raises(SpecializeError, match=r"c\.yaml:3 field 'train\.lr'"):
        load_config(p)


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("model: {dtype: float16}\n", "float16 cannot be trained"),
        ("eval: {max_new_tokens: 600}\nchat: {max_seq_len: 512}\n", "max_new_tokens"),
        ("lora: {targets: atention}\n", "did you mean 'attention'"),
        ("data: {path: x, split: {validation: 0.6, test: 0.5}}\n", "leave a share for train"),
    ],
)
def test_conflicting_options_rejected_before_model_load(tmp_path, text, match):
    base = "data: {path: x.jsonl}\n" if not text.startswith("data") else ""
    with pytest.raises(SpecializeError, match=match):
        load_config(write(tmp_path, base + text))


def test_overrides_are_validated(tmp_path):
    p = write(tmp_path, "data: {path: x.jsonl}\n")
    assert load_config(p, {"train.max_steps": 5}).train.max_steps == 5
    with pytest.raises(SpecializeError, match="train.max_step"):
        load_config(p, {"train.max_step": 5})


def test_duplicate_keys_are_rejected_with_both_lines(tmp_path):
    p = write(tmp_path, "data: {path: x.jsonl}\ntrain:\n  lr: 0.1\n  lr: 0.2\n")
    with pytest.raises(
        SpecializeError,
        match=r"c\.yaml:4 field 'train\.lr': duplicate key "
        r"\(first on line 3\)",
    ):
        load_config(p)
