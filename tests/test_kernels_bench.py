"""The kernel benchmark runs and reports bandwidth rows next to the copy bandwidth; the pool resizes."""

import numpy as np
from edgerun.bench.kernels import bench_kernels
from edgerun.kernels import Weight, get_num_threads, matmul, set_num_threads


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


def test_pool_covers_every_index_once():
    # chunks are claimed by whichever thread is free: every index runs exactly once, on any pool size
    from edgerun.kernels._lib import TASK_FN, lib

    for nt in (1, 2, 5):
        set_num_threads(nt)
        for n, grain in ((1, 1), (7, 3), (100, 1), (1000, 16), (64, 64)):
            hits = np.zeros(n, np.int64)
            tids = set()

            def task(ctx, start, end, tid, hits=hits, tids=tids):
                hits[start:end] += 1
                tids.add(tid)

            cb = TASK_FN(task)
            lib.er_parallel_for(n, grain, cb, None)
            assert np.all(hits == 1), (nt, n, grain)
            assert tids <= set(range(nt))
    set_num_threads(None)


def test_pool_back_to_back_jobs_oversubscribed():
    """Many short jobs in a row on more threads than cores (late workers still leaving the previous job while
    the next is posted): every index of every job runs exactly once, and the call returns only after all ran."""
    from edgerun.kernels._lib import TASK_FN, lib

    set_num_threads(6)
    hits = np.zeros(12, np.int64)

    def task(ctx, start, end, tid):
        hits[start:end] += 1

    cb = TASK_FN(task)
    for k in range(1500):
        hits[:] = 0
        lib.er_parallel_for(12, 1, cb, None)
        assert np.all(hits == 1), (k, hits)
    set_num_threads(None)
