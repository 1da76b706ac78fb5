"""Decode ops (rmsnorm, rope, softmax, silu, gelu, GLU products, GQA attention) vs numpy, every variant."""

import numpy as np
import pytest
from edgerun.kernels import (
    attention,
    attention_prefill,
    available_isas,
    gelu_mul,
    gelu_tanh,
    mul,
    registry,
    rmsnorm,
    rope_neox,
    rope_rows,
    set_num_threads,
    silu,
    silu_mul,
    softmax,
    use_isa,
)
from edgerun.kernels import reference as ref

ISAS = available_isas()
# float32 ops against float64 references: relative error of a few ulps (1.2e-7 each)
RTOL = 2e-6


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("n", [1, 7, 64, 576, 1001])
def test_elementwise(isa, n):
    rng = np.random.default_rng(n)
    a = (rng.standard_normal(n) * 4).astype(np.float32)
    b = rng.standard_normal(n).astype(np.float32)
    w = rng.standard_normal(n).astype(np.float32)
    with use_isa(isa):
        np.testing.assert_allclose(silu(a), ref.silu(a), rtol=RTOL, atol=1e-7)
        # 1 + tanh(z) cancels for z << 0: absolute error <= 0.5 |x| ulp(1) ~ 6e-8 |x|
        gatol = 1.2e-7 * float(np.abs(a).max()) + 1e-7
        np.testing.assert_allclose(gelu_tanh(a), ref.gelu_tanh(a), rtol=RTOL, atol=gatol)
        np.testing.assert_allclose(mul(a, b), ref.mul(a, b), rtol=0, atol=0)
        np.testing.assert_allclose(silu_mul(a, b), ref.silu_mul(a, b), rtol=RTOL, atol=1e-7)
        np.testing.assert_allclose(gelu_mul(a, b), ref.gelu_mul(a, b), rtol=RTOL,
                                   atol=gatol * float(np.abs(b).max()))
        x2 = np.stack([a, b])
        np.testing.assert_allclose(rmsnorm(x2, w, 1e-6), ref.rmsnorm(x2, w, 1e-6), rtol=1e-5, atol=1e-6)
        s = a.copy()[None].repeat(2, 0)
        np.testing.assert_allclose(softmax(s), ref.softmax(a[None].repeat(2, 0)), rtol=1e-5, atol=1e-8)


def test_softmax_extremes():
    x = np.array([[1e4, -1e4, 0.0, 1e4]], np.float32)
    np.testing.assert_allclose(softmax(x.copy()), ref.softmax(x), atol=1e-7)


@pytest.mark.parametrize("head_dim", [64, 128, 6])
@pytest.mark.parametrize("pos", [0, 1, 17, 8191])
def test_rope_neox(head_dim, pos):
    rng = np.random.default_rng(pos)
    x = rng.standard_normal((3, head_dim)).astype(np.float32)
    for theta, fs in ((10000.0, 1.0), (100000.0, 0.125)):
        y = rope_neox(x.copy(), pos, theta, fs)
        np.testing.assert_allclose(y, ref.rope_neox(x, pos, theta, fs), rtol=1e-5, atol=1e-5)
    # norm of every rotated pair is preserved
    y = rope_neox(x.copy(), pos, 10000.0)
    h = head_dim // 2
    np.testing.assert_allclose(y[:, :h] ** 2 + y[:, h:] ** 2, x[:, :h] ** 2 + x[:, h:] ** 2, rtol=1e-5)


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("head_dim", [64, 128, 6, 20])
def test_rope_rows_equals_apply_rope(isa, head_dim):
    """The prefill's RoPE from tables: bit for bit the floats of base.apply_rope (the numpy path it replaces)."""
    from edgerun.runtime.models.base import apply_rope, rope_tables

    rng = np.random.default_rng(head_dim)
    t, h = 37, 5
    x = (rng.standard_normal((t, h, head_dim)) * 3).astype(np.float32)
    cos, sin = rope_tables(np.arange(100, 100 + t), head_dim, 10000.0, 1.0)
    want = apply_rope(x.transpose(1, 0, 2), cos, sin).transpose(1, 0, 2)
    with use_isa(isa):
        got = rope_rows(x.copy(), cos, sin)
    np.testing.assert_array_equal(got, want)
    np.testing.assert_array_equal(ref.rope_rows(x, cos, sin), want)


@pytest.fixture(params=[1, 2], ids=["1thread", "2threads"])
def threads(request):
    set_num_threads(request.param)
    yield
    set_num_threads(None)


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("kv_dtype", [np.float32, np.float16])
@pytest.mark.parametrize("h,hkv,d,s,n_ctx", [(9, 3, 64, 40, 33), (4, 4, 8, 1, 1), (8, 1, 64, 300, 300),
                                             (15, 5, 64, 17, 5), (2, 1, 70, 130, 129)])
@pytest.mark.parametrize("softcap", [0.0, 5.0])
def test_attention(isa, kv_dtype, h, hkv, d, s, n_ctx, softcap, threads):
    rng = np.random.default_rng(h * d + s)
    q = rng.standard_normal((h, d)).astype(np.float32)
    k = rng.standard_normal((hkv, s, d)).astype(kv_dtype)
    v = rng.standard_normal((hkv, s, d)).astype(kv_dtype)
    scale = d**-0.5
    with use_isa(isa):
        out = attention(q, k, v, n_ctx, scale, softcap)
    np.testing.assert_allclose(out, ref.attention(q, k, v, n_ctx, scale, softcap), rtol=1e-4, atol=2e-5)


def test_attention_rejects_bad_gqa():
    q = np.zeros((5, 8), np.float32)
    kv = np.zeros((2, 4, 8), np.float32)
    with pytest.raises(ValueError):
        attention(q, kv, kv, 4, 1.0)


def test_registry():
    for fmt in ("f32", "f16", "int8", "int4", "int4_asym", "ternary"):
        k = registry.get("matmul", fmt)
        assert k.impl is not None and k.reference is not None
    assert registry.get("attention", "f16").op == "attention"
    from edgerun.errors import UnsupportedError

    with pytest.raises(UnsupportedError):
        registry.get("matmul", "int3")


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("kv_dtype", [np.float32, np.float16])
@pytest.mark.parametrize("h,hkv,d,t,p0,s,window", [(9, 3, 64, 37, 0, 40, None), (4, 4, 8, 1, 0, 1, None),
                                                   (8, 1, 64, 20, 100, 130, None), (6, 2, 70, 33, 5, 40, 9),
                                                   (2, 1, 16, 64, 0, 64, 1), (9, 3, 64, 150, 70, 230, 100),
                                                   (9, 3, 64, 200, 0, 210, None)])
@pytest.mark.parametrize("softcap", [0.0, 5.0])
def test_attention_prefill(isa, kv_dtype, h, hkv, d, t, p0, s, window, softcap, threads):
    rng = np.random.default_rng(h * d + t + p0)
    q = rng.standard_normal((t, h, d)).astype(np.float32)
    k = rng.standard_normal((hkv, s, d)).astype(kv_dtype)
    v = rng.standard_normal((hkv, s, d)).astype(kv_dtype)
    scale = d**-0.5
    with use_isa(isa):
        out = attention_prefill(q, k, v, p0, scale, softcap, window)
        flat = attention_prefill(q.reshape(t, h * d), k, v, p0, scale, softcap, window)  # the q projection's layout
    want = ref.attention_prefill(q, k, v, p0, scale, softcap, window)
    np.testing.assert_allclose(out, want, rtol=1e-4, atol=2e-5)
    np.testing.assert_array_equal(flat, out)
    # the last query equals one decode step at that position (up to float order: on AVX2 the prefill's query blocks
    # run an online softmax over key tiles, the decode step one softmax over all keys)
    if window is None:
        with use_isa(isa):
            last = attention(np.ascontiguousarray(q[-1]), k, v, p0 + t, scale, softcap)
        np.testing.assert_allclose(out[-1], last, rtol=1e-5, atol=1e-6)


def test_attention_prefill_rejects_short_cache():
    q = np.zeros((4, 2, 8), np.float32)
    kv = np.zeros((1, 5, 8), np.float32)
    with pytest.raises(ValueError):
        attention_prefill(q, kv, kv, 2, 1.0)  # positions 0..5 do not fit in 5
