"""Low-bit KV-cache quantizers (KIVI, Liu et al. 2024, arXiv:2402.02750).

KIVI's observation: key outliers live in a few *channels*, value errors should stay per *token*. So

- keys   are quantized **per channel** over a group of `group` consecutive tokens:
  one (scale, min) pair per (kv head, group of tokens, channel);
- values are quantized **per token** over groups of `group` channels:
  one (scale, min) pair per (kv head, token, group of channels);
- both are asymmetric uniform: ``q = round((x - min) / scale)``, ``x' = q * scale + min``,
  ``scale = (max - min) / (2**bits - 1)``, so ``|x - x'| <= scale / 2`` (+ f16 rounding of scale/min);
  except int8 *values*, symmetric: ``q = round(x / scale) + 128``, ``scale = max|x| / 127``, no min stored
  (``x' = q * scale + min`` with the implicit ``min = -128 * scale``). Values have no per-group offset worth a
  min at 8 bits (perplexity unchanged, docs/memory.md), and dropping it takes int8 from 0.5625x to 0.547x of
  the f16 cache's bytes (llama.cpp's q8_0 is symmetric too);
- the most recent tokens (fewer than one key group) stay in full precision (KIVI's residual),
  which the cache (:mod:`edgerun.runtime.llm.kv_cache`) keeps; this module is just the math.

Codes are packed little-end-first along the last axis: int8 one per byte, int4 two, int2 four.
Scales and mins are float16; `quantize_values` returns None for the mins of int8. Byte sizes are asserted by
:func:`key_group_nbytes` / :func:`value_nbytes`.
"""

from __future__ import annotations

import numpy as np

KV_BITS = (32, 16, 8, 4, 2)  # 32 = float32 (exact), 16 = float16, 8/4/2 = KIVI
DEFAULT_GROUP = 32
SYM_QMAX, SYM_ZERO = 127, 128  # int8 values: code = rint(x / scale) + 128, scale = max|x| / 127


def check_bits(bits: int) -> int:
    """Validate a kv_bits value (32, 16, 8, 4, 2) and return it as int."""
    from edgerun.errors import EdgerunError

    if int(bits) not in KV_BITS:
        raise EdgerunError(
            f"kv_bits={bits} is not supported: use one of 16, 8, 4, 2 (or 32 for exact float32)"
        )
    return int(bits)


def pack(codes: np.ndarray, bits: int) -> np.ndarray:
    """Pack uint8 codes (< 2**bits) along the last axis: (..., n) -> (..., n * bits // 8)."""
    if bits == 8:
        return codes.astype(np.uint8, copy=False)
    per = 8 // bits
    n = codes.shape[-1]
    assert n % per == 0, f"last axis {n} must be a multiple of {per} for {bits}-bit packing"
    c = codes.astype(np.uint8, copy=False).reshape(*codes.shape[:-1], n // per, per)
    out = np.zeros(c.shape[:-1], dtype=np.uint8)
    for i in range(per):
        out |= c[..., i] << np.uint8(i * bits)
    return out


def unpack(packed: np.ndarray, bits: int, n: int) -> np.ndarray:
    """Inverse of :func:`pack`: (..., n * bits // 8) uint8 -> (..., n) uint8 codes."""
    if bits == 8:
        return packed
    per = 8 // bits
    mask = np.uint8((1 << bits) - 1)
    out = np.empty((*packed.shape, per), dtype=np.uint8)
    for i in range(per):
        out[..., i] = (packed >> np.uint8(i * bits)) & mask
    return out.reshape(*packed.shape[:-1], n)


def _quant(x: np.ndarray, axis: int, bits: int):
    """Asymmetric min/max quantization reducing over `axis` -> (codes uint8, scale f16, min f16)."""
    x = x.astype(np.float32, copy=False)
    lo = x.min(axis=axis, keepdims=True)
    hi = x.max(axis=axis, keepdims=True)
    qmax = (1 << bits) - 1
    scale = ((hi - lo) / qmax).astype(np.float16)
    mn = lo.astype(np.float16)
    s32 = scale.astype(np.float32)
    safe = np.where(s32 > 0, s32, 1.0)
    codes = np.clip(np.rint((x - mn.astype(np.float32)) / safe), 0, qmax).astype(np.uint8)
    return codes, scale, mn


def _quant_sym(x: np.ndarray, axis: int):
    """Symmetric int8 reducing over `axis` -> (codes uint8 = rint(x / scale) + 128, scale f16)."""
    x = x.astype(np.float32, copy=False)
    scale = (np.abs(x).max(axis=axis, keepdims=True) / np.float32(SYM_QMAX)).astype(np.float16)
    s32 = scale.astype(np.float32)
    safe = np.where(s32 > 0, s32, 1.0)
    codes = np.clip(np.rint(x / safe) + np.float32(SYM_ZERO), 0, 255).astype(np.uint8)
    return codes, scale


def sym_min(scale: np.ndarray) -> np.ndarray:
    """The implicit min of symmetric int8 values: -128 * scale (exact in float16)."""
    return (scale.astype(np.float32) * np.float32(-SYM_ZERO)).astype(np.float16)


def quantize_keys(k: np.ndarray, bits: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Quantize one key group per channel.

    k: (n_kv, G, hd) float — G consecutive tokens (one group).
    Returns packed codes (n_kv, G, hd*bits/8) uint8, scale (n_kv, 1, hd) f16, min (n_kv, 1, hd) f16.
    """
    codes, scale, mn = _quant(k, axis=1, bits=bits)
    return pack(codes, bits), scale, mn


def dequantize_keys(
    packed: np.ndarray, scale: np.ndarray, mn: np.ndarray, bits: int, hd: int, out: np.ndarray | None = None
) -> np.ndarray:
    """Inverse of :func:`quantize_keys` -> (n_kv, G, hd) float32 (written into `out` when given)."""
    codes = unpack(packed, bits, hd)
    res = np.multiply(codes, scale.astype(np.float32), out=out, dtype=np.float32)
    res += mn.astype(np.float32)
    return res


def quantize_values(v: np.ndarray, bits: int, group: int = DEFAULT_GROUP):
    """Quantize values per token over groups of `group` channels.

    v: (n_kv, T, hd) float. Returns packed codes (n_kv, T, hd*bits/8) uint8,
    scale (n_kv, T, hd/group) f16, min (n_kv, T, hd/group) f16 (None for bits = 8: symmetric, see module doc).
    """
    n_kv, t, hd = v.shape
    g = min(group, hd)
    assert hd % g == 0, f"head_dim {hd} must be a multiple of the value group {g}"
    vg = v.reshape(n_kv, t, hd // g, g)
    if bits == 8:
        codes, scale = _quant_sym(vg, axis=3)
        return codes.reshape(n_kv, t, hd), scale[..., 0], None
    codes, scale, mn = _quant(vg, axis=3, bits=bits)
    return pack(codes.reshape(n_kv, t, hd), bits), scale[..., 0], mn[..., 0]


def dequantize_values(
    packed: np.ndarray, scale: np.ndarray, mn: np.ndarray, bits: int, hd: int, out: np.ndarray | None = None
) -> np.ndarray:
    """Inverse of :func:`quantize_values` -> (n_kv, T, hd) float32 (written into `out` when given).

    `mn` None: symmetric int8 (the implicit min -128 * scale)."""
    n_kv, t = packed.shape[:2]
    ng = scale.shape[-1]
    mn = sym_min(scale) if mn is None else mn
    codes = unpack(packed, bits, hd).reshape(n_kv, t, ng, hd // ng)
    res = codes * scale.astype(np.float32)[..., None] + mn.astype(np.float32)[..., None]
    res = res.reshape(n_kv, t, hd)
    if out is not None:
        out[...] = res
        return out
    return res


def key_group_nbytes(n_kv: int, group: int, hd: int, bits: int) -> int:
    """Bytes one quantized key group of `group` tokens occupies (codes + f16 scale + f16 min)."""
    return n_kv * group * hd * bits // 8 + 2 * n_kv * hd * 2


def value_nbytes(n_kv: int, tokens: int, hd: int, bits: int, group: int = DEFAULT_GROUP) -> int:
    """Bytes `tokens` quantized value rows occupy (codes + f16 scale + f16 min per channel group; int8: no min)."""
    g = min(group, hd)
    per_group = 2 if bits == 8 else 4
    return n_kv * tokens * hd * bits // 8 + per_group * n_kv * tokens * (hd // g)


def kv_bytes_per_token(n_kv: int, hd: int, bits: int, group: int = DEFAULT_GROUP) -> float:
    """Average bytes per cached token per layer (keys + values) at `bits` (32/16 = float, 8/4/2 = KIVI)."""
    if bits >= 16:
        return 2 * n_kv * hd * bits // 8
    return key_group_nbytes(n_kv, group, hd, bits) / group + value_nbytes(n_kv, 1, hd, bits, group)
