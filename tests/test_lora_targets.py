"""Target presets: tied lm_head untying, MoE experts left alone, clear errors."""

from __future__ import annotations

import pytest
import torch
from conftest import FACTS, conversation

from specialize.config import LoraConfig, TrainConfig
from specialize.data.batches import collate, to_examples
from specialize.errors import SpecializeError
from specialize.models.load import is_tied, load_model, load_tokenizer, resolve
from specialize.train import loop
from specialize.train.lora import apply_lora, resolve_targets


def batch(tok, fmt):
    recs = [{"id": str(i), "messages": conversation(q, a)} for i, (q, a) in enumerate(FACTS[:4])]
    ex = to_examples(recs, tok, fmt, 512)[0]
    return ex, collate(ex, tok.pad_token_id)


def test_lm_head_on_tied_model_unties_trains_merges_and_reloads(tiny_llama, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    src = resolve(str(tiny_llama))
    model, tok = load_model(src), load_tokenizer(src)
    assert is_tied(model)
    emb_before = model.get_input_embeddings().weight.detach().clone()
    peft_model, names = apply_lora(model, LoraConfig(targets="lm_head", r=4, dropout=0.0), 0)
    assert names == ["lm_head"]
    base = peft_model.get_base_model()
    assert not is_tied(base) and base.config.tie_word_embeddings is False
    ex, b = batch(tok, "chatml")
    state = loop.setup(peft_model, ex, [], TrainConfig(max_steps=1, batch_size=4), tok.pad_token_id)
    loop.accumulate_gradients(state, [b])
    grads = {n: p.grad for n, p in peft_model.named_parameters() if p.requires_grad}
    a_grad = next(g for n, g in grads.items() if "lora_A" in n)
    b_grad = next(g for n, g in grads.items() if "lora_B" in n)
    assert b_grad.abs().sum() > 0  # B starts at zero, so A's gradient is zero on step one
    state.optimizer.step()
    state.optimizer.zero_grad()
    loop.accumulate_gradients(state, [b])
    a_grad = next(p.grad for n, p in peft_model.named_parameters() if "lora_A" in n)
    assert a_grad is not None and a_grad.abs().sum() > 0, "gradient must reach lora_A"
    # Embeddings untouched; the adapter reloads; the merged model has its own head.
    assert torch.equal(base.get_input_embeddings().weight, emb_before)
    ids = b["input_ids"][:1]
    with torch.no_grad():
        want = peft_model.eval()(input_ids=ids).logits
    peft_model.save_pretrained(tmp_path / "adapter")
    fresh = AutoModelForCausalLM.from_pretrained(tiny_llama)
    with torch.no_grad():
        reloaded = (
            PeftModel.from_pretrained(fresh, tmp_path / "adapter").eval()(input_ids=ids).logits
        )
    torch.testing.assert_close(reloaded, want, atol=1e-5, rtol=1e-5)
    merged = peft_model.merge_and_unload()
    merged.save_pretrained(tmp_path / "merged")
    m2 = AutoModelForCausalLM.from_pretrained(tmp_path / "merged").eval()
    assert m2.config.tie_word_embeddings is False and not is_tied(m2)
    torch.testing.assert_close(m2.get_input_embeddings().weight, emb_before)
    with torch.no_grad():
        torch.testing.assert_close(m2(input_ids=ids).logits, want, atol=1e-5, rtol=1e-5)


def test_attention_lora_on_gpt_oss_leaves_experts_bit_identical(tiny_gpt_oss):
    src = resolve(str(tiny_gpt_oss))
    model, tok = load_model(src), load_tokenizer(src)
    frozen = {
        n: p.detach().clone()
        for n, p in model.named_parameters()
        if ".experts." in n or ".router." in n
    }
    assert frozen
    peft_model, names = apply_lora(model, LoraConfig(targets="attention", r=4, dropout=0.0), 0)
    assert all(n.rsplit(".", 1)[-1] in {"q_proj", "k_proj", "v_proj", "o_proj"} for n in names)
    assert all(
        not p.requires_grad
        for n, p in peft_model.named_parameters()
        if ".experts." in n or ".router." in n
    )
    ex, _ = batch(tok, "harmony")
    state = loop.setup(
        peft_model, ex, [], TrainConfig(max_steps=2, batch_size=2, lr=0.05), tok.pad_token_id
    )
    loop.fit(state, progress=False)
    after = dict(peft_model.get_base_model().named_parameters())
    for n, p in frozen.items():
        assert torch.equal(after[n], p), n


def test_all_linear_skips_experts_and_router_unless_asked(tiny_gpt_oss):
    model = load_model(resolve(str(tiny_gpt_oss)))
    names = resolve_targets(model, "all-linear")
    assert names and not any("router" in n or "experts" in n for n in names)
    with pytest.raises(SpecializeError, match="mixture-of-experts model"):
        resolve_targets(model, "mlp")


def test_experts_true_adapts_expert_tensors(tiny_gpt_oss):
    model = load_model(resolve(str(tiny_gpt_oss)))
    peft_model, names = apply_lora(
        model, LoraConfig(targets="attention", experts=True, r=2, dropout=0.0), 0
    )
    assert any("experts.gate_up_proj (all experts)" == n for n in names)
    assert any("experts" in n and p.requires_grad for n, p in peft_model.named_parameters())


def test_unknown_target_and_dora_rslora(tiny_llama):
    model = load_model(resolve(str(tiny_llama)))
    with pytest.raises(SpecializeError, match="target 'wq' matches no linear module"):
        resolve_targets(model, ["wq"])
    assert "lm_head" in resolve_targets(model, ["attention", "lm_head"])
    peft_model, _ = apply_lora(model, LoraConfig(targets="attention", dora=True, rslora=True), 0)
    cfg = peft_model.peft_config["default"]
    assert cfg.use_dora and cfg.use_rslora
    assert any("lora_magnitude_vector" in n for n, _ in peft_model.named_parameters())
