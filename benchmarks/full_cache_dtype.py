"""The full KV cache in float16 (the default) against float32: prefill and decode tok/s and bytes, same run.

Same model, same token ids, the two caches interleaved (`--runs` rounds), medians printed with the ratio.

    python benchmarks/full_cache_dtype.py [--model X.gguf|X.edge] [--threads 2] [--context 512 2048 4096]
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=None, help="GGUF or artifact (default: the packaged SmolLM2)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--context", type=int, nargs="+", default=[512, 2048, 4096], help="prompt lengths")
    ap.add_argument("--n-decode", type=int, default=32, help="decode steps after the prompt")
    ap.add_argument("--runs", type=int, default=2, help="rounds (medians reported)")
    args = ap.parse_args()

    import edgerun

    llm = edgerun.load(args.model, threads=args.threads)
    if llm.backend != "native":
        raise SystemExit(f"the full float16 cache is the native backend's; this model runs on {llm.backend}")
    rng = np.random.default_rng(0)
    print(f"{llm.path.name}, {args.threads} threads")
    print(f"{'prompt':>6s} {'cache':>7s} {'prefill tok/s':>14s} {'decode tok/s':>13s} {'MB':>7s}")
    for n in args.context:
        ids = [int(t) for t in rng.integers(100, llm.args.vocab_size - 100, n)]
        res = {np.float32: ([], [], 0), np.float16: ([], [], 0)}
        for _ in range(args.runs):
            for dt, (pp, dd, _) in list(res.items()):
                cache = llm.model.new_cache(dt)
                t0 = time.perf_counter()
                tok = int(np.argmax(llm.prefill(ids, cache)))
                pp.append(n / (time.perf_counter() - t0))
                t0 = time.perf_counter()
                for _ in range(args.n_decode):
                    tok = int(np.argmax(llm.decode_step(tok, cache)))
                dd.append(args.n_decode / (time.perf_counter() - t0))
                res[dt] = (pp, dd, cache.nbytes)
        med = {dt: (statistics.median(pp), statistics.median(dd), nb) for dt, (pp, dd, nb) in res.items()}
        for dt, (p, d, nb) in med.items():
            print(f"{n:6d} {np.dtype(dt).name:>7s} {p:14.0f} {d:13.1f} {nb / 1e6:7.1f}")
        (p32, d32, _), (p16, d16, _) = med[np.float32], med[np.float16]
        print(f"{n:6d} {'f16/f32':>7s} {p16 / p32:13.2f}x {d16 / d32:12.2f}x")


if __name__ == "__main__":
    main()
