"""GGUF block formats read verbatim (q4_1, q5_0, q5_1, q2_k, q3_k, q4_k, q5_k, q6_k): kernels/src/matmul_ggml*.c.

* ``reference.ggml_dequantize_blocks`` (our numpy) equals gguf-py's dequantize bit for bit, on random blocks
  (every byte random, the f16 factors finite) and, for the 32-element formats, on gguf-py's own quantization.
* Every compiled variant (scalar, avx2 / neon here) against ``reference.ggml_matmul_q8``: the same int8
  activations (Q8_0 per 32 with block sums; Q8_K per 256 with sums of 16) and exact integer dots, float64
  factors. Only float32 rounding differs, so the bound is 4e-6 of sum_k |x_k| (|term1| + |term2|) of each
  weight (``reference.ggml_abs_terms``); one wrong code or activation moves y by ~|x_k w_k|, far above it.
  Against the float product ``x @ dequant(W).T`` the activation rounding bound ``reference.ggml_error_bound``.
* matmul_multi (x quantized once) equals one matmul per weight exactly; the fused decode runs these weights and
  equals the per-op path bit for bit; real tensors of the packaged Gemma-3 (Q4_K, Q6_K, Q5_0) and SmolLM2 (Q4_1)
  GGUFs. The NEON variants are checked against scalar under qemu by tests/test_kernels_aarch64.py.
"""

from __future__ import annotations

import ctypes
import functools

import numpy as np
import pytest
from edgerun.kernels import Weight, available_isas, matmul, matmul_multi, ops, set_num_threads, use_isa
from edgerun.kernels import reference as ref
from edgerun.quant import QuantizedTensor

gguf = pytest.importorskip("gguf")
from gguf import GGMLQuantizationType as GT  # noqa: E402

ISAS = available_isas()
FMTS = list(ref.GGML_BLOCKS)
GTYPE = {"q4_1": GT.Q4_1, "q5_0": GT.Q5_0, "q5_1": GT.Q5_1, "q2_k": GT.Q2_K, "q3_k": GT.Q3_K, "q4_k": GT.Q4_K,
         "q5_k": GT.Q5_K, "q6_k": GT.Q6_K}
BITS = {"q4_1": 4, "q5_0": 5, "q5_1": 5, "q2_k": 2, "q3_k": 3, "q4_k": 4, "q5_k": 5, "q6_k": 6}


@pytest.fixture(autouse=True)
def _threads():
    yield
    set_num_threads(None)


def random_blocks(fmt: str, nblocks: int, rng) -> np.ndarray:
    """(nblocks, type_size) uint8: every byte random, the f16 factors finite of either sign."""
    return ref.ggml_random_blocks(fmt, nblocks, rng)


def qtensor(fmt: str, n: int, k: int, blocks: np.ndarray) -> QuantizedTensor:
    qk, ts = ref.GGML_BLOCKS[fmt]
    return QuantizedTensor(fmt, (n, k), qk, BITS[fmt], blocks.reshape(n, k // qk, ts), None, None)


def random_weight(fmt: str, n: int, nblk: int, rng) -> QuantizedTensor:
    qk, _ = ref.GGML_BLOCKS[fmt]
    return qtensor(fmt, n, nblk * qk, random_blocks(fmt, n * nblk, rng))


def check(w: QuantizedTensor, x: np.ndarray, y: np.ndarray, rtol: float = 4e-6) -> None:
    """y (C) against the integer emulation (tight) and the float product (activation rounding bound)."""
    x = x.reshape(-1, w.shape[1])
    y = y.reshape(x.shape[0], w.shape[0])
    scale = np.abs(x).astype(np.float64) @ ref.ggml_abs_terms(w).T
    emu = ref.ggml_matmul_q8(w, x)
    err = np.abs(y.astype(np.float64) - emu)
    assert np.all(err <= rtol * scale + 1e-6), f"worst {np.max(err / (scale + 1e-30)):.3g} of sum |x| |terms|"
    wf = ref.ggml_dequantize(w)
    exact = x.astype(np.float64) @ wf.astype(np.float64).T
    assert np.all(np.abs(y - exact) <= ref.ggml_error_bound(w, x, wf) + 1e-5 * scale + 1e-6)


# ---- the numpy reference against gguf-py -------------------------------------------------------------------


@pytest.mark.parametrize("fmt", FMTS)
def test_dequantize_equals_gguf_bit_for_bit(fmt):
    rng = np.random.default_rng(1)
    qk, _ = ref.GGML_BLOCKS[fmt]
    b = random_blocks(fmt, 500, rng)
    mine = ref.ggml_dequantize_blocks(fmt, b)
    theirs = gguf.quants.dequantize(b.reshape(-1), GTYPE[fmt]).reshape(500, qk)
    assert mine.dtype == np.float32
    np.testing.assert_array_equal(mine.view(np.uint32), theirs.view(np.uint32))
    # every code value of the format occurs (random bytes cover the whole range)
    assert ref.ggml_codes(fmt, b)["q"].max() == (1 << BITS[fmt]) - 1


@pytest.mark.parametrize("fmt", ["q4_1", "q5_0", "q5_1"])
def test_dequantize_gguf_quantized_floats(fmt):
    rng = np.random.default_rng(2)
    w = rng.standard_normal((16, 256)).astype(np.float32)
    raw = gguf.quants.quantize(w, GTYPE[fmt])  # (16, 8 * type_size)
    _, ts = ref.GGML_BLOCKS[fmt]
    mine = ref.ggml_dequantize_blocks(fmt, raw.reshape(-1, ts)).reshape(16, 256)
    np.testing.assert_array_equal(mine.view(np.uint32), gguf.quants.dequantize(raw, GTYPE[fmt]).view(np.uint32))
    assert np.abs(mine - w).max() < 0.3  # a sane quantization of N(0, 1)


# ---- the kernels against the references ----------------------------------------------------------------------


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("fmt", FMTS)
def test_matmul_against_reference(fmt, isa):
    """GEMV (m = 1) and GEMM (m = 3, 4, 5: one 4-token step +- remainders; 17; 40: two token tiles), odd N, K of
    1, 2, 5 (and 9 for the 32-element formats: a group of 8 blocks + a lone one) blocks, 1-5 threads."""
    rng = np.random.default_rng(FMTS.index(fmt))
    qk, _ = ref.GGML_BLOCKS[fmt]
    nblks = (1, 2, 5) + ((9, 20) if qk == 32 else ())
    i = 0
    for n in (1, 7, 33, 100):
        for nblk in nblks:
            w = random_weight(fmt, n, nblk, rng)
            wt = Weight(w)
            for m in (1, 3, 4, 5, 17) + ((40,) if n == 33 else ()):
                set_num_threads(1 + i % 5)
                i += 1
                x = rng.standard_normal((m, nblk * qk)).astype(np.float32)
                with use_isa(isa):
                    y = matmul(wt, x)
                check(w, x, y)
    with use_isa(isa):
        y1 = matmul(wt, x[0])  # 1-D GEMV form
    check(w, x[:1], y1)


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("fmt", ["q4_1", "q5_0", "q5_1"])
def test_matmul_gguf_quantized(fmt, isa):
    """Weights as llama.cpp's quantizer makes them (gguf-py), K with a partial group of 8 blocks (640 = 20 x 32)."""
    rng = np.random.default_rng(3)
    wf = rng.standard_normal((48, 640)).astype(np.float32)
    w = qtensor(fmt, 48, 640, gguf.quants.quantize(wf, GTYPE[fmt]))
    x = rng.standard_normal((3, 640)).astype(np.float32)
    for m in (1, 3):
        with use_isa(isa):
            y = matmul(Weight(w), x[:m])
        check(w, x[:m], y)


@pytest.mark.parametrize("isa", ISAS)
def test_edge_activations(isa):
    """Zero activations give exact zeros; a spike (one huge value among tiny ones) and constant rows stay exact
    to the emulation."""
    rng = np.random.default_rng(4)
    for fmt in FMTS:
        qk, _ = ref.GGML_BLOCKS[fmt]
        w = random_weight(fmt, 9, 3, rng)
        k = 3 * qk
        x = np.zeros((3, k), np.float32)
        with use_isa(isa):
            assert np.all(matmul(Weight(w), x) == 0)
        x = (rng.standard_normal((3, k)) * 1e-3).astype(np.float32)
        x[0, 5] = 1e4
        x[1] = -2.5  # every block's max on its first element, ties
        with use_isa(isa):
            check(w, x, matmul(Weight(w), x))


@pytest.mark.parametrize("isa", ISAS)
def test_variants_agree(isa):
    """Each vector variant and scalar: the same activations and integer sums, only float rounding differs."""
    rng = np.random.default_rng(5)
    for fmt in FMTS:
        w = random_weight(fmt, 21, 4, rng)
        x = rng.standard_normal((6, w.shape[1])).astype(np.float32)
        with use_isa("scalar"):
            y0 = matmul(Weight(w), x)
        with use_isa(isa):
            y1 = matmul(Weight(w), x)
        scale = np.abs(x).astype(np.float64) @ ref.ggml_abs_terms(w).T
        assert np.all(np.abs(y1 - y0) <= 8e-6 * scale + 1e-6), fmt


@pytest.mark.parametrize("isa", ISAS)
def test_gemm_same_bits_on_any_pool_size(isa):
    """16 tokens or more are quantized across the pool and rows split over it: every result bit equal to one
    thread's, for both activation kinds, on 1-5 threads (odd token counts: chunks of unequal length)."""
    rng = np.random.default_rng(8)
    for fmt in ("q5_0", "q4_k", "q6_k"):
        w = random_weight(fmt, 37, 3 if fmt != "q5_0" else 20, rng)
        x = rng.standard_normal((45, w.shape[1])).astype(np.float32)
        ys = []
        for nt in (1, 2, 3, 5):
            set_num_threads(nt)
            with use_isa(isa):
                ys.append(matmul(Weight(w), x))
        for y in ys[1:]:
            np.testing.assert_array_equal(y, ys[0])


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("m", [1, 5])
def test_matmul_multi(isa, m):
    """x quantized once for weights of one activation kind; equal to one matmul each, bit for bit; mixed kinds
    and MatMulNBits weights in one call fall back to one call each."""
    rng = np.random.default_rng(6)
    k = 512
    groups = [["q4_k", "q6_k", "q2_k"], ["q5_0", "q5_0", "q4_1", "q5_1"], ["q4_k", "q5_0"]]
    for fmts in groups:
        ws = [random_weight(f, 17 + 16 * i, k // ref.GGML_BLOCKS[f][0], rng) for i, f in enumerate(fmts)]
        x = rng.standard_normal((m, k)).astype(np.float32)
        with use_isa(isa):
            ys = matmul_multi(ws, x)
            singles = [matmul(Weight(w), x) for w in ws]
        for y, y1 in zip(ys, singles, strict=True):
            np.testing.assert_array_equal(y, y1)
    from edgerun.quant import quantize

    mixed = [random_weight("q4_k", 8, 2, rng), quantize(rng.standard_normal((8, 512)).astype(np.float32), "int4")]
    x = rng.standard_normal((m, 512)).astype(np.float32)
    with use_isa(isa):
        ys = matmul_multi(mixed, x)
        np.testing.assert_array_equal(ys[0], matmul(Weight(mixed[0]), x))
        np.testing.assert_array_equal(ys[1], matmul(Weight(mixed[1]), x))
    # Gemma-3's q, k (q5_0) and v (q8_0 as int8) of 640: the q5_0 pair one job, v its own call
    k = 640
    mixed = [random_weight("q5_0", 67, k // 32, rng), random_weight("q5_0", 33, k // 32, rng),
             quantize(rng.standard_normal((35, k)).astype(np.float32), "int8")]
    x = rng.standard_normal((m, k)).astype(np.float32)
    for threads in (1, 3):
        set_num_threads(threads)
        with use_isa(isa):
            ys = matmul_multi(mixed, x)
            for y, w in zip(ys, mixed, strict=True):
                np.testing.assert_array_equal(y, matmul(Weight(w), x))
    set_num_threads(None)


def test_weight_validation_and_formats():
    assert set(FMTS) <= set(ops.supported_formats())
    assert {"int4", "int8", "ternary"} <= set(ops.supported_formats())
    rng = np.random.default_rng(7)
    w = random_weight("q4_k", 4, 2, rng)
    assert Weight(w).shape == (4, 512) and Weight(w).format == "q4_k"
    with pytest.raises(ValueError):  # bytes do not match the shape
        Weight(QuantizedTensor("q4_k", (4, 768), 256, 4, w.data, None, None))
    with pytest.raises(ValueError):  # K not a multiple of QK
        Weight(QuantizedTensor("q5_0", (4, 48), 32, 5, np.zeros((4, 2, 22), np.uint8), None, None))
    with pytest.raises(ValueError):
        Weight(QuantizedTensor("q6_k", (4, 256), 32, 6, np.zeros((4, 1, 210), np.uint8), None, None))
    # a flat (N, K / QK * type_size) data array, as a GGUF tensor's bytes come, is accepted
    flat = QuantizedTensor("q4_k", (4, 512), 256, 4, w.data.reshape(4, -1), None, None)
    x = rng.standard_normal(512).astype(np.float32)
    np.testing.assert_array_equal(matmul(Weight(flat), x), matmul(Weight(w), x))
    from edgerun.kernels import registry

    assert registry.get("matmul", "q6_k").reference is ref.matmul


# ---- the fused decode ------------------------------------------------------------------------------------------


def test_fused_decode_layer_runs_gguf_weights():
    """er_decode_layer (one C call per layer) with GGUF-block weights equals the same steps op by op, bit for bit."""
    from edgerun.kernels import attention, rmsnorm, rope_neox, silu_mul
    from edgerun.kernels._lib import ErDecodeCfg, ErLayer, lib

    rng = np.random.default_rng(8)
    dim, nh, nkv, hd, ffn, cap, eps, theta = 256, 4, 2, 64, 512, 8, 1e-6, 10000.0
    fmts = {"wq": "q4_k", "wk": "q6_k", "wv": "q5_k", "wo": "q5_0", "wg": "q4_1", "wu": "q3_k", "wd": "q2_k"}
    shapes = {"wq": (nh * hd, dim), "wk": (nkv * hd, dim), "wv": (nkv * hd, dim), "wo": (dim, nh * hd),
              "wg": (ffn, dim), "wu": (ffn, dim), "wd": (dim, ffn)}
    W = {}
    for name, fmt in fmts.items():
        n, k = shapes[name]
        W[name] = Weight(random_weight(fmt, n, k // ref.GGML_BLOCKS[fmt][0], rng))
    an = (1 + 0.1 * rng.standard_normal(dim)).astype(np.float32)
    fn = (1 + 0.1 * rng.standard_normal(dim)).astype(np.float32)
    scale = 1 / np.sqrt(hd)
    buf = {n: np.zeros(s, np.float32) for n, s in (("x", dim), ("h", dim), ("q", nh * hd), ("k", nkv * hd),
                                                    ("v", nkv * hd), ("att", nh * hd), ("o", dim), ("g", ffn),
                                                    ("u", ffn))}
    ptr = {n: a.ctypes.data for n, a in buf.items()}
    cfg = ErDecodeCfg(dim, nh, nkv, hd, ffn, eps, scale, 0.0, 0, 0, *(ptr[n] for n in ("x", "h", "q", "k", "v", "att",
                                                                                       "o", "g", "u")))
    L = ErLayer()
    for j, name in enumerate(("wq", "wk", "wv", "wo", "wg", "wu", "wd")):
        L.w[j] = ctypes.addressof(W[name]._c)
    L.attn_norm, L.ffn_norm = an.ctypes.data, fn.ctypes.data
    L.rope_theta, L.rope_freq_scale, L.window = theta, 1.0, 0
    kc, vc = np.zeros((nkv, cap, hd), np.float32), np.zeros((nkv, cap, hd), np.float32)
    kr, vr = kc.copy(), vc.copy()
    xs = rng.standard_normal((4, dim)).astype(np.float32)
    for pos in range(4):
        buf["x"][:] = xs[pos]
        assert lib.er_decode_layer(ctypes.byref(cfg), ctypes.byref(L), kc.ctypes.data, vc.ctypes.data, cap, pos) == 0
        fused = buf["x"].copy()
        # the same steps, one kernel call each
        x = xs[pos].copy()
        h = rmsnorm(x, an, eps)
        q, k, v = matmul_multi([W["wq"], W["wk"], W["wv"]], h)
        rope_neox(q.reshape(nh, hd), pos, theta)
        rope_neox(k.reshape(nkv, hd), pos, theta)
        kr[:, pos], vr[:, pos] = k.reshape(nkv, hd), v.reshape(nkv, hd)
        att = attention(q.reshape(nh, hd), kr, vr, pos + 1, scale)
        x += matmul(W["wo"], att.reshape(-1))
        h = rmsnorm(x, fn, eps)
        g, u = matmul_multi([W["wg"], W["wu"]], h)
        x += matmul(W["wd"], silu_mul(g, u))
        np.testing.assert_array_equal(fused, x)
        np.testing.assert_array_equal(kc, kr)


# ---- real tensors of the packaged GGUFs ------------------------------------------------------------------------


_KV_SIZE = {0: 1, 1: 1, 2: 2, 3: 2, 4: 4, 5: 4, 6: 4, 7: 1, 10: 8, 11: 8, 12: 8}  # GGUF scalar value types


@functools.lru_cache(maxsize=4)
def _gguf_tensors(path) -> dict[str, tuple[int, tuple[int, ...], np.ndarray]]:
    """name -> (ggml type, ne, raw bytes (memmap)) of the quantized tensors of a GGUF v3 file. A minimal header
    walk: gguf.GGUFReader decodes every metadata array (a 262k-token vocabulary takes a minute here)."""
    import struct

    buf = np.memmap(path, np.uint8, mode="r")
    mv = memoryview(buf)
    off = 4

    def rd(fmt):
        nonlocal off
        v = struct.unpack_from("<" + fmt, mv, off)
        off += struct.calcsize("<" + fmt)
        return v[0]

    def rstr():
        nonlocal off
        n = rd("Q")
        off += n
        return bytes(mv[off - n:off]).decode()

    def skip(t):
        nonlocal off
        if t == 8:
            n = rd("Q")  # (not `off += rd(...)`: that adds to the offset from before the read)
            off += n
        elif t == 9:
            et, n = rd("I"), rd("Q")
            if et in _KV_SIZE:
                off += n * _KV_SIZE[et]
            else:
                for _ in range(n):
                    skip(et)
        else:
            off += _KV_SIZE[t]

    assert bytes(mv[:4]) == b"GGUF" and rd("I") == 3
    n_tensors, n_kv = rd("Q"), rd("Q")
    align = 32
    for _ in range(n_kv):
        key, t = rstr(), rd("I")
        if key == "general.alignment":
            align = rd("I")
        else:
            skip(t)
    infos = []
    for _ in range(n_tensors):
        name, nd = rstr(), rd("I")
        ne = tuple(rd("Q") for _ in range(nd))
        infos.append((name, ne, rd("I"), rd("Q")))
    base = (off + align - 1) // align * align
    out = {}
    for name, ne, t, o in infos:
        fmt = GT(t).name.lower()
        if fmt in ref.GGML_BLOCKS:
            qk, ts = ref.GGML_BLOCKS[fmt]
            nbytes = int(np.prod(ne)) // qk * ts
            out[name] = (t, ne, buf[base + o:base + o + nbytes])
    return out


def _gguf_tensor(path, name: str) -> tuple[QuantizedTensor, np.ndarray, int]:
    t, ne, raw = _gguf_tensors(str(path))[name]
    fmt = GT(t).name.lower()
    qk, ts = ref.GGML_BLOCKS[fmt]
    k, n = int(ne[0]), int(np.prod(ne[1:]))
    return QuantizedTensor(fmt, (n, k), qk, BITS[fmt], raw.reshape(n, k // qk, ts), None, None), raw, t


@pytest.mark.model
@pytest.mark.parametrize("isa", ISAS)
def test_real_gguf_tensors(isa, gemma3_gguf, smollm2_gguf):
    rng = np.random.default_rng(9)
    cases = [(gemma3_gguf, "blk.0.attn_output.weight", "q4_k"), (gemma3_gguf, "blk.0.ffn_down.weight", "q6_k"),
             (gemma3_gguf, "blk.0.attn_q.weight", "q5_0"), (smollm2_gguf, "blk.0.ffn_down.weight", "q4_1")]
    for path, name, fmt in cases:
        w, raw, t = _gguf_tensor(path, name)
        assert w.format == fmt
        wf = ref.ggml_dequantize(w)
        np.testing.assert_array_equal(wf.reshape(-1), gguf.quants.dequantize(np.asarray(raw), GT(t)).reshape(-1))
        x = rng.standard_normal((2, w.shape[1])).astype(np.float32)
        with use_isa(isa):
            y = matmul(Weight(w), x[0])  # GEMV
            y2 = matmul(Weight(w), x)  # GEMM
        check(w, np.concatenate([x[:1], x]), np.concatenate([y[None], y2]))
        # against the plain float product: within the int8-activation error, and close in relative terms
        exact = x[0].astype(np.float64) @ wf.astype(np.float64).T
        assert np.linalg.norm(y - exact) <= 0.02 * np.linalg.norm(exact)
