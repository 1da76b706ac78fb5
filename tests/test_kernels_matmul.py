"""Every matmul variant (scalar, avx2, ...) against the numpy references, random + edge shapes.

Tolerances: quantized kernels quantize x to int8 as llama.cpp does (per 32 values d = fp16(amax/127);
Q8_K per 256 for 2-bit weights in blocks of 256): rounding moves each x_k by at most d/2 plus the fp16
rounding of d, so against the exact float product the error is bounded by
sum_k |W[n,k]| d(k) (1/2 + 127/2048) (reference.matmul_q8_error_bound). Against ``reference.matmul_q8`` (the same
integer arithmetic in float64) only float32 summation order differs: ~1e-5 of sum |terms|.
"""

import numpy as np
import pytest
from edgerun.kernels import Weight, available_isas, matmul, set_num_threads, use_isa
from edgerun.kernels import reference as ref
from edgerun.quant import MATMULNBITS_FORMATS, quantize

ISAS = available_isas()
QFORMATS = sorted(MATMULNBITS_FORMATS)  # the ggml block formats get their kernels later
SHAPES = [(1, 32), (1, 1), (7, 100), (33, 256), (16, 576), (50, 1000), (9, 300), (64, 1537)]


@pytest.fixture(params=[1, 2, 5], ids=["1thread", "2threads", "5threads"])
def threads(request):
    set_num_threads(request.param)
    yield request.param
    set_num_threads(None)


def _check_q(q, x, y):
    exact = ref.matmul(q, x)
    bound = ref.matmul_q8_error_bound(q, x)
    # float32 accumulation slack on top of the int8-activation bound
    slack = 1e-5 * (np.abs(x) @ np.abs(q.dequantize()).T) + 1e-6
    assert np.all(np.abs(y - exact) <= bound + slack)
    emu = ref.matmul_q8(q, x)
    np.testing.assert_allclose(y, emu, rtol=0, atol=float(slack.max()))


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("fmt", QFORMATS)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_quant_gemv_gemm(isa, fmt, shape, threads):
    rng = np.random.default_rng(hash((fmt, shape)) % 2**32)
    n, k = shape
    w = rng.standard_normal(shape).astype(np.float32)
    if fmt == "ternary" and k <= 64:
        q = quantize(w, fmt, 32)
    else:
        q = quantize(w, fmt)
    wt = Weight(q)
    for m in (1, 3):
        x = rng.standard_normal((m, k)).astype(np.float32)
        with use_isa(isa):
            y = matmul(wt, x)
        _check_q(q, x, y)
    with use_isa(isa):
        y1 = matmul(wt, x[0])  # 1-D GEMV form
    _check_q(q, x[:1], y1[None])


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("bs", [32, 64])
@pytest.mark.parametrize("m", [2, 8, 13, 21])  # the 8-bit GEMM's register tiles: 8 tokens, then 1..7
@pytest.mark.parametrize("k", [240, 512, 1000])  # 240: Whisper's conv1 (a padded last block); 1000: a tail chunk
def test_int8_gemm_tiles(isa, bs, m, k, threads):
    rng = np.random.default_rng(m * k + bs)
    q = quantize(rng.standard_normal((37, k)).astype(np.float32), "int8", bs)
    x = rng.standard_normal((m, k)).astype(np.float32)
    x[m // 2] *= 1e-3  # tokens of different magnitudes in one tile
    with use_isa(isa):
        y = matmul(Weight(q), x)
    _check_q(q, x, y)
    with use_isa(isa):  # each token alone (GEMV) gives the same values up to float summation order
        y1 = np.stack([matmul(Weight(q), x[i : i + 1])[0] for i in range(m)])
    np.testing.assert_allclose(y, y1, rtol=1e-5, atol=1e-5 * float(np.abs(y1).max()))


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("fmt,bs", [("int4", 64), ("int4", 128), ("int4_asym", 64), ("int4_asym", 128),
                                    ("ternary", 32), ("ternary", 64), ("ternary", 128), ("int8", 64)])
@pytest.mark.parametrize("k", [333, 1500, 4100])  # 1500/4100: many 8-sub-block groups + a tail
def test_block_sizes(isa, fmt, bs, k):
    rng = np.random.default_rng(bs + k)
    w = rng.standard_normal((21, k)).astype(np.float32)
    q = quantize(w, fmt, bs)
    x = rng.standard_normal((2, k)).astype(np.float32)
    with use_isa(isa):
        y = matmul(Weight(q), x)
    _check_q(q, x, y)


@pytest.mark.parametrize("isa", ISAS)
def test_edge_values(isa):
    # zero activations / zero weights / huge dynamic range inside one 32-group
    rng = np.random.default_rng(5)
    w = rng.standard_normal((8, 96)).astype(np.float32)
    w[0] = 0
    for fmt in QFORMATS:
        q = quantize(w, fmt)
        for x in (np.zeros((1, 96), np.float32), np.r_[[1e4], np.full(95, 1e-3)].astype(np.float32)[None]):
            with use_isa(isa):
                y = matmul(Weight(q), x)
            _check_q(q, x, y)


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("dtype", [np.float32, np.float16])
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_float_gemv_gemm(isa, dtype, shape, threads):
    rng = np.random.default_rng(1)
    w = rng.standard_normal(shape).astype(dtype)
    for m in (1, 5):
        x = rng.standard_normal((m, shape[1])).astype(np.float32)
        with use_isa(isa):
            y = matmul(Weight(w), x)
        exact = ref.matmul(w.astype(np.float32), x)
        # float32 accumulation: a few ulps of sum |w x| per output
        tol = 2e-6 * np.sqrt(shape[1]) * (np.abs(x) @ np.abs(w.astype(np.float32)).T) + 1e-6
        assert np.all(np.abs(y - exact) <= tol)


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("dtype", [np.float32, np.float16])
@pytest.mark.parametrize("n", [16, 71, 300])
def test_float_gemv_and_gemm_tiles_sum_alike(isa, dtype, n):
    """The float GEMV reads 4 row ranges in turn (more DRAM streams) and the GEMM runs tiles of 4 rows x 3 tokens;
    each (row, token) is summed in one order: every token of a 7-token GEMM (tiles of 3, 3 and 1 tokens) and of a
    2-token one equals that token's GEMV bit for bit (1 thread: the same row groups)."""
    rng = np.random.default_rng(n)
    w = rng.standard_normal((n, 520)).astype(dtype)
    x = rng.standard_normal((7, 520)).astype(np.float32)
    set_num_threads(1)
    try:
        with use_isa(isa):
            wt = Weight(w)
            gemvs = [matmul(wt, xt) for xt in x]
            gemm7, gemm2 = matmul(wt, x), matmul(wt, x[5:])
    finally:
        set_num_threads(None)
    for t in range(7):
        np.testing.assert_array_equal(gemvs[t], gemm7[t])
    np.testing.assert_array_equal(np.stack(gemvs[5:]), gemm2)
    gemv = gemvs[0]
    exact = ref.matmul(w.astype(np.float32), x[:1])[0]
    tol = 2e-6 * np.sqrt(520) * (np.abs(x[0]) @ np.abs(w.astype(np.float32)).T) + 1e-6
    assert np.all(np.abs(gemv - exact) <= tol)


def test_variants_agree_with_each_other():
    if len(ISAS) < 2:
        pytest.skip("only the scalar variant runs on this CPU")
    rng = np.random.default_rng(9)
    w = rng.standard_normal((40, 700)).astype(np.float32)
    x = rng.standard_normal((2, 700)).astype(np.float32)
    for fmt in QFORMATS:
        wt = Weight(quantize(w, fmt))
        ys = []
        for isa in ISAS:
            with use_isa(isa):
                ys.append(matmul(wt, x))
        for y in ys[1:]:
            np.testing.assert_allclose(y, ys[0], rtol=1e-5, atol=1e-5)


def test_bad_arguments():
    w = Weight(np.zeros((4, 8), np.float32))
    with pytest.raises(ValueError):
        matmul(w, np.zeros(9, np.float32))
    with pytest.raises(TypeError):
        matmul(w, np.zeros(8, np.float64))


def _one_hot(fmt: str, k: int, bs: int | None = None):
    """(k, k) weight whose row i is nonzero only at column i: y[i] is one product sw * sx * (code - z) * q[i]."""
    return Weight(quantize(np.eye(k, dtype=np.float32), fmt, bs))


def _tricky_activations(k: int, rng) -> np.ndarray:
    """Rows that hit the quantizer's corner cases: halves after scaling (round half to even), exact
    extremes, a tie between +max and -max (Q8_K takes the first), zeros, huge range, a short tail."""
    rows = [rng.standard_normal(k), np.zeros(k)]
    h = (np.arange(k) % 254 - 127).astype(np.float64)  # amax 127: x * 127/amax hits every half below
    rows.append(h + 0.5 * (np.arange(k) % 2))
    t = rng.standard_normal(k)
    t[::37] = 3.0
    t[5::37] = -3.0  # -max before +max in some 256-blocks, after in others
    rows.append(t)
    rows.append(np.r_[[1e4], np.full(k - 1, 1e-3)])
    return np.asarray(rows, np.float32)


@pytest.mark.parametrize("fmt,bs", [("int8", 32), ("int4", 32), ("int4", 64), ("int4_asym", 32),
                                    ("ternary", 256), ("ternary", 64), ("ternary", 32)])
@pytest.mark.parametrize("k", [256, 576, 800])
def test_activation_quantization_identical_across_variants(fmt, bs, k):
    # one-hot rows make each output a single rounded product of the quantized activation, so any
    # difference in the int8 activations or their scales between variants shows as a bit difference
    if len(ISAS) < 2:
        pytest.skip("only the scalar variant runs on this CPU")
    rng = np.random.default_rng(k + bs)
    wt = _one_hot(fmt, k, bs)
    x = _tricky_activations(k, rng)
    ys = []
    for isa in ISAS:
        with use_isa(isa):
            ys.append(matmul(wt, x))
    for y in ys[1:]:
        np.testing.assert_array_equal(y, ys[0])


def _random_codes(fmt: str, bs: int, n: int, k: int, rng):
    """A tensor of ``fmt`` with every code value and random (non-uniform) zero points."""
    q = quantize(rng.standard_normal((n, k)).astype(np.float32), fmt, bs)
    q.data = rng.integers(0, 256, q.data.shape, dtype=np.uint8)
    q.zero_points = rng.integers(0, 256, q.zero_points.shape, dtype=np.uint8)
    return q


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("fmt,bs", [("ternary", 256), ("ternary", 64), ("ternary", 32), ("int4_asym", 64)])
@pytest.mark.parametrize("k", [576, 1024, 1100])
def test_non_uniform_zero_points(isa, fmt, bs, k):
    # ternary files hold zero point 1 everywhere (zp_hint lets the kernels skip them); any zero points work
    rng = np.random.default_rng(k + bs)
    q = _random_codes(fmt, bs, 13, k, rng)
    wt = Weight(q)
    assert wt._c.zp_hint == 0
    x = rng.standard_normal((3, k)).astype(np.float32)
    with use_isa(isa):
        _check_q(q, x, matmul(wt, x))
        _check_q(q, x[:1], matmul(wt, x[0])[None])


def test_zero_point_hint():
    rng = np.random.default_rng(3)
    w = rng.standard_normal((8, 512)).astype(np.float32)
    assert Weight(quantize(w, "ternary"))._c.zp_hint == 2  # zero point 1 everywhere
    assert Weight(quantize(w, "int4"))._c.zp_hint == 0  # none stored
    q = _random_codes("int4_asym", 32, 8, 512, rng)
    q.zero_points[:] = 0x33
    assert Weight(q)._c.zp_hint == 4


@pytest.mark.parametrize("fmt,bs", [("int8", 32), ("int8", 64), ("int4", 32), ("int4_asym", 64), ("ternary", 256),
                                    ("ternary", 32), ("f16", 0), ("f32", 0)])
@pytest.mark.parametrize("k", [576, 640, 1100])
def test_weight_row(fmt, bs, k):
    """er_weight_row (the decode step's embedding lookup) equals the numpy dequantization bit for bit."""
    from edgerun.kernels._lib import lib

    rng = np.random.default_rng(k + bs)
    if fmt in ("f16", "f32"):
        w = rng.standard_normal((7, k)).astype(np.float16 if fmt == "f16" else np.float32)
        full = w.astype(np.float32)
    else:
        w = _random_codes(fmt, bs, 7, k, rng) if fmt != "int8" and fmt != "int4" else \
            quantize(rng.standard_normal((7, k)).astype(np.float32), fmt, bs)
        full = w.dequantize()
    wt = Weight(w)
    out = np.empty(k, np.float32)
    mul = np.float32(np.sqrt(640.0))
    for row in (0, 3, 6):
        assert lib.er_weight_row(wt._ref, row, 1.0, out.ctypes.data) == 0
        np.testing.assert_array_equal(out, full[row])
        assert lib.er_weight_row(wt._ref, row, float(mul), out.ctypes.data) == 0
        np.testing.assert_array_equal(out, full[row] * mul)
    assert lib.er_weight_row(wt._ref, 7, 1.0, out.ctypes.data) == -1  # past the last row
    gg = Weight(ref.ggml_random_weight("q4_1", (4, 64), rng))
    assert lib.er_weight_row(gg._ref, 0, 1.0, out.ctypes.data) == -2  # GGUF blocks: the caller's numpy path
