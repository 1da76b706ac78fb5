"""llama.cpp's CPU float order, bit for bit (``src/ggml_exact.c``), with numpy references.

A validation path: each function reproduces one ggml CPU kernel of an x86-64 AVX2/FMA/F16C build of
llama.cpp so that a whole forward on edgerun's imported weights can be compared with llama.cpp exactly
(tests/test_quant_export_llama_cpp.py). Slow by design; nothing on the serving path uses it.
"""

from __future__ import annotations

from ctypes import POINTER, c_float, c_int, c_int64, c_void_p

import numpy as np
from edgerun.kernels._lib import ErWeight, lib
from edgerun.kernels.reference import quantize_activations

_F32 = np.float32
_SIGNATURES = {
    "er_gx_rmsnorm": (None, [c_void_p, c_void_p, c_void_p, c_int64, c_int64, c_float]),
    "er_gx_matmul_q0": (c_int, [POINTER(ErWeight), c_void_p, c_void_p, c_int64, c_int, c_void_p, c_void_p]),
    "er_gx_matmul_tq2": (c_int, [POINTER(ErWeight), c_void_p, c_void_p, c_int64, c_int, c_void_p, c_void_p]),
    "er_gx_f16_gemm": (None, [c_void_p, c_int64, c_void_p, c_int64, c_void_p, c_int64, c_int64, c_int64, c_int64]),
    "er_gx_softmax": (None, [c_void_p, c_int64, c_int64, c_void_p, c_float]),
    "er_gx_rope": (None, [c_void_p, c_int64, c_int64, c_int64, c_void_p, c_float, c_int]),
    "er_gx_swiglu": (None, [c_void_p, c_void_p, c_void_p, c_int64]),
}
for _name, (_res, _args) in _SIGNATURES.items():
    getattr(lib, _name).restype = _res
    getattr(lib, _name).argtypes = _args

MODE_REPACK, MODE_TINYBLAS = 0, 1  # Q4_0 repacked 8x8 GEMM | llamafile tinyBLAS_Q0 (Q8_0)


def available() -> bool:
    """True when this CPU has FMA/AVX2 (the functions use the fma instruction)."""
    return bool(lib.er_isa_supported(1))


def _p(a: np.ndarray) -> int:
    return a.ctypes.data


def _c32(a) -> np.ndarray:
    return np.ascontiguousarray(a, dtype=_F32)


def rmsnorm(x: np.ndarray, w: np.ndarray, eps: float) -> np.ndarray:
    """x (T, n) -> (T, n): double sum of float squares, 1/sqrtf(mean + eps), x * scale * w."""
    x, w = _c32(x), _c32(w)
    out = np.empty_like(x)
    lib.er_gx_rmsnorm(_p(x), _p(w), _p(out), x.shape[0], x.shape[1], eps)
    return out


def rmsnorm_ref(x: np.ndarray, w: np.ndarray, eps: float) -> np.ndarray:
    """numpy reference of :func:`rmsnorm` (sequential float64 sum)."""
    x = _c32(x)
    s = np.cumsum((x * x).astype(np.float64), axis=-1)[..., -1]
    mean = (s / x.shape[-1]).astype(_F32)
    scale = _F32(1.0) / np.sqrt(mean + _F32(eps))
    return (x * scale[..., None]).astype(_F32) * _c32(w)


def matmul(weight, x: np.ndarray, mode: int = MODE_REPACK) -> np.ndarray:
    """x (T, K) @ W^T -> (T, N) in ggml's order for an imported Q4_0/Q8_0 (mode) or TQ2_0 weight."""
    ref, c = weight._ref, weight._c
    x = _c32(x)
    t, k = x.shape
    y = np.empty((t, int(c.n)), _F32)
    xq = np.empty(t * k, np.int8)
    if c.bits == 2:
        xd = np.empty(t * k // 256, _F32)
        rc = lib.er_gx_matmul_tq2(ref, _p(x), _p(y), t, 1, _p(xq), _p(xd))
    else:
        xd = np.empty(t * k // 32, _F32)
        rc = lib.er_gx_matmul_q0(ref, _p(x), _p(y), t, mode, _p(xq), _p(xd))
    if rc != 0:
        raise ValueError(f"weight {c.bits}-bit block {c.block_size} K={c.k} has no llama.cpp-order kernel")
    return y


def _fma(a, b, c) -> np.ndarray:
    """float32 fma through float64 (exact product; a second rounding only on rare ties)."""
    return (np.asarray(a, np.float64) * np.asarray(b, np.float64) + np.asarray(c, np.float64)).astype(_F32)


def _hsum8(lanes: np.ndarray) -> np.ndarray:
    h = lanes[..., 4:] + lanes[..., :4]
    return (h[..., 0] + h[..., 2]) + (h[..., 1] + h[..., 3])


def matmul_ref(values: np.ndarray, scales: np.ndarray, x: np.ndarray, mode: int | str) -> np.ndarray:
    """numpy reference of :func:`matmul` from signed weight values (N, K) and per-block scales (N, K/B):
    mode MODE_REPACK / MODE_TINYBLAS for 32-blocks, "tq2" for 256-blocks."""
    n, k = values.shape
    t = x.shape[0]
    if mode == "tq2":
        q, d = quantize_activations(_c32(x), k, q8k=True)  # llama.cpp quantize_row_q8_K
        q, d = q.reshape(t, -1, 256).astype(np.int64), d[:, ::8]  # (T, nb, 256), (T, nb)
        v = values.reshape(n, -1, 256).astype(np.int64)
        e = np.arange(256)
        lane_of = (e % 32) // 4
        prod = np.einsum("nbe,tbe->tnbe", v + 1, q)  # (T, N, nb, 256)
        lanes = np.stack([prod[..., lane_of == ln].sum(-1) - q[:, None, :, 32 * ln : 32 * ln + 32].sum(-1)
                          for ln in range(8)], -1).astype(_F32)  # (T, N, nb, 8)
        sc = d[:, None, :] * scales.astype(_F32)[None]  # (T, N, nb): per-256 block scales
        acc = np.zeros(lanes.shape[:2] + (8,), _F32)
        for b in range(v.shape[1]):
            acc = _fma(lanes[:, :, b], sc[:, :, b, None].astype(_F32), acc)
        return _hsum8(acc)
    q, d = quantize_activations(_c32(x), k)  # llama.cpp quantize_row_q8_0
    q = q.reshape(t, -1, 32).astype(np.int64)  # (T, nb, 32); d (T, nb)
    v = values.reshape(n, -1, 32).astype(np.int64)
    ws = np.repeat(scales.astype(_F32), v.shape[1] // scales.shape[1], axis=1)  # (N, nb)
    sc = (ws[None] * d[:, None]).astype(_F32)  # (T, N, nb)
    if mode == MODE_REPACK:
        isum = np.einsum("nbk,tbk->tnb", v, q).astype(_F32)
        acc = np.zeros(isum.shape[:2], _F32)
        for b in range(v.shape[1]):
            acc = _fma(isum[:, :, b], sc[:, :, b], acc)
        return acc
    lanes = np.einsum("nblk,tblk->tnbl", v.reshape(n, -1, 8, 4), q.reshape(q.shape[0], -1, 8, 4)).astype(_F32)
    acc = np.zeros(lanes.shape[:2] + (8,), _F32)
    for b in range(v.shape[1]):
        acc = _fma(sc[:, :, b, None], lanes[:, :, b], acc)
    return _hsum8(acc)


def f16_gemm(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """a (M, K), b (N, K) f16 values -> (N, M) = b @ a^T with tinyBLAS's 8-lane fma order, K % 8 == 0."""
    a, b = _c32(a), _c32(b)
    (m, k), n = a.shape, b.shape[0]
    c = np.empty((n, m), _F32)
    lib.er_gx_f16_gemm(_p(a), k, _p(b), k, _p(c), m, m, n, k)
    return c


def f16_gemm_ref(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """numpy reference of :func:`f16_gemm` (float64 fma emulation; may differ in the last bit on rare
    double-rounding cases)."""
    lanes = np.zeros((b.shape[0], a.shape[0], 8), _F32)
    for l0 in range(0, a.shape[1], 8):
        lanes = _fma(b[:, None, l0 : l0 + 8], a[None, :, l0 : l0 + 8], lanes)
    return _hsum8(lanes)


def softmax(s: np.ndarray, n_valid: np.ndarray, scale: float) -> np.ndarray:
    """Rows of s (R, n) scaled, keys >= n_valid[r] masked, softmax with ggml_v_expf; n % 8 == 0."""
    s = _c32(s).copy()
    nv = np.ascontiguousarray(n_valid, np.int64)
    lib.er_gx_softmax(_p(s), s.shape[0], s.shape[1], _p(nv), scale)
    return s


def rope(x: np.ndarray, pos: np.ndarray, base: float, neox: bool = False) -> np.ndarray:
    """RoPE of x (T, H, hd) at positions pos (T,) as ggml computes it (theta by repeated products)."""
    x = _c32(x).copy()
    p = np.ascontiguousarray(pos, np.int64)
    lib.er_gx_rope(_p(x), x.shape[0], x.shape[1], x.shape[2], _p(p), base, int(neox))
    return x


def swiglu(g: np.ndarray, u: np.ndarray) -> np.ndarray:
    """silu(g) * u with ggml_v_silu (groups of 8) and the scalar silu on the tail."""
    g, u = _c32(g), _c32(u)
    out = np.empty_like(g)
    lib.er_gx_swiglu(_p(g), _p(u), _p(out), g.size)
    return out
