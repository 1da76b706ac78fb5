"""The ternary GEMV fast path (2-bit codes in blocks of 256, uniform zero point, Q8_K activations).

It runs for every GEMV whose tensor qualifies (rows in tiles of 4, the rest through the generic tile), so the
shapes here cover row counts that are and are not multiples of 4 and 16 (the thread pool's grain), K that is and
is not a multiple of 256, and codes of every 2-bit value (3 included: the kernel's int16 sums must not
saturate), checked against the numpy reference of the same integer arithmetic on 1 and 2 threads.
"""

import numpy as np
import pytest
from edgerun.kernels import Weight, available_isas, matmul, set_num_threads, use_isa
from edgerun.kernels import reference as ref
from edgerun.quant import quantize

ISAS = available_isas()


@pytest.fixture(params=[1, 2], ids=["1thread", "2threads"])
def threads(request):
    set_num_threads(request.param)
    yield request.param
    set_num_threads(None)


def _check(q, x, y):
    emu = ref.matmul_q8(q, x)  # (M, N) float64 of the kernels' integer arithmetic
    slack = 1e-5 * (np.abs(x) @ np.abs(q.dequantize()).T) + 1e-6
    np.testing.assert_allclose(y, emu, rtol=0, atol=float(slack.max()))


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("shape", [(4, 256), (5, 1024), (67, 300), (130, 576), (256, 2816), (61, 1100)], ids=str)
def test_ternary_gemv(isa, shape, threads):
    rng = np.random.default_rng(shape[0] * 7 + shape[1])
    q = quantize(rng.standard_normal(shape).astype(np.float32), "ternary")
    wt = Weight(q)
    assert wt._c.zp_hint == 2 and q.block_size == 256
    x = rng.standard_normal(shape[1]).astype(np.float32)
    with use_isa(isa):
        y = matmul(wt, x)  # (N,)
    _check(q, x[None], y[None])


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("k", [256, 1000, 2816])
def test_ternary_gemv_every_code_value(isa, k, threads):
    # codes 0..3 with zero point 1 everywhere (still the uniform-zero-point fast path); activations at +-max
    rng = np.random.default_rng(k)
    q = quantize(rng.standard_normal((36, k)).astype(np.float32), "ternary")
    q.data = rng.integers(0, 256, q.data.shape, dtype=np.uint8)
    q.data[:4] = 0xFF  # rows of code 3 only: the largest int16 partial sums
    wt = Weight(q)
    assert wt._c.zp_hint == 2
    x = np.where(rng.random(k) < 0.5, -1.0, 1.0).astype(np.float32) * 3.0
    x[: k // 3] = 3.0
    with use_isa(isa):
        y = matmul(wt, x)
    _check(q, x[None], y[None])



@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("fmt", ["ternary", "int4", "int8", "int4_asym", "f32", "f16"])
@pytest.mark.parametrize("ns,k", [((64, 16, 16), 256), ((1024, 256, 256), 1024), ((13, 7, 40), 300), ((5,), 1100)],
                         ids=str)
def test_matmul_multi_equals_matmul(isa, fmt, ns, k, threads):
    # one quantization of x and one parallel job for weights that read the same x: same floats as one call each
    from edgerun.kernels import matmul_multi

    rng = np.random.default_rng(len(ns) * 1000 + k)
    ws = []
    for n in ns:
        a = rng.standard_normal((n, k)).astype(np.float32)
        ws.append(Weight(a if fmt == "f32" else a.astype(np.float16) if fmt == "f16" else quantize(a, fmt)))
    for m in (1, 3):
        x = rng.standard_normal((m, k)).astype(np.float32)
        with use_isa(isa):
            ys = matmul_multi(ws, x)
            for w, y in zip(ws, ys, strict=True):
                np.testing.assert_array_equal(y, matmul(w, x))


def test_matmul_multi_mixed_kinds():
    from edgerun.kernels import matmul_multi

    rng = np.random.default_rng(9)
    a = rng.standard_normal((32, 512)).astype(np.float32)
    ws = [Weight(quantize(a, "ternary")), Weight(quantize(a, "int4")), Weight(a)]
    x = rng.standard_normal(512).astype(np.float32)
    for w, y in zip(ws, matmul_multi(ws, x), strict=True):
        np.testing.assert_array_equal(y, matmul(w, x))
