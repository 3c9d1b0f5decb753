"""LoRA wrapping, the masked loss, one optimizer step, merge and reload, on a tiny LLaMA."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from conftest import FACTS, conversation

from specialize.config import LoraConfig, TrainConfig
from specialize.data.batches import collate, to_examples
from specialize.errors import SpecializeError
from specialize.models.load import load_model, load_tokenizer, resolve
from specialize.train import loop
from specialize.train.lora import apply_lora, resolve_targets
from specialize.train.loss import MaskedCausalLMLoss


@pytest.fixture()
def tiny(tiny_llama):
    src = resolve(str(tiny_llama))
    return load_model(src), load_tokenizer(src)


def examples(tok, n=8):
    recs = [{"id": str(i), "messages": conversation(q, a)} for i, (q, a) in enumerate(FACTS[:n])]
    return to_examples(recs, tok, "chatml", 256)[0]


def nonzero_lora_b(peft_model) -> None:
    """lora_B starts at zero, which leaves lora_A without gradient; seed it deterministically."""
    with torch.no_grad():
        for n, p in peft_model.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.02, generator=torch.Generator().manual_seed(len(n)))


def test_masked_loss_equals_full_logits_cross_entropy(tiny):
    model, tok = tiny
    batch = collate(examples(tok, 4), tok.pad_token_id)
    sums, counts = MaskedCausalLMLoss(model, chunk_rows=5)(**batch)
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    ref = F.cross_entropy(
        logits[:, :-1].reshape(-1, logits.shape[-1]).float(),
        batch["labels"][:, 1:].reshape(-1),
        ignore_index=-100,
        reduction="sum",
    )
    assert float(sums.detach().sum()) == pytest.approx(float(ref.detach()), rel=1e-5)
    assert int(counts.sum()) == int((batch["labels"][:, 1:] != -100).sum())


def test_target_cross_entropy_keeps_no_logits_and_gives_autograd_gradients(tiny, monkeypatch):
    """A frozen head takes TargetCrossEntropy (gradients precomputed in the forward pass);
    losses and the adapter's gradients equal plain autograd through the logits, also under
    a per-row upstream gradient like the loop's (loss sums divided by token counts)."""
    from specialize.train import loss as loss_mod

    model, tok = tiny
    lora = LoraConfig(r=4, alpha=8, dropout=0.0, targets="all-linear")
    peft_model, _ = apply_lora(model, lora, 0)
    nonzero_lora_b(peft_model)
    batch = collate(examples(tok, 4), tok.pad_token_id)
    trained = [p for p in peft_model.parameters() if p.requires_grad]

    def run() -> tuple[torch.Tensor, list[torch.Tensor]]:
        peft_model.zero_grad()
        sums, _ = MaskedCausalLMLoss(peft_model, chunk_rows=7)(**batch)
        (sums * torch.tensor([1.0, 0.5, 2.0, 0.25])).sum().backward()
        return sums.detach(), [p.grad.clone() for p in trained]

    assert loss_mod._frozen_linear(peft_model.get_output_embeddings())  # the fused path
    fused, fused_grads = run()
    monkeypatch.setattr(loss_mod, "_frozen_linear", lambda head: False)
    ref, ref_grads = run()
    torch.testing.assert_close(fused, ref, rtol=1e-5, atol=1e-5)
    for a, b in zip(fused_grads, ref_grads, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)


def test_fused_mlp_matches_autograd_and_keeps_one_tensor_less():
    from specialize.train.fused_mlp import SiluMul

    g = torch.Generator().manual_seed(0)
    gate = torch.randn(5, 7, dtype=torch.float64, generator=g, requires_grad=True)
    up = torch.randn(5, 7, dtype=torch.float64, generator=g, requires_grad=True)
    assert torch.autograd.gradcheck(SiluMul.apply, (gate, up))
    saved: list[torch.Tensor] = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        SiluMul.apply(gate, up)
    assert len(saved) == 2  # autograd's silu-then-multiply keeps three


def test_fused_mlp_is_enabled_on_the_tiny_llama_with_equal_gradients(tiny_llama):
    from specialize.train import fused_mlp

    def grads(fused: bool) -> tuple[int, list[torch.Tensor]]:
        model, tok = load_model(resolve(str(tiny_llama))), load_tokenizer(resolve(str(tiny_llama)))
        peft_model, _ = apply_lora(model, LoraConfig(r=4, dropout=0.0), 0)
        nonzero_lora_b(peft_model)
        n = fused_mlp.enable(peft_model) if fused else 0
        batch = collate(examples(tok, 3), tok.pad_token_id)
        out = peft_model(**batch)
        out.loss.backward()
        return n, [p.grad for p in peft_model.parameters() if p.requires_grad]

    n, fused = grads(True)
    _, plain = grads(False)
    assert n == load_model(resolve(str(tiny_llama))).config.num_hidden_layers
    for a, b in zip(fused, plain, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7)


def test_fused_lora_matches_peft_outputs_and_gradients(tiny_llama):
    from specialize.train import fused_lora

    def run(fused: bool) -> tuple[torch.Tensor, list[torch.Tensor], int]:
        src = resolve(str(tiny_llama))
        model, tok = load_model(src), load_tokenizer(src)
        lora = LoraConfig(r=4, alpha=8, dropout=0.0, targets="all-linear")
        peft_model, _ = apply_lora(model, lora, 0)
        nonzero_lora_b(peft_model)
        n = fused_lora.enable(peft_model) if fused else 0
        batch = collate(examples(tok, 3), tok.pad_token_id)
        out = peft_model(**batch)
        out.loss.backward()
        grads = [p.grad for p in peft_model.parameters() if p.requires_grad]
        with peft_model.disable_adapter(), torch.no_grad():  # PEFT's own path when fused
            off = peft_model(**batch).logits
        return torch.stack([out.logits.detach(), off]), grads, n

    fused, fused_grads, n = run(True)
    plain, plain_grads, _ = run(False)
    assert n == 7 * load_model(resolve(str(tiny_llama))).config.num_hidden_layers
    torch.testing.assert_close(fused, plain, rtol=1e-5, atol=1e-6)
    assert not torch.allclose(fused[0], fused[1])  # the adapter changes the logits
    for a, b in zip(fused_grads, plain_grads, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7)


def test_targets_resolve_presets_and_reject_unknown(tiny):
    model, _ = tiny
    att = resolve_targets(model, "attention")
    assert len(att) == 2 * 4 and all(
        n.endswith(("q_proj", "k_proj", "v_proj", "o_proj")) for n in att
    )
    assert len(resolve_targets(model, "all-linear")) == 2 * 7
    assert not any("lm_head" in n for n in resolve_targets(model, "all-linear"))
    with pytest.raises(SpecializeError, match="target 'qkv' matches no linear module"):
        resolve_targets(model, ["qkv"])


def test_one_step_moves_adapter_and_freezes_base(tiny):
    model, tok = tiny
    peft_model, names = apply_lora(model, LoraConfig(r=4, alpha=8, dropout=0.0), seed=0)
    base_before = {
        n: p.detach().clone() for n, p in peft_model.named_parameters() if not p.requires_grad
    }
    lora_before = {
        n: p.detach().clone() for n, p in peft_model.named_parameters() if p.requires_grad
    }
    assert lora_before and all("lora_" in n for n in lora_before)
    # r=4 on 14 linear layers of a hidden-32 model: sum of r * (in + out) per layer.
    expected = sum(
        4 * (m.in_features + m.out_features)
        for n, m in model.named_modules()
        if n in set(names) and hasattr(m, "in_features")
    )
    assert sum(p.numel() for p in lora_before.values()) == expected
    state = loop.setup(
        peft_model,
        examples(tok),
        [],
        TrainConfig(max_steps=1, batch_size=8, lr=1e-2),
        tok.pad_token_id,
    )
    loop.fit(state, progress=False)
    after = dict(peft_model.named_parameters())
    assert all(torch.equal(after[n], p) for n, p in base_before.items())
    lora_b = [n for n in lora_before if "lora_B" in n]
    assert all(not torch.equal(after[n], lora_before[n]) for n in lora_b)


def test_accumulation_matches_big_batch(tiny_llama, monkeypatch):
    """batch 8 x accumulation 1 == batch 1 x accumulation 8 (token-weighted loss); the heap
    is trimmed before every micro-batch unless train.trim_heap is false."""
    from specialize.train import heap

    trims: list[int] = []
    monkeypatch.setattr(heap, "trim", lambda: trims.append(1) or True)
    grads, losses = [], []
    for bs, acc in ((8, 1), (1, 8)):
        src = resolve(str(tiny_llama))
        model, tok = load_model(src), load_tokenizer(src)
        peft_model, _ = apply_lora(model, LoraConfig(r=4, alpha=8, dropout=0.0), seed=0)
        nonzero_lora_b(peft_model)
        ex = examples(tok)
        state = loop.setup(
            peft_model, ex, [], TrainConfig(batch_size=bs, grad_accum=acc), tok.pad_token_id
        )
        group = [ex[i : i + bs] for i in range(0, 8, bs)]
        loss, n = loop.accumulate_gradients(state, [collate(b, tok.pad_token_id) for b in group])
        losses.append(loss / n)
        grads.append(
            {n: p.grad.clone() for n, p in peft_model.named_parameters() if p.requires_grad}
        )
    assert losses[0] == pytest.approx(losses[1], rel=1e-6)
    for n in grads[0]:
        torch.testing.assert_close(grads[0][n], grads[1][n], rtol=1e-5, atol=1e-7)
    assert len(trims) == 1 + 8
    state.trim_heap = False
    loop.accumulate_gradients(state, [collate(ex[:1], tok.pad_token_id)])
    assert len(trims) == 9


def test_early_stopping_restores_best_adapter(tiny):
    model, tok = tiny
    peft_model, _ = apply_lora(model, LoraConfig(r=4, alpha=8, dropout=0.0), seed=0)
    ex = examples(tok, 8)
    # Validate on other data with a huge lr: validation loss gets worse, so training stops
    # after `patience` bad validations and the best weights (step 0) come back.
    state = loop.setup(
        peft_model,
        ex[:4],
        ex[4:],
        TrainConfig(
            max_steps=50,
            batch_size=2,
            lr=0.5,
            eval_every=1,
            early_stopping_patience=2,
            warmup_ratio=0.0,
        ),
        tok.pad_token_id,
    )
    start = {n: p.detach().clone() for n, p in peft_model.named_parameters() if p.requires_grad}
    hist = loop.fit(state, progress=False)
    assert hist["early_stopped"] and hist["steps"] < 50
    best = hist["best_step"]
    vals = {v["step"]: v["loss"] for v in hist["validation"]}
    assert vals[best] == min(vals.values())
    if best == 0:
        now = dict(peft_model.named_parameters())
        assert all(torch.equal(now[n], p) for n, p in start.items())


def test_gradient_checkpointing_gives_same_gradients(tiny_llama):
    grads = []
    for ckpt in (False, True):
        src = resolve(str(tiny_llama))
        model, tok = load_model(src), load_tokenizer(src)
        peft_model, _ = apply_lora(model, LoraConfig(r=4, alpha=8, dropout=0.0), seed=0)
        nonzero_lora_b(peft_model)
        ex = examples(tok, 4)
        state = loop.setup(
            peft_model,
            ex,
            [],
            TrainConfig(batch_size=4, gradient_checkpointing=ckpt),
            tok.pad_token_id,
        )
        state.loss_module.train()
        loop.accumulate_gradients(state, [collate(ex, tok.pad_token_id)])
        grads.append(
            {n: p.grad.clone() for n, p in peft_model.named_parameters() if p.requires_grad}
        )
    for n in grads[0]:
        torch.testing.assert_close(grads[0][n], grads[1][n], rtol=1e-5, atol=1e-7)


def test_merge_tolerance_scales_with_the_prompts_largest_logit():
    from specialize.export.merge import worst_excess

    ref = [torch.tensor([25.0, 0.5])]
    assert worst_excess([torch.tensor([25.0, 0.5 + 1.2e-4])], ref, 1e-4, 1e-5) <= 0
    assert worst_excess([torch.tensor([25.0, 0.5 + 5e-4])], ref, 1e-4, 1e-5) > 0
    assert worst_excess([torch.tensor([25.0, 0.5 + 2e-4])], ref, 1e-4, 0.0) > 0


def test_heap_trim_is_glibc_malloc_trim_here():
    import platform

    from specialize.train import heap

    if platform.libc_ver()[0] != "glibc":
        pytest.skip("malloc_trim is glibc's; elsewhere heap.trim() is a no-op")
    assert heap._malloc_trim() is not None
    assert isinstance(heap.trim(), bool)
