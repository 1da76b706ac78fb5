"""Kernel benchmark: GB/s of every decode GEMV (and a prefill GEMM) next to measured copy bandwidth.

``bench_kernels(threads=None) -> list[dict]`` measures in one run: memcpy and streaming-read
bandwidth, each matmul format on model-size shapes larger than the cache, the Python->C call
overhead, and prints a rich table. ``python -m edgerun.bench.kernels [--threads N] [--quick]``.

Bytes per GEMV = stored weight bytes (codes + scales + zero points); activations are noise.
"""

from __future__ import annotations

import time

import numpy as np
from edgerun.kernels import ops
from edgerun.kernels._lib import lib
from edgerun.quant import quantize

DECODE_SHAPES = [(4096, 4096), (1536, 576), (576, 1536), (49152, 576)]
# GGUF block formats run verbatim (random blocks: kernels.reference.ggml_random_weight); K-quants need K % 256 == 0
GGML_FORMATS = ["q4_1", "q5_0", "q5_1", "q2_k", "q3_k", "q4_k", "q5_k", "q6_k"]
FORMATS = ["f32", "f16", "int8", "int4", "int4_asym", "ternary", *GGML_FORMATS]


def _time(fn, min_time: float = 0.25, min_reps: int = 5) -> float:
    """Best (minimum) seconds per call of ``fn`` over calls run for at least ``min_time``.

    The minimum, not the median: on a shared machine other processes only ever add time.
    """
    fn()
    samples = []
    t_end = time.perf_counter() + min_time
    while len(samples) < min_reps or time.perf_counter() < t_end:
        t = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - t)
    return float(np.min(samples))


def _weight(fmt: str, n: int, k: int, rng) -> ops.Weight:
    """A random weight of ``fmt``, rotated through ``copies`` so it never sits in the cache."""
    if fmt in ops.GGML_TYPES:
        from edgerun.kernels.reference import ggml_random_weight

        return ops.Weight(ggml_random_weight(fmt, (n, k), rng))
    w = rng.standard_normal((n, k), dtype=np.float32)
    if fmt == "f32":
        return ops.Weight(w)
    if fmt == "f16":
        return ops.Weight(w.astype(np.float16))
    return ops.Weight(quantize(w, fmt))


def _block(fmt: str) -> int:
    """Block size K must be a multiple of (1: none)."""
    return ops.GGML_TYPES[fmt][1] if fmt in ops.GGML_TYPES else 1


def _copy(w: ops.Weight) -> ops.Weight:
    """The same weight in fresh memory."""
    q = w.quantized
    if q is None:
        return ops.Weight(w._keep[0].copy())
    zp = None if q.zero_points is None else q.zero_points.copy()
    sc = None if q.scales is None else q.scales.copy()
    return ops.Weight(type(q)(q.format, q.shape, q.block_size, q.bits, q.data.copy(), sc, zp))


def _nbytes(w: ops.Weight) -> int:
    return sum(a.nbytes for a in w._keep if a is not None)


def memory_bandwidth(mb: int = 256) -> dict:
    """Copy (read + write counted) and streaming-read GB/s with the current pool size."""
    src = np.ones(mb * 2**20 // 4, np.float32)
    dst = np.empty_like(src)
    t_copy = _time(lambda: lib.er_memcpy(dst.ctypes.data, src.ctypes.data, src.nbytes), 0.5)
    t_read = _time(lambda: lib.er_read_sum(src.ctypes.data, src.size), 0.5)
    return {"copy_gbs": 2 * src.nbytes / t_copy / 1e9, "read_gbs": src.nbytes / t_read / 1e9}


def call_overhead_us() -> dict:
    """Microseconds per Python->C call: a tiny GEMV through ``matmul`` and a bare ctypes call."""
    w = ops.Weight(np.ones((16, 32), np.float32))
    x = np.ones(32, np.float32)
    out = np.empty(16, np.float32)
    n = 20000
    t = time.perf_counter()
    for _ in range(n):
        ops.matmul(w, x, out)
    t_mm = (time.perf_counter() - t) / n
    get = lib.er_get_num_threads
    t = time.perf_counter()
    for _ in range(n):
        get()
    t_bare = (time.perf_counter() - t) / n
    return {"matmul_call_us": t_mm * 1e6, "bare_ctypes_us": t_bare * 1e6}


def bench_kernels(threads: int | None = None, shapes=None, formats=None, quick: bool = False,
                  show: bool = True) -> list[dict]:
    """Benchmark every matmul format on decode shapes (GEMV) plus a 64-token GEMM.

    Returns one dict per measurement: ``kernel, format, shape, threads, isa, ms, gbs, pct_read,
    pct_copy`` (GB/s over the streaming-read bandwidth, and over the memory-copy bandwidth with read
    and write bytes counted, both measured in the same run), plus rows for the bandwidth probes and
    call overhead. A GEMV only reads, so ``pct_read`` is the stricter of the two.
    """
    nt = ops.set_num_threads(threads)
    isa = ops.get_isa()
    shapes = shapes or (DECODE_SHAPES[:2] if quick else DECODE_SHAPES)
    formats = formats or FORMATS
    rng = np.random.default_rng(0)
    bw = memory_bandwidth(128 if quick else 256)
    rows: list[dict] = [
        {"kernel": "memcpy", "format": "-", "shape": "-", "threads": nt, "isa": isa, "ms": None,
         "gbs": bw["copy_gbs"], "pct_read": None, "pct_copy": 100.0},
        {"kernel": "read", "format": "-", "shape": "-", "threads": nt, "isa": isa, "ms": None,
         "gbs": bw["read_gbs"], "pct_read": 100.0, "pct_copy": None},
    ]
    # weights rotated so that each call streams from DRAM (L3 here is 32 MB)
    for n, k in shapes:
        for fmt in formats:
            if k % _block(fmt):
                continue  # a K-quant needs K % 256 == 0
            one = _weight(fmt, n, k, rng)
            # enough copies (same values, other addresses) to overflow the 32 MB L3 three times
            copies = max(1, min(512, int(96e6 // max(_nbytes(one), 1))))
            ws = [one] + [_copy(one) for _ in range(copies - 1)]
            x = rng.standard_normal(k, dtype=np.float32)
            out = np.empty(n, np.float32)
            it = iter(range(10**12))
            # the C call as the decode loop makes it (prebuilt descriptor and pointers): ops.matmul's
            # argument checks cost ~4 us, a tenth of a small GEMV (see "call overhead")
            refs, xp, op = [w._ref for w in ws], x.ctypes.data, out.ctypes.data

            def gemv(refs=refs, xp=xp, op=op, it=it):
                lib.er_matmul(refs[next(it) % len(refs)], xp, op, 1)

            t = _time(gemv)
            gbs = _nbytes(one) / t / 1e9
            rows.append({"kernel": "gemv", "format": fmt, "shape": f"{n}x{k}", "threads": nt, "isa": isa,
                         "ms": t * 1e3, "gbs": gbs, "pct_read": 100 * gbs / bw["read_gbs"],
                         "pct_copy": 100 * gbs / bw["copy_gbs"]})
            if (n, k) == (1536, 576) or ((n, k) == (576, 1536) and 576 % _block(fmt)):  # K-quants: 576x1536
                xm = rng.standard_normal((64, k), dtype=np.float32)
                om = np.empty((64, n), np.float32)
                t = _time(lambda one=one, xm=xm, om=om: ops.matmul(one, xm, om), 0.2, 3)
                rows.append({"kernel": "gemm64", "format": fmt, "shape": f"{n}x{k}", "threads": nt,
                             "isa": isa, "ms": t * 1e3, "gbs": 2 * 64 * n * k / t / 1e9, "pct_read": None,
                             "note": "GFLOP/s"})
    ov = call_overhead_us()
    rows.append({"kernel": "call overhead", "format": "-", "shape": "16x32", "threads": nt, "isa": isa,
                 "ms": ov["matmul_call_us"] / 1e3, "gbs": None, "pct_read": None,
                 "note": f"matmul {ov['matmul_call_us']:.2f} us, bare ctypes {ov['bare_ctypes_us']:.2f} us"})
    if show:
        _print(rows)
    return rows


def _print(rows: list[dict]) -> None:
    try:
        from rich.console import Console
        from rich.table import Table
    except ImportError:  # pragma: no cover
        for r in rows:
            print(r)
        return
    t = Table(title=f"edgerun kernels ({rows[0]['isa']}, {rows[0]['threads']} threads)")
    for c in ("kernel", "format", "shape", "ms", "GB/s", "% of read BW", "% of copy BW", "note"):
        t.add_column(c, justify="left" if c in ("kernel", "format", "shape", "note") else "right")

    def pct(v):
        return "" if v is None else f"{v:.0f}%"

    for r in rows:
        t.add_row(r["kernel"], r["format"], r["shape"], "" if r["ms"] is None else f"{r['ms']:.3f}",
                  "" if r["gbs"] is None else f"{r['gbs']:.1f}", pct(r["pct_read"]), pct(r.get("pct_copy")),
                  r.get("note", ""))
    Console().print(t)


def main(argv=None) -> None:
    """CLI: ``python -m edgerun.bench.kernels [--threads N ...] [--quick]``."""
    import argparse

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, nargs="*", default=None, help="pool sizes to run (default: all CPUs)")
    p.add_argument("--quick", action="store_true", help="two shapes, smaller copy buffer")
    a = p.parse_args(argv)
    for nt in a.threads or [None]:
        bench_kernels(nt, quick=a.quick)


if __name__ == "__main__":
    main()
