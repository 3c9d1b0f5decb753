"""Scoring records of the synthetic-data task catalog, and per-task summaries and comparisons.

The built-in tasks (bullets, question-answer pairs, triplets, retrieval, a free-text task)
score hand-made answers, with exact expected numbers; no model is loaded.
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from specialize.data.tasks import BUILTIN, Catalog, Task
from specialize.errors import SpecializeError
from specialize.evaluate.compare import compare_variants, side_by_side
from specialize.evaluate.scoring import add_bertscore, check_records, prediction_row, summarize
from specialize.evaluate.stage import EvalSettings, Variant, evaluate
from specialize.evaluate.task_scores import soft_f1
from specialize.evaluate.tasks import score_answer, task_of
from specialize.infer.types import Result
from specialize.report.eval_report import write_report
from specialize.report.per_task import task_table

CATALOG = Catalog(BUILTIN.values())
SKY = "the sky is blue"  # long enough for any bullet


def rec(task: str, reference: Any, rid: str = "r0", **extra: Any) -> dict[str, Any]:
    content = reference if isinstance(reference, str) else json.dumps(reference)
    return {
        "id": rid,
        "messages": [
            {"role": "user", "content": f"{task} please"},
            {"role": "assistant", "content": content},
        ],
        "task": task,
        "source_doc": "doc.txt",
        "chunk": 0,
        "split": "test",
        **extra,
    }


def answer(text: str) -> dict[str, Any]:
    return {"text": text, "stopped": True, "new_tokens": 5}


# ------------------------------------------------------------------------ soft field F1


def test_soft_f1_exact_numbers():
    # "the" is dropped by the normalisation: the first item matches exactly, the second not
    assert soft_f1(["the sky is blue", "grass grows"], ["sky is blue"]) == pytest.approx(2 / 3)
    # 3 shared tokens: precision 1, recall 3/5 -> item F1 0.75, both ways
    assert soft_f1(["paris capital france"], ["paris is capital of france"]) == pytest.approx(0.75)
    assert soft_f1([], []) == 1.0
    assert soft_f1(["x"], []) == 0.0 and soft_f1([], ["x"]) == 0.0
    assert soft_f1(["a b"], ["c d"]) == 0.0


# ------------------------------------------------------------------------- per task


def test_bullets_valid_and_invalid():
    r = rec("bullets", {"bullets": ["the sky is blue", "water runs downhill"]})
    got = score_answer(r, '{"bullets": ["The sky is blue."]}', CATALOG)
    # precision 1 (one item, exact), recall (1 + 0) / 2 = 0.5 -> F1 2/3
    assert got["schema_valid"] == 1.0 and got["field_f1"] == pytest.approx(2 / 3)
    assert got["unparsed"] is False and "index_accuracy" not in got and "f1" not in got
    fenced = score_answer(r, '```json\n{"bullets": ["the sky is blue"]}\n```', CATALOG)
    assert fenced["schema_valid"] == 1.0 and fenced["field_f1"] == pytest.approx(2 / 3)
    bad = score_answer(r, '{"bullets": ["the sky is blue"', CATALOG)
    assert bad["schema_valid"] == 0.0 and bad["field_f1"] == 0.0 and bad["unparsed"] is True
    assert bad["invalid_reason"] and "\n" not in bad["invalid_reason"]
    for wrong_shape in ('{"points": ["the sky is blue"]}', '{"bullets": []}', '["the sky"]'):
        got = score_answer(r, wrong_shape, CATALOG)
        assert got["schema_valid"] == 0.0 and got["field_f1"] == 0.0, wrong_shape


def test_qa_pairs_and_triplets_score_flat_items():
    ref = {"pairs": [{"question": "Who wrote it?", "answer": "Ada"}]}
    pred = {"pairs": [{"question": "who wrote it", "answer": "Ada."}]}
    got = score_answer(rec("qa_pairs", ref), json.dumps(pred), CATALOG)
    assert got["field_f1"] == 1.0  # "who wrote it ada" both sides
    mars = {"subject": "Mars", "relation": "has", "object": "two moons"}
    trip = {"triplets": [mars]}
    half = {"triplets": [mars, {"subject": "Venus", "relation": "lacks", "object": "rings"}]}
    got = score_answer(rec("triplets", trip), json.dumps(half), CATALOG)
    assert got["field_f1"] == pytest.approx(2 / 3)  # precision 1/2, recall 1


def test_retrieval_index_accuracy_from_target_or_reference():
    r = rec("retrieval", {"index": 2, "reasoning": "it names the moons"}, target=2)
    right = score_answer(r, '{"index": 2, "reasoning": "passage 2 names them"}', CATALOG)
    assert right["index_accuracy"] == 1.0 and right["field_f1"] == 1.0
    wrong = score_answer(r, '{"index": 0, "reasoning": "it names the moons"}', CATALOG)
    assert wrong["index_accuracy"] == 0.0 and wrong["schema_valid"] == 1.0
    assert score_answer(r, "passage two", CATALOG) | {"invalid_reason": ""} == {
        "schema_valid": 0.0,
        "field_f1": 0.0,
        "index_accuracy": 0.0,
        "unparsed": True,
        "invalid_reason": "",
    }
    no_target = rec("retrieval", {"index": 1, "reasoning": "the passage says so"})
    got = score_answer(no_target, '{"index": 1, "reasoning": "because it does"}', CATALOG)
    assert got["index_accuracy"] == 1.0


def test_free_text_task_gets_token_f1_and_no_schema_score():
    r = rec("rephrase", "The probe reached Mars in 1976.")
    got = score_answer(r, "The probe reached Mars.", CATALOG)
    # tokens probe reached mars (3) vs probe reached mars in 1976 (5): P 1, R 0.6
    assert got == {"exact_match": 0.0, "f1": pytest.approx(0.75)}


def test_existing_tasks_are_scored_as_before():
    msgs = [{"role": "user", "content": "Q?"}, {"role": "assistant", "content": "Paris"}]
    qa = {"id": "q", "messages": msgs, "topic": "x"}
    mc = qa | {"id": "m", "task": "mc", "label": "B", "choices": ["a", "b", "c", "d"]}
    for r, text in ((qa, "paris!"), (mc, "The answer is (B)")):
        plain = prediction_row(r, answer(text), loss=(1.5, 3))
        with_catalog = prediction_row(r, answer(text), loss=(1.5, 3), catalog=CATALOG)
        assert json.dumps(plain) == json.dumps(with_catalog)
    assert prediction_row(qa, answer("paris!"))["f1"] == 1.0
    assert task_of(qa, CATALOG) == "qa"


def test_prediction_row_names_the_catalog_task():
    row = prediction_row(rec("bullets", {"bullets": [SKY]}), answer(json.dumps({"bullets": [SKY]})),
                         catalog=CATALOG)  # fmt: skip
    assert row["task"] == "bullets" and row["field_f1"] == 1.0
    assert row["meta"] == {"source_doc": "doc.txt", "chunk": 0, "split": "test"}


# ------------------------------------------------------------------------ records check


def test_check_records_accepts_catalog_tasks_and_refuses_bad_ones():
    good = [rec("bullets", {"bullets": [SKY]}), rec("rephrase", "text", "r1")]
    check_records(good, catalog=CATALOG)
    with pytest.raises(SpecializeError, match="unknown task 'bullets'"):
        check_records(good)
    with pytest.raises(SpecializeError, match="reference answer is not a valid bullets"):
        check_records([rec("bullets", "not json")], catalog=CATALOG)
    with pytest.raises(SpecializeError, match="catalog task 'mc'"):
        check_records(good, catalog=Catalog([Task("mc", "Answer: {passage}")]))


def test_bertscore_applies_to_free_text_catalog_tasks():
    class Scorer:
        def score(self, answers, refs):
            self.seen = answers
            return [{"f1": 0.5} for _ in answers]

    recs = [rec("bullets", {"bullets": [SKY]}), rec("rephrase", "some text", "r1")]
    preds = [
        prediction_row(r, answer(t), catalog=CATALOG)
        for r, t in zip(recs, [json.dumps({"bullets": [SKY]}), "some text"], strict=True)
    ]
    scorer = Scorer()
    add_bertscore(scorer, recs, preds, CATALOG)
    assert scorer.seen == ["some text"]
    assert "bertscore_f1" not in preds[0] and preds[1]["bertscore_f1"] == 0.5


# ---------------------------------------------------------- summaries and comparisons


def _records() -> list[dict[str, Any]]:
    out = []
    for i in range(6):
        out.append(rec("bullets", {"bullets": [SKY, "the grass is green"]}, f"b{i}"))
        reason = "it names the moons"
        out.append(rec("retrieval", {"index": i % 3, "reasoning": reason}, f"t{i}", target=i % 3))
        out.append(rec("rephrase", "the probe landed on mars", f"f{i}"))
    return out


def _answers(good: bool) -> dict[str, str]:
    """Base: invalid bullets, wrong passages, half the words; tuned: right answers."""
    out = {}
    for i in range(6):
        out[f"b{i}"] = json.dumps({"bullets": [SKY, "the grass is green"]}) if good else "* sky"
        index = i % 3 if good else (i + 1) % 3
        out[f"t{i}"] = json.dumps({"index": index, "reasoning": "it says so plainly"})
        out[f"f{i}"] = "the probe landed on mars" if good else "probe landed"
    return out


def _preds(good: bool) -> list[dict[str, Any]]:
    answers = _answers(good)
    return [
        prediction_row(r, answer(answers[r["id"]]), loss=(2.0 if good else 3.0, 4), catalog=CATALOG)
        for r in _records()
    ]


def test_summary_means_and_by_task():
    m = summarize(_preds(False), "base")
    assert m["schema_valid"] == 0.5 and m["schema_valid_n"] == 12  # bullets 0, retrieval 1
    assert m["field_f1"] == 0.0 and m["index_accuracy"] == 0.0 and m["index_accuracy_n"] == 6
    assert m["f1"] == pytest.approx(2 * 1 * 0.5 / 1.5) and m["f1_n"] == 6
    assert m["unparsed"] == 6
    assert list(m["by_task"]) == ["bullets", "retrieval", "rephrase"]
    assert m["by_task"]["bullets"] == {
        "n": 6, "loss": 0.75, "perplexity": pytest.approx(2.117, abs=1e-3),
        "schema_valid": 0.0, "field_f1": 0.0, "unparsed": 6,
    }  # fmt: skip
    assert m["by_task"]["retrieval"]["schema_valid"] == 1.0
    assert "by_task" not in summarize(_preds(False)[:1], "one task")


def test_compare_variants_by_task_with_cis_and_breakdown_by_task():
    comp = compare_variants({"base": _preds(False), "tuned": _preds(True)}, ["task"], 200, 0)
    assert comp["by_task"] == comp["by_task_vs_reference"]["tuned"]
    assert list(comp["by_task"]) == ["bullets", "retrieval", "rephrase"]
    bullets = comp["by_task"]["bullets"]
    assert bullets["schema_valid"] == {"delta": 1.0, "ci_low": 1.0, "ci_high": 1.0, "n": 6}
    assert bullets["field_f1"]["delta"] == 1.0 and "index_accuracy" not in bullets
    assert comp["by_task"]["retrieval"]["index_accuracy"]["delta"] == 1.0
    rephrase = comp["by_task"]["rephrase"]["f1"]
    assert rephrase["delta"] == pytest.approx(1 / 3) and rephrase["n"] == 6
    assert rephrase["ci_low"] <= rephrase["delta"] <= rephrase["ci_high"]
    assert comp["by_task"]["bullets"]["loss"]["delta"] == pytest.approx(-0.25)
    assert comp["deltas"]["schema_valid"]["n"] == 12  # the overall deltas are unchanged
    by = comp["breakdowns"]["task"]
    assert by["base"]["bullets"]["n"] == 6 and by["tuned"]["retrieval"]["index_accuracy"] == 1.0
    one_task = [p for p in _preds(False) if p["task"] == "bullets"]
    assert "by_task" not in compare_variants({"a": one_task, "b": one_task}, [], 50, 0)


def test_per_task_table_in_the_eval_report(tmp_path):
    base, tuned = _preds(False), _preds(True)
    metrics = {"base": summarize(base, "base"), "tuned": summarize(tuned, "tuned")}
    comp = compare_variants({"base": base, "tuned": tuned}, [], 200, 0)
    lines = task_table(metrics, comp)
    assert lines[0] == "### By task"
    assert "| bullets | 6 | schema-valid | 0.000 | 1.000 | +1.000 [+1.000, +1.000] |" in lines
    assert any(ln.startswith("| retrieval | 6 | passage index accuracy | 0.000 | 1.000 |")
               for ln in lines)  # fmt: skip
    assert any(
        ln.startswith("| rephrase | 6 | token F1 | 0.667 | 1.000 | +0.333 [") for ln in lines
    )
    text = write_report(tmp_path, "synth", metrics, comp).read_text()
    assert "### By task" in text and "| field F1 (soft, token F1 per item) |" in text
    rows = side_by_side({"base": base, "tuned": tuned})
    assert rows[0]["base"]["invalid_reason"] and rows[0]["tuned"]["field_f1"] == 1.0


# ----------------------------------------------------------------- through the stage


class Canned:
    """A backend answering each record with a fixed text."""

    name = "canned"

    def __init__(self, answers: dict[str, str]) -> None:
        self.answers = answers

    def generate(self, requests, *, progress=True, desc="generate", on_result=None):
        out = []
        for i, r in enumerate(requests):
            res = Result(self.answers[r.tag], 3, "stop", tag=r.tag)
            out.append(res)
            if on_result is not None:
                on_result(i, res)
        return out

    def close(self) -> None:
        pass


def test_evaluate_scores_catalog_tasks_given_in_the_settings(tmp_path):
    settings = EvalSettings(max_new_tokens=8, catalog=CATALOG)
    variants = [Variant("base", backend=Canned(_answers(False))),
                Variant("tuned", backend=Canned(_answers(True)))]  # fmt: skip
    got = evaluate(variants, _records(), settings, tmp_path, progress=False)
    assert got["tuned"].metrics["field_f1"] == 1.0 and got["base"].metrics["schema_valid"] == 0.5
    assert got["tuned"].predictions[0]["task"] == "bullets"
    with pytest.raises(SpecializeError, match="unknown task"):
        evaluate(variants, _records(), EvalSettings(), tmp_path / "x", progress=False)


def test_specialize_eval_reads_the_runs_catalog(tmp_path):
    from specialize.evaluate.runner import _catalog
    from specialize.io import write_json

    assert _catalog(tmp_path) is None
    write_json(tmp_path / "tasks.json", CATALOG.to_json())
    got = _catalog(tmp_path)
    assert got is not None and got.names == CATALOG.names
    r = rec("retrieval", {"index": 1, "reasoning": "the passage says so"}, target=1)
    answer_text = '{"index": 1, "reasoning": "because it does"}'
    assert score_answer(r, answer_text, got)["index_accuracy"] == 1.0
