"""Tiny random models with real tokenizers, built in code for tests and smoke runs.

A test must exercise the real code paths (tokenizer, chat format, PEFT, save, reload) in
seconds, so we build a byte-level BPE tokenizer trained on a few sentences and a 2-layer model
of the wanted architecture, and save both as an ordinary Hugging Face folder.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

CHATML_TEMPLATE = (
    "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\\n' + "
    "message['content'] + '<|im_end|>' + '\\n'}}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)

_CORPUS = [
    "A geostationary orbit is about 35,786 km above the equator.",
    "Low Earth orbit spans roughly 160 to 2,000 km in altitude.",
    "The rocket equation links delta-v, exhaust velocity and mass ratio.",
    "Reaction wheels and star trackers control and measure attitude.",
    "The James Webb Space Telescope orbits the Sun-Earth L2 point.",
    "You are a space systems expert. Answer briefly and precisely.",
    "What is the answer? Question: Passage: system user assistant developer final",
    "0123456789 .,;:!?'\"()-+/*=% abcdefghijklmnopqrstuvwxyz ABCDEFGHIJKLMNOPQRSTUVWXYZ",
]

SPECIALS = {
    "chatml": ["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
    "harmony": [
        "<|endoftext|>",
        "<|start|>",
        "<|end|>",
        "<|message|>",
        "<|channel|>",
        "<|return|>",
        "<|call|>",
    ],
    "plain": ["<|endoftext|>"],
}


def build_tokenizer(kind: str = "chatml", vocab_size: int = 384) -> Any:
    """A byte-level BPE tokenizer with the special tokens of ``kind`` (chatml|harmony|plain)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    specials = SPECIALS[kind]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_CORPUS * 4, trainer)
    eos = {"chatml": "<|im_end|>", "harmony": "<|return|>", "plain": "<|endoftext|>"}[kind]
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token=eos,
        pad_token="<|endoftext|>",
        bos_token=None,
        additional_special_tokens=[s for s in specials if s not in (eos, "<|endoftext|>")],
    )
    if kind == "chatml":
        fast.chat_template = CHATML_TEMPLATE
    return fast


def build_llama(
    tokenizer: Any, tie: bool = True, seed: int = 0, mistral: bool = False, **config: Any
) -> Any:
    """A 2-layer LLaMA with hidden size 32 whose vocabulary matches ``tokenizer``.

    ``mistral`` builds the same shape as ``MistralForCausalLM`` (the LLaMA family's other
    member); ``config`` overrides or adds config fields (rope scaling, biases, window...).
    """
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM, MistralConfig, MistralForCausalLM

    torch.manual_seed(seed)
    fields: dict[str, Any] = {
        "vocab_size": len(tokenizer),
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "max_position_embeddings": 512,
        "tie_word_embeddings": tie,
        "eos_token_id": tokenizer.eos_token_id,
        "pad_token_id": tokenizer.pad_token_id,
        "bos_token_id": None,
    } | config
    if mistral:
        return MistralForCausalLM(MistralConfig(**fields)).eval()
    return LlamaForCausalLM(LlamaConfig(**fields)).eval()


def build_gpt_oss(tokenizer: Any, seed: int = 0) -> Any:
    """A 2-layer gpt-oss (mixture of experts, harmony format) with 4 experts, top-2."""
    import torch
    from transformers import GptOssConfig, GptOssForCausalLM

    torch.manual_seed(seed)
    cfg = GptOssConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=8,
        num_local_experts=4,
        num_experts_per_tok=2,
        max_position_embeddings=131072,  # = yarn factor 32 x 4096, as in gpt-oss
        sliding_window=64,
        layer_types=["sliding_attention", "full_attention"],
        tie_word_embeddings=False,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    return GptOssForCausalLM(cfg).eval()


def save_tiny(folder: str | Path, arch: str = "llama", kind: str | None = None, **kw: Any) -> Path:
    """Build and save a tiny model + tokenizer as a Hugging Face folder; returns the folder."""
    folder = Path(folder)
    kind = kind or ("harmony" if arch == "gpt_oss" else "chatml")
    tok = build_tokenizer(kind)
    model = build_llama(tok, **kw) if arch == "llama" else build_gpt_oss(tok, **kw)
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder
