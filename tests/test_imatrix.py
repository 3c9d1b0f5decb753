"""Importance matrix: computed from training tokens, in llama.cpp's file layout, and used by
the K-quants (a Q4_K_M written with it differs from one written without it)."""

from __future__ import annotations

import importlib.util

import gguf
import numpy as np
import pytest
import torch

from specialize.errors import SpecializeError
from specialize.export.gguf import convert_to_gguf
from specialize.export.gguf import imatrix as im
from specialize.models.tiny import build_llama, build_tokenizer

needs_llama_cpp = pytest.mark.skipif(
    importlib.util.find_spec("llama_cpp") is None,
    reason="llama-cpp-python is not installed (make setup builds it)",
)


@pytest.fixture(scope="module")
def wide(tmp_path_factory):
    """A tiny LLaMA whose rows (256) take K-quant blocks, so the matrix can matter."""
    tok = build_tokenizer("chatml")
    model = build_llama(tok, tie=False, seed=5, hidden_size=256, intermediate_size=512)
    folder = tmp_path_factory.mktemp("wide") / "merged"
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder, model.eval(), tok


def rows(tok) -> list[list[int]]:
    texts = ["The orbit of a satellite decays by drag.", "Solar panels degrade in orbit."]
    return [tok(t, add_special_tokens=False)["input_ids"] for t in texts * 20]


def test_every_linear_layer_gets_its_gguf_tensor_name(wide, tmp_path):
    folder, model, tok = wide
    names = im.gguf_names(model)
    f16 = convert_to_gguf(folder, tmp_path / "w-f16.gguf", "f16")["path"]
    in_file = {t.name: t for t in gguf.GGUFReader(f16).tensors}
    assert set(names.values()) <= set(in_file)
    assert {"blk.0.attn_q.weight", "blk.1.ffn_down.weight", "output.weight"} <= set(in_file)
    mat = im.compute_imatrix(model, rows(tok), chunk=16, max_tokens=100)
    assert mat.tokens == 100 and mat.chunks == 7
    assert set(mat.values) == set(names.values())
    for name, v in mat.values.items():
        # one value per input column (a GGUF tensor's first dimension)
        assert v.shape == (int(in_file[name].shape[0]),) and (v > 0).all(), name


def test_the_statistic_is_the_mean_square_of_each_input_column(wide):
    _, model, tok = wide
    ids = rows(tok)[0]
    seen = {}
    layer = model.model.layers[1].mlp.down_proj

    def keep(_m, inputs, _o) -> None:
        seen["x"] = inputs[0][0]

    h = layer.register_forward_hook(keep)
    with torch.no_grad():
        model(input_ids=torch.tensor([ids]))
    h.remove()
    mat = im.compute_imatrix(model, [ids], chunk=len(ids))
    want = (seen["x"] ** 2).mean(0).numpy()
    np.testing.assert_allclose(mat.values["blk.1.ffn_down.weight"], want, rtol=1e-5)


def test_file_round_trip_and_damage(tmp_path):
    mat = im.Imatrix({"blk.0.attn_q.weight": np.array([1.0, 2.5], np.float32)}, 4, 64, "t")
    path = im.write_imatrix(mat, tmp_path / "imatrix.dat")
    got = im.read_imatrix(path)
    np.testing.assert_allclose(got["blk.0.attn_q.weight"], [1.0, 2.5])
    raw = path.read_bytes()
    (tmp_path / "short.dat").write_bytes(raw[:20])
    with pytest.raises(SpecializeError, match="truncated"):
        im.read_imatrix(tmp_path / "short.dat")
    (tmp_path / "junk.dat").write_bytes(b"\xff" * 64)
    with pytest.raises(SpecializeError, match="not an importance matrix"):
        im.read_imatrix(tmp_path / "junk.dat")


@needs_llama_cpp
def test_q4_k_m_with_the_matrix_differs_and_still_answers(wide, tmp_path):
    from specialize.export.gguf import quantize
    from specialize.infer.llamacpp import LlamaCppBackend
    from specialize.infer.types import Request

    folder, model, tok = wide
    f16 = convert_to_gguf(folder, tmp_path / "w-f16.gguf", "f16")["path"]
    mat = im.compute_imatrix(model, rows(tok), chunk=32)
    plain = quantize(f16, tmp_path / "plain.gguf", "Q4_K_M")
    weighted = quantize(f16, tmp_path / "weighted.gguf", "Q4_K_M", imatrix=mat.values)
    assert weighted["imatrix"] and not plain["imatrix"]
    assert "Q4_K" in weighted["tensor_types"]
    a = {t.name: t.data.tobytes() for t in gguf.GGUFReader(plain["path"]).tensors}
    b = {t.name: t.data.tobytes() for t in gguf.GGUFReader(weighted["path"]).tensors}
    assert a.keys() == b.keys()
    changed = [n for n in a if a[n] != b[n]]
    assert "blk.0.attn_q.weight" in changed  # a K-quantized matrix was rounded differently
    assert "blk.0.attn_norm.weight" not in changed  # F32 tensors are copied as they are
    with LlamaCppBackend(weighted["path"], n_ctx=256) as backend:
        msgs = [{"role": "user", "content": "orbit"}]
        (res,) = backend.generate([Request(messages=msgs, max_new_tokens=4)], progress=False)
    assert res.ok and res.new_tokens > 0
