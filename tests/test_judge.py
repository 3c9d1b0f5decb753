"""LLM-as-judge: verdict parsing is strict about scores, and the summary counts honestly."""

from __future__ import annotations

import json
from typing import Any

import pytest

from specialize.evaluate.judge import CRITERIA, JUDGE_SCHEMA, RUBRIC, judge, judge_prompt
from specialize.infer.types import Request, Result, checked

GOOD = {"reason": "ok", "faithfulness": 4, "correctness": 5, "relevance": 3, "completeness": 2}


def verdict(**kw: Any) -> str:
    return json.dumps({**GOOD, **kw})


@pytest.mark.parametrize(
    "text,context,ok",
    [
        (verdict(), True, True),
        (verdict(correctness=4.0, relevance="3"), True, True),  # integral float, digit string
        (verdict(correctness=9), True, False),  # out of range: never clamped
        (verdict(correctness=0), True, False),
        (verdict(relevance=None), True, False),
        (verdict(faithfulness=None), True, False),  # a context, but no faithfulness
        (verdict(faithfulness=None), False, True),
        (verdict(faithfulness=3), False, False),  # no context: faithfulness must be null
        ("I think it deserves a 5.", True, False),
        (f"```json\n{verdict()}```", True, False),  # constrained answers are bare JSON
        ("", True, False),
    ],
)
def test_verdicts_validate_strictly(text, context, ok):
    from specialize.evaluate.judge import _WITH_CONTEXT, _WITHOUT_CONTEXT
    from specialize.infer.types import InvalidOutput

    c = _WITH_CONTEXT if context else _WITHOUT_CONTEXT
    if ok:
        c.validate(text)
    else:
        with pytest.raises(InvalidOutput):
            c.validate(text)


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
    """Answers each prompt with the canned text for its question ("q<i>"), or an error; a
    list of texts answers successive attempts (the first try, then retries)."""

    name = "fake"

    def __init__(self, answers: dict[str, Any]):
        self.answers = answers
        self.requests: list[Request] = []
        self.tries: dict[str, int] = {}

    def generate(self, requests, *, progress=True, desc="", on_result=None) -> list[Result]:
        out = []
        for i, req in enumerate(requests):
            self.requests.append(req)
            q = req.messages[-1]["content"].split("<question>\n")[1].split("\n")[0]
            n = self.tries[q] = self.tries.get(q, -1) + 1
            text = self.answers[q]
            text = text[min(n, len(text) - 1)] if isinstance(text, list) else text
            if text is None:
                res = Result("", 0, "error", error="HTTP 500: boom")
            else:
                res = checked(Result(text, 10, "stop"), req)
            out.append(res)
            if on_result:
                on_result(i, res)
        return out

    def close(self) -> None:
        pass


def test_judge_means_count_only_parsed_verdicts():
    answers = {
        "q0": verdict(faithfulness=5, correctness=5, relevance=5, completeness=4),
        "q1": ["junk first", verdict(faithfulness=3, correctness=3, relevance=4, completeness=2)],
        "q2": "I think it deserves a 5.",  # junk every time: never scored
        "q3": verdict(correctness=9),  # out of range: never clamped
        "q4": None,  # backend error
        "q5": verdict(faithfulness=None, correctness=1, relevance=3, completeness=3),  # no context
        "q6": verdict(faithfulness=None),  # has context but no faithfulness: invalid
    }
    items = [
        {"id": f"r{i}", "question": f"q{i}", "prediction": "p", "reference": "r", "context": "c"}
        for i in range(7)
    ]
    del items[5]["context"]
    fake = FakeJudge(answers)
    verdicts, summary = judge(fake, items, progress=False, retries=1)

    first = fake.requests[0]
    assert first.constraint is not None and first.constraint.schema == JUDGE_SCHEMA
    assert first.sampling.temperature == 0 and first.sampling.seed == 0
    assert fake.requests[-1].sampling.temperature > 0  # retries sample
    assert [v["id"] for v in verdicts] == [f"r{i}" for i in range(7)]
    assert summary["n"] == 7 and summary["parsed"] == 3
    assert summary["unparseable"] == 3 and summary["errors"] == 1
    assert summary["retries"] == 4  # q1, q2, q3, q6 asked once more
    assert summary["mean"] == {
        "faithfulness": 4.0,  # q0 and q1 only: q5 has no context
        "correctness": 3.0,
        "relevance": 4.0,
        "completeness": 3.0,
    }
    assert summary["scored"]["faithfulness"] == 2 and summary["scored"]["correctness"] == 3
    assert verdicts[5]["scores"]["faithfulness"] is None
    assert verdicts[0]["reason"] == "ok" and verdicts[0]["error"] is None
    assert verdicts[2]["scores"] is None and verdicts[2]["error"].startswith("unparseable verdict")
    assert verdicts[2]["raw"] == answers["q2"]
    assert verdicts[4]["error"] == "HTTP 500: boom" and verdicts[4]["scores"] is None


def test_judge_on_a_local_model_always_parses(chatml_tok):
    """The constrained path on the HF engine: a random tiny model still gives valid verdicts."""
    from specialize.infer.hf import HFBackend
    from specialize.models.tiny import build_llama

    items = [
        {
            "question": f"q{i}",
            "prediction": "p",
            "reference": "r",
            "context": "c" if i % 2 else None,
        }
        for i in range(4)
    ]
    with HFBackend(build_llama(chatml_tok, tie=False), chatml_tok, "chatml") as hf:
        verdicts, summary = judge(hf, items, progress=False, max_new_tokens=600)
    assert summary["parsed"] == 4, verdicts
    assert all(v["scores"]["faithfulness"] is None for v in verdicts[::2])
    assert all(v["scores"]["faithfulness"] is not None for v in verdicts[1::2])
