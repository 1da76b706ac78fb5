"""The fused decode (one C call per layer: kernels/src/decode.c) equals the per-op decode bit for bit.

Both run the same kernels in the same float order, so logits must be identical, not just close: on llama
(SwiGLU), qwen2 (q/k/v biases) and gemma3 (q/k norms, post norms, GeGLU, sliding windows), with f32, int4 and
ternary weights, on the full cache (float16 and float32), the sink + window ring (float and KIVI layouts), 1 and
2 threads.
"""

from __future__ import annotations

import numpy as np
import pytest
from tiny_models import make_tiny

pytestmark = pytest.mark.model


@pytest.fixture(scope="module")
def tiny(tmp_path_factory, smollm2_gguf):
    from edgerun.export.exporter import export

    d = tmp_path_factory.mktemp("fused")
    out = {}
    for arch in ("llama", "qwen2", "gemma3"):
        hf, _ = make_tiny(arch, d, smollm2_gguf)
        for w in ("f32", "int4", "ternary"):
            out[arch, w] = export(hf, d / f"{arch}-{w}.edge", weights=w)
    return out


def _steps(llm, model, fused: bool, n: int = 40, dtype=None) -> np.ndarray:
    """Logits of a prompt and n greedy decode steps with the fused or the per-op decode (full cache of `dtype`,
    default: the backend's). (n + 1, vocab)"""
    model.fused_decode = fused
    c = llm.new_cache() if dtype is None else model.new_cache(dtype)
    rng = np.random.default_rng(0)
    out = [llm.prefill(rng.integers(10, llm.args.vocab_size, 11).tolist(), c)]
    for _ in range(n):
        out.append(llm.decode_step(int(np.argmax(out[-1])), c))
    return np.stack(out)


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("weights", ["f32", "int4", "ternary"])
@pytest.mark.parametrize("arch", ["llama", "qwen2", "gemma3"])
@pytest.mark.parametrize("dtype", [np.float16, np.float32])
def test_fused_decode_equals_per_op(tiny, arch, weights, threads, dtype):
    import edgerun

    llm = edgerun.load(tiny[arch, weights], backend="native", threads=threads)
    fused, ops = _steps(llm, llm.model, True, dtype=dtype), _steps(llm, llm.model, False, dtype=dtype)
    np.testing.assert_array_equal(fused, ops)


@pytest.mark.parametrize("arch", ["llama", "gemma3"])
def test_full_cache_float16_by_default_close_to_float32(tiny, arch):
    """The default full cache is float16 (as llama.cpp's): half the bytes of float32, logits within its rounding."""
    import edgerun

    llm = edgerun.load(tiny[arch, "f32"], backend="native")
    c16, c32 = llm.new_cache(), llm.model.new_cache(np.float32)
    assert c16.dtype == np.float16 and c16.k[0].dtype == np.float16 and c16.nbytes * 2 == c32.nbytes
    a, b = _steps(llm, llm.model, True), _steps(llm, llm.model, True, dtype=np.float32)
    assert 0 < np.abs(a - b).max() <= 1e-3 * np.abs(b).max(), np.abs(a - b).max() / np.abs(b).max()


@pytest.mark.parametrize("kv_bits", [32, 4])
@pytest.mark.parametrize("arch", ["llama", "gemma3"])
def test_fused_decode_ring_cache_equals_per_op(tiny, arch, kv_bits):
    from edgerun.runtime.llm.model import load

    m = load(tiny[arch, "int4"], ram=None, kv_bits=kv_bits, kv_window=16, kv_sinks=4, prefill_chunk=8)
    try:
        fused, ops = _steps(m, m.model, True), _steps(m, m.model, False)  # 51 tokens through a 16-token window
    finally:
        m.close()
    np.testing.assert_array_equal(fused, ops)


def test_decode_layer_rejects_bad_arguments():
    import ctypes

    from edgerun.kernels._lib import ErDecodeCfg, ErLayer, lib

    cfg, layer = ErDecodeCfg(), ErLayer()  # zero sizes, no buffers
    assert lib.er_decode_attn_in(ctypes.byref(cfg), ctypes.byref(layer), 0) < 0
    assert lib.er_decode_attn_out(ctypes.byref(cfg), ctypes.byref(layer)) < 0
    assert lib.er_decode_layer(ctypes.byref(cfg), ctypes.byref(layer), None, None, 0, 0) < 0
