"""Python entry points of the C kernels (thin ctypes wrappers; ctypes drops the GIL in each call).

Arrays must be C-contiguous float32 (f16 where noted); wrappers check shapes and dtypes once and
pass raw pointers. For the lowest per-call cost in a decode loop, build a :class:`Weight` once per
tensor and pass preallocated ``out`` arrays.
"""

from __future__ import annotations

import contextlib
import ctypes

import numpy as np
from edgerun.kernels._lib import ErWeight, lib
from edgerun.quant import QuantizedTensor

ISAS = {"scalar": 0, "avx2": 1, "avx512": 2, "neon": 3}
_ISA_NAMES = {v: k for k, v in ISAS.items()}
W_F32, W_F16, W_Q = 0, 1, 2
# GGUF block formats read verbatim (er_weight.type; src/ggml_blocks.h): format -> (C type, QK, type_size)
GGML_TYPES = {
    "q4_1": (3, 32, 20), "q5_0": (4, 32, 22), "q5_1": (5, 32, 24),
    "q2_k": (6, 256, 84), "q3_k": (7, 256, 110), "q4_k": (8, 256, 144), "q5_k": (9, 256, 176), "q6_k": (10, 256, 210),
}
_F32 = np.dtype(np.float32)
_er_matmul = lib.er_matmul


def _ptr(a: np.ndarray) -> int:
    return a.__array_interface__["data"][0]


def _f32(a: np.ndarray, name: str) -> np.ndarray:
    if not (isinstance(a, np.ndarray) and a.dtype == np.float32 and a.flags.c_contiguous):
        raise TypeError(f"{name} must be a C-contiguous float32 array")
    return a


# ---- dispatch / threads -------------------------------------------------------------------------


def isa_supported(name: str) -> bool:
    """Whether variant ``name`` (scalar, avx2, avx512, neon) is built and runs on this CPU."""
    return bool(lib.er_isa_supported(ISAS[name]))


def available_isas() -> list[str]:
    """Variants that can run here, slowest first."""
    return [n for n in ISAS if isa_supported(n)]


def get_isa() -> str:
    """The variant in use."""
    return _ISA_NAMES[lib.er_get_isa()]


def set_isa(name: str | None) -> str:
    """Force a variant (``None``: the best for this CPU). Raises ValueError if it cannot run here."""
    r = lib.er_set_isa(-1 if name is None else ISAS[name])
    if r < 0:
        raise ValueError(f"kernel variant {name!r} is not supported on this CPU/build")
    return _ISA_NAMES[r]


@contextlib.contextmanager
def use_isa(name: str | None):
    """Context manager: run the enclosed kernels with variant ``name``."""
    old = get_isa()
    set_isa(name)
    try:
        yield
    finally:
        set_isa(old)


def set_num_threads(n: int | None = None) -> int:
    """Threads of the persistent pool (None or <= 0: all online CPUs). Returns the count set."""
    return lib.er_set_num_threads(0 if n is None else int(n))


def get_num_threads() -> int:
    """Threads of the pool (the caller counts as one)."""
    return lib.er_get_num_threads()


def set_spin_us(us: int) -> None:
    """How long idle pool workers busy-wait for the next call before sleeping (default 2000 us)."""
    lib.er_set_spin_us(int(us))


# ---- matmul ---------------------------------------------------------------------------------------


def _zp_hint(w: QuantizedTensor) -> int:
    """``1 + z`` when every zero point of ``w`` is ``z`` (ternary: always 1), else 0 (C ``er_weight.zp_hint``)."""
    if w.zero_points is None:
        return 0
    from edgerun.quant import get_format

    z = get_format(w.format).zero_point_array(w)  # (N, n_blocks)
    return int(z.flat[0]) + 1 if z.size and np.all(z == z.flat[0]) else 0


def supported_formats() -> list[str]:
    """Quantized weight formats :class:`Weight` and :func:`matmul` run: the MatMulNBits formats of
    ``edgerun.quant`` and the GGUF block formats (``q4_1``, ``q5_0``, ``q5_1``, ``q2_k`` .. ``q6_k``, read
    verbatim) the compiled library has kernels for."""
    from edgerun.quant import FORMATS

    ggml = [f for f, (t, _, _) in GGML_TYPES.items() if lib.er_ggml_type_supported(t)]
    return sorted(set(FORMATS) - set(ggml)) + ggml


def _ggml_weight(w: QuantizedTensor) -> tuple[ErWeight, np.ndarray]:
    """C descriptor of a GGUF-block weight: ``data`` (N, K // QK, type_size) uint8, each row's blocks verbatim."""
    t, qk, ts = GGML_TYPES[w.format]
    n, k = (int(v) for v in w.shape)
    if k % qk or w.block_size != qk:
        raise ValueError(f"{w.format}: K={k} must be a multiple of block_size={qk} (got block_size={w.block_size})")
    data = np.ascontiguousarray(w.data, np.uint8)
    if data.size != n * (k // qk) * ts:
        raise ValueError(f"{w.format}: data has {data.size} bytes, expected (N, K // {qk}, {ts}) = "
                         f"{n * (k // qk) * ts} for shape {(n, k)}")
    if not lib.er_ggml_type_supported(t):
        from edgerun.errors import UnsupportedError

        raise UnsupportedError(f"the compiled kernels have no {w.format} matmul")
    return ErWeight(t, w.bits, n, k, qk, 0, _ptr(data), None, None), data


class Weight:
    """A weight ready for :func:`matmul`: f32/f16 ``(N, K)`` array or a :class:`QuantizedTensor`
    (MatMulNBits formats, or GGUF block formats read verbatim: see :func:`supported_formats`).

    Holds references to the arrays (which may be views into an mmapped ``weights.bin``) and the
    prebuilt C descriptor, so a call costs no repacking.
    """

    def __init__(self, w: QuantizedTensor | np.ndarray):
        if isinstance(w, QuantizedTensor) and w.format in GGML_TYPES:
            self._c, data = _ggml_weight(w)
            self.format = w.format
            self.shape = tuple(int(v) for v in w.shape)
            self.quantized = w
            self._keep = (data,)
        elif isinstance(w, QuantizedTensor):
            parts = [np.ascontiguousarray(w.data, np.uint8), np.ascontiguousarray(w.scales, np.float16)]
            zp = None if w.zero_points is None else np.ascontiguousarray(w.zero_points, np.uint8)
            self.format = w.format
            self.shape = tuple(w.shape)
            self.quantized = w
            self._keep = (*parts, zp)
            self._c = ErWeight(W_Q, w.bits, w.shape[0], w.shape[1], w.block_size, _zp_hint(w), _ptr(parts[0]),
                               _ptr(parts[1]), None if zp is None else _ptr(zp))
        else:
            a = np.asarray(w)
            if a.ndim != 2 or a.dtype not in (np.float32, np.float16):
                raise TypeError("a float weight must be a 2-D float32 or float16 (N, K) array")
            a = np.ascontiguousarray(a)
            self.format = "f32" if a.dtype == np.float32 else "f16"
            self.shape = a.shape
            self.quantized = None
            self._keep = (a,)
            self._c = ErWeight(W_F32 if a.dtype == np.float32 else W_F16, 0, a.shape[0], a.shape[1], 0, 0,
                               _ptr(a), None, None)
        self._ref = ctypes.byref(self._c)

    def __repr__(self) -> str:
        return f"Weight({self.format}, shape={self.shape})"


def as_weight(w: Weight | QuantizedTensor | np.ndarray) -> Weight:
    """``w`` as a :class:`Weight` (no copy when it already is one)."""
    return w if isinstance(w, Weight) else Weight(w)


def matmul(w: Weight | QuantizedTensor | np.ndarray, x: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """``x (K,) | (M, K)`` float32 @ W^T -> ``(N,) | (M, N)`` float32. GEMV for one row, GEMM for more."""
    if type(w) is not Weight:
        w = as_weight(w)
    n, k = w.shape
    if type(x) is not np.ndarray or x.dtype != _F32 or not x.flags.c_contiguous:
        raise TypeError("x must be a C-contiguous float32 array")
    if x.shape[-1] != k or x.ndim > 2:
        raise ValueError(f"x has shape {x.shape}, expected (K,) or (M, K) with K={k}")
    m = 1 if x.ndim == 1 else x.shape[0]
    if out is None:
        out = np.empty((n,) if x.ndim == 1 else (m, n), _F32)
    elif out.dtype != _F32 or not out.flags.c_contiguous or out.size != m * n:
        raise TypeError(f"out must be a C-contiguous float32 array of {m * n} values")
    r = _er_matmul(w._ref, x.ctypes.data, out.ctypes.data, m)
    if r:
        raise ValueError(f"er_matmul rejected its arguments (code {r})")
    return out


def matmul_multi(ws: list, x: np.ndarray, outs: list[np.ndarray] | None = None) -> list[np.ndarray]:
    """``[x @ W_i^T for W_i in ws]`` for up to 8 weights reading the same ``x (K,) | (M, K)`` float32.

    One C call: x is quantized once when the weights share a kind, and all their rows run in one parallel job
    (q/k/v, gate/up). Results equal :func:`matmul`'s.
    """
    ws = [as_weight(w) for w in ws]
    if not 1 <= len(ws) <= 8:
        raise ValueError("matmul_multi takes 1 to 8 weights")
    k = ws[0].shape[1]
    if any(w.shape[1] != k for w in ws):
        raise ValueError("every weight of matmul_multi must have the same K")
    _f32(x, "x")
    if x.shape[-1] != k or x.ndim > 2:
        raise ValueError(f"x has shape {x.shape}, expected (K,) or (M, K) with K={k}")
    m = 1 if x.ndim == 1 else x.shape[0]
    if outs is None:
        outs = [np.empty((w.shape[0],) if x.ndim == 1 else (m, w.shape[0]), _F32) for w in ws]
    for w, o in zip(ws, outs, strict=True):
        if o.dtype != _F32 or not o.flags.c_contiguous or o.size != m * w.shape[0]:
            raise TypeError(f"out must be a C-contiguous float32 array of {m * w.shape[0]} values")
    wp = (ctypes.c_void_p * len(ws))(*[ctypes.addressof(w._c) for w in ws])
    yp = (ctypes.c_void_p * len(ws))(*[_ptr(o) for o in outs])
    r = lib.er_matmul_multi(wp, len(ws), _ptr(x), yp, m)
    if r:
        raise ValueError(f"er_matmul_multi rejected its arguments (code {r})")
    return outs


# ---- decode ops -----------------------------------------------------------------------------------


def rmsnorm(x: np.ndarray, w: np.ndarray, eps: float = 1e-6, out: np.ndarray | None = None) -> np.ndarray:
    """RMSNorm over the last axis of x (n,) or (rows, n) with weight w (n,)."""
    n = x.shape[-1]
    out = np.empty_like(x) if out is None else out
    lib.er_rmsnorm(_ptr(_f32(x, "x")), _ptr(_f32(w, "w")), _ptr(_f32(out, "out")), x.size // n, n, eps)
    return out


def rope_neox(x: np.ndarray, pos: int, theta: float = 10000.0, freq_scale: float = 1.0) -> np.ndarray:
    """In-place NEOX RoPE of x (n_heads, head_dim) at position ``pos``; returns x."""
    _f32(x, "x")
    lib.er_rope_neox(_ptr(x), x.shape[0], x.shape[1], int(pos), theta, freq_scale)
    return x


def rope_rows(x: np.ndarray, cos: np.ndarray, sin: np.ndarray) -> np.ndarray:
    """In-place NEOX RoPE of x (T, n_heads, head_dim), row t by the tables cos/sin (T, head_dim/2) float32
    (``runtime.models.base.rope_tables``); returns x. The same floats as ``base.apply_rope``."""
    _f32(x, "x")
    if x.ndim != 3 or x.shape[2] % 2:
        raise ValueError(f"x must be (T, n_heads, head_dim) with an even head_dim; got {x.shape}")
    t, h, d = x.shape
    cos = np.ascontiguousarray(cos, np.float32)
    sin = np.ascontiguousarray(sin, np.float32)
    if cos.shape != (t, d // 2) or sin.shape != cos.shape:
        raise ValueError(f"cos/sin must be ({t}, {d // 2}); got {cos.shape}, {sin.shape}")
    lib.er_rope_rows(_ptr(x), t, h, d, _ptr(cos), _ptr(sin))
    return x


def softmax(x: np.ndarray) -> np.ndarray:
    """In-place softmax over the last axis of x; returns x."""
    _f32(x, "x")
    lib.er_softmax(_ptr(x), x.size // x.shape[-1], x.shape[-1])
    return x


def _unary(fn, x, out):
    out = np.empty_like(x) if out is None else out
    fn(_ptr(_f32(x, "x")), _ptr(_f32(out, "out")), x.size)
    return out


def _binary(fn, a, b, out):
    if a.shape != b.shape:
        raise ValueError(f"shapes differ: {a.shape} vs {b.shape}")
    out = np.empty_like(a) if out is None else out
    fn(_ptr(_f32(a, "a")), _ptr(_f32(b, "b")), _ptr(_f32(out, "out")), a.size)
    return out


def silu(x: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """x * sigmoid(x)."""
    return _unary(lib.er_silu, x, out)


def gelu_tanh(x: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """GELU with the tanh approximation."""
    return _unary(lib.er_gelu_tanh, x, out)


def mul(a: np.ndarray, b: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """Elementwise a * b."""
    return _binary(lib.er_mul, a, b, out)


def silu_mul(g: np.ndarray, u: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """silu(g) * u (SwiGLU gate)."""
    return _binary(lib.er_silu_mul, g, u, out)


def gelu_mul(g: np.ndarray, u: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """gelu_tanh(g) * u (GeGLU gate)."""
    return _binary(lib.er_gelu_mul, g, u, out)


def attention(q: np.ndarray, k: np.ndarray, v: np.ndarray, n_ctx: int, scale: float, softcap: float = 0.0,
              out: np.ndarray | None = None) -> np.ndarray:
    """One-token GQA attention: q (H, D) f32; k, v (Hkv, S, D) f32 or f16 cache (first n_ctx valid).

    Returns (H, D). ``softcap`` > 0 applies ``softcap * tanh(s / softcap)`` to the scores.
    """
    _f32(q, "q")
    h, d = q.shape
    if k.shape != v.shape or k.dtype != v.dtype or k.ndim != 3 or k.shape[2] != d:
        raise ValueError(f"k/v must both be (Hkv, S, {d}) of one dtype; got {k.shape}, {v.shape}")
    if k.dtype not in (np.float32, np.float16) or not (k.flags.c_contiguous and v.flags.c_contiguous):
        raise TypeError("k/v must be C-contiguous float32 or float16")
    out = np.empty_like(q) if out is None else _f32(out, "out")
    r = lib.er_attention(_ptr(q), _ptr(k), _ptr(v), _ptr(out), h, k.shape[0], d, int(n_ctx), k.shape[1],
                         int(k.dtype == np.float16), scale, softcap)
    if r:
        raise ValueError(f"er_attention rejected its arguments (code {r}): n_heads % n_kv_heads, n_ctx <= S")
    return out


def attention_prefill(q: np.ndarray, k: np.ndarray, v: np.ndarray, p0: int, scale: float, softcap: float = 0.0,
                      window: int | None = None, out: np.ndarray | None = None) -> np.ndarray:
    """Causal GQA attention of T new tokens at positions ``p0 .. p0+T-1`` (one C call, threaded).

    q (T, H, D) or (T, H*D) f32 (the q projection's output); k, v (Hkv, S, D) f32/f16 caches that already
    hold positions ``0 .. p0+T-1``. Query t sees keys j <= p0+t (and p0+t-j < window). Returns (T, H, D)
    (or ``out``), the layout the output projection takes.
    """
    _f32(q, "q")
    if k.shape != v.shape or k.dtype != v.dtype or k.ndim != 3:
        raise ValueError(f"k/v must both be (Hkv, S, D) of one dtype; got {k.shape}, {v.shape}")
    if k.dtype not in (np.float32, np.float16) or not (k.flags.c_contiguous and v.flags.c_contiguous):
        raise TypeError("k/v must be C-contiguous float32 or float16")
    hkv, s, d = k.shape
    t = q.shape[0]
    h = q.size // (t * d)
    if h * t * d != q.size:
        raise ValueError(f"q has shape {q.shape}, not (T, H, {d})")
    out = np.empty((t, h, d), np.float32) if out is None else _f32(out, "out")
    r = lib.er_attention_prefill(_ptr(q), _ptr(k), _ptr(v), _ptr(out), h, hkv, d, t, int(p0), s,
                                 int(k.dtype == np.float16), scale, softcap, 0 if window is None else int(window))
    if r:
        raise ValueError(f"er_attention_prefill rejected its arguments (code {r}): n_heads % n_kv_heads, p0+T <= S")
    return out


# ---- Whisper encoder ops (src/whisper_ops.c) ---------------------------------------------------------


def layer_norm(x: np.ndarray, g: np.ndarray, b: np.ndarray, eps: float = 1e-5,
               out: np.ndarray | None = None) -> np.ndarray:
    """LayerNorm over the last axis of x (n,) or (rows, n) with gain g and bias b (n,); threaded over rows."""
    n = x.shape[-1]
    if g.shape != (n,) or b.shape != (n,):
        raise ValueError(f"g and b must have shape ({n},)")
    out = np.empty_like(x) if out is None else out
    lib.er_layer_norm(_ptr(_f32(x, "x")), _ptr(_f32(g, "g")), _ptr(_f32(b, "b")), _ptr(_f32(out, "out")),
                      x.size // n, n, eps)
    return out


def gelu_erf(x: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """GELU, exact erf form (Whisper's); ``out=x`` works in place. Threaded."""
    return _unary(lib.er_gelu_erf, x, out)


def attention_seg2(q: np.ndarray, ka: np.ndarray, va: np.ndarray, kb: np.ndarray | None = None,
                   vb: np.ndarray | None = None, b0: int = 0, b_step: int = 1, scale: float | None = None,
                   out: np.ndarray | None = None) -> np.ndarray:
    """Non-causal attention of T queries over the keys of segment A then segment B (one C call, threaded).

    q (T, H*D) f32 rows, possibly a column slice of a wider array (the q part of a fused qkv output);
    ka, va (H, Sa, D) f32 with every row a key; kb, vb (H, Sb, D) f16 or f32, keys ``b0, b0 + b_step, ..`` < Sb
    used, each weighted as ``b_step`` keys (None: no segment B). Returns (T, H*D) (or ``out``). ``scale``
    defaults to 1/sqrt(D).
    """
    h, na, d = ka.shape
    if va.shape != ka.shape or ka.dtype != np.float32 or va.dtype != np.float32:
        raise ValueError("ka/va must both be (H, Sa, D) float32")
    if not (ka.flags.c_contiguous and va.flags.c_contiguous):
        raise TypeError("ka/va must be C-contiguous")
    if q.dtype != np.float32 or q.ndim != 2 or q.shape[1] != h * d or q.strides[1] != 4:
        raise ValueError(f"q must be float32 (T, {h * d}) with contiguous rows")
    t = q.shape[0]
    if kb is None:
        b0, b_step, nb, b_stride, f16, kp, vp = 0, 1, 0, 0, 0, None, None
    else:
        if kb.shape != vb.shape or kb.dtype != vb.dtype or kb.ndim != 3 or kb.shape[0] != h or kb.shape[2] != d:
            raise ValueError(f"kb/vb must both be ({h}, Sb, {d}); got {kb.shape}, {vb.shape}")
        if kb.dtype not in (np.float16, np.float32) or not (kb.flags.c_contiguous and vb.flags.c_contiguous):
            raise TypeError("kb/vb must be C-contiguous float16 or float32")
        if not 0 <= b0 <= kb.shape[1]:
            raise ValueError(f"b0={b0} outside segment B's {kb.shape[1]} rows")
        if b_step < 1:
            raise ValueError("b_step must be >= 1")
        nb = -(-(kb.shape[1] - b0) // b_step)
        b_stride, f16, kp, vp = kb.shape[1], int(kb.dtype == np.float16), _ptr(kb), _ptr(vb)
    out = np.empty((t, h * d), np.float32) if out is None else _f32(out, "out")
    if out.shape != (t, h * d):
        raise ValueError(f"out must be ({t}, {h * d})")
    scale = 1.0 / float(np.sqrt(d)) if scale is None else float(scale)
    r = lib.er_attention_seg2(_ptr(q), q.strides[0] // 4, _ptr(ka), _ptr(va), na, na, kp, vp, int(b0), nb,
                              int(b_step), b_stride, f16, _ptr(out), h * d, h, d, t, scale)
    if r:
        raise ValueError(f"er_attention_seg2 rejected its arguments (code {r})")
    return out


# ---- attention over the KIVI int8/int4/int2 KV cache (src/kv_attention.c) ----------------------------


def kivi_attention(c, q: np.ndarray, k_new: np.ndarray, v_new: np.ndarray, p0: int, scale: float,
                   softcap: float = 0.0, q_sink: np.ndarray | None = None, out: np.ndarray | None = None) -> np.ndarray:
    """Causal GQA attention of T new tokens at ``p0..`` over a KIVI cache layer ``c`` (an ``ErKivi``) + themselves.

    q (T, H, D) f32 rotated at each position; q_sink (T, H, D) rotated at the in-cache position for the sink keys
    (None: q); k_new, v_new (Hkv, T, D) f32 (keys rotated). The cache is read as it is (store the block after,
    :func:`kivi_store`). Returns (T, H, D). Reference: kernels/reference.py ``kivi_attention``.
    """
    _f32(q, "q")
    _f32(k_new, "k_new")
    _f32(v_new, "v_new")
    t, h, d = q.shape
    if k_new.shape != v_new.shape or k_new.shape != (c.n_kv_heads, t, d) or d != c.head_dim:
        raise ValueError(f"k_new/v_new must be ({c.n_kv_heads}, {t}, {c.head_dim}); got {k_new.shape}, {v_new.shape}")
    if q_sink is not None and (_f32(q_sink, "q_sink").shape != q.shape):
        raise ValueError(f"q_sink must have q's shape {q.shape}")
    out = np.empty((t, h, d), np.float32) if out is None else _f32(out, "out")
    r = lib.er_kivi_attention(ctypes.byref(c), _ptr(q), None if q_sink is None else _ptr(q_sink), _ptr(k_new),
                              _ptr(v_new), _ptr(out), h, t, int(p0), scale, softcap)  # fmt: skip
    if r:
        raise ValueError(f"er_kivi_attention rejected its arguments (code {r})")
    return out


def kivi_store(c, k: np.ndarray, v: np.ndarray, p0: int) -> None:
    """Store T tokens k, v (Hkv, T, D) f32 (keys rotated) at positions ``p0..`` into the KIVI cache layer ``c``."""
    _f32(k, "k")
    _f32(v, "v")
    if k.shape != v.shape or k.ndim != 3 or k.shape[0] != c.n_kv_heads or k.shape[2] != c.head_dim:
        raise ValueError(f"k/v must be ({c.n_kv_heads}, T, {c.head_dim}); got {k.shape}, {v.shape}")
    r = lib.er_kivi_store(ctypes.byref(c), _ptr(k), _ptr(v), k.shape[1], int(p0))
    if r:
        raise ValueError(f"er_kivi_store rejected its arguments (code {r})")
