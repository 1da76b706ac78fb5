"""Numpy references for every kernel in ``src/`` (the tests compare each C variant against these).

Shapes follow the C API in ``src/edgerun_kernels.h``.
"""

from __future__ import annotations

import numpy as np
from edgerun.quant import QuantizedTensor, dequantize, get_format, unpack_codes


def matmul(w: QuantizedTensor | np.ndarray, x: np.ndarray) -> np.ndarray:
    """Exact-float reference: ``x (M, K) @ W^T`` with W dequantized -> (M, N) float32 (float64 math)."""
    if isinstance(w, QuantizedTensor):
        wf = ggml_dequantize(w) if w.format in GGML_BLOCKS else dequantize(w)
    else:
        wf = np.asarray(w, dtype=np.float32)
    return (np.asarray(x, np.float64) @ wf.astype(np.float64).T).astype(np.float32)


def quantize_activations(x: np.ndarray, kp: int, q8k: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """The kernels' on-the-fly int8 activations, as llama.cpp's CPU path quantizes them.

    Default (llama.cpp ``quantize_row_q8_0``): per 32 values ``d = fp16(amax/127)`` (the dot uses the
    fp16-rounded d), ``q = round_half_even(x * 127/amax)``.
    ``q8k`` (llama.cpp ``quantize_row_q8_K``, the activations of its TQ2_0 dot; the kernels use it for
    2-bit weights in blocks of 256): per 256 values ``iscale = -127/max`` with ``max`` the value of largest
    magnitude, ``q = min(127, round_half_even(iscale * x))``, ``d = 1/iscale`` in f32, repeated over the
    8 sub-blocks of 32.

    x (M, K) -> q int32 (M, kp) in natural order (zero-padded), d float32 (M, kp/32).
    """
    m, k = x.shape
    xp = np.zeros((m, kp), np.float32)
    xp[:, :k] = x
    if q8k:
        xb = xp.reshape(m, -1, 256)
        i = np.abs(xb).argmax(axis=-1)[..., None]  # first index of the largest magnitude
        mx = np.take_along_axis(xb, i, axis=-1)[..., 0]  # (M, kp/256) signed
        with np.errstate(divide="ignore"):
            iscale = np.where(mx != 0, np.float32(-127) / mx, 0).astype(np.float32)
            d = np.where(mx != 0, np.float32(1) / iscale, 0).astype(np.float32)
        q = np.clip(np.rint(xb * iscale[..., None]), -127, 127).astype(np.int32)
        return q.reshape(m, kp), np.repeat(d, 8, axis=1)
    xb = xp.reshape(m, -1, 32)
    amax = np.abs(xb).max(axis=-1)  # (M, kp/32)
    d = (amax / np.float32(127)).astype(np.float16).astype(np.float32)
    with np.errstate(divide="ignore"):
        inv = np.where(amax > 0, np.float32(127) / amax, 0).astype(np.float32)
    q = np.clip(np.rint(xb * inv[..., None]), -127, 127).astype(np.int32)
    return q.reshape(m, kp), d


def uses_q8k(w: QuantizedTensor) -> bool:
    """Whether the kernels quantize activations for `w` the Q8_K way (2-bit codes, blocks of 256)."""
    return w.bits == 2 and w.block_size % 256 == 0


def matmul_q8(w: QuantizedTensor, x: np.ndarray) -> np.ndarray:
    """What the quantized kernels compute: int8 activations (per 32) times the integer codes.

    y[n] = sum_b scale[n,b] * sum_{t in b} d[t] * sum_i (code[n,i] - zp[n,b]) * q[i]   (M, N)
    """
    x = np.asarray(x, np.float32).reshape(-1, w.shape[1])
    n = w.shape[0]
    kp = w.n_blocks * w.block_size
    q, d = quantize_activations(x, kp, uses_q8k(w))  # (M, kp), (M, kp/32)
    codes = unpack_codes(w.data, w.bits).reshape(n, kp).astype(np.int64)
    zp = np.repeat(get_format(w.format).zero_point_array(w), w.block_size, axis=1)  # (N, kp)
    cz = (codes - zp).reshape(n, -1, 32)  # (N, kp/32, 32)
    qs = q.reshape(q.shape[0], -1, 32).astype(np.int64)  # (M, kp/32, 32)
    idot = np.einsum("nts,mts->mnt", cz, qs).astype(np.float64)  # (M, N, kp/32) exact integers
    sw = np.repeat(w.scales.astype(np.float64), w.block_size // 32, axis=1)  # (N, kp/32)
    return np.einsum("mnt,nt,mt->mn", idot, sw, d.astype(np.float64)).astype(np.float32)


def matmul_q8_error_bound(w: QuantizedTensor, x: np.ndarray) -> np.ndarray:
    """Bound on |matmul_q8 - matmul|: activation rounding moves each x by <= d/2, plus |q| <= 127 times
    the fp16 rounding of d (<= 2^-11 d), so |dy[n]| <= sum_k |W[n,k]| * |d(k)| * (1/2 + 127/2048)  (M, N)."""
    x = np.asarray(x, np.float32).reshape(-1, w.shape[1])
    kp = w.n_blocks * w.block_size
    _, d = quantize_activations(x, kp, uses_q8k(w))
    d = np.abs(d.astype(np.float64)) * (1 + 127 / 1024)
    wa = np.zeros((w.shape[0], kp), np.float64)
    wa[:, : w.shape[1]] = np.abs(dequantize(w))
    return (np.repeat(d.astype(np.float64), 32, axis=1) / 2) @ wa.T


def rmsnorm(x: np.ndarray, w: np.ndarray, eps: float = 1e-6) -> np.ndarray:
    """x (..., n) / sqrt(mean(x^2) + eps) * w (n,)."""
    x64 = np.asarray(x, np.float64)
    r = 1 / np.sqrt((x64 * x64).mean(axis=-1, keepdims=True) + eps)
    return (x64 * r * w).astype(np.float32)


def rope_neox(x: np.ndarray, pos: int, theta: float = 10000.0, freq_scale: float = 1.0) -> np.ndarray:
    """Rotate-half RoPE of x (n_heads, head_dim) at position ``pos``: pairs (i, i + head_dim/2)."""
    d = x.shape[-1]
    half = d // 2
    inv = theta ** (-2.0 * np.arange(half) / d)
    ang = pos * freq_scale * inv
    c, s = np.cos(ang), np.sin(ang)
    a, b = x[..., :half].astype(np.float64), x[..., half:].astype(np.float64)
    return np.concatenate([a * c - b * s, a * s + b * c], axis=-1).astype(np.float32)


def rope_rows(x: np.ndarray, cos: np.ndarray, sin: np.ndarray) -> np.ndarray:
    """Rotate-half RoPE of x (T, n_heads, head_dim), row t by cos/sin (T, head_dim/2): float32 products and sums
    in ``base.apply_rope``'s order (the kernel gives these floats exactly)."""
    half = x.shape[-1] // 2
    c, s = cos[:, None, :], sin[:, None, :]
    a, b = x[..., :half], x[..., half:]
    return np.concatenate([a * c - b * s, b * c + a * s], axis=-1).astype(np.float32)


def softmax(x: np.ndarray) -> np.ndarray:
    """Row softmax over the last axis."""
    e = np.exp(np.asarray(x, np.float64) - np.max(x, axis=-1, keepdims=True))
    return (e / e.sum(axis=-1, keepdims=True)).astype(np.float32)


def silu(x: np.ndarray) -> np.ndarray:
    """x * sigmoid(x)."""
    x64 = np.asarray(x, np.float64)
    return (x64 / (1 + np.exp(-x64))).astype(np.float32)


def gelu_tanh(x: np.ndarray) -> np.ndarray:
    """GELU, tanh approximation (Gemma's ``gelu_pytorch_tanh``)."""
    x64 = np.asarray(x, np.float64)
    return (0.5 * x64 * (1 + np.tanh(np.sqrt(2 / np.pi) * (x64 + 0.044715 * x64**3)))).astype(np.float32)


def mul(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Elementwise a * b."""
    return (np.asarray(a, np.float32) * np.asarray(b, np.float32)).astype(np.float32)


def silu_mul(g: np.ndarray, u: np.ndarray) -> np.ndarray:
    """silu(g) * u (SwiGLU)."""
    return (silu(g).astype(np.float64) * u).astype(np.float32)


def gelu_mul(g: np.ndarray, u: np.ndarray) -> np.ndarray:
    """gelu_tanh(g) * u (GeGLU)."""
    return (gelu_tanh(g).astype(np.float64) * u).astype(np.float32)


def attention(q: np.ndarray, k: np.ndarray, v: np.ndarray, n_ctx: int, scale: float,
              softcap: float = 0.0) -> np.ndarray:
    """One-token GQA attention. q (H, D); k, v (Hkv, S, D) (first n_ctx valid) -> (H, D)."""
    h, d = q.shape
    hkv = k.shape[0]
    kk = np.repeat(k[:, :n_ctx].astype(np.float64), h // hkv, axis=0)  # (H, n_ctx, D)
    vv = np.repeat(v[:, :n_ctx].astype(np.float64), h // hkv, axis=0)
    s = np.einsum("hd,htd->ht", q.astype(np.float64), kk) * scale  # (H, n_ctx)
    if softcap > 0:
        s = softcap * np.tanh(s / softcap)
    p = np.exp(s - s.max(axis=-1, keepdims=True))
    p /= p.sum(axis=-1, keepdims=True)
    return np.einsum("ht,htd->hd", p, vv).astype(np.float32)


def attention_prefill(q: np.ndarray, k: np.ndarray, v: np.ndarray, p0: int, scale: float, softcap: float = 0.0,
                      window: int | None = None) -> np.ndarray:
    """Causal GQA prefill. q (T, H, D) at positions p0..p0+T-1; k, v (Hkv, S, D) -> (T, H, D)."""
    t_, h, d = q.shape
    hkv = k.shape[0]
    n = p0 + t_
    kk = np.repeat(k[:, :n].astype(np.float64), h // hkv, axis=0)  # (H, n, D)
    vv = np.repeat(v[:, :n].astype(np.float64), h // hkv, axis=0)
    s = np.einsum("thd,hjd->htj", q.astype(np.float64), kk) * scale  # (H, T, n)
    if softcap > 0:
        s = softcap * np.tanh(s / softcap)
    qp, kp = np.arange(p0, n)[:, None], np.arange(n)[None, :]
    allowed = kp <= qp
    if window is not None:
        allowed &= qp - kp < window
    s = np.where(allowed[None], s, -np.inf)
    p = np.exp(s - s.max(axis=-1, keepdims=True))
    p /= p.sum(axis=-1, keepdims=True)
    return np.einsum("htj,hjd->thd", p, vv).astype(np.float32)


def layer_norm(x: np.ndarray, g: np.ndarray, b: np.ndarray, eps: float = 1e-5) -> np.ndarray:
    """LayerNorm over the last axis (float64 math)."""
    x64 = x.astype(np.float64)
    mu = x64.mean(-1, keepdims=True)
    var = ((x64 - mu) ** 2).mean(-1, keepdims=True)
    return ((x64 - mu) / np.sqrt(var + eps) * g + b).astype(np.float32)


def gelu_erf(x: np.ndarray) -> np.ndarray:
    """GELU, exact form 0.5 x (1 + erf(x / sqrt 2)) (float64 math)."""
    from math import erf

    x64 = x.astype(np.float64)
    return (0.5 * x64 * (1.0 + np.vectorize(erf)(x64 / np.sqrt(2.0)))).astype(np.float32)


def attention_seg2(q: np.ndarray, ka: np.ndarray, va: np.ndarray, kb: np.ndarray, vb: np.ndarray,
                   scale: float, b_step: int = 1) -> np.ndarray:
    """Non-causal attention over two key segments. q (T, H, D); ka, va (H, na, D); kb, vb (H, nb, D) (any float
    dtype; each key of segment B weighted as ``b_step`` keys) -> (T, H, D): softmax over the keys [ka; kb]."""
    k = np.concatenate([ka.astype(np.float64), kb.astype(np.float64)], axis=1)  # (H, S, D)
    v = np.concatenate([va.astype(np.float64), vb.astype(np.float64)], axis=1)
    s = np.einsum("thd,hjd->htj", q.astype(np.float64), k) * scale
    s[..., ka.shape[1] :] += np.log(b_step)
    p = np.exp(s - s.max(axis=-1, keepdims=True))
    p /= p.sum(axis=-1, keepdims=True)
    return np.einsum("htj,hjd->thd", p, v).astype(np.float32)


# ---- GGUF block formats (q4_1, q5_0, q5_1, q2_k .. q6_k), read verbatim by src/matmul_ggml.c ----------------
#
# A weight is a QuantizedTensor with format = the lower-case ggml type name, block_size = QK, scales = None and
# data = (N, K // QK, type_size) uint8: each row's GGUF blocks byte for byte. Layouts: src/ggml_blocks.h.

GGML_BLOCKS = {  # format: (QK, type_size) as gguf.GGML_QUANT_SIZES
    "q4_1": (32, 20), "q5_0": (32, 22), "q5_1": (32, 24),
    "q2_k": (256, 84), "q3_k": (256, 110), "q4_k": (256, 144), "q5_k": (256, 176), "q6_k": (256, 210),
}


_GGML_F16 = {"q4_1": (0, 2), "q5_0": (0,), "q5_1": (0, 2), "q2_k": (80, 82), "q3_k": (108,), "q4_k": (0, 2),
             "q5_k": (0, 2), "q6_k": (208,)}  # byte offsets of each block's f16 factors (d, m / dmin)


def ggml_random_blocks(fmt: str, nblocks: int, rng: np.random.Generator) -> np.ndarray:
    """(nblocks, type_size) uint8 blocks of ``fmt``: every byte random (so every code and sub-block scale occurs)
    except the f16 factors, finite values of either sign with magnitude in [0.001, 0.05]. For tests and
    benchmarks: gguf-py cannot quantize K-quants."""
    _, ts = GGML_BLOCKS[fmt]
    b = rng.integers(0, 256, (nblocks, ts), dtype=np.uint8)
    for o in _GGML_F16[fmt]:
        v = (rng.uniform(0.001, 0.05, nblocks) * rng.choice([-1.0, 1.0], nblocks)).astype(np.float16)
        b[:, o:o + 2] = v.view(np.uint8).reshape(nblocks, 2)
    return b


def ggml_random_weight(fmt: str, shape: tuple[int, int], rng: np.random.Generator) -> QuantizedTensor:
    """A random (N, K) weight in GGUF block format ``fmt`` (K a multiple of the block size): ggml_random_blocks."""
    qk, ts = GGML_BLOCKS[fmt]
    n, k = shape
    bits = {"q4_1": 4, "q5_0": 5, "q5_1": 5, "q2_k": 2, "q3_k": 3, "q4_k": 4, "q5_k": 5, "q6_k": 6}[fmt]
    data = ggml_random_blocks(fmt, n * (k // qk), rng).reshape(n, k // qk, ts)
    return QuantizedTensor(fmt, (n, k), qk, bits, data, None, None)


def _f16(b: np.ndarray, o: int) -> np.ndarray:
    """The f16 at byte offset o of each block (nb, type_size) -> (nb,) float32."""
    return np.ascontiguousarray(b[:, o:o + 2]).view(np.float16)[:, 0].astype(np.float32)


def _k4_scales(s: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """q4_K / q5_K: 12 bytes (nb, 12) -> the 8 6-bit scales and 8 mins (nb, 8) int64."""
    s = s.astype(np.int64)
    sc = np.concatenate([s[:, 0:4] & 63, (s[:, 8:12] & 15) | ((s[:, 0:4] >> 6) << 4)], axis=1)
    mn = np.concatenate([s[:, 4:8] & 63, (s[:, 8:12] >> 4) | ((s[:, 4:8] >> 6) << 4)], axis=1)
    return sc, mn


def _k3_scales(s: np.ndarray) -> np.ndarray:
    """q3_K: 12 bytes (nb, 12) -> the 16 6-bit scales minus 32 (nb, 16) int64."""
    s = s.astype(np.int64)
    lo = np.concatenate([s[:, 0:8] & 15, s[:, 0:8] >> 4], axis=1)  # scale j < 8: low nibble of byte j
    hi = np.concatenate([(s[:, 8:12] >> (2 * i)) & 3 for i in range(4)], axis=1)  # scale 4i + r: byte 8 + r
    return (lo | (hi << 4)) - 32


def ggml_codes(fmt: str, blocks: np.ndarray) -> dict[str, np.ndarray]:
    """The canonical form of blocks (nb, type_size) of ``fmt`` (src/ggml_blocks.h): unsigned codes ``q`` in
    natural element order (nb, QK) int64 and the block factors.

    K-quants: ``sc``, ``mn`` (nb, 16) int64 per 16 elements and ``dA``, ``dB`` (nb,) float32 with
    ``w = dA * sc * q - dB * mn``.  32-element formats: ``fw``, ``fm`` (nb,) float32 with ``w = fw * q + fm``.
    """
    b = np.asarray(blocks, np.uint8)
    e = np.arange(256)
    h, f, lane = e >> 7, (e >> 5) & 3, e & 31
    if fmt in ("q4_1", "q5_0", "q5_1"):
        qs = b[:, {"q4_1": 4, "q5_0": 6, "q5_1": 8}[fmt]:][:, :16].astype(np.int64)
        q = np.concatenate([qs & 15, qs >> 4], axis=1)
        if fmt != "q4_1":
            qh = np.ascontiguousarray(b[:, 2 if fmt == "q5_0" else 4:][:, :4]).view("<u4")[:, 0].astype(np.int64)
            q |= ((qh[:, None] >> np.arange(32)) & 1) << 4
        fw = _f16(b, 0)
        fm = (np.float32(-16) * fw) if fmt == "q5_0" else _f16(b, 2)
        return {"q": q, "fw": fw, "fm": fm.astype(np.float32)}
    if fmt == "q2_k":
        qs = b[:, 16:80].astype(np.int64)
        q = (qs[:, 32 * h + lane] >> (2 * f)) & 3
        s = b[:, :16].astype(np.int64)
        return {"q": q, "sc": s & 15, "mn": s >> 4, "dA": _f16(b, 80), "dB": _f16(b, 82)}
    if fmt == "q3_k":
        qs, hm = b[:, 32:96].astype(np.int64), b[:, :32].astype(np.int64)
        q = ((qs[:, 32 * h + lane] >> (2 * f)) & 3) | (((hm[:, lane] >> (4 * h + f)) & 1) << 2)
        sc = _k3_scales(b[:, 96:108])
        d = _f16(b, 108)
        return {"q": q, "sc": sc, "mn": 4 * sc, "dA": d, "dB": d}
    if fmt in ("q4_k", "q5_k"):
        sc, mn = _k4_scales(b[:, 4:16])
        qs = b[:, 48 if fmt == "q5_k" else 16:][:, :128].astype(np.int64)
        j = e >> 5
        q = (qs[:, 32 * (j >> 1) + lane] >> (4 * (j & 1))) & 15
        if fmt == "q5_k":
            q |= ((b[:, 16:48].astype(np.int64)[:, lane] >> j) & 1) << 4
        return {"q": q, "sc": np.repeat(sc, 2, axis=1), "mn": np.repeat(mn, 2, axis=1), "dA": _f16(b, 0),
                "dB": _f16(b, 2)}
    if fmt == "q6_k":
        ql, qh = b[:, :128].astype(np.int64), b[:, 128:192].astype(np.int64)
        q = (ql[:, 64 * h + 32 * (f & 1) + lane] >> (4 * (f >> 1))) & 15
        q |= ((qh[:, 32 * h + lane] >> (2 * f)) & 3) << 4
        sc = b[:, 192:208].view(np.int8).astype(np.int64)
        d = _f16(b, 208)
        return {"q": q, "sc": sc, "mn": 32 * sc, "dA": d, "dB": d}
    raise ValueError(f"not a GGUF block format: {fmt!r}")


def ggml_dequantize_blocks(fmt: str, blocks: np.ndarray) -> np.ndarray:
    """Blocks (nb, type_size) -> (nb, QK) float32, with llama.cpp's dequantize_row_* float operations (so equal
    bit for bit to ``gguf.quants.dequantize``)."""
    c = ggml_codes(fmt, blocks)
    q = c["q"]
    f32 = np.float32
    if fmt in ("q4_1", "q5_1"):
        return c["fw"][:, None] * q.astype(f32) + c["fm"][:, None]
    if fmt == "q5_0":
        return c["fw"][:, None] * (q - 16).astype(f32)
    nb = q.shape[0]
    sc = c["sc"].astype(f32)
    q16 = q.reshape(nb, 16, 16)
    if fmt in ("q3_k", "q6_k"):  # d * sc * (q - z)
        z = 4 if fmt == "q3_k" else 32
        w = (c["dA"][:, None] * sc)[..., None] * (q16 - z).astype(f32)
    else:  # d * sc * q - dmin * m
        w = (c["dA"][:, None] * sc)[..., None] * q16.astype(f32) - (c["dB"][:, None] * c["mn"].astype(f32))[..., None]
    return w.reshape(nb, 256).astype(f32)


def ggml_dequantize(w: QuantizedTensor) -> np.ndarray:
    """A GGUF-block QuantizedTensor -> (N, K) float32."""
    qk, ts = GGML_BLOCKS[w.format]
    n, k = w.shape
    return ggml_dequantize_blocks(w.format, np.asarray(w.data, np.uint8).reshape(-1, ts)).reshape(n, k)


def ggml_abs_terms(w: QuantizedTensor) -> np.ndarray:
    """(N, K) float64: the magnitudes of the terms each weight is made of (|dA sc q| + |dB mn|, |fw q| + |fm|), a
    scale for the float32 rounding of kernels that add the terms separately."""
    qk, ts = GGML_BLOCKS[w.format]
    n, k = w.shape
    c = ggml_codes(w.format, np.asarray(w.data, np.uint8).reshape(-1, ts))
    q = c["q"].astype(np.float64)
    if qk == 32:
        a = np.abs(c["fw"].astype(np.float64))[:, None] * q + np.abs(c["fm"].astype(np.float64))[:, None]
    else:
        nb = q.shape[0]
        sa = np.abs(c["dA"].astype(np.float64)[:, None] * c["sc"])[..., None]  # (nb, 16, 1)
        sb = np.abs(c["dB"].astype(np.float64)[:, None] * c["mn"])[..., None]
        a = (sa * q.reshape(nb, 16, 16) + sb).reshape(nb, 256)
    return a.reshape(n, k)


def _ggml_act(x: np.ndarray, qk: int) -> dict[str, np.ndarray]:
    """The kernels' activations for weights with blocks of qk (32: Q8_0 + sums, 256: Q8_K + sums of 16)."""
    m, k = x.shape
    if qk == 256:
        q, d = quantize_activations(x, k, q8k=True)  # d repeated per 32
        return {"q": q.astype(np.int64), "d": d[:, ::8].astype(np.float64),
                "bs": q.reshape(m, -1, 16).sum(axis=-1).astype(np.int64)}
    q, d = quantize_activations(x, k)
    return {"q": q.astype(np.int64), "d": d.astype(np.float64),
            "s": d.astype(np.float64) * q.reshape(m, -1, 32).sum(axis=-1)}


def ggml_matmul_q8(w: QuantizedTensor, x: np.ndarray) -> np.ndarray:
    """What the kernels compute for a GGUF-block weight: x quantized as llama.cpp does (Q8_0 per 32 with block
    sums, or Q8_K per 256 with sums of 16), exact integer dots and integer sub-block scales, the float factors in
    float64:
        K-quants:  y = sum_blocks dy * (dA * sum_j sc_j dot_j - dB * sum_j mn_j bsum_j)
        32-blocks: y = sum_blocks fw * dy * dot + fm * dy * sum(a)
    x (M, K) -> (M, N) float32."""
    qk, ts = GGML_BLOCKS[w.format]
    n, k = w.shape
    x = np.asarray(x, np.float32).reshape(-1, k)
    m, nb = x.shape[0], k // qk
    c = ggml_codes(w.format, np.asarray(w.data, np.uint8).reshape(-1, ts))
    a = _ggml_act(x, qk)
    if qk == 32:
        dots = np.einsum("nbe,mbe->mnb", c["q"].reshape(n, nb, 32), a["q"].reshape(m, nb, 32)).astype(np.float64)
        fw = c["fw"].astype(np.float64).reshape(n, nb)
        fm = c["fm"].astype(np.float64).reshape(n, nb)
        y = np.einsum("mnb,nb,mb->mn", dots, fw, a["d"]) + np.einsum("nb,mb->mn", fm, a["s"])
        return y.astype(np.float32)
    d16 = np.einsum("nbje,mbje->mnbj", c["q"].reshape(n, nb, 16, 16), a["q"].reshape(m, nb, 16, 16))
    si = np.einsum("mnbj,nbj->mnb", d16, c["sc"].reshape(n, nb, 16))  # exact int64
    so = np.einsum("mbj,nbj->mnb", a["bs"].reshape(m, nb, 16), c["mn"].reshape(n, nb, 16))
    da = c["dA"].astype(np.float64).reshape(n, nb)
    db = c["dB"].astype(np.float64).reshape(n, nb)
    y = np.einsum("mb,mnb->mn", a["d"], da[None] * si - db[None] * so)
    return y.astype(np.float32)


def ggml_error_bound(w: QuantizedTensor, x: np.ndarray, wf: np.ndarray | None = None) -> np.ndarray:
    """Bound on |ggml_matmul_q8 - exact float product| (M, N): each activation moves by at most d/2 (plus the fp16
    rounding of a Q8_0 d), so |dy| <= sum_k |W[n,k]| d(k) (1/2 + 127/2048). ``wf``: ggml_dequantize(w) if at hand."""
    qk, _ = GGML_BLOCKS[w.format]
    x = np.asarray(x, np.float32).reshape(-1, w.shape[1])
    d = np.abs(_ggml_act(x, qk)["d"])
    d = np.repeat(d, qk, axis=1) * (1 / 2 + 127 / 2048)  # (M, K)
    return d @ np.abs((ggml_dequantize(w) if wf is None else wf).astype(np.float64)).T


KV_QMAX = 16383  # kv_attention.c (er_kv.h): the decode's 15-bit query codes


def kivi_query_scores(q: np.ndarray, codes: np.ndarray, s: np.ndarray, m: np.ndarray, bits: int,
                      scale: float) -> np.ndarray:
    """The decode's scores of one quantized key group (er_kv_ops q_prep + qk_codes, kernels/src/er_kv.h), float64.

    q (H, D) float32 queries, codes (n, D) uint8, s / m (D,) float32 key scales / mins. Each head's q' = (q * scale)
    * s is rounded to integers qi = rint(q' * KV_QMAX / max|q'|) (float32 arithmetic, as C), then
    score = max|q'| / KV_QMAX * sum qi (code - 2^(bits-1)) + sum (q * scale) m + 2^(bits-1) sum q'. -> (H, n).
    """
    qs = q.astype(np.float32) * np.float32(scale)
    qp = qs * s.astype(np.float32)  # (H, D)
    mx = np.abs(qp).max(axis=1, keepdims=True)
    inv = np.where(mx > 0, np.float32(KV_QMAX) / np.where(mx > 0, mx, 1), 0).astype(np.float32)
    qi = np.rint(qp * inv).astype(np.int64)
    zc = 1 << (bits - 1)
    dot = qi @ (codes.astype(np.int64) - zc).T  # (H, n), exact
    off = (qs.astype(np.float64) * m.astype(np.float64)).sum(1, keepdims=True) + zc * qp.astype(np.float64).sum(
        1, keepdims=True)
    return (mx.astype(np.float64) / KV_QMAX) * dot + off


def kivi_attention(lay, q: np.ndarray, k_new: np.ndarray, v_new: np.ndarray, p0: int, scale: float,
                   softcap: float = 0.0, q_sink: np.ndarray | None = None, query_codes: bool = False) -> np.ndarray:
    """Reference of ``er_kivi_attention`` over a KIVI cache layer (runtime/llm/kv_cache.py ``_LayerKV``).

    Dequantizes every key/value with quant/kv.py, then float64 attention: q (T, H, D) at p0..; query p sees key a
    iff a <= p and (a < sinks or a > p - window); sink keys are scored with q_sink (None: q). -> (T, H, D).
    query_codes: score the quantized key groups as the C decode (T = 1) does, with the query rounded to 15-bit
    integers per group (:func:`kivi_query_scores`); False: the exact float scores.
    """
    from edgerun.quant import kv as kvq

    t_, h, d = q.shape
    hkv = k_new.shape[0]
    qscores = []  # query_codes: (H, T, G) scores of each quantized group, in order
    ks, vs, ps, sink = [], [], [], []  # (Hkv, n, D) pieces, positions, sink flags
    ks.append(lay.sink_k.astype(np.float64))
    vs.append(lay.sink_v.astype(np.float64))
    ps.append(lay.sink_pos)
    sink.append(np.ones(lay.S, bool))
    for b in range(lay.nb):
        if lay.q_start[b] < 0:
            continue
        kq = kvq.dequantize_keys(lay.qk[:, b], lay.qk_scale[:, b], lay.qk_min[:, b], lay.bits, d)
        vm = None if lay.qv_min is None else lay.qv_min[:, b].transpose(0, 2, 1)  # None: symmetric int8
        vq = kvq.dequantize_values(lay.qv[:, b], lay.qv_scale[:, b].transpose(0, 2, 1), vm, lay.bits, d)
        ks.append(kq.astype(np.float64))
        vs.append(vq.astype(np.float64))
        ps.append(lay.q_start[b] + np.arange(lay.G))
        sink.append(np.zeros(lay.G, bool))
        if query_codes:
            codes = kvq.unpack(lay.qk[:, b], lay.bits, d)  # (Hkv, G, D)
            sc = np.stack([kivi_query_scores(q[t].reshape(hkv, h // hkv, d)[j], codes[j], lay.qk_scale[j, b, 0],
                                             lay.qk_min[j, b, 0], lay.bits, scale)
                           for j in range(hkv) for t in range(t_)])  # fmt: skip
            qscores.append(sc.reshape(hkv, t_, h // hkv, -1).transpose(0, 2, 1, 3).reshape(h, t_, -1))
    for kk, vv, pp in ((lay.res_k, lay.res_v, lay.res_pos), (k_new, v_new, p0 + np.arange(t_))):
        ks.append(kk.astype(np.float64))
        vs.append(vv.astype(np.float64))
        ps.append(pp)
        sink.append(np.zeros(len(pp), bool))
    kk, vv = np.concatenate(ks, 1), np.concatenate(vs, 1)  # (Hkv, n, D)
    pp, sk = np.concatenate(ps), np.concatenate(sink)  # (n,)
    kk, vv = np.repeat(kk, h // hkv, axis=0), np.repeat(vv, h // hkv, axis=0)  # (H, n, D)
    qs = q if q_sink is None else q_sink
    s = np.where(sk[None, None, :], np.einsum("thd,hjd->htj", qs.astype(np.float64), kk),
                 np.einsum("thd,hjd->htj", q.astype(np.float64), kk)) * scale  # (H, T, n)
    if qscores:
        s[:, :, lay.S : lay.S + sum(x.shape[-1] for x in qscores)] = np.concatenate(qscores, -1)
    if softcap > 0:
        s = softcap * np.tanh(s / softcap)
    qp = p0 + np.arange(t_)[:, None]
    ok = (pp[None, :] >= 0) & (pp[None, :] <= qp) & ((pp[None, :] < lay.S) | (pp[None, :] > qp - lay.W))  # (T, n)
    s = np.where(ok[None], s, -np.inf)
    p = np.exp(s - s.max(axis=-1, keepdims=True))
    p /= p.sum(axis=-1, keepdims=True)
    return np.einsum("htj,hjd->thd", p, vv).astype(np.float32)
