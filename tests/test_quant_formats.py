"""Quant formats: sizes, packing, round-trip error bounds, padding for K not a block multiple."""

import numpy as np
import pytest
from edgerun.quant import FORMATS, MATMULNBITS_FORMATS, dequantize, get_format, pack_codes, quantize, unpack_codes

SHAPES = [(1, 32), (3, 100), (8, 576), (5, 1000), (2, 17)]


@pytest.mark.parametrize("bits", [2, 4, 8])
def test_pack_roundtrip(bits):
    rng = np.random.default_rng(bits)
    codes = rng.integers(0, 1 << bits, (3, 5, 64), dtype=np.uint8)
    packed = pack_codes(codes, bits)
    assert packed.shape == (3, 5, 64 * bits // 8)
    np.testing.assert_array_equal(unpack_codes(packed, bits), codes)


def test_pack_is_low_bits_first():
    # element 0 in the low nibble, element 1 in the high nibble (MatMulNBits order)
    assert pack_codes(np.array([[1, 2]]), 4)[0, 0] == 0x21
    assert pack_codes(np.array([[1, 2, 0, 3]]), 2)[0, 0] == 0b11_00_10_01


@pytest.mark.parametrize("fmt", sorted(MATMULNBITS_FORMATS))
@pytest.mark.parametrize("shape", SHAPES)
def test_roundtrip_error_bound(fmt, shape):
    rng = np.random.default_rng(0)
    w = rng.standard_normal(shape).astype(np.float32)
    q = quantize(w, fmt)
    cls = get_format(fmt)
    n, k = shape
    nb = -(-k // q.block_size)
    assert q.data.shape == (n, nb, q.block_size * q.bits // 8) and q.data.dtype == np.uint8
    assert q.scales.shape == (n, nb) and q.scales.dtype == np.float16
    assert q.nbytes == cls.nbytes(shape, q.block_size)
    d = dequantize(q)
    assert d.shape == shape and d.dtype == np.float32
    # per-block bound: half a quantization step (scale), plus f16 rounding of the scale
    wp = np.zeros((n, nb * q.block_size), np.float32)
    wp[:, :k] = w
    step = np.abs(q.scales.astype(np.float32))[..., None]
    err = np.abs(d - w).reshape(n, -1)
    errp = np.zeros_like(wp)
    errp[:, :k] = err
    errp = errp.reshape(n, nb, -1)
    if fmt == "ternary":
        # values beyond 1.5*scale clip to +-scale
        limit = np.maximum(0.5 * step, np.abs(wp.reshape(n, nb, -1)) - step) * 1.002 + 1e-6
    elif fmt == "int4":
        # like Q4_0: the largest |w| maps to -8*d; the opposite side clips at 7*d
        a = np.abs(wp.reshape(n, nb, -1))
        limit = np.maximum(0.5 * step, a - 7 * step) * 1.01 + 1e-6 + 0.002 * a
    else:
        limit = 0.5 * step * 1.01 + 1e-6 + 0.002 * np.abs(wp.reshape(n, nb, -1))
    assert np.all(errp <= limit)


@pytest.mark.parametrize("fmt,bs", [("int4", 64), ("int4", 128), ("int4_asym", 64), ("int4_asym", 128),
                                    ("ternary", 64), ("ternary", 32), ("int8", 64)])
def test_other_block_sizes(fmt, bs):
    w = np.random.default_rng(1).standard_normal((4, 200)).astype(np.float32)
    q = quantize(w, fmt, bs)
    assert q.block_size == bs and q.data.shape[1] == -(-200 // bs)
    rel = np.linalg.norm(dequantize(q) - w) / np.linalg.norm(w)
    assert rel < {"int4": 0.2, "int4_asym": 0.2, "ternary": 0.65, "int8": 0.01}[fmt]


def test_bits_per_weight():
    assert FORMATS["ternary"].bits_per_weight() <= 2.1
    assert FORMATS["int4"].bits_per_weight(32) == 4.5
    assert FORMATS["int8"].bits_per_weight(32) == 8.5


def test_exact_values_survive():
    # weights already on the grid come back exactly
    rng = np.random.default_rng(2)
    t = rng.integers(-1, 2, (3, 256)).astype(np.float32) * 0.5
    t[:, 0] = 0.5  # nonzero mean |w| per block... make absmean = 0.5 by using +-0.5 only
    t[t == 0] = -0.5
    np.testing.assert_array_equal(dequantize(quantize(t, "ternary")), t)
    i = rng.integers(-127, 128, (3, 64)).astype(np.float32)
    i[:, ::32] = 127
    np.testing.assert_array_equal(dequantize(quantize(i * 0.25, "int8")), i * 0.25)


def test_ternary_values():
    w = np.random.default_rng(3).standard_normal((4, 300)).astype(np.float32)
    q = quantize(w, "ternary")
    d = dequantize(q)
    s = np.repeat(q.scales.astype(np.float32), q.block_size, axis=1)[:, :300]
    np.testing.assert_array_equal(np.unique(np.round(d / s)), [-1, 0, 1])


def test_zero_weights():
    for fmt in MATMULNBITS_FORMATS:
        q = quantize(np.zeros((2, 64), np.float32), fmt)
        np.testing.assert_array_equal(dequantize(q), 0)


def test_unknown_format():
    from edgerun.errors import UnsupportedError

    with pytest.raises(UnsupportedError):
        quantize(np.zeros((1, 32), np.float32), "int3")
    with pytest.raises(UnsupportedError):
        quantize(np.zeros((1, 32), np.float32), "int4", 48)
