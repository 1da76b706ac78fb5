"""quant/kv.py: KIVI key/value quantizers — packing, error bounds, byte sizes."""

import numpy as np
import pytest
from edgerun.errors import EdgerunError
from edgerun.quant import kv


@pytest.mark.parametrize("bits", [8, 4, 2])
def test_pack_roundtrip(bits):
    rng = np.random.default_rng(0)
    codes = rng.integers(0, 1 << bits, size=(3, 5, 64), dtype=np.uint8)
    p = kv.pack(codes, bits)
    assert p.shape == (3, 5, 64 * bits // 8) and p.dtype == np.uint8
    assert np.array_equal(kv.unpack(p, bits, 64), codes)


@pytest.mark.parametrize("bits", [8, 4, 2])
def test_keys_per_channel_error_bound(bits):
    rng = np.random.default_rng(1)
    k = rng.standard_normal((2, 32, 64)).astype(np.float32)
    k[:, :, 5] *= 20.0  # an outlier channel: per-channel scales keep the others precise
    packed, scale, mn = kv.quantize_keys(k, bits)
    assert scale.shape == (2, 1, 64) and mn.dtype == np.float16
    nbytes = packed.nbytes + scale.nbytes + mn.nbytes
    assert nbytes == kv.key_group_nbytes(2, 32, 64, bits)
    d = kv.dequantize_keys(packed, scale, mn, bits, 64)
    bound = scale.astype(np.float32) / 2 + 2e-3 * (np.abs(k).max(axis=1, keepdims=True) + 1)
    assert np.all(np.abs(d - k) <= bound)
    others = np.delete(np.abs(d - k), 5, axis=2)
    assert others.max() < np.abs(d - k)[:, :, 5].max()  # the outlier channel does not spoil the rest


@pytest.mark.parametrize("bits", [8, 4, 2])
def test_values_per_token_error_bound(bits):
    rng = np.random.default_rng(2)
    v = rng.standard_normal((2, 7, 64)).astype(np.float32)
    packed, scale, mn = kv.quantize_values(v, bits, group=32)
    assert scale.shape == (2, 7, 2)
    assert (mn is None) == (bits == 8)  # int8 values are symmetric: no mins stored
    assert packed.nbytes + scale.nbytes + (0 if mn is None else mn.nbytes) == kv.value_nbytes(2, 7, 64, bits, 32)
    d = kv.dequantize_values(packed, scale, mn, bits, 64)
    s = np.repeat(scale.astype(np.float32), 32, axis=-1)
    assert np.all(np.abs(d - v) <= s / 2 + 2e-3 * (np.abs(v).max() + 1))
    rel = np.linalg.norm(d - v) / np.linalg.norm(v)
    assert rel < {8: 0.01, 4: 0.12, 2: 0.5}[bits]


def test_int8_values_symmetric():
    """int8 values: code = rint(x / s) + 128 with s = max|x| / 127, so 0 stays exactly 0 and the extreme is +-127."""
    rng = np.random.default_rng(3)
    v = (rng.standard_normal((1, 5, 64)) + 3.0).astype(np.float32)  # an offset the symmetric grid has to cover
    v[0, 0, :32] = 0.0
    packed, scale, mn = kv.quantize_values(v, 8, group=32)
    assert mn is None and packed.dtype == np.uint8
    np.testing.assert_array_equal(packed[0, 0, :32], 128)
    d = kv.dequantize_values(packed, scale, mn, 8, 64)
    assert (d[0, 0, :32] == 0).all()
    top = np.abs(v).reshape(1, 5, 2, 32).argmax(-1)  # the largest |x| of each group is coded as +-127
    codes = packed.reshape(1, 5, 2, 32).astype(int) - 128
    extreme = np.abs(np.take_along_axis(codes, top[..., None], -1))[..., 0]
    assert extreme[0, 0, 0] == 0 and (extreme.reshape(-1)[1:] == 127).all()  # the all-zero group stays 0
    s = np.repeat(scale.astype(np.float32), 32, axis=-1)
    assert np.all(np.abs(d - v) <= s / 2 + 1e-3 * np.abs(v))


def test_constant_input_is_exact():
    k = np.full((1, 32, 32), 0.5, np.float32)
    packed, scale, mn = kv.quantize_keys(k, 2)
    assert np.array_equal(kv.dequantize_keys(packed, scale, mn, 2, 32), k)


def test_bytes_per_token_ordering():
    sizes = [kv.kv_bytes_per_token(3, 64, b) for b in (32, 16, 8, 4, 2)]
    assert sizes == sorted(sizes, reverse=True)
    assert sizes[1] == 2 * 3 * 64 * 2
    assert sizes[3] < sizes[1] / 3  # int4 is well under a third of f16, scales included


def test_bad_bits():
    with pytest.raises(EdgerunError, match="kv_bits=3"):
        kv.check_bits(3)
