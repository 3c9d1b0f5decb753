"""The synth bench's baseline (``bench/naive_teacher.py``) is the engine's computation done one
request at a time: on a tiny random model, greedy answers (constrained and free, with stop
strings and budgets) and seeded sampled ones equal HFBackend's. No timings here."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Annotated, Literal

import pytest
from pydantic import BaseModel, Field

from specialize.errors import SpecializeError
from specialize.infer.hf import HFBackend
from specialize.infer.types import Backend, Constraint, Request, Sampling

BENCH = Path(__file__).resolve().parent.parent / "bench" / "naive_teacher.py"


def _naive_module():
    spec = importlib.util.spec_from_file_location("naive_teacher", BENCH)
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


class Pair(BaseModel):
    question: Annotated[str, Field(max_length=6)]
    answer: Annotated[str, Field(max_length=4)]


class Pairs(BaseModel):
    kind: Literal["orbit", "rocket", "other"]
    pairs: list[Pair] = Field(min_length=1, max_length=1)


QUESTIONS = [
    "What is LEO?",
    "Name the first artificial satellite launched into orbit around the Earth.",
    "Which rocket carried Apollo 11, and how many stages did it have?",
]


def ask(q: str, **kw) -> Request:
    return Request(messages=[{"role": "user", "content": q}], **kw)


def _requests() -> list[Request]:
    c = Constraint.of(Pairs)
    out = []
    for i, q in enumerate(QUESTIONS):
        out.append(ask(q, max_new_tokens=60, constraint=c, tag=f"json{i}"))
        out.append(ask(q, max_new_tokens=12, tag=f"free{i}"))
    out.append(ask("Is it?", constraint=Constraint.choice(["yes", "no", "maybe not"])))
    out.append(ask("Go", max_new_tokens=6))
    out.append(ask("Stop", stop=("e", "a")))
    out.append(ask("Cut", max_new_tokens=5, constraint=c))
    # retries of invalid answers sample with a seed (specialize.infer.structured)
    for k, q in enumerate(QUESTIONS[:2]):
        out.append(ask(q, max_new_tokens=40, constraint=c, sampling=Sampling(0.7, 1.0, 17 + k)))
    return out


@pytest.fixture(scope="module")
def model(chatml_tok):
    from specialize.models.tiny import build_llama

    return build_llama(chatml_tok, tie=False).eval()


def test_naive_teacher_answers_like_the_engine(model, chatml_tok):
    naive = _naive_module().NaiveHFTeacher(model, chatml_tok, "chatml")
    assert isinstance(naive, Backend)
    reqs = _requests()
    seen: list[int] = []
    got = naive.generate(reqs, progress=False, on_result=lambda i, r: seen.append(i))
    with HFBackend(model, chatml_tok, "chatml", batch_size=4) as hf:
        want = hf.generate(reqs, progress=False)
    assert seen == list(range(len(reqs)))

    def key(r):
        return (r.text, r.new_tokens, r.finish_reason, r.invalid, r.error, r.value)

    assert [key(r) for r in got] == [key(r) for r in want]
    # the cases are really exercised: valid JSON, a budget cut, a stop string, free text
    n = 2 * len(QUESTIONS)
    assert all(isinstance(r.value, Pairs) and r.stopped for r in got[:n:2])
    assert got[n].value in ("yes", "no", "maybe not")
    assert got[n + 1].finish_reason == "length" and got[n + 1].new_tokens == 6
    stopped = got[n + 2]
    assert stopped.stopped and "e" not in stopped.text and "a" not in stopped.text
    assert got[n + 3].finish_reason == "length" and got[n + 3].invalid


def test_naive_teacher_refuses_what_the_engine_refuses(model, chatml_tok):
    naive = _naive_module().NaiveHFTeacher(model, chatml_tok, "chatml")
    with HFBackend(model, chatml_tok, "chatml") as hf:
        for backend in (naive, hf):
            with pytest.raises(SpecializeError, match="unknown adapter"):
                backend.generate([ask("Hi", adapter="space")], progress=False)
            with pytest.raises(SpecializeError, match="cannot be used"):
                backend.generate([ask("Hi", constraint=Constraint.regex("(?=a)a"))], progress=False)
