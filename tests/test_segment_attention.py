"""Packed rows attend per example: same loss and gradients as the block-diagonal mask."""

from __future__ import annotations

import pytest
import torch
from conftest import FACTS, conversation

from specialize.data.batches import collate, pack, to_examples
from specialize.models.load import load_model, load_tokenizer, resolve
from specialize.train import segment_attention
from specialize.train.loss import MaskedCausalLMLoss


def test_segments_start_where_positions_restart_and_skip_padding():
    pos = torch.tensor([[0, 1, 2, 0, 1, 0, 1, 2], [0, 1, 2, 3, 0, 1, 0, 1]])
    attn = torch.tensor([[1] * 8, [1] * 6 + [0, 0]])
    got = segment_attention.segments_of(pos, attn)
    assert got == [[(0, 3), (3, 5), (5, 8)], [(0, 4), (4, 6)]]


def _grads(model, batch, segmented: bool) -> tuple[float, dict[str, torch.Tensor]]:
    model.zero_grad()
    loss = MaskedCausalLMLoss(model)
    loss.segmented = segmented
    if not segmented:
        model.config._attn_implementation = "sdpa"
    per_row, n = loss(**batch)
    total = per_row.sum() / n.sum()
    total.backward()
    grads = {k: p.grad.clone() for k, p in model.named_parameters() if p.grad is not None}
    return float(total.detach()), grads


def test_segmented_attention_equals_the_block_diagonal_mask(tiny_llama, monkeypatch):
    src = resolve(str(tiny_llama))
    model, tok = load_model(src), load_tokenizer(src)
    recs = [{"id": str(i), "messages": conversation(q, a)} for i, (q, a) in enumerate(FACTS)]
    ex = to_examples(recs, tok, "chatml", 4096)[0]
    rows = pack(ex, 3 * max(len(e) for e in ex))
    batch = collate(rows, tok.pad_token_id)
    assert batch["attention_mask"].min() == 0  # a padded tail is covered too

    calls = []
    real = segment_attention.segment_sdpa

    def spy(*args, **kwargs):
        calls.append(kwargs.get("segments") is not None)
        return real(*args, **kwargs)

    monkeypatch.setattr(segment_attention, "segment_sdpa", spy)
    with_segments, g1 = _grads(model, batch, True)
    assert calls and all(calls)  # every layer took the per-example path
    masked, g2 = _grads(model, batch, False)
    monkeypatch.undo()
    segment_attention.enable(model)  # the real function registered again for later tests
    assert with_segments == pytest.approx(masked, rel=1e-5)
    assert g1.keys() == g2.keys() and g1
    for k in g1:
        torch.testing.assert_close(g1[k], g2[k], rtol=1e-4, atol=1e-5)


def test_the_model_answers_as_before_outside_packed_training(tiny_llama):
    src = resolve(str(tiny_llama))
    model, tok = load_model(src).eval(), load_tokenizer(src)
    ids = torch.tensor([tok.encode("the orbit of the moon")] * 2)
    attn = torch.ones_like(ids)
    attn[0, :2] = 0  # left padding, as in batched generation
    with torch.no_grad():
        want = model(input_ids=ids, attention_mask=attn).logits
        assert segment_attention.enable(model)
        assert model.config._attn_implementation == segment_attention.NAME
        got = model(input_ids=ids, attention_mask=attn).logits
        out = model.generate(ids[1:], max_new_tokens=4, do_sample=False)
    torch.testing.assert_close(got, want)
    assert out.shape[1] == ids.shape[1] + 4
    assert "specialize" not in model.config.to_json_string()  # never saved with the model
