"""The kernel benchmark runs and reports bandwidth rows next to the copy bandwidth; the pool resizes."""

import numpy as np
from edgerun.kernels import Weight, get_num_threads, matmul, set_num_threads
from edgerun.kernels.bench import bench_kernels


def test_bench_smoke():
    rows = bench_kernels(1, shapes=[(256, 512)], formats=["f32", "int4"], show=False)
    kinds = {r["kernel"] for r in rows}
    assert {"memcpy", "read", "gemv", "call overhead"} <= kinds
    for r in rows:
        if r["kernel"] in ("memcpy", "read", "gemv"):
            assert r["gbs"] > 0.05


def test_pool_resize_and_repeat():
    rng = np.random.default_rng(0)
    w = rng.standard_normal((300, 64)).astype(np.float32)
    x = rng.standard_normal(64).astype(np.float32)
    ref = w @ x
    for n in (1, 3, 2, 7, 1):
        assert set_num_threads(n) == n and get_num_threads() == n
        for _ in range(200):  # back-to-back calls exercise the spin/wake handshake
            np.testing.assert_allclose(matmul(Weight(w), x), ref, rtol=1e-5, atol=1e-4)
    set_num_threads(None)
