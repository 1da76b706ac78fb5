"""GGUF block -> edgerun format converters: exact where the math allows (gguf-py makes the blocks)."""

import numpy as np
import pytest
from edgerun.quant import dequantize, from_gguf, quantize
from gguf import GGMLQuantizationType
from gguf.quants import dequantize as gg_dequantize
from gguf.quants import quantize as gg_quantize


def _gguf(w, qtype):
    raw = gg_quantize(w, GGMLQuantizationType[qtype])  # (N, row_bytes) uint8
    ref = gg_dequantize(raw, GGMLQuantizationType[qtype]).reshape(w.shape)
    return raw, ref


@pytest.mark.parametrize("qtype,fmt", [("Q8_0", "int8"), ("Q4_0", "int4"), ("TQ2_0", "ternary"),
                                       ("TQ1_0", "ternary")])
@pytest.mark.parametrize("shape", [(3, 256), (5, 768)])
def test_exact(qtype, fmt, shape):
    rng = np.random.default_rng(0)
    w = rng.standard_normal(shape).astype(np.float32)
    if qtype.startswith("TQ"):
        w = np.clip(np.rint(w), -1, 1) * rng.uniform(0.01, 1, (shape[0], 1)).astype(np.float32)
    raw, ref = _gguf(w, qtype)
    q = from_gguf(raw, shape, qtype)
    assert q.format == fmt
    np.testing.assert_array_equal(dequantize(q), ref)  # bit-exact


def test_q4_1_exact_blocks_and_requantized_rest():
    rng = np.random.default_rng(1)
    w = rng.standard_normal((4, 256)).astype(np.float32)
    # first 32-block of row 0: values on an integer grid with min -3*d  ->  -m/d = 3 is exact
    w[0, :32] = (np.arange(32) % 16 - 3).astype(np.float32) * 0.125
    raw, ref = _gguf(w, "Q4_1")
    q = from_gguf(raw, w.shape, "Q4_1")
    assert q.format == "int4_asym" and q.zero_points is not None
    d = dequantize(q)
    np.testing.assert_array_equal(d[0, :32], ref[0, :32])
    # the rest: never worse than a plain asymmetric requantization of the Q4_1 values
    plain = dequantize(quantize(ref, "int4_asym"))
    err = np.abs(d - ref).reshape(4, -1, 32).sum(-1)
    err_plain = np.abs(plain - ref).reshape(4, -1, 32).sum(-1)
    assert np.all(err <= err_plain * (1 + 1e-5) + 1e-6)
    assert np.linalg.norm(d - ref) / np.linalg.norm(ref) < 0.1


def test_unsupported():
    from edgerun.errors import UnsupportedError

    with pytest.raises(UnsupportedError):
        from_gguf(np.zeros((1, 144), np.uint8), (1, 256), "Q4_K")
