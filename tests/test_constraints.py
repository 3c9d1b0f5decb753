"""Token masks for constrained rows (``specialize.infer.constraints``, llguidance underneath).

The engine trusts the mask to make every constrained answer valid, and trusts it to leave the
other rows alone; these tests check both on a tiny byte-level tokenizer (the bundled one takes
~20 s to load from its GGUF; ``bench/constrained_libs.py`` walks it instead). A greedy walk over
random logits is the adversary: whatever the "model" prefers, the mask must steer it to text
that ``Constraint.validate`` accepts.
"""

from __future__ import annotations

import threading
from typing import Annotated, Literal

import pytest
import torch
from pydantic import BaseModel, Field

from specialize.errors import SpecializeError
from specialize.infer.constraints import (
    TokenMasker,
    ascii_digits,
    check_constraint,
    closed_objects,
)
from specialize.infer.types import Constraint

# Bounded strings and lists: a random walk inside an unbounded string would rarely close it.
Short = Annotated[str, Field(max_length=10)]


class Item(BaseModel):
    kind: Literal["fact", "estimate", "question"]
    text: Short
    tags: Annotated[list[Short], Field(min_length=1, max_length=3)]


Items = Annotated[list[Item], Field(min_length=1, max_length=3)]

CONSTRAINTS = {
    "json": lambda: Constraint.of(Items),
    "regex": lambda: Constraint.regex(r"(19|20)\d\d-[0-1]\d [a-z]{2,8}( [a-z]{1,8}){0,3}\."),
    "choice": lambda: Constraint.choice(["low orbit", "geostationary", "L2", 'say "hi"\nthen go']),
}
EXTRA = 13  # logits wider than the tokenizer, as with padded output heads


@pytest.fixture(scope="module")
def masker(chatml_tok) -> TokenMasker:
    stops = [
        chatml_tok.convert_tokens_to_ids("<|im_end|>"),
        chatml_tok.convert_tokens_to_ids("<|endoftext|>"),
    ]
    return TokenMasker(chatml_tok, len(chatml_tok) + EXTRA, stops)


def greedy_walk(masker: TokenMasker, constraint: Constraint, seed: int, max_steps: int = 400):
    """Greedy over random logits, with an unconstrained row on each side of the constrained
    one (not contiguous with any other constrained row) that must come out untouched."""
    gen = torch.Generator().manual_seed(seed)
    state = masker.start(constraint)
    ids: list[int] = []
    for _ in range(max_steps):
        logits = torch.randn(4, masker.vocab_size, generator=gen)
        before = logits.clone()
        other = masker.start(constraint)
        masker.apply(logits, [None, state, None, other])
        assert torch.equal(logits[0], before[0]) and torch.equal(logits[2], before[2])
        assert torch.isinf(logits[1, masker.n_tokens :]).all()  # past the tokenizer: never
        tok = int(logits[1].argmax())
        assert torch.isfinite(logits[1, tok])
        state.consume(tok)
        assert state.error is None, state.error
        if tok in masker.stop_ids:
            break
        ids.append(tok)
        if state.finished:
            break
    else:
        pytest.fail(f"no end after {max_steps} steps: {ids}")
    return ids


@pytest.mark.parametrize("kind", sorted(CONSTRAINTS))
def test_greedy_walk_over_random_logits_is_always_valid(masker, chatml_tok, kind):
    constraint = CONSTRAINTS[kind]()
    check_constraint(constraint)
    texts = set()
    for seed in range(6):
        text = chatml_tok.decode(greedy_walk(masker, constraint, seed))
        constraint.validate(text)  # raises InvalidOutput if the mask let anything through
        texts.add(text)
    assert len(texts) > 1  # the walks differ: the mask is not forcing one answer
    if kind == "json":
        assert " " not in min(texts, key=len).replace(" ", "", 0)[:2]  # compact: '[{"kind":...'
        assert all(t.startswith('[{"kind":"') for t in texts)


def test_check_constraint_rejects_what_the_library_cannot_compile():
    with pytest.raises(SpecializeError, match="nonsense"):
        check_constraint(Constraint.json_schema({"type": "nonsense"}))
    with pytest.raises(SpecializeError, match="does not exist"):
        check_constraint(Constraint.json_schema({"$ref": "#/$defs/Missing"}))
    # Python's re takes look-ahead; llguidance's regexes have no backtracking.
    with pytest.raises(SpecializeError, match="look-around"):
        check_constraint(Constraint.regex(r"\d+(?= km)"))
    bad = Constraint("regex", pattern="a(b", name="regex")  # past Constraint.regex's own check
    with pytest.raises(SpecializeError, match="regex /a\\(b/") as err:
        check_constraint(bad)
    assert "\n" not in str(err.value)
    for fine in CONSTRAINTS.values():
        check_constraint(fine())
    # An unknown format is a warning (the grammar is looser, validation still runs), not an error.
    check_constraint(Constraint.json_schema({"type": "string", "format": "galactic-date"}))


def test_uncompilable_constraint_gives_an_errored_row_that_can_only_stop(masker):
    state = masker.start(Constraint.json_schema({"type": "nonsense"}))
    assert state.error and "nonsense" in state.error and not state.finished
    logits = torch.zeros(1, masker.vocab_size)
    masker.apply(logits, [state])
    assert set(torch.isfinite(logits[0]).nonzero().flatten().tolist()) == set(masker.stop_ids)


def test_rows_without_state_are_untouched(masker):
    logits = torch.randn(3, masker.vocab_size)
    before = logits.clone()
    masker.apply(logits, [None, None, None])
    assert torch.equal(logits, before)
    with pytest.raises(ValueError):
        masker.apply(torch.zeros(2, masker.vocab_size), [None])
    with pytest.raises(ValueError):
        masker.apply(torch.zeros(1, masker.vocab_size - 1), [None])


def allowed(masker: TokenMasker, state) -> set[int]:
    logits = torch.zeros(1, masker.vocab_size)
    masker.apply(logits, [state])
    return set(torch.isfinite(logits[0]).nonzero().flatten().tolist())


def test_stop_ids_are_allowed_exactly_where_the_grammar_may_end(masker, chatml_tok):
    stops = set(masker.stop_ids)
    assert len(stops) == 2
    state = masker.start(Constraint.choice(["no", "no way"]))
    assert not (allowed(masker, state) & stops)  # nothing yet: may not end
    for tok in chatml_tok("no", add_special_tokens=False)["input_ids"]:
        state.consume(tok)
    now = allowed(masker, state)
    assert stops <= now and len(now) > len(stops)  # may end, or go on to "no way"
    assert state.accepting and not state.finished
    for tok in chatml_tok(" way", add_special_tokens=False)["input_ids"]:
        state.consume(tok)
    assert state.finished and allowed(masker, state) == stops  # must end: only stop ids
    state.consume(masker.stop_ids[1])  # any stop id ends it
    assert state.finished and state.error is None


def test_a_stop_before_the_end_or_a_refused_token_is_an_error(masker, chatml_tok):
    early = masker.start(Constraint.choice(["geostationary"]))
    early.consume(chatml_tok("geo", add_special_tokens=False)["input_ids"][0])
    early.consume(masker.stop_ids[0])
    assert early.error and "before" in early.error and not early.finished
    wrong = masker.start(Constraint.regex(r"\d+"))
    wrong.consume(chatml_tok("x", add_special_tokens=False)["input_ids"][0])
    assert wrong.error and "\n" not in wrong.error
    assert allowed(masker, wrong) == set(masker.stop_ids)  # the engine can only end it now


def test_grammars_compile_once_per_schema(chatml_tok):
    m = TokenMasker(chatml_tok, len(chatml_tok), [chatml_tok.eos_token_id])
    a, b = Constraint.of(Items), Constraint.of(Items)  # two objects, one schema
    m.start(a), m.start(a), m.start(b)
    assert m.cache_size() == 1
    m.start(Constraint.regex(r"\d+"))
    assert m.cache_size() == 2


def test_rows_of_one_constraint_do_not_share_state(masker, chatml_tok):
    c = Constraint.regex(r"a+|b+")
    first, second = masker.start(c), masker.start(c)
    first.consume(chatml_tok("a", add_special_tokens=False)["input_ids"][0])
    b_id = chatml_tok("b", add_special_tokens=False)["input_ids"][0]
    assert b_id in allowed(masker, second) and b_id not in allowed(masker, first)


def test_masker_built_in_another_thread_is_used_in_this_one(chatml_tok):
    box: dict[str, TokenMasker] = {}
    t = threading.Thread(
        target=lambda: box.setdefault("m", TokenMasker(chatml_tok, len(chatml_tok), [2]))
    )
    t.start()
    t.join()
    state = box["m"].start(Constraint.choice(["yes"]))
    assert allowed(box["m"], state)


def test_unconstrained_greedy_output_is_the_same_beside_constrained_rows(chatml_tok):
    """A tiny model decodes two rows together; row 0's greedy tokens must not change when row 1
    becomes constrained (same batch shape, so only the mask differs between the two runs)."""
    from specialize.models.tiny import build_llama

    model = build_llama(chatml_tok, tie=False)
    m = TokenMasker(chatml_tok, model.config.vocab_size, [chatml_tok.eos_token_id])
    prompt = chatml_tok("What is a geostationary orbit?", add_special_tokens=False)["input_ids"]

    def decode(constraint: Constraint | None) -> list[list[int]]:
        seqs = [list(prompt), list(prompt)]
        states = [None, m.start(constraint) if constraint else None]
        for _ in range(10):
            with torch.inference_mode():
                logits = model(torch.tensor(seqs)).logits[:, -1, :].float()
                m.apply(logits, states)
            for r in range(2):
                tok = int(logits[r].argmax())
                seqs[r].append(tok)
                if states[r] is not None:
                    states[r].consume(tok)
        return [s[len(prompt) :] for s in seqs]

    free = decode(None)
    constrained = decode(Constraint.regex(r"[0-9]{1,30}"))
    assert constrained[0] == free[0]
    assert constrained[1] != free[1]
    digits = chatml_tok.decode([t for t in constrained[1] if t not in m.stop_ids])
    assert digits.isdigit()


def test_closed_objects_closes_only_unspecified_objects():
    schema = {
        "type": "object",
        "properties": {
            "properties": {"type": "object", "properties": {"a": {"type": "string"}}},
            "type": {"type": "string"},
            "open": {"type": "object", "additionalProperties": True},
            "both": {"allOf": [{"type": "object", "properties": {"x": {"type": "integer"}}}]},
        },
        "$defs": {"D": {"properties": {"y": {"type": "integer"}}}},
    }
    out = closed_objects(schema)
    assert out["additionalProperties"] is False
    props = out["properties"]
    assert set(props) == {"properties", "type", "open", "both"}  # the names are untouched
    assert props["properties"]["additionalProperties"] is False
    assert props["type"] == {"type": "string"}
    assert props["open"]["additionalProperties"] is True
    assert "additionalProperties" not in props["both"]["allOf"][0]
    assert out["$defs"]["D"]["additionalProperties"] is False
    assert "additionalProperties" not in schema  # a copy: the constraint's schema is unchanged


def test_digits_in_a_regex_are_ascii_so_python_validation_agrees():
    """llguidance's Unicode tables are newer than Python 3.11's: a random walk once produced
    U+10D48 (a Garay digit, Unicode 16) for ``\\d``, which ``re`` does not call a digit."""
    assert ascii_digits(r"\d+-[\d_]x") == r"[0-9]+-[0-9_]x"
    assert ascii_digits(r"[^\d]\\d\D") == r"[^\d]\\d\D"  # negated class, escaped '\', \D: as is
    assert ascii_digits(r"[]\d]") == r"[]0-9]"  # a leading ']' does not close the class
