"""llama.cpp-order kernels (kernels/src/ggml_exact.c) against their numpy references.

The whole forward is compared with llama.cpp itself in tests/test_quant_export_llama_cpp.py
(bit-identical logits); these tests pin each kernel on random and edge-case shapes.
"""

from __future__ import annotations

import numpy as np
import pytest
from edgerun.kernels import ggml_exact as gx
from edgerun.kernels.ops import Weight
from edgerun.quant.formats import get_format, unpack_codes

pytestmark = pytest.mark.skipif(not gx.available(), reason="llama.cpp-order kernels need x86-64 AVX2/FMA")
rng = np.random.default_rng(7)


def _values(q, n, k):
    """Signed weight values (N, K) = code - zero point of a quantized tensor."""
    codes = unpack_codes(q.data.reshape(n, -1), q.bits, k).astype(np.int64)
    zp = get_format(q.format).zero_point_array(q).astype(np.int64)  # (N, n_blocks)
    return codes - np.repeat(zp, q.block_size, axis=1)[:, :k]


@pytest.mark.parametrize("fmt,block,mode", [("int4", 32, gx.MODE_REPACK), ("int4", 32, gx.MODE_TINYBLAS),
                                            ("int8", 32, gx.MODE_TINYBLAS), ("int4", 64, gx.MODE_REPACK),
                                            ("ternary", 256, "tq2")])
@pytest.mark.parametrize("shape", [(13, 256, 1), (40, 512, 7), (8, 768, 3)])
@pytest.mark.parametrize("threads", [1, 3])
def test_matmul_equals_reference(fmt, block, mode, shape, threads):
    from edgerun.kernels._lib import lib

    n, k, t = shape
    w = (rng.standard_normal((n, k)) * 0.05).astype(np.float32)
    x = (rng.standard_normal((t, k)) * 2).astype(np.float32)
    x[0, :32] = 0.0  # an all-zero activation block
    q = get_format(fmt).quantize(w, block)
    lib.er_set_num_threads(threads)
    try:
        got = gx.matmul(Weight(q), x, gx.MODE_REPACK if mode == "tq2" else mode)
    finally:
        lib.er_set_num_threads(0)
    want = gx.matmul_ref(_values(q, n, k), q.scales, x, mode)
    np.testing.assert_array_equal(got, want)


def test_rmsnorm_equals_reference():
    x = (rng.standard_normal((5, 577)) * 3).astype(np.float32)
    w = rng.standard_normal(577).astype(np.float32)
    np.testing.assert_array_equal(gx.rmsnorm(x, w, 1e-5), gx.rmsnorm_ref(x, w, 1e-5))


@pytest.mark.parametrize("m,n,k", [(1, 1, 8), (17, 9, 64), (64, 33, 256)])
def test_f16_gemm_equals_reference(m, n, k):
    a = rng.standard_normal((m, k)).astype(np.float16).astype(np.float32)
    b = rng.standard_normal((n, k)).astype(np.float16).astype(np.float32)
    np.testing.assert_array_equal(gx.f16_gemm(a, b), gx.f16_gemm_ref(a, b))


def test_softmax_masks_and_normalizes():
    s = (rng.standard_normal((6, 24)) * 8).astype(np.float32)
    nv = np.array([1, 3, 8, 9, 20, 24])
    p = gx.softmax(s, nv, 0.125)
    for r, v in enumerate(nv):
        assert np.all(p[r, v:] == 0)
        e = np.exp((s[r, :v] * 0.125).astype(np.float64) - (s[r, :v] * 0.125).max())
        np.testing.assert_allclose(p[r, :v], e / e.sum(), rtol=2e-6, atol=1e-9)


def test_rope_rotates_pairs_like_ggml():
    x = rng.standard_normal((5, 3, 64)).astype(np.float32)
    pos = np.array([0, 1, 7, 100, 511])
    got = gx.rope(x, pos, 10000.0)
    np.testing.assert_array_equal(got[0], x[0])  # position 0: cos 1, sin 0
    theta = pos[:, None] * 10000.0 ** (-np.arange(32) / 32.0)  # (T, 32), float64
    c, s = np.cos(theta)[:, None], np.sin(theta)[:, None]
    want = np.empty_like(x)
    want[..., 0::2] = x[..., 0::2] * c - x[..., 1::2] * s
    want[..., 1::2] = x[..., 0::2] * s + x[..., 1::2] * c
    np.testing.assert_allclose(got, want, atol=5e-4)  # float32 theta by repeated products drifts at p=511
    neox = gx.rope(x, pos, 10000.0, neox=True)  # same pairs, (i, i + 32) layout
    perm = np.concatenate([np.arange(0, 64, 2), np.arange(1, 64, 2)])
    np.testing.assert_array_equal(gx.rope(x[..., perm], pos, 10000.0, neox=True)[..., np.argsort(perm)], got)
    assert neox.shape == x.shape


def test_swiglu_close_to_silu():
    g = (rng.standard_normal(1541) * 6).astype(np.float32)  # tail of 5 takes the scalar silu
    u = rng.standard_normal(1541).astype(np.float32)
    want = g.astype(np.float64) / (1 + np.exp(-g.astype(np.float64))) * u
    np.testing.assert_allclose(gx.swiglu(g, u), want, rtol=3e-6, atol=1e-7)
