"""Hugging Face LLaMA-family folder -> GGUF file, with our own short converter.

Why our own converter rather than llama.cpp's ``convert_hf_to_gguf.py``: that script is not
shipped in any package we can install offline, and it guesses the pre-tokenizer from a hash of
its output on a test string. Here the conversion is a short, inspectable table per
architecture family (:data:`ARCHITECTURES`) on top of the ``gguf`` library's writer; the
round-trip checks (:mod:`.checks`) then prove the file is the same model.

Things llama.cpp needs that are easy to get wrong, and where they are handled:

* LLaMA q/k projection rows are permuted from Hugging Face's rotary layout (first half / second
  half of each head) to llama.cpp's (interleaved pairs): :func:`permute_rotary`.
* Hyperparameters llama.cpp does not default correctly (rope base, rms epsilon, kv heads, head
  size, context length) are written explicitly: :func:`_hparams`.
* The tokenizer is written in full: tokens, token types (added special tokens are CONTROL, so
  llama.cpp parses ``<|im_end|>`` as one token and never prints it), merges, special ids, the
  add-BOS/EOS flags measured on the Hugging Face tokenizer, the pre-tokenizer name llama.cpp
  uses to pick its split regex, and the chat template: :func:`_tokenizer_metadata`.
* Tied embeddings: llama.cpp reuses ``token_embd`` as the output head when ``output.weight`` is
  absent, so it is written only when the config says the head is untied (e.g. a LoRA adapter
  on ``lm_head`` was merged) and then it must be written, or the adapted head would be lost.

Files are written atomically (temp name in the same folder, renamed at the end): a crash, a
corrupt input or a full disk never leaves a half-written ``.gguf`` under the final name.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from specialize.errors import SpecializeError
from specialize.io import atomic_path, read_json

# ------------------------------------------------------------------------ architecture tables
# One table per architecture family: Hugging Face tensor name -> GGUF tensor name, with
# ``{bid}`` standing for the block (layer) index. The names agree with the gguf library's
# ``get_tensor_name_map(MODEL_ARCH.LLAMA, n)`` (a test pins that), but are spelled out here so
# a reader sees exactly what goes where.

LLAMA_TENSORS: dict[str, str] = {
    "model.embed_tokens.weight": "token_embd.weight",
    "model.norm.weight": "output_norm.weight",
    "lm_head.weight": "output.weight",
    "model.layers.{bid}.input_layernorm.weight": "blk.{bid}.attn_norm.weight",
    "model.layers.{bid}.self_attn.q_proj.weight": "blk.{bid}.attn_q.weight",
    "model.layers.{bid}.self_attn.k_proj.weight": "blk.{bid}.attn_k.weight",
    "model.layers.{bid}.self_attn.v_proj.weight": "blk.{bid}.attn_v.weight",
    "model.layers.{bid}.self_attn.o_proj.weight": "blk.{bid}.attn_output.weight",
    "model.layers.{bid}.self_attn.q_proj.bias": "blk.{bid}.attn_q.bias",
    "model.layers.{bid}.self_attn.k_proj.bias": "blk.{bid}.attn_k.bias",
    "model.layers.{bid}.self_attn.v_proj.bias": "blk.{bid}.attn_v.bias",
    "model.layers.{bid}.self_attn.o_proj.bias": "blk.{bid}.attn_output.bias",
    "model.layers.{bid}.post_attention_layernorm.weight": "blk.{bid}.ffn_norm.weight",
    "model.layers.{bid}.mlp.gate_proj.weight": "blk.{bid}.ffn_gate.weight",
    "model.layers.{bid}.mlp.up_proj.weight": "blk.{bid}.ffn_up.weight",
    "model.layers.{bid}.mlp.down_proj.weight": "blk.{bid}.ffn_down.weight",
    "model.layers.{bid}.mlp.gate_proj.bias": "blk.{bid}.ffn_gate.bias",
    "model.layers.{bid}.mlp.up_proj.bias": "blk.{bid}.ffn_up.bias",
    "model.layers.{bid}.mlp.down_proj.bias": "blk.{bid}.ffn_down.bias",
}

# Rows of these tensors are permuted to llama.cpp's rotary layout; the value says which head
# count splits the rows ("q": attention heads, "k": key/value heads).
LLAMA_PERMUTE: dict[str, str] = {
    "model.layers.{bid}.self_attn.q_proj.weight": "q",
    "model.layers.{bid}.self_attn.q_proj.bias": "q",
    "model.layers.{bid}.self_attn.k_proj.weight": "k",
    "model.layers.{bid}.self_attn.k_proj.bias": "k",
}

# Present in some checkpoints, recomputed by llama.cpp: skipped, not an error.
LLAMA_IGNORE: tuple[str, ...] = (
    "model.rotary_emb.inv_freq",
    "model.layers.{bid}.self_attn.rotary_emb.inv_freq",
)

# Every LLaMA GGUF needs these (output.weight only when the head is untied).
LLAMA_REQUIRED: tuple[str, ...] = (
    "token_embd.weight",
    "output_norm.weight",
    "blk.{bid}.attn_norm.weight",
    "blk.{bid}.attn_q.weight",
    "blk.{bid}.attn_k.weight",
    "blk.{bid}.attn_v.weight",
    "blk.{bid}.attn_output.weight",
    "blk.{bid}.ffn_norm.weight",
    "blk.{bid}.ffn_gate.weight",
    "blk.{bid}.ffn_up.weight",
    "blk.{bid}.ffn_down.weight",
)


def _llama_config_check(config: Any) -> None:
    """LLaMA in llama.cpp is SiLU-gated, full attention; refuse configs that behave otherwise."""
    act = getattr(config, "hidden_act", "silu")
    if act != "silu":
        raise SpecializeError(f"hidden_act '{act}' is not supported for GGUF export (llama: silu)")


def _mistral_config_check(config: Any) -> None:
    """Mistral is LLaMA plus a sliding window, which llama.cpp's 'llama' graph does not apply.

    A window at least as long as the context never slides, so such a model is exactly LLaMA.
    """
    _llama_config_check(config)
    window = getattr(config, "sliding_window", None)
    ctx = int(getattr(config, "max_position_embeddings", 0) or 0)
    if window is not None and int(window) < ctx:
        raise SpecializeError(
            f"MistralForCausalLM with sliding_window={window} < context {ctx} is not supported "
            "for GGUF export (llama.cpp's llama graph has no sliding window)"
        )


@dataclass(frozen=True)
class ArchSpec:
    """How one Hugging Face architecture maps onto a GGUF architecture."""

    gguf_arch: str
    tensors: dict[str, str]
    permute: dict[str, str]
    ignore: tuple[str, ...]
    required: tuple[str, ...]
    check: Callable[[Any], None] = field(default=_llama_config_check)


_LLAMA = ArchSpec("llama", LLAMA_TENSORS, LLAMA_PERMUTE, LLAMA_IGNORE, LLAMA_REQUIRED)

ARCHITECTURES: dict[str, ArchSpec] = {
    "LlamaForCausalLM": _LLAMA,
    # Same tensors and graph as LLaMA once the sliding window cannot slide (checked).
    "MistralForCausalLM": ArchSpec(
        "llama", LLAMA_TENSORS, LLAMA_PERMUTE, LLAMA_IGNORE, LLAMA_REQUIRED, _mistral_config_check
    ),
}


MODEL_TYPES = {"llama": "LlamaForCausalLM", "mistral": "MistralForCausalLM"}


def arch_spec(config: Any) -> tuple[str, ArchSpec]:
    """The (architecture name, spec) of a config, or the one-line 'not supported' error."""
    names = list(getattr(config, "architectures", None) or [])
    if not names and getattr(config, "model_type", None) in MODEL_TYPES:
        # A model loaded from a GGUF (the bundled one) has a config without architectures.
        names = [MODEL_TYPES[config.model_type]]
    for name in names:
        if name in ARCHITECTURES:
            spec = ARCHITECTURES[name]
            spec.check(config)
            return name, spec
    shown = names[0] if names else getattr(config, "model_type", "unknown")
    raise SpecializeError(
        f"architecture '{shown}' is not supported for GGUF export "
        f"(supported: {', '.join(sorted(ARCHITECTURES))})"
    )


def _pattern(name: str) -> re.Pattern[str]:
    return re.compile("^" + re.escape(name).replace(re.escape("{bid}"), r"(\d+)") + "$")


def _match(table: dict[str, str] | tuple[str, ...], hf_name: str) -> tuple[str, str | None]:
    """(table key, block id) of the first pattern matching ``hf_name``; ('', None) if none."""
    for key in table:
        m = _pattern(key).match(hf_name)
        if m:
            return key, (m.group(1) if m.groups() else None)
    return "", None


def permute_rotary(w: np.ndarray, n_head: int) -> np.ndarray:
    """Reorder q/k projection rows from Hugging Face's rotary layout to llama.cpp's.

    Hugging Face rotates the first half of each head against the second half
    (``rotate_half``); llama.cpp (like the original Meta checkpoints) rotates adjacent pairs.
    Within each head, row ``j`` of the first half and row ``j`` of the second half must become
    rows ``2j`` and ``2j+1``. This is ``LlamaModel.permute`` of llama.cpp's converter; it works
    on a weight (rows x cols) and on a bias (rows).
    """
    shape = w.shape
    head_dim = shape[0] // n_head
    return w.reshape(n_head, 2, head_dim // 2, *shape[1:]).swapaxes(1, 2).reshape(shape)


# ----------------------------------------------------------------------------- reading inputs


def _read_config(model_dir: Path) -> Any:
    """The model config through transformers, which fills defaults and normalises rope keys."""
    from transformers import AutoConfig

    path = model_dir / "config.json"
    if not path.is_file():
        raise SpecializeError("no config.json: not a Hugging Face model folder", path=model_dir)
    try:
        read_json(path)
        return AutoConfig.from_pretrained(model_dir)
    except Exception as err:  # noqa: BLE001 - any parse failure is the user's file
        raise SpecializeError(f"cannot read config: {err}", path=path) from None


def _weight_files(model_dir: Path) -> list[Path]:
    index = model_dir / "model.safetensors.index.json"
    if index.is_file():
        try:
            names = sorted(set(read_json(index)["weight_map"].values()))
        except Exception as err:  # noqa: BLE001
            raise SpecializeError(f"cannot read safetensors index: {err}", path=index) from None
        files = [model_dir / n for n in names]
        missing = [str(f) for f in files if not f.is_file()]
        if missing:
            raise SpecializeError(f"weight shard missing: {missing[0]}", path=index)
        return files
    files = sorted(model_dir.glob("*.safetensors"))
    if not files:
        raise SpecializeError(
            "no *.safetensors weights (save the model with safe_serialization=True)",
            path=model_dir,
        )
    return files


def _safetensors_error(path: Path, err: BaseException) -> SpecializeError:
    return SpecializeError(f"corrupt or unreadable safetensors file ({err})", path=path)


def _tensor_headers(files: list[Path]) -> dict[str, tuple[Path, tuple[int, ...]]]:
    """name -> (file, shape) from the safetensors headers, without reading any tensor data."""
    from safetensors import safe_open

    out: dict[str, tuple[Path, tuple[int, ...]]] = {}
    for path in files:
        try:
            with safe_open(str(path), framework="pt") as f:
                for name in f.keys():  # noqa: SIM118 - safe_open has no __iter__
                    out[name] = (path, tuple(f.get_slice(name).get_shape()))
        except Exception as err:  # noqa: BLE001 - SafetensorError, OSError, ValueError...
            raise _safetensors_error(path, err) from None
    return out


def _load_tensor(path: Path, name: str) -> np.ndarray:
    """One tensor as float32 numpy (bf16/f16 upcast exactly)."""
    import torch
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            t = f.get_tensor(name)
    except Exception as err:  # noqa: BLE001
        raise _safetensors_error(path, err) from None
    return t.to(torch.float32).numpy()


# --------------------------------------------------------------------------------- tokenizer


@dataclass(frozen=True)
class _PreTokenizer:
    """A Hugging Face pre-tokenizer layout and the llama.cpp ``tokenizer.ggml.pre`` with the
    same split regex (llama-vocab.cpp picks the regex from this name)."""

    name: str
    matches: Callable[[dict], bool]


_LLAMA3_REGEX = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+"
    r"[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)


def _byte_level(p: dict, use_regex: bool) -> bool:
    return (
        p.get("type") == "ByteLevel"
        and not p.get("add_prefix_space", False)
        and bool(p.get("use_regex", True)) == use_regex
    )


def _seq(p: dict) -> list[dict]:
    return list(p.get("pretokenizers") or []) if p.get("type") == "Sequence" else [p]


PRE_TOKENIZERS: tuple[_PreTokenizer, ...] = (
    # GPT-2's regex inside ByteLevel (the tiny test tokenizers, GPT-2, many small models).
    _PreTokenizer("gpt-2", lambda p: len(_seq(p)) == 1 and _byte_level(_seq(p)[0], True)),
    # Single digits split first, then GPT-2's regex (SmolLM, StarCoder).
    _PreTokenizer(
        "smollm",
        lambda p: (
            len(_seq(p)) == 2
            and _seq(p)[0].get("type") == "Digits"
            and bool(_seq(p)[0].get("individual_digits"))
            and _byte_level(_seq(p)[1], True)
        ),
    ),
    # Llama-3's regex split, then byte-level without regex.
    _PreTokenizer(
        "llama-bpe",
        lambda p: (
            len(_seq(p)) == 2
            and _seq(p)[0].get("type") == "Split"
            and (_seq(p)[0].get("pattern") or {}).get("Regex") == _LLAMA3_REGEX
            and _byte_level(_seq(p)[1], False)
        ),
    ),
)


def _pre_tokenizer_name(tj: dict, where: Path) -> str:
    pre = tj.get("pre_tokenizer") or {}
    for cand in PRE_TOKENIZERS:
        if cand.matches(pre):
            return cand.name
    kinds = "+".join(str(p.get("type")) for p in _seq(pre)) or "none"
    raise SpecializeError(
        f"pre-tokenizer '{kinds}' has no known llama.cpp equivalent "
        f"(supported: {', '.join(c.name for c in PRE_TOKENIZERS)})",
        path=where,
    )


def _added_flags(tok: Any) -> tuple[bool, bool]:
    """Whether the HF tokenizer adds BOS / EOS by itself, measured rather than read from a flag
    (flags live in different places across tokenizer classes; behaviour does not)."""
    probe = "a"
    plain = list(tok(probe, add_special_tokens=False)["input_ids"])
    full = list(tok(probe, add_special_tokens=True)["input_ids"])
    bos, eos = tok.bos_token_id, tok.eos_token_id
    add_bos = bos is not None and len(full) > len(plain) and full[0] == bos and plain[:1] != [bos]
    add_eos = eos is not None and len(full) > len(plain) and full[-1] == eos and plain[-1:] != [eos]
    return bool(add_bos), bool(add_eos)


def _end_of_turn_id(tok: Any) -> int | None:
    """The token the chat template closes an assistant turn with, if it is not EOS."""
    from specialize.models.chat import stop_token_ids

    if not getattr(tok, "chat_template", None):
        return None
    try:
        ids = [i for i in stop_token_ids(tok, "template") if i != tok.eos_token_id]
    except SpecializeError:
        return None
    return ids[0] if ids else None


def _tokenizer_metadata(tok: Any, vocab_size: int, where: Path) -> dict[str, Any]:
    """Everything llama.cpp's vocabulary loader reads, from a fast byte-level BPE tokenizer."""
    import gguf

    backend = getattr(tok, "backend_tokenizer", None)
    if backend is None:
        raise SpecializeError("only fast (tokenizer.json) tokenizers can be exported", path=where)
    import json

    tj = json.loads(backend.to_str())
    model = tj.get("model") or {}
    if model.get("type") != "BPE":
        raise SpecializeError(
            f"tokenizer model '{model.get('type')}' is not supported for GGUF export "
            "(supported: byte-level BPE)",
            path=where,
        )
    if tj.get("normalizer"):
        raise SpecializeError(
            f"tokenizer normalizer '{tj['normalizer'].get('type')}' is not supported for GGUF "
            "export (llama.cpp's BPE does not normalize)",
            path=where,
        )
    pre = _pre_tokenizer_name(tj, where)

    vocab = tok.get_vocab()
    if len(vocab) > vocab_size or max(vocab.values()) >= vocab_size:
        raise SpecializeError(
            f"tokenizer has {len(vocab)} tokens but the model's vocab_size is {vocab_size}",
            path=where,
        )
    by_id = {i: t for t, i in vocab.items()}
    added = {int(i): t for i, t in getattr(tok, "added_tokens_decoder", {}).items()}
    tokens: list[str] = []
    types: list[int] = []
    for i in range(vocab_size):
        if i not in by_id:
            tokens.append(f"[PAD{i}]")
            types.append(int(gguf.TokenType.UNUSED))
        elif i in added:
            tokens.append(by_id[i])
            special = bool(getattr(added[i], "special", True))
            types.append(int(gguf.TokenType.CONTROL if special else gguf.TokenType.USER_DEFINED))
        else:
            tokens.append(by_id[i])
            types.append(int(gguf.TokenType.NORMAL))
    merges = [m if isinstance(m, str) else " ".join(m) for m in model.get("merges") or []]
    add_bos, add_eos = _added_flags(tok)
    ids = {
        "bos": tok.bos_token_id,
        "eos": tok.eos_token_id,
        "unk": tok.unk_token_id,
        "pad": tok.pad_token_id,
        "eot": _end_of_turn_id(tok),
    }
    template = getattr(tok, "chat_template", None)
    if isinstance(template, dict):  # several named templates: the default one is the template
        template = template.get("default") or next(iter(template.values()), None)
    return {
        "model": "gpt2",
        "pre": pre,
        "tokens": tokens,
        "types": types,
        "merges": merges,
        "ids": {k: int(v) for k, v in ids.items() if v is not None},
        "add_bos": add_bos,
        "add_eos": add_eos,
        "chat_template": template or None,
    }


def _write_tokenizer(writer: Any, meta: dict[str, Any]) -> None:
    writer.add_tokenizer_model(meta["model"])
    writer.add_tokenizer_pre(meta["pre"])
    writer.add_token_list(meta["tokens"])
    writer.add_token_types(meta["types"])
    writer.add_token_merges(meta["merges"])
    setters = {
        "bos": writer.add_bos_token_id,
        "eos": writer.add_eos_token_id,
        "unk": writer.add_unk_token_id,
        "pad": writer.add_pad_token_id,
        "eot": writer.add_eot_token_id,
    }
    for key, token_id in meta["ids"].items():
        setters[key](token_id)
    writer.add_add_bos_token(meta["add_bos"])
    writer.add_add_eos_token(meta["add_eos"])
    writer.add_add_space_prefix(False)
    if meta["chat_template"]:
        writer.add_chat_template(meta["chat_template"])


# --------------------------------------------------------------------------- hyperparameters


def _rope(config: Any) -> tuple[float, dict[str, Any]]:
    """(rope base, scaling parameters) across transformers 4 (rope_theta/rope_scaling) and 5
    (rope_parameters)."""
    params = dict(getattr(config, "rope_parameters", None) or {})
    scaling = dict(getattr(config, "rope_scaling", None) or {}) if not params else params
    theta = params.get("rope_theta", getattr(config, "rope_theta", None))
    return float(theta if theta is not None else 10000.0), scaling


def _rope_type(scaling: dict[str, Any]) -> str:
    return str(scaling.get("rope_type", scaling.get("type", "default")) or "default").lower()


def llama3_rope_factors(config: Any) -> np.ndarray:
    """Per-frequency divisors of Llama-3 rope scaling, as llama.cpp's converter computes them
    (stored as the ``rope_freqs.weight`` tensor; llama.cpp has no llama3 scaling type)."""
    theta, s = _rope(config)
    dim = int(getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads)
    factor = float(s.get("factor", 8.0))
    low, high = float(s.get("low_freq_factor", 1.0)), float(s.get("high_freq_factor", 4.0))
    old_ctx = float(s.get("original_max_position_embeddings", 8192))
    low_wavelen, high_wavelen = old_ctx / low, old_ctx / high
    out = []
    for i in range(0, dim, 2):
        freq = 1.0 / theta ** (i / dim)
        wavelen = 2 * math.pi / freq
        if wavelen < high_wavelen:
            out.append(1.0)
        elif wavelen > low_wavelen:
            out.append(factor)
        else:
            smooth = (old_ctx / wavelen - low) / (high - low)
            out.append(1.0 / ((1 - smooth) / factor + smooth))
    return np.asarray(out, dtype=np.float32)


def _hparams(config: Any) -> dict[str, Any]:
    """The LLaMA hyperparameters llama.cpp reads, with their values from the config."""
    n_head = int(config.num_attention_heads)
    n_kv = int(getattr(config, "num_key_value_heads", None) or n_head)
    hidden = int(config.hidden_size)
    head_dim = int(getattr(config, "head_dim", None) or hidden // n_head)
    theta, scaling = _rope(config)
    rope_type = _rope_type(scaling)
    if rope_type not in ("default", "linear", "llama3"):
        raise SpecializeError(
            f"rope scaling '{rope_type}' is not supported for GGUF export "
            "(supported: default, linear, llama3)"
        )
    return {
        "n_layer": int(config.num_hidden_layers),
        "n_head": n_head,
        "n_kv": n_kv,
        "hidden": hidden,
        "head_dim": head_dim,
        "ffn": int(config.intermediate_size),
        "ctx": int(config.max_position_embeddings),
        "eps": float(config.rms_norm_eps),
        "theta": theta,
        "rope_type": rope_type,
        "rope_factor": float(scaling.get("factor", 1.0)),
        "vocab": int(config.vocab_size),
        "tied": bool(getattr(config, "tie_word_embeddings", False)),
    }


def _write_hparams(writer: Any, hp: dict[str, Any], name: str, file_type: int) -> None:
    import gguf

    writer.add_type(gguf.GGUFType.MODEL)
    writer.add_name(name)
    writer.add_file_type(file_type)
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
    writer.add_vocab_size(hp["vocab"])
    writer.add_context_length(hp["ctx"])
    writer.add_embedding_length(hp["hidden"])
    writer.add_feed_forward_length(hp["ffn"])
    writer.add_block_count(hp["n_layer"])
    writer.add_head_count(hp["n_head"])
    writer.add_head_count_kv(hp["n_kv"])
    writer.add_layer_norm_rms_eps(hp["eps"])
    writer.add_rope_freq_base(hp["theta"])
    writer.add_rope_dimension_count(hp["head_dim"])
    if hp["head_dim"] * hp["n_head"] != hp["hidden"]:
        writer.add_key_length(hp["head_dim"])
        writer.add_value_length(hp["head_dim"])
    if hp["rope_type"] == "linear":
        writer.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
        writer.add_rope_scaling_factor(hp["rope_factor"])


# ------------------------------------------------------------------------------- conversion

OUT_TYPES = ("f32", "f16", "bf16")


@dataclass
class _Planned:
    gguf_name: str
    hf_name: str | None  # None for tensors computed here (rope_freqs)
    file: Path | None
    shape: tuple[int, ...]
    permute_heads: int = 0
    ggml_type: int = 0


def _plan(
    spec: ArchSpec,
    hp: dict[str, Any],
    headers: dict[str, tuple[Path, tuple[int, ...]]],
    out_type: str,
    where: Path,
) -> list[_Planned]:
    """Map every stored tensor to its GGUF name and type; fail on anything unmapped."""
    import gguf

    plan: list[_Planned] = []
    unknown: list[str] = []
    for hf_name, (path, shape) in headers.items():
        if _match(spec.ignore, hf_name)[0]:
            continue
        key, bid = _match(spec.tensors, hf_name)
        if not key:
            unknown.append(hf_name)
            continue
        if hf_name == "lm_head.weight" and hp["tied"]:
            continue  # llama.cpp ties output to token_embd when output.weight is absent
        gguf_name = spec.tensors[key].replace("{bid}", bid or "")
        which = spec.permute.get(key)
        heads = hp["n_head"] if which == "q" else hp["n_kv"] if which == "k" else 0
        plan.append(_Planned(gguf_name, hf_name, path, shape, permute_heads=heads))
    if unknown:
        more = f" (+{len(unknown) - 3} more)" if len(unknown) > 3 else ""
        raise SpecializeError(
            f"tensors with no GGUF mapping: {', '.join(unknown[:3])}{more}", path=where
        )
    if hp["rope_type"] == "llama3":
        plan.append(_Planned("rope_freqs.weight", None, None, (hp["head_dim"] // 2,)))

    have = {p.gguf_name for p in plan}
    need = [
        r.replace("{bid}", str(b))
        for r in spec.required
        for b in (range(hp["n_layer"]) if "{bid}" in r else [0])
    ]
    if not hp["tied"]:
        need.append("output.weight")
    missing = [n for n in need if n not in have]
    if missing:
        hint = (
            " (config has tie_word_embeddings=false but no lm_head.weight)"
            if (missing == ["output.weight"])
            else ""
        )
        raise SpecializeError(f"missing tensors: {', '.join(missing[:3])}{hint}", path=where)

    want = {"f32": gguf.GGMLQuantizationType.F32, "f16": gguf.GGMLQuantizationType.F16}.get(
        out_type, gguf.GGMLQuantizationType.BF16
    )
    for p in plan:
        # Norms and every 1-D tensor stay F32: tiny, and llama.cpp expects F32 there.
        keep_f32 = len(p.shape) == 1 or p.gguf_name.endswith("_norm.weight")
        p.ggml_type = int(gguf.GGMLQuantizationType.F32 if keep_f32 else want)
    order = {n: i for i, n in enumerate(_canonical_order(hp["n_layer"]))}
    plan.sort(key=lambda p: (order.get(p.gguf_name, len(order)), p.gguf_name))
    return plan


def _canonical_order(n_layer: int) -> Iterator[str]:
    yield "token_embd.weight"
    yield "rope_freqs.weight"
    for b in range(n_layer):
        for part in ("attn_norm", "attn_q", "attn_k", "attn_v", "attn_output", "ffn_norm"):
            yield f"blk.{b}.{part}.weight"
        for part in ("ffn_gate", "ffn_up", "ffn_down"):
            yield f"blk.{b}.{part}.weight"
    yield "output_norm.weight"
    yield "output.weight"


def _np_dtype(ggml_type: int) -> tuple[np.dtype, int]:
    import gguf

    t = gguf.GGMLQuantizationType(ggml_type)
    if t == gguf.GGMLQuantizationType.F32:
        return np.dtype(np.float32), 4
    if t == gguf.GGMLQuantizationType.F16:
        return np.dtype(np.float16), 2
    return np.dtype(np.uint16), 2  # BF16 bits


def _encode(arr: np.ndarray, ggml_type: int) -> np.ndarray:
    """float32 array -> the bytes layout of ``ggml_type`` (round to nearest even for 16-bit)."""
    import gguf
    import torch

    t = gguf.GGMLQuantizationType(ggml_type)
    if t == gguf.GGMLQuantizationType.F32:
        return np.ascontiguousarray(arr, dtype=np.float32)
    if t == gguf.GGMLQuantizationType.F16:
        return np.ascontiguousarray(arr.astype(np.float16))
    bf = torch.from_numpy(np.ascontiguousarray(arr)).to(torch.bfloat16)
    return bf.view(torch.int16).numpy().view(np.uint16)


def convert_to_gguf(
    model_dir: str | Path, out_path: str | Path, out_type: str = "f16", name: str | None = None
) -> dict[str, Any]:
    """Convert a Hugging Face LLaMA-family folder (config.json, safetensors, tokenizer) to GGUF.

    ``out_type`` is the type of the 2-D weights (f32, f16 or bf16); norms and 1-D tensors stay
    F32. Tensors are streamed one at a time (headers first, then each tensor is read, converted
    and written), so memory stays near one tensor rather than the whole model. Returns
    ``{"path", "type", "bytes", "tensors", "params", "architecture"}``.
    """
    import gguf

    model_dir, out_path = Path(model_dir), Path(out_path)
    out_type = out_type.lower()
    if out_type not in OUT_TYPES:
        raise SpecializeError(
            f"GGUF output type '{out_type}' is not supported (supported: {', '.join(OUT_TYPES)}; "
            "use quantize() for Q8_0/Q6_K/Q5_K_M/Q4_K_M)"
        )
    config = _read_config(model_dir)
    arch_name, spec = arch_spec(config)
    hp = _hparams(config)
    headers = _tensor_headers(_weight_files(model_dir))
    plan = _plan(spec, hp, headers, out_type, model_dir)

    from transformers import AutoTokenizer

    try:
        tok = AutoTokenizer.from_pretrained(model_dir)
    except Exception as err:  # noqa: BLE001
        raise SpecializeError(f"cannot load tokenizer: {err}", path=model_dir) from None
    tok_meta = _tokenizer_metadata(tok, hp["vocab"], model_dir)

    file_type = {
        "f32": gguf.LlamaFileType.ALL_F32,
        "f16": gguf.LlamaFileType.MOSTLY_F16,
        "bf16": gguf.LlamaFileType.MOSTLY_BF16,
    }[out_type]
    try:
        with atomic_path(out_path) as tmp:
            writer = gguf.GGUFWriter(tmp, spec.gguf_arch)
            try:
                _write_hparams(writer, hp, name or model_dir.name, int(file_type))
                _write_tokenizer(writer, tok_meta)
                for p in plan:
                    dtype, size = _np_dtype(p.ggml_type)
                    writer.add_tensor_info(
                        p.gguf_name,
                        p.shape,
                        dtype,
                        int(np.prod(p.shape)) * size,
                        raw_dtype=gguf.GGMLQuantizationType(p.ggml_type),
                    )
                writer.write_header_to_file()
                writer.write_kv_data_to_file()
                writer.write_ti_data_to_file()
                for p in plan:
                    writer.write_tensor_data(_encode(_tensor_values(p, config), p.ggml_type))
            finally:
                writer.close()
    except OSError as err:
        why = err.strerror or str(err)
        raise SpecializeError(f"could not write GGUF: {why}", path=out_path) from None
    return {
        "path": str(out_path),
        "type": out_type.upper(),
        "bytes": out_path.stat().st_size,
        "tensors": len(plan),
        "params": int(sum(int(np.prod(p.shape)) for p in plan)),
        "architecture": arch_name,
    }


def _tensor_values(p: _Planned, config: Any) -> np.ndarray:
    if p.hf_name is None:
        return llama3_rope_factors(config)
    assert p.file is not None
    arr = _load_tensor(p.file, p.hf_name)
    if tuple(arr.shape) != p.shape:
        raise SpecializeError(f"tensor '{p.hf_name}' changed shape while reading", path=p.file)
    if p.permute_heads:
        arr = permute_rotary(arr, p.permute_heads)
    return arr


def gguf_summary(path: str | Path) -> dict[str, Any]:
    """Tensor element count and the count of tensors per storage type, read from the file."""
    import gguf

    reader = gguf.GGUFReader(str(path))
    types = Counter(t.tensor_type.name for t in reader.tensors)
    return {
        "elements": int(sum(int(t.n_elements) for t in reader.tensors)),
        "tensor_types": dict(sorted(types.items())),
    }
