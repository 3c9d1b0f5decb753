"""The generation engine (through HFBackend): same answers as one-at-a-time
``model.generate``, at any batching."""

from __future__ import annotations

import pytest
import torch

from specialize.infer.hf import HFBackend
from specialize.infer.types import Request, Sampling
from specialize.models.chat import render_prompt, stop_token_ids
from specialize.models.load import load_model, load_tokenizer, resolve

QUESTIONS = [
    "What is LEO?",
    "Name the first artificial satellite launched into orbit around the Earth.",
    "Why?",
    "Which rocket carried Apollo 11, and how many stages did it have?",
    "Define apogee.",
    "What does a reaction wheel do on a small satellite in low Earth orbit?",
    "Delta-v?",
    "Who?",
]


def _prompts(tok, fmt, system=True):
    out = []
    for q in QUESTIONS:
        msgs = ([{"role": "system", "content": "You answer briefly."}] if system else []) + [
            {"role": "user", "content": q}
        ]
        out.append(render_prompt(msgs, tok, fmt))
    return out


def generate(
    model,
    tok,
    fmt,
    prompts,
    max_new,
    batch_size,
    *,
    share_prefix=True,
    seed=None,
    temperature=0.0,
    stop=(),
    on_result=None,
):
    """The engine's answers for prompt ids; a sampled record i is seeded ``seed * 1000 + i``."""
    reqs = [
        Request(
            prompt_ids=p,
            max_new_tokens=max_new,
            sampling=Sampling(temperature, seed=None if seed is None else seed * 1000 + i),
            stop=tuple(stop),
        )
        for i, p in enumerate(prompts)
    ]
    with HFBackend(model, tok, fmt, batch_size, share_prefix=share_prefix) as hf:
        return hf.generate(reqs, progress=False, on_result=on_result)


def _one_at_a_time(model, prompts, stop_ids, max_new):
    answers = []
    for p in prompts:
        ids = torch.tensor([p])
        with torch.inference_mode():
            gen = model.generate(
                input_ids=ids,
                attention_mask=torch.ones_like(ids),
                max_new_tokens=max_new,
                do_sample=False,
                eos_token_id=stop_ids,
                pad_token_id=stop_ids[0],
            )
        new = gen[0, len(p) :].tolist()
        cut = next((k for k, t in enumerate(new) if t in stop_ids), len(new))
        answers.append(new[:cut])
    return answers


@pytest.fixture(scope="module")
def untied_llama(tmp_path_factory, chatml_tok):
    """A tiny llama whose greedy answers vary (the tied default mostly repeats one token)."""
    from specialize.models.tiny import build_llama

    folder = tmp_path_factory.mktemp("untied")
    model = build_llama(chatml_tok, tie=False)
    model.save_pretrained(folder)
    chatml_tok.save_pretrained(folder)
    return folder


@pytest.mark.parametrize("batch_size", [1, 3, 8])
@pytest.mark.parametrize("share_prefix", [True, False])
def test_engine_matches_one_at_a_time_generate(untied_llama, batch_size, share_prefix):
    src = resolve(str(untied_llama))
    model, tok = load_model(src).eval(), load_tokenizer(src)
    prompts = _prompts(tok, "chatml")
    stop = stop_token_ids(tok, "chatml")
    want = _one_at_a_time(model, prompts, stop, 12)
    got = generate(model, tok, "chatml", prompts, 12, batch_size, share_prefix=share_prefix)
    for w, g in zip(want, got, strict=True):
        assert g.text == tok.decode(w, skip_special_tokens=True).strip()
        assert g.new_tokens == len(w)
    assert len({g.text for g in got}) > 1  # the check is not trivially about one answer


def test_engine_gpt_oss_harmony_matches(tiny_gpt_oss):
    src = resolve(str(tiny_gpt_oss))
    model, tok = load_model(src).eval(), load_tokenizer(src)
    prompts = _prompts(tok, "harmony")[:5]
    stop = stop_token_ids(tok, "harmony")
    want = _one_at_a_time(model, prompts, stop, 6)
    got = generate(model, tok, "harmony", prompts, 6, 2)
    assert [g.new_tokens for g in got] == [len(w) for w in want]
    assert [g.text for g in got] == [tok.decode(w, skip_special_tokens=True).strip() for w in want]


def test_sampling_is_seeded_per_record_not_per_batch(untied_llama):
    src = resolve(str(untied_llama))
    model, tok = load_model(src).eval(), load_tokenizer(src)
    prompts = _prompts(tok, "chatml")
    a = generate(model, tok, "chatml", prompts, 10, 8, seed=7, temperature=1.5)
    b = generate(model, tok, "chatml", prompts, 10, 2, seed=7, temperature=1.5)
    c = generate(model, tok, "chatml", prompts, 10, 8, seed=8, temperature=1.5)
    assert [x.text for x in a] == [x.text for x in b]
    assert [x.text for x in a] != [x.text for x in c]


def test_stop_strings_and_on_finish(untied_llama):
    src = resolve(str(untied_llama))
    model, tok = load_model(src).eval(), load_tokenizer(src)
    prompts = _prompts(tok, "chatml")
    free = generate(model, tok, "chatml", prompts, 12, 4)
    # Stop at the second character of the first long answer: it must be cut there.
    long = next(i for i, a in enumerate(free) if len(a.text) > 3)
    marker = free[long].text[1:3]
    seen: list[int] = []
    cut = generate(
        model,
        tok,
        "chatml",
        prompts,
        12,
        4,
        stop=[marker],
        on_result=lambda i, res: seen.append(i),
    )
    assert marker not in cut[long].text and cut[long].stopped
    assert free[long].text.startswith(cut[long].text)
    assert sorted(seen) == list(range(len(prompts)))
