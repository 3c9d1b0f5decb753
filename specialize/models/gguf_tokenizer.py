"""Give a tokenizer loaded from a GGUF the pre-tokenizer its vocabulary was trained with.

transformers builds a byte-level BPE tokenizer from a GGUF's vocabulary and merges, and sets a
split regex only for the ``tokenizer.ggml.pre`` names it knows. For the others it keeps plain
GPT-2 byte-level splitting without a word: SmolLM2 ("smollm": digits split one at a time, then
GPT-2's regex) then tokenizes ``"\\n\\n1."`` as ``[198, 198, 33, 30]`` where the model's own
tokenizer (and llama.cpp on the same file) gives ``[1116, 33, 30]``, so we would train and
evaluate on ids the model never saw. :func:`restore_pre_tokenizer` puts the right one back, or
refuses a pre-type we cannot reproduce exactly.

The regexes are llama.cpp's (``src/llama-vocab.cpp``, ``llama_vocab::impl::load`` maps the name
to a ``LLAMA_VOCAB_PRE_TYPE_*``, ``llm_tokenizer_bpe`` maps that to ``regex_exprs``).
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from pathlib import Path
from typing import Any

from specialize.errors import SpecializeError


def _digits_then_gpt2() -> Any:
    """llama.cpp's ``\\p{N}`` then GPT-2's regex (LLAMA_VOCAB_PRE_TYPE_SMOLLM and the types that
    share its case); the same Sequence as SmolLM2's own tokenizer.json."""
    from tokenizers import pre_tokenizers

    return pre_tokenizers.Sequence(
        [
            pre_tokenizers.Digits(individual_digits=True),
            pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=True),
        ]
    )


# tokenizer.ggml.pre -> the Hugging Face pre-tokenizer with exactly llama.cpp's split.
RESTORE: dict[str, Callable[[], Any]] = {
    name: _digits_then_gpt2 for name in ("smollm", "codeshell", "exaone", "minerva-7b", "mellum2")
}

# Names llama.cpp maps to LLAMA_VOCAB_PRE_TYPE_GPT2, whose single regex is the one ByteLevel
# (use_regex=True) applies: transformers' default for a GGUF is already exact. ("default" is
# not among them: llama.cpp's default splits punctuation and digit runs first.)
SAME_AS_BYTE_LEVEL = frozenset(
    {
        "gpt-2",
        "phi-2",
        "jina-es",
        "jina-de",
        "gigachat",
        "jina-v2-es",
        "jina-v2-de",
        "a.x-4.0",
        "mellum",
        "modern-bert",
        "jina-v1-en",
        "jina-v2-code",
        "roberta-bpe",
        "exaone4",
    }
)


def _handled_by_transformers() -> frozenset[str]:
    """Pre-types for which transformers itself installs the split regex (llama3, qwen2, ...)."""
    try:
        from transformers.integrations.gguf.gguf_tokenizer_mapping import (
            GGUF_PRE_TOKENIZER_SPLITS,
        )
    except ImportError:  # another transformers layout: accept only what we know ourselves
        return frozenset()
    return frozenset(GGUF_PRE_TOKENIZER_SPLITS)


def read_gguf_strings(path: str | Path, keys: tuple[str, ...]) -> dict[str, str]:
    """The string values of ``keys`` in a GGUF's metadata (absent keys are left out).

    Reads the key/value header only and stops once every key is found (the tokenizer keys come
    before the vocabulary arrays), so it costs milliseconds where ``gguf.GGUFReader`` parses the
    whole vocabulary (seconds). Value type ids and the magic are the ``gguf`` package's.
    """
    import gguf

    vt = gguf.GGUFValueType
    sizes = {
        vt.UINT8: 1,
        vt.INT8: 1,
        vt.BOOL: 1,
        vt.UINT16: 2,
        vt.INT16: 2,
        vt.UINT32: 4,
        vt.INT32: 4,
        vt.FLOAT32: 4,
        vt.UINT64: 8,
        vt.INT64: 8,
        vt.FLOAT64: 8,
    }
    found: dict[str, str] = {}
    with open(path, "rb") as f:
        head = f.read(24)
        if len(head) < 24 or struct.unpack("<I", head[:4])[0] != gguf.GGUF_MAGIC:
            raise SpecializeError("not a GGUF file (bad magic)", path=path)
        order = "<" if struct.unpack("<I", head[4:8])[0] < 0x10000 else ">"
        (n_kv,) = struct.unpack(order + "Q", head[16:24])

        def u32() -> int:
            return struct.unpack(order + "I", f.read(4))[0]

        def u64() -> int:
            return struct.unpack(order + "Q", f.read(8))[0]

        def string() -> bytes:
            return f.read(u64())

        def skip(kind: int) -> None:
            if kind == vt.STRING:
                f.seek(u64(), 1)
            elif kind == vt.ARRAY:
                item, count = u32(), u64()
                if item in sizes:
                    f.seek(sizes[item] * count, 1)
                else:
                    for _ in range(count):
                        skip(item)
            elif kind in sizes:
                f.seek(sizes[kind], 1)
            else:
                raise SpecializeError(f"GGUF metadata has unknown value type {kind}", path=path)

        for _ in range(n_kv):
            key = string().decode("utf-8", "replace")
            kind = u32()
            if key in keys and kind == vt.STRING:
                found[key] = string().decode("utf-8")
                if len(found) == len(keys):
                    break
            else:
                skip(kind)
    return found


def restore_pre_tokenizer(tok: Any, path: str | Path) -> Any:
    """Set ``tok``'s pre-tokenizer to the one the GGUF at ``path`` names; returns ``tok``.

    Only byte-level BPE vocabularies (``tokenizer.ggml.model = gpt2``) have a pre-type;
    sentencepiece and other vocabularies are left as transformers built them.
    """
    meta = read_gguf_strings(path, ("tokenizer.ggml.model", "tokenizer.ggml.pre"))
    if meta.get("tokenizer.ggml.model") != "gpt2":
        return tok
    pre = meta.get("tokenizer.ggml.pre")
    if pre in RESTORE:
        backend = getattr(tok, "backend_tokenizer", None)
        if backend is None:
            raise SpecializeError(
                f"GGUF pre-tokenizer '{pre}' needs a fast tokenizer to be restored", path=path
            )
        backend.pre_tokenizer = RESTORE[pre]()
        return tok
    if pre in SAME_AS_BYTE_LEVEL or pre in _handled_by_transformers():
        return tok
    known = sorted(RESTORE) + sorted(SAME_AS_BYTE_LEVEL)
    name = pre or "(missing)"
    raise SpecializeError(
        f"GGUF pre-tokenizer '{name}' (tokenizer.ggml.pre) cannot be reproduced exactly by a "
        "Hugging Face tokenizer here, so training would use other token ids than the model's; "
        f"known: {', '.join(known)} and the ones transformers maps itself",
        path=path,
    )
