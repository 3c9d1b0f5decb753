"""The sample contract: what is trained in a rendered conversation, per chat format."""

from __future__ import annotations

import pytest
from conftest import SYSTEM, conversation, needs_bundled

from specialize.errors import SpecializeError
from specialize.models.chat import check_format, render_conversation, render_prompt, stop_token_ids


def trained_text(r, tok) -> str:
    return tok.decode(
        [t for t, m in zip(r.input_ids, r.mask, strict=True) if m], skip_special_tokens=False
    )


@pytest.mark.parametrize("fmt", ["chatml", "template"])
def test_chatml_mask_trains_answer_and_end_of_turn_only(chatml_tok, fmt):
    r = render_conversation(conversation("What is LEO?", "Low Earth orbit."), chatml_tok, fmt)
    assert r.text == (
        f"<|im_start|>system\n{SYSTEM}<|im_end|>\n<|im_start|>user\nWhat is LEO?<|im_end|>\n"
        "<|im_start|>assistant\nLow Earth orbit.<|im_end|>\n"
    )
    assert trained_text(r, chatml_tok) == "Low Earth orbit.<|im_end|>"
    end = chatml_tok.convert_tokens_to_ids("<|im_end|>")
    # The last <|im_end|> (the assistant's) is trained; the system/user ones are not.
    ends = [i for i, t in enumerate(r.input_ids) if t == end]
    assert [r.mask[i] for i in ends] == [False, False, True]
    assert r.mask[-1] is False  # the newline after the turn
    assert len(r.input_ids) == len(r.mask)


def test_chatml_and_template_agree_on_ids_and_mask(chatml_tok):
    conv = conversation("Which orbit?", "Sun-synchronous orbit.")
    a = render_conversation(conv, chatml_tok, "chatml")
    b = render_conversation(conv, chatml_tok, "template")
    assert (a.input_ids, a.mask) == (b.input_ids, b.mask)


def test_multi_turn_trains_every_assistant_turn(chatml_tok):
    conv = conversation("Q1?", "A one.") + [
        {"role": "user", "content": "Q2?"},
        {"role": "assistant", "content": "A two."},
    ]
    r = render_conversation(conv, chatml_tok, "chatml")
    assert trained_text(r, chatml_tok) == "A one.<|im_end|>A two.<|im_end|>"


def test_harmony_mask_trains_final_channel_and_return(harmony_tok):
    r = render_conversation(
        conversation("What is GEO?", "Geostationary orbit."), harmony_tok, "harmony"
    )
    assert r.text.startswith("<|start|>system<|message|>You are ChatGPT")
    assert f"<|start|>developer<|message|># Instructions\n\n{SYSTEM}<|end|>" in r.text
    assert r.text.endswith(
        "<|start|>user<|message|>What is GEO?<|end|>"
        "<|start|>assistant<|channel|>final<|message|>Geostationary orbit.<|return|>"
    )
    assert trained_text(r, harmony_tok) == (
        "<|channel|>final<|message|>Geostationary orbit.<|return|>"
    )
    prompt = render_prompt(conversation()[:-1], harmony_tok, "harmony")
    assert harmony_tok.decode(prompt).endswith("<|end|><|start|>assistant")
    assert harmony_tok.convert_tokens_to_ids("<|return|>") in stop_token_ids(harmony_tok, "harmony")


def test_generation_prompt_ends_with_assistant_header(chatml_tok):
    ids = render_prompt(conversation()[:-1], chatml_tok, "chatml")
    assert chatml_tok.decode(ids).endswith("<|im_start|>assistant\n")
    assert stop_token_ids(chatml_tok, "chatml") == [chatml_tok.convert_tokens_to_ids("<|im_end|>")]


def test_format_check_rejects_markers_the_tokenizer_lacks(chatml_tok, harmony_tok):
    with pytest.raises(SpecializeError, match=r"needs '<\|start\|>' as one special token"):
        check_format(chatml_tok, "harmony", [conversation()])
    with pytest.raises(SpecializeError, match=r"needs '<\|im_start\|>' as one special token"):
        check_format(harmony_tok, "chatml", [conversation()])
    check_format(chatml_tok, "chatml", [conversation()])
    check_format(harmony_tok, "harmony", [conversation()])


def test_format_check_rejects_template_without_one(harmony_tok):
    with pytest.raises(SpecializeError, match="no chat template"):
        check_format(harmony_tok, "template", [conversation()])


@needs_bundled
def test_docstring_worked_example_ids_on_bundled_tokenizer():
    from specialize.models.load import load_tokenizer, resolve

    tok = load_tokenizer(resolve("bundled:smollm2-135m-instruct"))
    conv = conversation("What is a geostationary orbit?", "An orbit at 35,786 km.")
    r = render_conversation(conv, tok, "chatml")
    assert r.input_ids[-18:] == [
        1,
        520,
        9531,
        198,
        2089,
        8591,
        418,
        216,
        35,
        37,
        28,
        39,
        40,
        38,
        6381,
        30,
        2,
        198,
    ]
    assert [int(m) for m in r.mask[-18:]] == [0, 0, 0, 0] + [1] * 13 + [0]
    check_format(tok, "chatml", [conv])
    check_format(tok, "template", [conv])
