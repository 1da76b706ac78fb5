"""Attention straight over the KIVI int8/int4/int2 cache in C (kernels/src/kv_attention.c).

- the C store writes the very bytes quant/kv.py's numpy quantizers write (cache buffers compared exactly);
- er_kivi_attention equals the float64 numpy reference (kernels/reference.py kivi_attention) over the same
  buffers, for every bit width, each ISA variant here, 1 and 2 threads, decode and prefill blocks, softcap,
  sinks with the StreamingLLM sink query, a ring that has wrapped (expired tokens masked);
- the native cache (C) and the numpy cache path give the same outputs through SinkWindowKVCache.attend
  (KIVI layouts, and the float16 ring whose prefill the same kernel runs).
"""

from __future__ import annotations

import numpy as np
import pytest
from edgerun.kernels import ops, reference
from edgerun.runtime.llm.kv_cache import LayerSpec, SinkWindowKVCache, rope_neox

ISAS = [i for i in ("scalar", "avx2", "neon") if ops.isa_supported(i)]


def _fill(cache, n_tokens, seed, native_store):
    """Write n_tokens random rotated keys / values into layer 0 (numpy write or the C store), in uneven blocks."""
    rng = np.random.default_rng(seed)
    lay = cache.layers[0]
    sp = lay.spec
    p = 0
    while p < n_tokens:
        t = min(int(rng.integers(1, 40)), n_tokens - p)
        k = rng.standard_normal((sp.n_kv, t, sp.head_dim)).astype(np.float32)
        k[:, :, 3] += 4.0  # an outlier channel, as KIVI expects in keys
        v = rng.standard_normal((sp.n_kv, t, sp.head_dim)).astype(np.float32)
        if native_store:
            ops.kivi_store(cache.kivi(0), k, v, p)
        else:
            lay.write(k, v, np.arange(p, p + t))
        p += t
    return lay


@pytest.mark.parametrize("bits", [8, 4, 2])
@pytest.mark.parametrize("hd,group,sinks,window", [(64, 32, 4, 100), (32, 16, 0, 40), (128, 8, 2, 33)])
def test_store_writes_numpy_bytes(bits, hd, group, sinks, window):
    spec = [LayerSpec(6, 2, hd, window, sinks)]
    a = SinkWindowKVCache(spec, bits=bits, group=group, native=False)
    b = SinkWindowKVCache(spec, bits=bits, group=group, native=True)
    assert b.native and not a.native
    la, lb = _fill(a, 157, 1, False), _fill(b, 157, 1, True)
    for name in ("sink_k", "sink_v", "sink_pos", "res_k", "res_v", "res_pos", "qk", "qk_scale", "qk_min", "qv",
                 "qv_scale", "qv_min", "q_start"):
        if getattr(la, name) is None:  # int8 keeps no value mins
            assert bits == 8 and name == "qv_min" and getattr(lb, name) is None
            continue
        np.testing.assert_array_equal(getattr(lb, name), getattr(la, name), err_msg=name)
    assert (la.q_start >= 0).all()  # the ring wrapped: every group written


CASES = [  # (n_heads, n_kv, hd, group, sinks, window, tokens in cache, T new, softcap)
    (9, 3, 64, 32, 4, 100, 300, 1, 0.0),
    (9, 3, 64, 32, 4, 2048, 700, 1, 0.0),
    (4, 2, 32, 16, 0, 40, 97, 1, 5.0),
    (8, 1, 128, 8, 2, 33, 61, 1, 0.0),
    (9, 3, 64, 32, 4, 100, 300, 64, 0.0),
    (6, 2, 64, 32, 4, 60, 10, 21, 0.0),
    (4, 4, 16, 16, 0, 20, 0, 5, 5.0),
    (8, 2, 32, 16, 2, 50, 40, 17, 0.0),  # 4 heads per kv head: the prefill's 3-row blocks leave one row
    (10, 2, 24, 16, 3, 45, 30, 13, 0.0),  # hd % 32 != 0: the value rows one by one
]


@pytest.mark.parametrize("bits", [8, 4, 2])
@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("isa", ISAS)
def test_attention_matches_reference(bits, case, isa):
    nh, nkv, hd, group, sinks, window, n0, t, softcap = case
    cache = SinkWindowKVCache([LayerSpec(nh, nkv, hd, window, sinks)], bits=bits, group=group, chunk=64)
    lay = _fill(cache, n0, bits + n0, True)
    rng = np.random.default_rng(t)
    q = rng.standard_normal((t, nh, hd)).astype(np.float32)
    qs = rng.standard_normal((t, nh, hd)).astype(np.float32) if sinks else None
    k = rng.standard_normal((nkv, t, hd)).astype(np.float32)
    v = rng.standard_normal((nkv, t, hd)).astype(np.float32)
    scale = 1 / np.sqrt(hd)
    want = reference.kivi_attention(lay, q, k, v, n0, scale, softcap, q_sink=qs, query_codes=t == 1)
    exact = reference.kivi_attention(lay, q, k, v, n0, scale, softcap, q_sink=qs)
    for threads in (1, 2):
        ops.set_num_threads(threads)
        with ops.use_isa(isa):
            got = ops.kivi_attention(cache.kivi(0), q, k, v, n0, scale, softcap, q_sink=qs)
        np.testing.assert_allclose(got, want, atol=2e-5 * np.abs(want).max() + 1e-6, err_msg=f"threads={threads}")
        # decode: the query's 15-bit rounding against exact float scores (documented in er_kv.h: ~1e-4 of the output)
        np.testing.assert_allclose(got, exact, atol=(3e-4 if t == 1 else 2e-5) * np.abs(exact).max() + 1e-6)
    ops.set_num_threads(None)


def test_attention_sees_exactly_the_window():
    """Masking is not vacuous: a value planted in a just-expired token is absent, one just inside is present."""
    nh, nkv, hd, w = 2, 1, 32, 50
    cache = SinkWindowKVCache([LayerSpec(nh, nkv, hd, w, 0)], bits=8, group=16)
    lay = cache.layers[0]
    n0 = 130
    zeros = np.zeros((nkv, 1, hd), np.float32)
    for p in range(n0):  # keys all zero (uniform attention), value = 1 only at the two probe positions
        v = zeros + (1.0 if p in (n0 - w, n0 - w + 1) else 0.0)
        ops.kivi_store(cache.kivi(0), zeros, v, p)
    q = np.ones((1, nh, hd), np.float32)
    got = ops.kivi_attention(cache.kivi(0), q, zeros, zeros, n0, 1.0)
    # query at n0 sees n0-w+1 .. n0 (w keys, uniform): exactly one probe inside -> 1/w (int8 values are symmetric:
    # 1.0 comes back as 127 * f16(1 / 127), 6e-5 low; both probes inside or none would be 2/w or 0)
    np.testing.assert_allclose(got, 1.0 / w, rtol=1e-4)
    assert (lay.q_start >= 0).all()


@pytest.mark.parametrize("bits", [16, 8, 4, 2])
def test_native_cache_equals_numpy_cache(bits):
    """SinkWindowKVCache.attend in C (native) and in numpy, through eviction, prefill blocks and decode steps.

    bits=16: the float16 [sinks | ring] layout read by the same kernel (prefill of the f16 cache)."""
    rng = np.random.default_rng(bits)
    nh, nkv, hd, t = 4, 2, 32, 150
    q = rng.standard_normal((nh, t, hd)).astype(np.float32)
    k = rng.standard_normal((nkv, t, hd)).astype(np.float32)
    v = rng.standard_normal((nkv, t, hd)).astype(np.float32)
    rope = rope_neox(hd)
    outs = []
    for native in (False, True):
        c = SinkWindowKVCache([LayerSpec(nh, nkv, hd, 48, 4)], bits=bits, group=16, chunk=16, native=native)
        assert c.native == native
        got, p = [], 0
        for b in [37, 1, 1, 50, 1, 1, 1, 58]:
            got.append(c.attend(0, q[:, p : p + b], k[:, p : p + b], v[:, p : p + b], rope, p))
            p += b
        outs.append(np.concatenate(got, axis=1))
    np.testing.assert_allclose(outs[1], outs[0], atol=1e-4 * np.abs(outs[0]).max())


@pytest.mark.parametrize("bits", [16, 8, 4])
def test_attend_rows_equals_attend(bits):
    """attend_rows (the native backend's prefill: (T, heads, hd) rows, RoPE from tables in C, in place) gives the
    floats of attend (heads-first blocks, numpy RoPE), through the sink cut, eviction and a wrapped ring."""
    from edgerun.runtime.models.base import apply_rope, rope_tables

    rng = np.random.default_rng(bits)
    nh, nkv, hd, t = 6, 2, 64, 170
    q = rng.standard_normal((t, nh, hd)).astype(np.float32)
    k = rng.standard_normal((t, nkv, hd)).astype(np.float32)
    v = rng.standard_normal((t, nkv, hd)).astype(np.float32)

    def tabs(pos):
        return rope_tables(np.asarray(pos), hd, 10000.0)

    def rope(x, pos):
        return apply_rope(x, *tabs(pos))

    spec = [LayerSpec(nh, nkv, hd, 48, 4)]
    a = SinkWindowKVCache(spec, bits=bits, group=16, chunk=32)
    b = SinkWindowKVCache(spec, bits=bits, group=16, chunk=32)
    p = 0
    for n in [37, 1, 70, 2, 60]:
        sl = slice(p, p + n)
        want = a.attend(0, q[sl].transpose(1, 0, 2), k[sl].transpose(1, 0, 2), v[sl].transpose(1, 0, 2), rope, p)
        got = b.attend_rows(0, q[sl].copy(), k[sl].copy(), v[sl].copy(), tabs, np.arange(p, p + n))
        np.testing.assert_array_equal(got, want.transpose(1, 0, 2))
        p += n
    for name in ("sink_k", "sink_v", "kv_k", "kv_v", "qk", "qv", "res_k", "res_v"):
        if hasattr(a.layers[0], name):
            np.testing.assert_array_equal(getattr(b.layers[0], name), getattr(a.layers[0], name))


@pytest.mark.slow
def test_bench_context_runs_every_kv_width(tmp_path, smollm2_gguf):
    """`edgerun bench --context`: prefill then decode at the context, per KV width, the cache's real size reported."""
    from edgerun.bench.speed import bench_edgerun_context
    from edgerun.export.exporter import export
    from edgerun.runtime.llm.model import load
    from tiny_models import make_tiny

    hf, _ = make_tiny("llama", tmp_path, smollm2_gguf)
    art = export(hf, tmp_path / "tiny.edge", weights="f32")
    ids = None
    for bits in (16, 8, 4, 2):
        m = load(art, kv_bits=bits, kv_window=40 + 2 * 4 + 8)
        r = bench_edgerun_context(m, 40, bits, n_decode=4, repeats=1, ids=ids)
        ids = r.pop("ids")
        assert r["kv"] == {16: "f16", 8: "int8", 4: "int4", 2: "int2"}[bits]
        assert r["prefill_tps"] > 0 and r["decode_tps"] > 0
        assert r["cache_bytes"] == m.new_cache().nbytes
        assert m.new_cache().native  # every width up to f16 attends in C (kv_attention.c) on the native backend
        m.close()


@pytest.mark.parametrize("bits", [4, 2])
def test_real_model_attention_matches_reference(bits, wikitext):
    """On the packaged SmolLM2's own queries, keys and values (not random data: real key channels have outlier
    scales), every layer's C attention equals the float64 reference over the same cache bytes: decode steps to
    its 15-bit query-codes arithmetic and within 3e-3 of exact scores, prefill blocks to exact scores."""
    from edgerun.runtime.llm.model import load

    m = load(None, ram=None, kv_bits=bits, kv_window=512, prefill_chunk=16)
    m.model.fused_decode = False  # decode op by op, so each layer's attention call can be checked
    ids = m.tokenizer.encode(wikitext[:2000])[:112]
    cache = m.new_cache()
    checked = {"decode": 0, "prefill": 0}
    orig = ops.kivi_attention
    n_layers = len(cache.layers)
    calls = [0]

    def checked_attention(c, q, k, v, p0, scale, softcap, q_sink=None):
        lay = cache.layers[calls[0] % n_layers]
        calls[0] += 1
        got = orig(c, q, k, v, p0, scale, softcap, q_sink=q_sink)
        if (lay.q_start >= 0).any():  # quantized groups exist
            exact = reference.kivi_attention(lay, q, k, v, p0, scale, softcap, q_sink=q_sink)
            tol = np.abs(exact).max()
            if q.shape[0] == 1:
                codes = reference.kivi_attention(lay, q, k, v, p0, scale, softcap, q_sink=q_sink, query_codes=True)
                np.testing.assert_allclose(got, codes, atol=2e-5 * tol)
                np.testing.assert_allclose(got, exact, atol=3e-3 * tol)
                checked["decode"] += 1
            else:
                np.testing.assert_allclose(got, exact, atol=2e-5 * tol)
                checked["prefill"] += 1
        return got

    try:  # kv_cache imports ops at call time: patch the module attribute it reads
        ops.kivi_attention = checked_attention
        for i in range(0, 96, 16):  # prefill blocks of 16: one attention call per layer each
            m.model.forward(np.asarray(ids[i : i + 16]), cache)
        for t in ids[96:]:
            m.model.forward(np.asarray([t]), cache)
    finally:
        ops.kivi_attention = orig
    # the first block is cut at the 4 sinks (two calls a layer, before any group is quantized), then one a block / step
    assert calls[0] == 23 * n_layers and checked["decode"] == 16 * n_layers and checked["prefill"] >= n_layers
