"""The bundled model's tokenizer, as specialize loads it from the GGUF, gives the model's own ids.

transformers keeps plain byte-level splitting for SmolLM2's "smollm" pre-tokenizer (digits one
at a time, then GPT-2's regex); ``load_tokenizer`` restores it. Reference ids come from llama.cpp
on the same GGUF, and from ``tokenizers`` with SmolLM2's tokenizer.json pre-tokenizer.
"""

from __future__ import annotations

import json
import re
import struct

import pytest
from conftest import needs_bundled

from specialize.errors import SpecializeError

TEXTS = [
    "\n\n1.",
    "  42",
    "3.14159",
    "v2.0.1",
    "On 2024-11-21 at 13:45:07 UTC, 1,234,567 units shipped.",
    "Apollo 11 landed on 20 July 1969; 6 more missions followed by 1972.",
    "Steps:\n\n1. Mix 250 g flour.\n2. Add 3 eggs.\n\n10. Bake at 180°C for 35 min.",
    "x = 1e-9 + 0.5 * 12345678901234567890",
    "   7 spaces before seven, tabs\t\t8 and\n 9",
    "Call +1 (555) 010-9999 or ext. 42.",
    "ISS orbit: ~408 km, period 92.68 min, 15.5 orbits/day.",
    "Version 10.0.19045.3693 build 22H2",
    "٣ and ² and ½ are numbers too; ১২৩ in Bengali.",
    "The answer is 42.\n\n\n  100%",
    "a1b2c3 d4e5 1st 2nd 3rd 4th",
    "$1,000,000.00 vs €999.99",
    "What's 2+2? It's 4; they're 10 apples.",
    "1\n2\r\n3 \n 4",
    "Plain prose without any digit at all, just words and punctuation!",
]


@pytest.fixture(scope="module")
def bundled():
    from specialize.models.load import load_tokenizer, resolve

    src = resolve("bundled:smollm2-135m-instruct")
    return src.folder / src.gguf_file, load_tokenizer(src)


def _ids(tok, text: str) -> list[int]:
    return list(tok(text, add_special_tokens=False)["input_ids"])


@needs_bundled
def test_bundled_tokenizer_has_the_gguf_pre_tokenizer(bundled):
    """Same ids as ``tokenizers`` with SmolLM2's tokenizer.json pre-tokenizer on the same vocab;
    the byte-level default differs on digits and the exporter names the restored one 'smollm'."""
    from tokenizers import Tokenizer, pre_tokenizers

    from specialize.export.gguf import _pre_tokenizer_name

    path, tok = bundled
    tj = json.loads(tok.backend_tokenizer.to_str())
    explicit = Tokenizer.from_str(tok.backend_tokenizer.to_str())
    explicit.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Digits(individual_digits=True),
            pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=True),
        ]
    )
    plain = Tokenizer.from_str(tok.backend_tokenizer.to_str())
    plain.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)

    assert _ids(tok, "\n\n1.") == [1116, 33, 30]
    assert plain.encode("\n\n1.", add_special_tokens=False).ids == [198, 198, 33, 30]
    for text in TEXTS:
        assert _ids(tok, text) == explicit.encode(text, add_special_tokens=False).ids, text
    differ = [t for t in TEXTS if plain.encode(t, add_special_tokens=False).ids != _ids(tok, t)]
    assert len(differ) >= 5, differ  # the test strings do exercise the difference
    assert _pre_tokenizer_name(tj, path) == "smollm"


@needs_bundled
def test_bundled_tokenizer_matches_llama_cpp(bundled):
    llama_cpp = pytest.importorskip("llama_cpp")
    path, tok = bundled
    llm = llama_cpp.Llama(str(path), vocab_only=True, verbose=False)
    for text in TEXTS:
        want = llm.tokenize(text.encode(), add_bos=False, special=False)
        assert _ids(tok, text) == want, text


def _gguf(tmp_path, model: str, pre: str | None):
    """A GGUF holding only tokenizer metadata (enough for the pre-type check)."""
    import gguf

    path = tmp_path / f"{pre}.gguf"
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_array("general.tags", ["a", "bc"])
    w.add_tokenizer_model(model)
    if pre is not None:
        w.add_tokenizer_pre(pre)
    w.add_token_list(["a", "b", "ab"])
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.close()
    return path


def test_pre_type_is_read_and_unknown_ones_refused(tmp_path):
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    from specialize.models.gguf_tokenizer import read_gguf_strings, restore_pre_tokenizer

    def fresh():
        raw = Tokenizer(models.BPE())
        raw.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        return PreTrainedTokenizerFast(tokenizer_object=raw)

    def pre_type(tok) -> list[str]:
        p = json.loads(tok.backend_tokenizer.to_str())["pre_tokenizer"]
        return [q["type"] for q in p.get("pretokenizers", [p])]

    smollm = _gguf(tmp_path, "gpt2", "smollm")
    keys = ("tokenizer.ggml.model", "tokenizer.ggml.pre", "nope")
    assert read_gguf_strings(smollm, keys) == {
        "tokenizer.ggml.model": "gpt2",
        "tokenizer.ggml.pre": "smollm",
    }
    assert pre_type(restore_pre_tokenizer(fresh(), smollm)) == ["Digits", "ByteLevel"]
    assert pre_type(restore_pre_tokenizer(fresh(), _gguf(tmp_path, "gpt2", "gpt-2"))) == [
        "ByteLevel"
    ]
    assert pre_type(restore_pre_tokenizer(fresh(), _gguf(tmp_path, "llama", None))) == ["ByteLevel"]
    for pre in ("default", "some-new-model", None):
        path = _gguf(tmp_path, "gpt2", pre)
        with pytest.raises(SpecializeError, match=re.escape(f"{path}: GGUF pre-tokenizer")) as err:
            restore_pre_tokenizer(fresh(), path)
        assert "\n" not in str(err.value)
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(struct.pack("<I", 0x12345678) + bytes(20))
    with pytest.raises(SpecializeError, match="not a GGUF"):
        read_gguf_strings(bad, keys)
