"""GGUFs of every common weight type, exported with the default recipe (``auto``): blocks kept verbatim.

The quantized GGUFs are made by llama.cpp itself (``llama_model_quantize`` of llama-cpp-python) from a tiny
random llama, so each holds the mix of types llama.cpp picks (Q2_K files carry Q3_K and Q6_K tensors too).
Checked: every matrix keeps its GGUF type, dequantizes bit for bit to gguf-py's values, weights.bin is at
most 1.1x the GGUF; the reference backend runs the exact weights; onnxruntime (exact in-graph
dequantization) agrees with the reference and greedily with native.
"""

from __future__ import annotations

import ctypes

import edgerun
import numpy as np
import pytest
from backend_checks import same_greedy
from edgerun.export.artifact import Artifact
from edgerun.quant import FORMAT_OF_GGML

PROMPTS = ["Once upon a time, in a small village, there lived ", "The capital of France is", "def fibonacci(n):"]
EXACT = {"Q8_0": "int8", "Q4_0": "int4", "F32": "f32", "F16": "f16", **FORMAT_OF_GGML}


@pytest.fixture(scope="module")
def tiny_f32(tmp_path_factory, smollm2_gguf):
    from edgerun.bench.speed import random_llama_gguf

    d = tmp_path_factory.mktemp("blocks")
    return random_llama_gguf(d / "tiny.gguf", smollm2_gguf, dim=256, n_layers=2, n_heads=4, n_kv_heads=2,
                             ffn_dim=512, context_length=256)


def llama_cpp_quantize(src, dst, ftype: str):
    """`src` (F32 GGUF) quantized by llama.cpp to file type `ftype` (Q2_K, Q4_K_M, ...)."""
    import llama_cpp

    p = llama_cpp.llama_model_quantize_default_params()
    p.ftype = getattr(llama_cpp, f"LLAMA_FTYPE_MOSTLY_{ftype}")
    p.nthread = 2
    assert llama_cpp.llama_model_quantize(str(src).encode(), str(dst).encode(), ctypes.byref(p)) == 0
    return dst


def check_exact_import(gguf_path, art: Artifact, values: bool = True) -> dict[str, int]:
    """Every GGUF matrix kept in its own format and equal bit for bit to gguf-py's dequantization (`values`
    False: block formats compared as bytes, the blocks being the GGUF's rows; test_quant_ggml_blocks.py
    proves their dequantization bit-exact); returns the tensor count per format."""
    from edgerun.export.gguf_reader import open_gguf, unpermute_rope_rows
    from gguf.quants import dequantize as gg_deq

    seen: dict[str, int] = {}
    for t in open_gguf(gguf_path).tensors:
        e = art.tensors[t.name]
        assert e["format"] == EXACT[t.tensor_type.name], (t.name, t.tensor_type.name, e["format"])
        seen[e["format"]] = seen.get(e["format"], 0) + 1
        perm = None
        if art.arch == "llama" and t.name.endswith(("attn_q.weight", "attn_k.weight")):  # as the GGUF reader
            heads = art.config["n_heads"] if "attn_q" in t.name else art.config["n_kv_heads"]
            perm = unpermute_rope_rows(np.arange(e["shape"][0])[:, None], heads)[:, 0]
        if not values and e["format"] in FORMAT_OF_GGML.values():
            rows = np.asarray(t.data, np.uint8).reshape(e["shape"][0], -1)
            got = art.part(t.name).reshape(rows.shape)
            np.testing.assert_array_equal(got, rows if perm is None else rows[perm], err_msg=t.name)
            continue
        ref = gg_deq(t.data, t.tensor_type).reshape(e["shape"])
        if perm is not None:
            ref = ref[perm]
        got = art.tensor(t.name)
        np.testing.assert_array_equal(got.view(np.uint32), ref.astype(np.float32).view(np.uint32), err_msg=t.name)
    return seen



@pytest.mark.model
@pytest.mark.parametrize("ftype,expect", [
    ("Q3_K_M", {"q3_k", "q4_k", "q5_k", "q6_k"}),
    pytest.param("Q2_K", {"q2_k", "q3_k", "q6_k"}, marks=pytest.mark.slow),
    pytest.param("Q5_1", {"q5_1", "q6_k"}, marks=pytest.mark.slow),
    pytest.param("Q5_K_M", {"q5_k", "q6_k"}, marks=pytest.mark.slow),
])  # fmt: skip
def test_llama_cpp_quantized_gguf_kept_exactly(tiny_f32, tmp_path, llama_cpp, ftype, expect):
    from edgerun.export.exporter import export

    g = llama_cpp_quantize(tiny_f32, tmp_path / f"tiny-{ftype}.gguf", ftype)
    art = Artifact(export(g, tmp_path / "auto.edge"))  # no weights=: auto for a GGUF
    assert art.manifest["recipe"]["weights"] == "auto"
    seen = check_exact_import(g, art)
    assert expect <= set(seen), seen
    assert (art.path / "weights.bin").stat().st_size <= 1.1 * g.stat().st_size
    assert all(e[1] == 0.0 for n, e in art.manifest["quant_errors"].items())
    ref = edgerun.load(art.path, backend="reference")
    ort = edgerun.load(art.path, backend="onnxruntime", threads=2)
    nat = edgerun.load(art.path, backend="native", threads=2)
    ids = ref.tokenizer.encode(PROMPTS[0] * 2)
    lr, lo = ref.logits(ids), ort.logits(ids)
    # the head is Q6_K here, so onnxruntime runs every matrix on exact f32 weights: float-order differences only
    np.testing.assert_allclose(lo, lr, atol=2e-3 * np.abs(lr).max())
    assert (lo.argmax(-1) == lr.argmax(-1)).mean() >= 0.95
    for p in PROMPTS:
        same_greedy(ort, nat, ref.tokenizer.encode(p), 8)


@pytest.mark.model
@pytest.mark.parametrize("which", ["smollm2", "gemma3"])
def test_packaged_gguf_default_export_is_verbatim(which, smollm2_gguf, gemma3_gguf):
    """The packaged models under the default recipe: every tensor exact, weights.bin <= 1.1x the GGUF."""
    from edgerun.runtime.store.defaults import cached_export

    src = smollm2_gguf if which == "smollm2" else gemma3_gguf
    art = Artifact(cached_export(src, name=which))
    seen = check_exact_import(src, art, values=False)
    expected = {"smollm2": {"q4_1": 210, "int8": 1}, "gemma3": {"q5_0": 81, "q4_k": 27, "q6_k": 9, "int8": 10}}
    assert {f: n for f, n in seen.items() if f != "f32"} == expected[which]
    assert (art.path / "weights.bin").stat().st_size <= 1.1 * src.stat().st_size


@pytest.mark.model
def test_smollm2_default_onnxruntime_greedy_equals_native(smollm2_gguf):
    """The packaged SmolLM2 (Q4_1 blocks verbatim) through onnxruntime: greedy equal to native (near-tie rule)."""
    from edgerun.runtime.store.defaults import cached_export

    path = cached_export(smollm2_gguf, name="smollm2")
    nat = edgerun.load(path, backend="native", threads=2)
    ort = edgerun.load(path, backend="onnxruntime", threads=2)
    identical = [same_greedy(ort, nat, nat.tokenizer.encode(p), 16) for p in PROMPTS]
    # every parting is at a native near-tie (asserted in _same_greedy); native quantizes activations to int8
    # inside its matmuls while onnxruntime runs the exact dequantized weights in float, so partings happen
    assert sum(identical) >= 1, identical


@pytest.mark.parametrize("fmt", sorted(FORMAT_OF_GGML.values()))
def test_onnx_block_dequantization_is_bit_exact(fmt):
    """export/onnx_blocks.py in onnxruntime == quant/ggml_blocks.py (== gguf-py) bit for bit, on random blocks
    as a constant matrix [N, nb, type_size] (lead 2, folded) and as gathered rows [1, T, nb, type_size] (lead 3)."""
    import onnxruntime as ort
    from edgerun.export.onnx_blocks import BlockDequant
    from edgerun.quant import BLOCK_TYPES, dequantize_blocks
    from onnx import TensorProto, helper, numpy_helper
    from test_quant_ggml_blocks import _random_blocks

    bt = BLOCK_TYPES[fmt]
    blocks = _random_blocks(fmt, 6 * 4, np.random.default_rng(11)).reshape(6, 4, bt.type_size)

    class G:  # the graph builder interface BlockDequant uses (export/onnx_graph.py _G)
        def __init__(self):
            self.nodes, self.inits, self.n = [], [], 0

        def op(self, op, inputs, **attrs):
            self.n += 1
            self.nodes.append(helper.make_node(op, list(inputs), [f"t{self.n}"], **attrs))
            return f"t{self.n}"

        def const(self, arr, base="c"):
            self.n += 1
            self.inits.append(numpy_helper.from_array(np.asarray(arr), f"{base}{self.n}"))
            return f"{base}{self.n}"

    g = G()
    bd = BlockDequant(g)
    full = bd.dequant(g.const(blocks, "w"), fmt, 2)  # [6, 4, QK]
    rows = bd.dequant(g.op("Gather", [g.const(blocks, "w"), "ids"], axis=0), fmt, 3)  # [1, T, 4, QK]
    graph = helper.make_graph(
        g.nodes, "blocks", [helper.make_tensor_value_info("ids", TensorProto.INT64, [1, "T"])],
        [helper.make_tensor_value_info(full, TensorProto.FLOAT, None),
         helper.make_tensor_value_info(rows, TensorProto.FLOAT, None)], initializer=g.inits)  # fmt: skip
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 10
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    ids = np.array([[5, 0, 2]], np.int64)
    got_full, got_rows = sess.run(None, {"ids": ids})
    ref = dequantize_blocks(blocks, fmt)  # (6, 4, QK)
    np.testing.assert_array_equal(got_full.view(np.uint32), ref.view(np.uint32))
    np.testing.assert_array_equal(got_rows.view(np.uint32), ref[ids].view(np.uint32))
