"""The evaluation stage: what reaches the backend, what it writes, what it reuses."""

from __future__ import annotations

import json

import pytest
from conftest import FACTS, conversation

from specialize.evaluate import stage as stage_module
from specialize.evaluate.stage import EvalSettings, Variant, evaluate
from specialize.infer.types import Request, Result
from specialize.io import read_json, read_jsonl
from specialize.models.chat import render_prompt
from specialize.models.load import load_model, load_tokenizer, resolve

SETTINGS = EvalSettings(fmt="chatml", max_new_tokens=4, batch_size=2, split="test")


def records(n: int = 4) -> list[dict]:
    return [
        {"id": f"r{i}", "messages": conversation(q, a), "topic": "orbits"}
        for i, (q, a) in enumerate(FACTS[:n])
    ]


class Recorder:
    """A backend answering "Answer <tag>"; it records every request and can die midway."""

    name = "recorder"

    def __init__(self, die_after: int | None = None) -> None:
        self.requests: list[Request] = []
        self.die_after = die_after

    def generate(self, requests, *, progress=True, desc="generate", on_result=None):
        out = []
        for i, r in enumerate(requests):
            if self.die_after is not None and len(self.requests) >= self.die_after:
                raise RuntimeError("backend died")
            self.requests.append(r)
            res = Result(f"Answer {r.tag}", 2, "stop", tag=r.tag)
            out.append(res)
            if on_result is not None:
                on_result(i, res)
        return out

    def close(self) -> None:
        pass


@pytest.fixture(scope="module")
def tiny(tiny_llama):
    src = resolve(str(tiny_llama))
    return load_model(src).eval(), load_tokenizer(src)


def test_local_variant_sends_the_prompt_ids_rendered_once(tiny, tmp_path, monkeypatch):
    model, tok = tiny
    calls = []
    real = stage_module.render_prompt
    monkeypatch.setattr(
        stage_module, "render_prompt", lambda *a, **k: calls.append(1) or real(*a, **k)
    )
    recs, a, b = records(), Recorder(), Recorder()
    variants = [
        Variant("one", backend=a, model=model, tokenizer=tok),
        Variant("two", backend=b, model=model, tokenizer=tok),
    ]
    got = evaluate(variants, recs, SETTINGS, tmp_path, progress=False)
    assert len(calls) == len(recs)  # both variants share one rendering per record
    for backend in (a, b):
        assert [r.messages for r in backend.requests] == [None] * len(recs)
        assert [r.prompt_ids for r in backend.requests] == [
            render_prompt(rec["messages"][:-1], tok, "chatml") for rec in recs
        ]
    assert "loss_sum" in got["one"].predictions[0] and "perplexity" in got["one"].metrics


def test_remote_variant_sends_messages_and_gets_no_loss(tmp_path):
    recs, backend = records(), Recorder()
    got = evaluate([Variant("remote", backend=backend)], recs, SETTINGS, tmp_path, progress=False)
    assert [r.messages for r in backend.requests] == [rec["messages"][:-1] for rec in recs]
    assert [r.max_new_tokens for r in backend.requests] == [4] * len(recs)
    p = got["remote"].predictions
    assert [x["prediction"] for x in p] == [f"Answer r{i}" for i in range(len(recs))]
    assert all("loss_sum" not in x for x in p) and "perplexity" not in got["remote"].metrics


def test_one_writer_of_the_variant_folder_and_reuse(tmp_path):
    recs = records()
    first = evaluate([Variant("v", backend=Recorder())], recs, SETTINGS, tmp_path, progress=False)
    assert read_jsonl(tmp_path / "v" / "predictions.jsonl") == first["v"].predictions
    metrics = read_json(tmp_path / "v" / "metrics.json")
    assert metrics["split"] == "test" and metrics["n"] == len(recs)

    unused = Recorder()
    again = evaluate(
        [Variant("v", backend=unused)], recs, SETTINGS, tmp_path, reuse=True, progress=False
    )
    assert unused.requests == [] and again["v"].reused
    assert again["v"].predictions == first["v"].predictions


def test_opened_backend_is_started_only_when_answers_are_needed(tmp_path):
    recs, opened = records(), []

    def open_backend():
        opened.append(Recorder())
        return opened[-1]

    evaluate([Variant("v", open_backend=open_backend)], recs, SETTINGS, tmp_path, progress=False)
    evaluate(
        [Variant("v", open_backend=open_backend)], recs, SETTINGS, tmp_path, reuse=True,
        progress=False,
    )  # fmt: skip
    assert len(opened) == 1


def test_interrupted_answers_resume_from_the_partial_file(tmp_path):
    recs, partial = records(), tmp_path / ".partial"
    with pytest.raises(RuntimeError, match="backend died"):
        evaluate(
            [Variant("v", backend=Recorder(die_after=2))], recs, SETTINGS, tmp_path,
            partial_dir=partial, progress=False,
        )  # fmt: skip
    saved = [json.loads(x) for x in (partial / "v.partial.jsonl").read_text().splitlines()]
    assert [r["id"] for r in saved] == ["r0", "r1"]
    assert not (tmp_path / "v" / "metrics.json").exists()

    rest = Recorder()
    got = evaluate(
        [Variant("v", backend=rest)], recs, SETTINGS, tmp_path, partial_dir=partial,
        progress=False,
    )  # fmt: skip
    assert [r.tag for r in rest.requests] == ["r2", "r3"]
    assert [p["id"] for p in got["v"].predictions] == [r["id"] for r in recs]


def test_a_variant_needs_something_to_answer_with():
    with pytest.raises(ValueError, match="needs a backend or a local model"):
        Variant("nothing")
