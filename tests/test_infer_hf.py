"""The local HF backend: constraints inside batches, adapters by name, a queue fed while a
batch runs, streaming, and retried/counted invalid answers. Tiny models, float32."""

from __future__ import annotations

import threading
import time
from typing import Annotated, Literal

import pytest
import torch
from pydantic import BaseModel, Field

from specialize.infer.hf import HFBackend
from specialize.infer.structured import generate_checked
from specialize.infer.types import Constraint, Counts, Request, Result, Sampling

QUESTIONS = [
    "What is LEO?",
    "Name the first artificial satellite launched into orbit around the Earth.",
    "Why?",
    "Which rocket carried Apollo 11, and how many stages did it have?",
    "Define apogee.",
    "Delta-v?",
]


class Item(BaseModel):
    kind: Literal["a", "b", "c"]
    words: list[Annotated[str, Field(max_length=6)]] = Field(min_length=1, max_length=2)


class Items(BaseModel):
    items: list[Item] = Field(min_length=1, max_length=2)


@pytest.fixture(scope="module")
def model(chatml_tok):
    from specialize.models.tiny import build_llama

    return build_llama(chatml_tok, tie=False).eval()


def ask(q: str, **kw) -> Request:
    return Request(messages=[{"role": "user", "content": q}], **kw)


def texts(results: list[Result]) -> list[str]:
    assert all(r.error is None for r in results), [r.error for r in results]
    return [r.text for r in results]


def test_constrained_row_leaves_its_batch_mates_alone(model, chatml_tok):
    plain = [ask(q, max_new_tokens=10) for q in QUESTIONS]
    with HFBackend(model, chatml_tok, "chatml", batch_size=8) as hf:
        alone = texts(hf.generate(plain, progress=False))
        c = Constraint.choice(["yes", "no"])
        mixed = plain[:3] + [ask("Is it?", max_new_tokens=10, constraint=c)] + plain[3:]
        got = hf.generate(mixed, progress=False)
    assert texts(got[:3] + got[4:]) == alone
    assert got[3].value in ("yes", "no") and got[3].ok
    assert len(set(alone)) > 1


def test_nested_schema_is_always_valid_on_a_random_model(model, chatml_tok):
    c = Constraint.of(Items)
    reqs = [ask(q, max_new_tokens=200, constraint=c) for q in QUESTIONS]
    counts = Counts()
    with HFBackend(model, chatml_tok, "chatml", batch_size=4) as hf:
        res = generate_checked(hf, reqs, counts=counts, progress=False)
    assert counts.valid == len(reqs) and counts.invalid == counts.errors == 0
    assert all(isinstance(r.value, Items) and r.value.items for r in res)


def test_adapters_by_name_match_merged_models(model, chatml_tok, tmp_path):
    from peft import LoraConfig, get_peft_model

    from specialize.infer.engine import Ticket
    from specialize.models.chat import render_prompt

    merged = {}
    for seed, name in ((1, "a"), (2, "b")):
        torch.manual_seed(seed)
        base = type(model)(model.config)
        base.load_state_dict(model.state_dict())
        peft = get_peft_model(base, LoraConfig(r=4, target_modules=["q_proj", "v_proj"]))
        for n, p in peft.named_parameters():
            if "lora_B" in n:
                torch.nn.init.normal_(p, std=0.5)
        peft.save_pretrained(tmp_path / name)
        merged[name] = peft.merge_and_unload().eval()
    fresh = type(model)(model.config)
    fresh.load_state_dict(model.state_dict())
    hf = HFBackend(
        fresh.eval(), chatml_tok, "chatml", adapters={"a": tmp_path / "a", "b": tmp_path / "b"}
    )
    assert hf.adapters == ("a", "b")
    picks = ["a", "b", "base", "a"]
    reqs = [ask(q, adapter=p) for q, p in zip(QUESTIONS, picks, strict=False)]
    tickets = [
        Ticket(r, render_prompt(r.messages, chatml_tok, "chatml"), i, False)
        for i, r in enumerate(reqs)
    ]
    with torch.inference_mode():
        batch = hf.engine._prefill_groups(tickets)
        for row, logits in zip(batch.rows, batch.logits, strict=True):
            ref = merged.get(row.request.adapter, model)
            ids = torch.tensor([row.ticket.prompt])
            want = ref(input_ids=ids).logits[0, -1]
            torch.testing.assert_close(logits[-1], want, atol=1e-4, rtol=1e-4)
    # and end to end: greedy answers on adapter "b" equal the merged model's
    with HFBackend(merged["b"], chatml_tok, "chatml") as ref_backend:
        want = texts(
            ref_backend.generate([ask(q, max_new_tokens=8) for q in QUESTIONS], progress=False)
        )
    got = texts(
        hf.generate([ask(q, max_new_tokens=8, adapter="b") for q in QUESTIONS], progress=False)
    )
    hf.close()
    assert got == want


def test_request_submitted_while_a_batch_runs_matches_alone(model, chatml_tok):
    late = ask("Which rocket carried Apollo 11?", max_new_tokens=12)
    with HFBackend(model, chatml_tok, "chatml", batch_size=8) as hf:
        alone = hf.generate([late], progress=False)[0].text
        started = threading.Event()

        def first(i: int, r: Result) -> None:
            started.set()

        long_reqs = [ask(q, max_new_tokens=40) for q in QUESTIONS]
        worker = threading.Thread(
            target=lambda: hf.generate(long_reqs, progress=False, on_result=first)
        )
        worker.start()
        time.sleep(0.05)
        ticket = hf.submit(late, stream=False)
        got = ticket.result(timeout=120).text
        worker.join()
    assert got == alone


def test_streaming_joins_to_the_same_text(model, chatml_tok):
    reqs = [ask(q, max_new_tokens=16) for q in QUESTIONS]
    with HFBackend(model, chatml_tok, "chatml") as hf:
        plain = texts(hf.generate(reqs, progress=False))
        for req, want in zip(reqs, plain, strict=True):
            t = hf.submit(req)
            pieces = list(t.stream())
            assert "".join(pieces) == want == t.result().text
        stopped = ask(QUESTIONS[1], max_new_tokens=16, stop=(plain[1][3:6],))
        t = hf.submit(stopped)
        assert "".join(t.stream()) == t.result().text == plain[1][:3].strip()


def test_seeded_sampling_depends_on_the_request_not_the_batch(model, chatml_tok):
    s = Sampling(temperature=1.0, seed=42)
    r = ask(QUESTIONS[0], max_new_tokens=10, sampling=s)
    with HFBackend(model, chatml_tok, "chatml", batch_size=8) as hf:
        alone = hf.generate([r], progress=False)[0].text
        together = hf.generate([ask(q, max_new_tokens=10) for q in QUESTIONS] + [r], progress=False)
    assert together[-1].text == alone


class _Rambler:
    """A backend whose answers never validate (a model that ignores the schema)."""

    name = "rambler"

    def __init__(self) -> None:
        self.calls = 0

    def generate(self, requests, *, progress=True, desc="", on_result=None):
        from specialize.infer.types import checked

        self.calls += 1
        out = []
        for i, r in enumerate(requests):
            res = checked(Result("sure! here it is", 4, "stop"), r)
            out.append(res)
            if on_result:
                on_result(i, res)
        return out

    def close(self) -> None:
        pass


def test_never_valid_is_retried_then_counted_and_the_run_goes_on():
    b = _Rambler()
    counts = Counts()
    c = Constraint.of(list[Item])
    seen = {}
    res = generate_checked(
        b,
        [ask("x", constraint=c), ask("y")],
        retries=2,
        counts=counts,
        progress=False,
        on_result=lambda i, r: seen.setdefault(i, r),
    )
    assert b.calls == 3 and counts.retries == 2
    assert res[0].invalid and res[0].value is None and res[0].attempts == 3 and not res[0].ok
    assert res[1].ok and res[1].text == "sure! here it is"
    assert counts.invalid == 1 and counts.valid == 0 and counts.invalid_reasons == {"not JSON": 1}
    assert sorted(seen) == [0, 1]  # every request reported once, with its final result


def test_unknown_adapter_and_bad_schema_are_one_line_errors(model, chatml_tok):
    from specialize.errors import SpecializeError

    with HFBackend(model, chatml_tok, "chatml") as hf:
        with pytest.raises(SpecializeError, match="unknown adapter 'x'"):
            hf.generate([ask("q", adapter="x")], progress=False)
        with pytest.raises(SpecializeError):
            hf.generate(
                [ask("q", constraint=Constraint.json_schema({"type": "nonsense"}))], progress=False
            )


class _Rounds:
    """The HF backend seen through ``generate`` only: chains run in rounds."""

    def __init__(self, hf: HFBackend) -> None:
        self.hf, self.name = hf, hf.name

    def generate(self, requests, **kw):
        return self.hf.generate(requests, **kw)

    def close(self) -> None:
        pass


def _count_steps(monkeypatch) -> list[int]:
    from specialize.infer.engine import Engine

    steps = [0]
    real = Engine.step

    def counted(self, batch):
        steps[0] += 1
        return real(self, batch)

    monkeypatch.setattr(Engine, "step", counted)
    return steps


def test_follow_ups_join_the_running_batch_with_the_same_answers(model, chatml_tok, monkeypatch):
    """A chain's second question (built from its first answer) is queued the moment that
    answer is in: the same texts as asking in rounds, in fewer decoding steps."""
    from specialize.infer.structured import generate_chains

    steps = _count_steps(monkeypatch)
    first = [ask(q, max_new_tokens=4 + 6 * (i % 3)) for i, q in enumerate(QUESTIONS)]  # 4..16

    def run(backend) -> dict[int, list[str]]:
        got: dict[int, list[str]] = {}

        def step(i: int, res: Result) -> Request | None:
            got.setdefault(i, []).append(res.text)
            if len(got[i]) == 2 or i % 3:  # the short first answers ask again (like retries)
                return None
            return ask(f"Say more about: {res.text}", max_new_tokens=10)

        generate_chains(backend, first, step, progress=False)
        return got

    with HFBackend(model, chatml_tok, "chatml", batch_size=8) as hf:
        chained = run(hf)
        chained_steps, steps[0] = steps[0], 0
        rounds = run(_Rounds(hf))
    assert chained == rounds and [len(chained[i]) for i in range(6)] == [2, 1, 1, 2, 1, 1]
    # chained: the follow-ups (4 + 10 tokens) end inside the longest first answer (16);
    # in rounds they start after it
    assert chained_steps < steps[0]


def test_then_chains_a_stage_or_ends_with_a_known_answer(model, chatml_tok):
    """``then`` continues a checked request with a stage of its own, or ends it with a result
    known without a call (how synthetic data resumes a chain from its cache)."""
    c = Constraint.choice(["yes", "no"])
    known = Result("no", 1, "stop", value="no")
    stages: list[tuple[int, str]] = []

    def then(i: int, res: Result):
        stages.append((i, res.text))
        if i == 0 and len(stages) < 3 and not any(k == 0 and t == "no" for k, t in stages[:-1]):
            return ask("Really?", max_new_tokens=4, constraint=c) if res.text else None
        return known if i == 1 and res is not known else None

    counts = Counts()
    with HFBackend(model, chatml_tok, "chatml", batch_size=4) as hf:
        out = generate_checked(
            hf, [ask("Is it?", max_new_tokens=4, constraint=c), ask("Or?", max_new_tokens=4,
            constraint=c)], counts=counts, progress=False, then=then,
        )  # fmt: skip
    assert out[1] is known  # ended with the known answer, no call made for it
    assert [i for i, _ in stages].count(0) == 2  # request 0: its first stage, then its second
    assert all(r.ok for r in out) and counts.requests == 3 and counts.valid == 3


def test_prefill_groups_bound_the_padding():
    """Admitted prompts are prefilled in groups of similar length (sorted; a group's longest
    at most PREFILL_SLACK x its shortest), every ticket exactly once."""
    from specialize.infer.engine import PREFILL_SLACK, _by_length
    from specialize.infer.types import Request, Ticket

    lengths = [450, 200, 210, 30, 440, 240, 31, 600, 205]
    tickets = [Ticket(Request(prompt_ids=[1] * n), [1] * n, 0, False) for n in lengths]
    groups = _by_length(tickets)
    assert sorted(id(t) for g in groups for t in g) == sorted(id(t) for t in tickets)
    flat = [len(t.prompt) for g in groups for t in g]
    assert flat == sorted(lengths)
    assert all(len(g[-1].prompt) <= PREFILL_SLACK * len(g[0].prompt) for g in groups)
    assert [len(g) for g in groups] == [2, 4, 2, 1]
