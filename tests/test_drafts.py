"""Speculative decoding with prompt-lookup and grammar drafts: the answers never change.

Tiny random models repeat themselves a lot, so their drafts are often right (and sometimes
wrong): both the accept and the reject paths run here."""

from __future__ import annotations

import pytest
import torch

from specialize.infer import engine as engine_mod
from specialize.infer.drafts import PromptLookup
from specialize.infer.hf import HFBackend
from specialize.infer.types import Constraint, Request, Result, Sampling

QUESTIONS = [
    "What is LEO? LEO is low Earth orbit, and low Earth orbit is close.",
    "Name the first artificial satellite launched into orbit around the Earth.",
    "Why?",
    "Which rocket carried Apollo 11, and how many stages did it have?",
    "Define apogee.",
    "Delta-v?",
]
QA = {
    "type": "object",
    "properties": {"q": {"type": "string"}, "a": {"type": "string"}},
    "required": ["q", "a"],
    "additionalProperties": False,
}


def test_lookup_guesses_what_followed_the_latest_match_never_the_suffix_itself():
    look = PromptLookup([1, 2, 3, 9, 1, 2, 3, 7, 8])
    assert look.draft(4) == []  # suffix (7, 8) occurs nowhere else
    look.extend([1, 2, 3])
    assert look.draft(4) == [7, 8, 1, 2]  # latest earlier (1, 2, 3) is followed by 7, 8, ...
    look.extend([5, 2])
    assert look.draft(3) == []  # (3, 5, 2) and (5, 2) are new; 1-grams are not used
    look.extend([3])
    assert look.draft(2) == [5, 2]  # (5, 2, 3) is new; the 2-gram (2, 3) last came before 5


def test_lookup_prefers_the_longer_match():
    look = PromptLookup([5, 6, 1, 7, 6, 1, 2, 0, 5, 6, 1])
    # (5, 6, 1) matches at 0 (followed by 7); (6, 1) alone would match later, before 2
    assert look.draft(2) == [7, 6]


def requests() -> list[Request]:
    out = [Request(messages=[{"role": "user", "content": q}], max_new_tokens=40) for q in QUESTIONS]
    out += [
        Request(
            messages=[{"role": "user", "content": q}],
            max_new_tokens=40,
            constraint=Constraint.json_schema(QA),
        )
        for q in QUESTIONS
    ]
    out += [
        Request(
            messages=[{"role": "user", "content": QUESTIONS[0]}],
            max_new_tokens=30,
            sampling=Sampling(temperature=0.9, top_p=0.9, seed=s),
        )
        for s in (1, 2)
    ]
    out.append(Request(messages=[{"role": "user", "content": QUESTIONS[0]}], stop=["ab", "x"]))
    return out


def answers(model, tok, drafts: int) -> tuple[list[tuple], engine_mod.EngineStats]:
    with HFBackend(model, tok, "chatml", batch_size=6) as hf:
        hf.engine.draft_tokens = drafts
        got: list[Result] = hf.generate(requests(), progress=False)
    rows = [(r.text, r.new_tokens, r.finish_reason, r.error, r.invalid) for r in got]
    return rows, hf.engine.stats


@pytest.fixture(scope="module")
def model(chatml_tok):
    from specialize.models.tiny import build_llama

    torch.manual_seed(0)
    return build_llama(chatml_tok, tie=False).eval()


@pytest.fixture(scope="module")
def plain(model, chatml_tok):
    return answers(model, chatml_tok, 0)


def test_drafted_answers_equal_one_token_steps_in_fewer_steps(model, chatml_tok, plain):
    want, base = plain
    got, stats = answers(model, chatml_tok, 4)
    assert got == want
    assert base.drafted == 0 and stats.tokens == base.tokens
    assert 0 < stats.accepted < stats.drafted  # guesses kept and guesses rejected both ran
    assert stats.steps < base.steps


def test_no_step_feeds_more_than_the_budget(model, chatml_tok, plain, monkeypatch):
    """Drafts only while the batch is small: a step feeds at most DRAFT_BUDGET tokens
    (one per row when the rows alone reach it)."""
    widths = []
    real = engine_mod.Engine.step

    def spy(self, batch):
        real(self, batch)
        widths.append((len(batch.rows), batch.logits.shape[1]))

    monkeypatch.setattr(engine_mod, "DRAFT_BUDGET", 6)
    monkeypatch.setattr(engine_mod.Engine, "step", spy)
    got, stats = answers(model, chatml_tok, 4)
    assert got == plain[0]
    assert all(rows * width <= max(rows, 6) for rows, width in widths)
    assert stats.drafted > 0  # the tail of the batch, with few rows left, still drafted
    assert any(rows >= 6 for rows, _ in widths)  # and the full batch fed one token a row


def test_compacting_the_cache_every_step_changes_nothing(model, chatml_tok, plain, monkeypatch):
    seen = []
    real = engine_mod.Engine.compact

    def spy(self, batch):
        before = batch.attn.shape[1]
        real(self, batch)
        seen.append(before - batch.attn.shape[1])

    monkeypatch.setattr(engine_mod, "COMPACT_AT", (1.0, 0))
    monkeypatch.setattr(engine_mod.Engine, "compact", spy)
    got, _ = answers(model, chatml_tok, 4)
    assert got == plain[0]
    assert max(seen) > 0  # columns were really dropped


def test_forced_tokens_of_a_grammar_are_drafted(chatml_tok, model):
    with HFBackend(model, chatml_tok, "chatml") as hf:
        state = hf.engine.masker().start(Constraint.json_schema(QA))
    forced = state.forced()
    assert chatml_tok.decode(forced).startswith('{"q"')  # the key is forced, not the value
    assert state.allowed_prefix(forced + forced) == len(forced)
