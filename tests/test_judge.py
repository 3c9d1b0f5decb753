"""LLM-as-judge: verdict parsing is strict about scores, and the summary counts honestly."""

from __future__ import annotations

import json
from typing import Any

import pytest

from specialize.evaluate.backends import Generation
from specialize.evaluate.judge import (
    CRITERIA,
    JUDGE_SCHEMA,
    RUBRIC,
    judge,
    judge_prompt,
    parse_verdict,
)

GOOD = {"reason": "ok", "faithfulness": 4, "correctness": 5, "relevance": 3, "completeness": 2}


def verdict(**kw: Any) -> str:
    return json.dumps({**GOOD, **kw})


def test_parse_good_json():
    assert parse_verdict(verdict()) == GOOD


def test_parse_fenced_and_prose_wrapped_json():
    fenced = f"Here is my verdict:\n```json\n{verdict()}\n```\nThanks."
    assert parse_verdict(fenced) == GOOD
    prose = f"The answer is close to the reference. {verdict()} That is all {{not json}}."
    assert parse_verdict(prose) == GOOD
    assert parse_verdict("Scores {draft} then " + verdict()) == GOOD


def test_parse_accepts_integral_floats_and_digit_strings():
    assert parse_verdict(verdict(correctness=4.0, relevance="3")) == {
        **GOOD,
        "correctness": 4,
        "relevance": 3,
    }


@pytest.mark.parametrize(
    "text",
    [
        verdict(correctness=6),
        verdict(relevance=0),
        verdict(completeness=3.5),
        verdict(correctness="four"),
        verdict(correctness="4/5"),
        verdict(correctness=True),
        verdict(faithfulness=9),
        json.dumps({k: v for k, v in GOOD.items() if k != "relevance"}),
        "The answer looks correct to me, 5/5.",
        "",
        "{not json at all",
    ],
)
def test_parse_rejects_invalid_verdicts(text):
    assert parse_verdict(text) is None


def test_faithfulness_may_be_null_unless_required():
    text = verdict(faithfulness=None)
    assert parse_verdict(text)["faithfulness"] is None
    assert parse_verdict(text, require_faithfulness=True) is None
    assert parse_verdict(json.dumps({k: v for k, v in GOOD.items() if k != "faithfulness"}))


def test_prompt_and_schema_cover_the_rubric():
    with_ctx = judge_prompt("Q?", "P.", "R.", context="The passage.")
    system, user = with_ctx[0]["content"], with_ctx[1]["content"]
    assert [m["role"] for m in with_ctx] == ["system", "user"]
    for name in CRITERIA:
        assert name in system and RUBRIC[name][1][5] in system
    assert "<context>\nThe passage.\n</context>" in user and "<candidate_answer>\nP." in user
    no_ctx = judge_prompt("Q?", "P.", "R.")
    assert "faithfulness" not in no_ctx[0]["content"] and "<context>" not in no_ctx[1]["content"]
    assert '"faithfulness": null' in no_ctx[1]["content"]
    assert set(JUDGE_SCHEMA["required"]) == {*CRITERIA, "reason"}


class FakeJudge:
    """Answers each prompt with the canned text for its question ("q<i>"), or an error."""

    name = "fake"
    supports_json_schema = True

    def __init__(self, answers: dict[str, str | None]):
        self.answers = answers
        self.calls: list[dict[str, Any]] = []

    def generate(self, conversations, **kw: Any) -> list[Generation]:
        self.calls.append(kw)
        out = []
        for conv in conversations:
            q = conv[-1]["content"].split("<question>\n")[1].split("\n")[0]
            text = self.answers[q]
            if text is None:
                out.append(Generation("", 0, False, error="HTTP 500: boom"))
            else:
                out.append(Generation(text, 10, True))
        return out


def test_judge_means_count_only_parsed_verdicts():
    answers = {
        "q0": verdict(faithfulness=5, correctness=5, relevance=5, completeness=4),
        "q1": f"```json\n{verdict(faithfulness=3, correctness=3, relevance=4, completeness=2)}```",
        "q2": "I think it deserves a 5.",  # junk: never scored
        "q3": verdict(correctness=9),  # out of range: never clamped
        "q4": None,  # backend error
        "q5": verdict(faithfulness=1, correctness=1, relevance=3, completeness=3),  # no context
        "q6": verdict(faithfulness=None),  # has context but no faithfulness: invalid
    }
    items = [
        {"id": f"r{i}", "question": f"q{i}", "prediction": "p", "reference": "r", "context": "c"}
        for i in range(7)
    ]
    del items[5]["context"]
    fake = FakeJudge(answers)
    verdicts, summary = judge(fake, items, progress=False)

    assert fake.calls[0]["json_schema"] is JUDGE_SCHEMA and fake.calls[0]["temperature"] == 0
    assert [v["id"] for v in verdicts] == [f"r{i}" for i in range(7)]
    assert summary["n"] == 7 and summary["parsed"] == 3
    assert summary["unparseable"] == 3 and summary["errors"] == 1
    assert summary["mean"] == {
        "faithfulness": 4.0,  # q0 and q1 only: q5 has no context, its 1 is ignored
        "correctness": 3.0,
        "relevance": 4.0,
        "completeness": 3.0,
    }
    assert summary["scored"]["faithfulness"] == 2 and summary["scored"]["correctness"] == 3
    assert verdicts[5]["scores"]["faithfulness"] is None
    assert verdicts[0]["reason"] == "ok" and verdicts[0]["error"] is None
    assert verdicts[2]["scores"] is None and verdicts[2]["error"] == "unparseable verdict"
    assert verdicts[2]["raw"] == answers["q2"]
    assert verdicts[4]["error"] == "HTTP 500: boom" and verdicts[4]["scores"] is None


def test_judge_without_schema_support_sends_none():
    fake = FakeJudge({"q0": verdict(faithfulness=None)})
    fake.supports_json_schema = False
    verdicts, summary = judge(
        fake, [{"question": "q0", "prediction": "p", "reference": "r"}], progress=False
    )
    assert fake.calls[0]["json_schema"] is None
    assert verdicts[0]["id"] == 0 and summary["mean"]["faithfulness"] is None
    assert summary["parsed"] == 1 and summary["unparseable"] == 0
