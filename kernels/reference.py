"""Numpy references for every kernel in ``src/`` (the tests compare each C variant against these).

Shapes follow the C API in ``src/edgerun_kernels.h``.
"""

from __future__ import annotations

import numpy as np
from edgerun.quant import QuantizedTensor, dequantize, get_format, unpack_codes


def matmul(w: QuantizedTensor | np.ndarray, x: np.ndarray) -> np.ndarray:
    """Exact-float reference: ``x (M, K) @ W^T`` with W dequantized -> (M, N) float32 (float64 math)."""
    wf = dequantize(w) if isinstance(w, QuantizedTensor) else np.asarray(w, dtype=np.float32)
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


def kivi_attention(lay, q: np.ndarray, k_new: np.ndarray, v_new: np.ndarray, p0: int, scale: float,
                   softcap: float = 0.0, q_sink: np.ndarray | None = None) -> np.ndarray:
    """Reference of ``er_kivi_attention`` over a KIVI cache layer (runtime/llm/kv_cache.py ``_LayerKV``).

    Dequantizes every key/value with quant/kv.py, then float64 attention: q (T, H, D) at p0..; query p sees key a
    iff a <= p and (a < sinks or a > p - window); sink keys are scored with q_sink (None: q). -> (T, H, D).
    """
    from edgerun.quant import kv as kvq

    t_, h, d = q.shape
    hkv = k_new.shape[0]
    ks, vs, ps, sink = [], [], [], []  # (Hkv, n, D) pieces, positions, sink flags
    ks.append(lay.sink_k.astype(np.float64))
    vs.append(lay.sink_v.astype(np.float64))
    ps.append(lay.sink_pos)
    sink.append(np.ones(lay.S, bool))
    for b in range(lay.nb):
        if lay.q_start[b] < 0:
            continue
        ks.append(kvq.dequantize_keys(lay.qk[b], lay.qk_scale[b], lay.qk_min[b], lay.bits, d).astype(np.float64))
        vs.append(kvq.dequantize_values(lay.qv[b], lay.qv_scale[b], lay.qv_min[b], lay.bits, d).astype(np.float64))
        ps.append(lay.q_start[b] + np.arange(lay.G))
        sink.append(np.zeros(lay.G, bool))
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
    if softcap > 0:
        s = softcap * np.tanh(s / softcap)
    qp = p0 + np.arange(t_)[:, None]
    ok = (pp[None, :] >= 0) & (pp[None, :] <= qp) & ((pp[None, :] < lay.S) | (pp[None, :] > qp - lay.W))  # (T, n)
    s = np.where(ok[None], s, -np.inf)
    p = np.exp(s - s.max(axis=-1, keepdims=True))
    p /= p.sum(axis=-1, keepdims=True)
    return np.einsum("htj,hjd->thd", p, vv).astype(np.float32)
