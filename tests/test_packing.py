"""Packing: a packed row's loss equals the sum of its examples' own losses."""

from __future__ import annotations

import pytest
import torch
from conftest import FACTS, conversation

from specialize.data.batches import collate, pack, text_examples, to_examples
from specialize.models.load import load_model, load_tokenizer, resolve
from specialize.train.loss import MaskedCausalLMLoss


@pytest.mark.parametrize("arch", ["llama", "gpt_oss"])
def test_packed_loss_equals_sum_of_unpacked(arch, tiny_llama, tiny_gpt_oss):
    folder = tiny_llama if arch == "llama" else tiny_gpt_oss
    fmt = "chatml" if arch == "llama" else "harmony"
    src = resolve(str(folder))
    model, tok = load_model(src), load_tokenizer(src)
    recs = [{"id": str(i), "messages": conversation(q, a)} for i, (q, a) in enumerate(FACTS)]
    ex = to_examples(recs, tok, fmt, 4096)[0]
    loss = MaskedCausalLMLoss(model).eval()
    with torch.no_grad():
        single = sum(float(loss(**collate([e], tok.pad_token_id))[0].sum()) for e in ex)
        rows = pack(ex, 3 * max(len(e) for e in ex))
        assert len(rows) < len(ex)  # really packed
        b = collate(rows, tok.pad_token_id)
        assert "position_ids" in b
        packed, n = loss(**b)
    assert float(packed.sum()) == pytest.approx(single, rel=1e-4)
    assert int(n.sum()) == sum(e.n_target for e in ex)


def test_cpt_documents_chunk_and_train_every_token():
    ex = text_examples([("d1", list(range(10, 25))), ("d2", [7, 8])], eos_id=2, row_len=8)
    assert [e.id for e in ex] == ["d1#0", "d1#1", "d2#0"]
    assert ex[0].labels == [-100] + list(range(11, 18))
    assert ex[1].input_ids == list(range(18, 25)) + [2]
    assert ex[2].input_ids == [7, 8, 2] and ex[2].n_target == 2
    rows = pack(ex, 16)
    assert sum(len(r) for r in rows) == sum(len(e) for e in ex)
    assert all(r.position_ids[0] == 0 for r in rows)


def test_seeded_packing_mixes_long_and_short_examples():
    """Longest-first packing makes rows of only long or only short examples; a seed mixes them."""
    from specialize.data.batches import Example

    def ex(i: int, n: int) -> Example:
        return Example(f"{'L' if n > 50 else 's'}{i}", [5] * n, [-100] + [5] * (n - 1))

    examples = [ex(i, 90) for i in range(8)] + [ex(100 + i, 10) for i in range(40)]
    for seed in (None, 3):
        rows = pack(examples, 200, seed=seed)
        members = [r.id.split(":", 1)[1].split(",") for r in rows]
        assert sorted(m for ms in members for m in ms) == sorted(e.id for e in examples)
        assert all(len(r) <= 200 for r in rows)
        kinds = [{m[0] for m in ms} for ms in members]
        if seed is None:
            assert {"s"} in kinds  # some rows hold only short examples
        else:
            assert sum(k == {"L", "s"} for k in kinds) >= len(rows) // 2
    assert pack(examples, 200, seed=3)[0].id == pack(examples, 200, seed=3)[0].id
