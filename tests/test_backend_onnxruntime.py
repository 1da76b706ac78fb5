"""The onnxruntime backend (artifact's model.onnx over weights.bin) against the native backend and reference.

Tolerance: both onnxruntime (MatMulNBits accuracy_level=4, activations cast to f16 then quantized to
int8 per block) and the native kernels (q8 activations, like llama.cpp) quantize activations to
8 bits, so their logits differ from the f32 reference on the same quantized weights by ~1% RMS
(measured 0.75% llama int4/int8, 0.9% qwen2, 1.0% gemma3; the native backend is 0.74-1.0% on the same);
we allow 3% and require the same argmax on >= 90% of positions and identical greedy continuations.
"""

from __future__ import annotations

import edgerun
import numpy as np
import onnx
import pytest
from backend_checks import rel, same_greedy
from edgerun.export.onnx_graph import ONNX_FILE, build_onnx
from tiny_models import make_tiny

PROMPTS = ["Once upon a time, in a small village, there lived ", "The capital of France is",
           "def fibonacci(n):"]




@pytest.fixture(scope="module")
def tiny(tmp_path_factory, smollm2_gguf):
    from edgerun.bench.speed import random_llama_gguf
    from edgerun.export.exporter import export

    d = tmp_path_factory.mktemp("ort")
    g = random_llama_gguf(d / "tiny.gguf", smollm2_gguf, dim=256, n_layers=2, n_heads=4, n_kv_heads=2,
                          ffn_dim=512, context_length=512)
    return {w: export(g, d / f"{w}.edge", weights=w) for w in ("int4", "int8")}


@pytest.mark.parametrize("weights", ["int4", "int8"])
def test_onnx_file_is_small_checked_and_reads_weights_bin(tiny, weights):
    art = tiny[weights]
    path = art / ONNX_FILE
    assert path.exists() and path.stat().st_size < 1 << 20
    onnx.checker.check_model(str(path))
    m = onnx.load(str(path), load_external_data=False)
    assert m.ir_version == 10
    ext = [t for t in m.graph.initializer if t.data_location == onnx.TensorProto.EXTERNAL]
    assert len(ext) >= 7 * 2  # every layer's matrices at least
    wbytes = (art / "weights.bin").stat().st_size
    for t in ext:
        kv = {e.key: e.value for e in t.external_data}
        assert kv["location"] == "weights.bin"
        assert int(kv["offset"]) + int(kv["length"]) <= wbytes
    assert sum(n.op_type == "MatMulNBits" for n in m.graph.node) == 2 * 7 + 1
    manifest = edgerun.load(art, backend="onnxruntime").artifact.manifest
    assert "onnx" in manifest["targets"] and ONNX_FILE in manifest["files"]


@pytest.mark.parametrize("weights", ["int4", "int8"])
def test_onnxruntime_matches_native_and_reference(tiny, weights):
    ref = edgerun.load(tiny[weights], backend="reference")
    nat = edgerun.load(tiny[weights], backend="native")
    ort = edgerun.load(tiny[weights], backend="onnxruntime", threads=1)
    assert ort.backend == "onnxruntime"
    ids = ref.tokenizer.encode(PROMPTS[0] * 3)
    lr, ln, lo = ref.logits(ids), nat.logits(ids), ort.logits(ids)
    assert rel(lo, lr) < 0.03 and rel(lo, ln) < 0.03
    assert (lo.argmax(-1) == lr.argmax(-1)).mean() >= 0.9
    # decode steps through the explicit KV inputs/outputs agree with the prefill of the same tokens
    c = ort.new_cache()
    ort.prefill(ids[:5], c)
    steps = np.stack([ort.decode_step(t, c) for t in ids[5:12]])
    np.testing.assert_allclose(steps, lo[5:12], atol=0.02 * np.abs(lo).max())
    assert c.length == 12 and c.k[0].shape == (1, 2, 12, 64)
    for p in PROMPTS:
        same_greedy(ort, nat, ref.tokenizer.encode(p), 12)


@pytest.mark.parametrize("arch", ["qwen2", "gemma3"])
def test_onnxruntime_other_archs(tmp_path, smollm2_gguf, arch):
    """qwen2 (QKV biases) and gemma3 (QK-norm, sandwich norms, GeGLU, window 8 < prompt) from HF."""
    from edgerun.export.exporter import export

    hf, _ = make_tiny(arch, tmp_path, smollm2_gguf)
    art = export(hf, tmp_path / f"{arch}.edge", weights="int4")
    ref = edgerun.load(art, backend="reference")
    ort = edgerun.load(art, backend="onnxruntime")
    ids = ref.tokenizer.encode(PROMPTS[0] * 3)
    assert len(ids) > 16
    lr, lo = ref.logits(ids), ort.logits(ids)
    assert rel(lo, lr) < 0.03
    c = ort.new_cache()
    ort.prefill(ids[:10], c)
    steps = np.stack([ort.decode_step(t, c) for t in ids[10:20]])
    np.testing.assert_allclose(steps, lo[10:20], atol=0.02 * np.abs(lo).max())


def test_missing_onnx_is_built_on_load(tiny, tmp_path):
    import shutil

    art = shutil.copytree(tiny["int4"], tmp_path / "copy.edge")
    (art / ONNX_FILE).unlink()
    ort = edgerun.load(art, backend="onnxruntime")
    assert (art / ONNX_FILE).exists()
    assert edgerun.load(art).artifact.manifest["targets"] == ["native", "onnx"]
    assert ort.generate("Hello", max_tokens=4) == edgerun.load(art).generate("Hello", max_tokens=4)
    assert build_onnx(art) == art / ONNX_FILE  # idempotent: targets not duplicated
    assert edgerun.load(art).artifact.manifest["targets"] == ["native", "onnx"]


def test_corrupt_onnx_is_reported(tiny, tmp_path):
    import shutil

    art = shutil.copytree(tiny["int4"], tmp_path / "bad.edge")
    raw = bytearray((art / ONNX_FILE).read_bytes())
    raw[-3] ^= 0xFF
    (art / ONNX_FILE).write_bytes(bytes(raw))
    with pytest.raises(edgerun.errors.CorruptFileError, match="model.onnx"):
        edgerun.load(art, backend="onnxruntime")


SMOL_PROMPTS = ["Once upon a time, in a small village, there lived ", "def fibonacci(n):",
                "The capital of France is Paris. The capital of Germany is", "Water boils at a temperature of",
                "The capital of France is", "Hello, my name is"]


@pytest.mark.model
def test_smollm2_int4_onnxruntime_greedy_equals_native(tmp_path_factory, smollm2_gguf):
    """16 greedy tokens equal to the native backend's on most prompts; a prompt may part only at a near-tie
    of the native logits (< 2% of the largest logit: "The capital of France is": 13.52 vs 13.59 on 20.6;
    "Once upon a time ...": 23.82 vs 23.76, where onnxruntime's f16 activations pick the other token)."""
    from edgerun.export.exporter import export

    art = export(smollm2_gguf, tmp_path_factory.mktemp("smol") / "smollm2-int4.edge", weights="int4")
    nat = edgerun.load(art, backend="native", threads=2)
    ort = edgerun.load(art, backend="onnxruntime", threads=2)
    identical = [same_greedy(ort, nat, nat.tokenizer.encode(p), 16) for p in SMOL_PROMPTS]
    assert sum(identical) >= 3, identical
