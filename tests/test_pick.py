"""The GGUF file to ship: the smallest within the quality budget, F16 when none is."""

from __future__ import annotations

import json
from dataclasses import asdict

import pytest

from specialize.errors import SpecializeError
from specialize.export.pick import pick_file, write_pick
from specialize.report.card import _edge_pick


def _comp(**deltas: tuple[float, float, float]) -> dict:
    return {
        "n": 200,
        "reference": "tuned",
        "vs_reference": {
            f"gguf-{t}": {"f1": {"delta": d, "ci_low": lo, "ci_high": hi}}
            for t, (d, lo, hi) in deltas.items()
        },
    }


FILES = {
    "f16": {"path": "/r/gguf/x-f16.gguf", "bytes": 270_000_000, "bits_per_weight": 16.1},
    "q8_0": {"path": "/r/gguf/x-q8_0.gguf", "bytes": 145_000_000, "bits_per_weight": 8.6},
    "q6_k": {"path": "/r/gguf/x-q6_k.gguf", "bytes": 138_000_000, "bits_per_weight": 8.2},
    "q4_k_m": {"path": "/r/gguf/x-q4_k_m.gguf", "bytes": 105_000_000, "bits_per_weight": 6.2},
}


def test_smallest_file_within_the_budget_is_picked():
    comp = _comp(q8_0=(0.001, -0.01, 0.01), q6_k=(-0.012, -0.03, 0.0), q4_k_m=(-0.041, -0.07, 0))
    pick = pick_file(comp, FILES, budget_pp=2.0)
    assert pick.type == "q6_k" and pick.file == "x-q6_k.gguf" and pick.metric == "f1"
    assert [c.type for c in pick.candidates] == ["q4_k_m", "q6_k", "q8_0"]  # smallest first
    q4, q6, q8 = pick.candidates
    assert not q4.within and q6.within and not q6.ci_within and q8.ci_within
    assert q6.delta_pp == pytest.approx(-1.2) and q6.ci_pp == pytest.approx((-3.0, 0.0))
    # a looser budget takes the smaller file; the budget's edge counts as within
    assert pick_file(comp, FILES, budget_pp=4.1).type == "q4_k_m"


def test_no_quantized_file_within_the_budget_names_f16():
    pick = pick_file(_comp(q8_0=(-0.03, -0.05, -0.01)), FILES, budget_pp=2.0)
    assert pick.type == "f16" and pick.file == "x-f16.gguf" and pick.chosen is None
    lines = "\n".join(_edge_pick(json.loads(json.dumps(asdict(pick)))))
    assert "`gguf/x-f16.gguf`" in lines and "No quantized file was within the budget" in lines


def test_budget_on_a_metric_that_was_not_evaluated_is_a_one_line_error():
    with pytest.raises(SpecializeError, match="export.quality_metric 'accuracy' was not"):
        pick_file(_comp(q8_0=(0.0, 0.0, 0.0)), FILES, 2.0, metric="accuracy")


def test_pick_is_written_and_the_card_says_when_the_ci_spans_the_budget(tmp_path):
    (tmp_path / "eval").mkdir()
    (tmp_path / "export").mkdir()
    comp = _comp(q8_0=(0.0, -0.01, 0.01), q4_k_m=(-0.0134, -0.0462, 0.0183))
    (tmp_path / "eval" / "compare_gguf.json").write_text(json.dumps(comp))
    (tmp_path / "export" / "gguf_files.json").write_text(json.dumps(FILES))
    pick = write_pick(tmp_path, 2.0, None)
    assert pick is not None and pick.type == "q4_k_m"
    saved = json.loads((tmp_path / "export" / "pick.json").read_text())
    assert saved["type"] == "q4_k_m" and saved["budget_pp"] == 2.0
    card = "\n".join(_edge_pick(saved))
    assert "**File to ship: `gguf/x-q4_k_m.gguf`**" in card
    assert "| Q4_K_M | 105.0 MB | -1.34 [-4.62, +1.83] | yes (the CI spans the budget) |" in card
    assert "a loss larger than the budget is not ruled out" in card


def test_a_run_without_quantized_evaluations_writes_no_pick(tmp_path):
    assert write_pick(tmp_path, 2.0, None) is None
    assert not (tmp_path / "export" / "pick.json").exists()
