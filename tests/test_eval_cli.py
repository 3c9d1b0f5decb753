"""`specialize eval` on a tiny run: every applicable metric, resume, and bad input."""

from __future__ import annotations

import json
import shutil
import socket

import pytest
from conftest import write_tiny_config, write_tiny_data

from specialize.cli import main
from specialize.io import read_json, read_jsonl


@pytest.fixture(scope="module")
def tiny_run_dir(tiny_llama, tmp_path_factory):
    folder = tmp_path_factory.mktemp("evalrun")
    data = write_tiny_data(folder / "data")
    cfg = write_tiny_config(folder, tiny_llama, data, export="{merge: false}")
    assert main(["run", str(cfg), "--no-progress"]) == 0
    return folder / "runs" / "tiny"


def _eval(run, out, *extra):
    return main(["eval", str(run), "--out", str(out), "--no-progress", "--no-bertscore", *extra])


def test_eval_report_has_deltas_cis_and_breakdowns(tiny_run_dir, tmp_path):
    out = tmp_path / "ev"
    assert _eval(tiny_run_dir, out) == 0
    report = read_json(out / "report.json")
    m, comp = report["metrics"], report["compare"]
    assert list(m) == ["base", "tuned"]
    for key in ("exact_match", "f1", "loss", "perplexity", "stopped_rate"):
        assert key in m["base"] and key in m["tuned"]
    d = comp["deltas"]["f1"]
    assert d["ci_low"] <= d["delta"] <= d["ci_high"]
    assert set(comp["deltas"]) >= {"exact_match", "f1", "loss", "perplexity"}
    assert "topic" in comp["breakdowns"] or "difficulty" in comp["breakdowns"]
    md = (out / "report.md").read_text()
    assert "Δ tuned − base (95% CI)" in md and "token F1" in md
    rows = read_jsonl(out / "side_by_side.jsonl")
    assert rows and {"base", "tuned"} <= set(rows[0])
    assert (out / "metrics.png").stat().st_size > 1000
    assert not (out / ".partial").exists()  # removed once the report is written


def test_eval_resumes_from_saved_answers(tiny_run_dir, tmp_path):
    first = tmp_path / "a"
    assert _eval(tiny_run_dir, first) == 0
    base = read_jsonl(first / "base" / "predictions.jsonl")
    # An interrupted run: half of the base answers were saved, with a doctored text that the
    # resumed run must keep (proving it was reused, not regenerated), plus a torn last line.
    out = tmp_path / "b"
    partial = out / ".partial" / "base.partial.jsonl"
    partial.parent.mkdir(parents=True)
    keep = base[: len(base) // 2]
    lines = [
        json.dumps({"id": p["id"], "text": "REUSED", "new_tokens": 1, "stopped": True})
        for p in keep
    ]
    partial.write_text("\n".join(lines) + '\n{"id": "torn', encoding="utf-8")
    assert _eval(tiny_run_dir, out) == 0
    again = read_jsonl(out / "base" / "predictions.jsonl")
    assert [p["prediction"] for p in again[: len(keep)]] == ["REUSED"] * len(keep)
    assert [p["prediction"] for p in again[len(keep) :]] == [
        p["prediction"] for p in base[len(keep) :]
    ]


def test_eval_bad_inputs_are_one_line_errors(tiny_run_dir, tmp_path, capsys):
    no_adapter = tmp_path / "run"
    shutil.copytree(tiny_run_dir, no_adapter)
    shutil.rmtree(no_adapter / "adapter")
    assert _eval(no_adapter, tmp_path / "x") == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "adapter" in err

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    code = _eval(tiny_run_dir, tmp_path / "y", "--judge", f"http://127.0.0.1:{port}")
    assert code == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "unreachable" in err

    bad = tmp_path / "suite.yaml"
    bad.write_text("suite: mmlu_astronomy\nlimt: 3\n")
    assert main(["eval", str(bad), "--no-progress"]) == 2
    err = capsys.readouterr().err.strip()
    assert "limt" in err and err.count("\n") == 0


@pytest.mark.parametrize(
    "path",
    sorted(
        (__import__("pathlib").Path(__file__).parents[1] / "examples" / "suites").glob("*.yaml")
    ),
    ids=lambda p: p.name,
)
def test_every_shipped_suite_config_is_valid(path):
    from specialize.evaluate.runner import read_suite_config
    from specialize.evaluate.suites import SUITES

    cfg = read_suite_config(path)
    assert cfg["suite"] in SUITES and path.stem == cfg["suite"]
