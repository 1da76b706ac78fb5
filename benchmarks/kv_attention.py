"""Decode attention alone over a low-bit KV cache vs the f16 ring, as in a model: SmolLM2 shapes, 30 layers' caches.

Each round streams 80 MB first (a decode step's weight traffic, so the caches come from memory as they do in a
model), then times 30 calls (one per layer) in CPU time; the minimum over the rounds is printed per width.
f16: ``er_attention`` over the float16 [sinks | ring] block (what decode runs); int8/int4/int2:
``er_kivi_attention`` over the KIVI groups (what ``er_decode_layer_kivi`` runs).

    python benchmarks/kv_attention.py --context 2048 --threads 1 --rounds 30
"""

from __future__ import annotations

import argparse
import time

import numpy as np


def main(argv=None) -> dict:
    """Run the comparison; returns {bits: seconds for 30 layers}."""
    from edgerun.kernels import ops
    from edgerun.runtime.llm.kv_cache import LayerSpec, SinkWindowKVCache

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--context", type=int, default=2048)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--rounds", type=int, default=30)
    a = ap.parse_args(argv)
    ctx, nh, nkv, hd, n_layers = a.context, 9, 3, 64, 30
    ops.set_num_threads(a.threads)
    rng = np.random.default_rng(0)
    spec = [LayerSpec(nh, nkv, hd, ctx + 64, 4)] * n_layers
    k = rng.standard_normal((nkv, ctx, hd)).astype(np.float32)
    v = rng.standard_normal((nkv, ctx, hd)).astype(np.float32)
    calls = {}
    q = rng.standard_normal((1, nh, hd)).astype(np.float32)
    kn = rng.standard_normal((nkv, 1, hd)).astype(np.float32)
    out = np.empty((1, nh, hd), np.float32)
    for bits in (16, 8, 4, 2):
        c = SinkWindowKVCache(spec, bits=bits)
        for li in range(n_layers):
            if bits == 16:
                c.layers[li].write(k, v, np.arange(ctx))
            else:
                ops.kivi_store(c.kivi(li), k, v, 0)
        if bits == 16:
            lays = list(c.layers)
            calls[16] = (c, lambda lays=lays: [ops.attention(q[0], x.kv_k, x.kv_v, ctx + 4, 1 / 8, out=out[0])
                                               for x in lays])  # fmt: skip
        else:
            ks = [c.kivi(li) for li in range(n_layers)]
            calls[bits] = (c, lambda ks=ks: [ops.kivi_attention(x, q, kn, kn, ctx, 1 / 8, out=out) for x in ks])
    flush = np.ones(20_000_000, np.float32)
    best = dict.fromkeys(calls, 1e9)
    for _ in range(a.rounds):
        for b, (_, run) in calls.items():
            flush.sum()
            t0 = time.process_time()
            run()
            best[b] = min(best[b], time.process_time() - t0)
    for b in calls:
        print(f"context {ctx}, {a.threads} thread(s), KV {b:2d} bits: {best[b] * 1e3:6.2f} ms for 30 layers "
              f"({best[16] / best[b]:.2f}x the speed of f16)")  # fmt: skip
    return best


if __name__ == "__main__":
    main()
