"""Convert GGUF quantized blocks into edgerun formats without requantizing where the math allows.

Input: the raw bytes of a GGUF tensor as a uint8 array ``(N, row_bytes)`` (what
``gguf.GGUFReader`` gives for a 2-D quantized tensor: ``tensor.data``) plus its logical
``(N, K)`` shape. Output: a :class:`~edgerun.quant.formats.QuantizedTensor`.

=========  ===================  =====================================================================
GGUF       edgerun              how
=========  ===================  =====================================================================
Q8_0       int8, block 32       exact: f16 ``d`` copied, codes ``q + 128`` (zero point 128)
Q4_0       int4, block 32       exact: f16 ``d`` copied, nibbles reordered (GGUF: low nibbles hold
                                elements 0..15, high 16..31; MatMulNBits: element pairs per byte)
Q4_1       int4_asym, block 32  NOT exact in general: Q4_1 is ``w = d*q + m`` (any float ``m``);
                                MatMulNBits with uint8 zero points is ``w = s*(q - zp)``, integer
                                ``zp``, so it is exact only when ``-m/d`` is an integer in 0..15.
                                Per block the converter keeps Q4_1's codes and scale with the zero
                                point rounded (exact when ``-m/d`` is an integer) or requantizes
                                the dequantized block, whichever has the smaller error
TQ2_0      ternary, block 256   exact: f16 ``d`` copied, codes unchanged (both are ``q + 1``)
TQ1_0      ternary, block 256   exact: base-3 digits decoded to codes, f16 ``d`` copied
=========  ===================  =====================================================================

(A float zero point ``-m/d``, which MatMulNBits also accepts, would make Q4_1 near-exact, but
the native kernels and onnxruntime's fast path use integer zero points.)
"""

from __future__ import annotations

import numpy as np
from edgerun.quant.formats import FORMATS, QuantizedTensor, pack_codes, pack_zero_points

# block layouts (bytes per block, elements per block)
_GGUF_BLOCKS = {"Q8_0": (34, 32), "Q4_0": (18, 32), "Q4_1": (20, 32), "TQ2_0": (66, 256), "TQ1_0": (54, 256)}


def _blocks(raw: np.ndarray, shape: tuple[int, int], qtype: str) -> np.ndarray:
    """Raw tensor bytes -> (N, n_blocks, block_bytes) uint8."""
    bb, be = _GGUF_BLOCKS[qtype]
    n, k = shape
    assert k % be == 0, f"{qtype} rows must be a multiple of {be}"
    raw = np.ascontiguousarray(raw, dtype=np.uint8).reshape(n, -1)
    assert raw.shape[1] == k // be * bb, f"{qtype}: expected {k // be * bb} bytes per row, got {raw.shape[1]}"
    return raw.reshape(n, k // be, bb)


def _gguf_dequantize(blocks: np.ndarray, qtype: str) -> np.ndarray:
    """(N, nb, bytes) GGUF blocks -> (N, nb, block) float32 through gguf-py."""
    from gguf import GGMLQuantizationType
    from gguf.quants import dequantize

    n, nb, bb = blocks.shape
    w = dequantize(blocks.reshape(n * nb, bb), GGMLQuantizationType[qtype])
    return w.reshape(n, nb, -1).astype(np.float32)


def from_q8_0(raw: np.ndarray, shape: tuple[int, int]) -> QuantizedTensor:
    """GGUF Q8_0 -> ``int8`` block 32, exact."""
    b = _blocks(raw, shape, "Q8_0")
    d = np.ascontiguousarray(b[..., :2]).view(np.float16)[..., 0]  # (N, nb)
    q = b[..., 2:].view(np.int8).astype(np.int16)
    codes = (q + 128).astype(np.uint8)  # -128 (never written by ggml) would map to code 0
    return QuantizedTensor("int8", tuple(shape), 32, 8, codes, d.copy(), None)


def from_q4_0(raw: np.ndarray, shape: tuple[int, int]) -> QuantizedTensor:
    """GGUF Q4_0 -> ``int4`` block 32, exact (zero point 8, f16 scale copied)."""
    b = _blocks(raw, shape, "Q4_0")
    d = np.ascontiguousarray(b[..., :2]).view(np.float16)[..., 0]
    qs = b[..., 2:]  # (N, nb, 16)
    codes = np.concatenate([qs & 0x0F, qs >> 4], axis=-1)  # (N, nb, 32) in element order
    return QuantizedTensor("int4", tuple(shape), 32, 4, pack_codes(codes, 4), d.copy(), None)


def from_q4_1(raw: np.ndarray, shape: tuple[int, int]) -> QuantizedTensor:
    """GGUF Q4_1 -> ``int4_asym`` block 32; exact per block where ``-m/d`` is an integer 0..15.

    Other blocks take the smaller-error of (Q4_1 codes + rounded zero point) and a fresh
    asymmetric requantization of the dequantized values.
    """
    b = _blocks(raw, shape, "Q4_1")
    d = np.ascontiguousarray(b[..., 0:2]).view(np.float16)[..., 0].astype(np.float32)
    m = np.ascontiguousarray(b[..., 2:4]).view(np.float16)[..., 0].astype(np.float32)
    qs = b[..., 4:]
    codes = np.concatenate([qs & 0x0F, qs >> 4], axis=-1)
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = np.where(d != 0, -m / d, np.nan)  # (N, nb) the real-valued zero point
    z = np.rint(np.nan_to_num(ratio, nan=-1.0))
    keep = (d != 0) & (z >= 0) & (z <= 15)  # codes and scale can be kept, zero point rounded
    # candidate B: requantize the dequantized block from scratch (asymmetric, block 32)
    w = _gguf_dequantize(b, "Q4_1")  # (N, nb, 32)
    n, nb, _ = w.shape
    q = FORMATS["int4_asym"].quantize(w.reshape(n, nb * 32), 32)
    qcodes = np.stack([q.data & 0x0F, q.data >> 4], axis=-1).reshape(n, nb, 32)
    zp = FORMATS["int4_asym"].zero_point_array(q).astype(np.uint8)
    scales = q.scales.copy()
    err_requant = np.abs(FORMATS["int4_asym"].dequantize(q).reshape(n, nb, 32) - w).sum(-1)
    # candidate A: keep Q4_1's codes and scale, round the zero point: every weight moves by
    # d * |ratio - z| (exact when ratio is an integer); take A per block where it is no worse
    err_keep = np.where(keep, np.abs(d) * np.abs(np.nan_to_num(ratio) - z) * 32, np.inf)
    use = keep & (err_keep <= err_requant)
    qcodes[use] = codes[use]
    zp[use] = z[use].astype(np.uint8)
    scales[use] = d[use].astype(np.float16)
    return QuantizedTensor(
        "int4_asym", tuple(shape), 32, 4, pack_codes(qcodes, 4), scales, pack_zero_points(zp, 4)
    )


def _from_tq(raw: np.ndarray, shape: tuple[int, int], qtype: str) -> QuantizedTensor:
    b = _blocks(raw, shape, qtype)
    d = np.ascontiguousarray(b[..., -2:]).view(np.float16)[..., 0]  # (N, nb)
    w = _gguf_dequantize(b, qtype)  # (N, nb, 256) = d * (code - 1), exact in f32
    d32 = d.astype(np.float32)[..., None]
    with np.errstate(divide="ignore", invalid="ignore"):
        t = np.where(d32 != 0, w / d32, 0)
    codes = (np.rint(t) + 1).astype(np.uint8)
    zp = np.ones(d.shape, dtype=np.uint8)
    data = pack_codes(codes, 2)
    return QuantizedTensor("ternary", tuple(shape), 256, 2, data, d.copy(), pack_zero_points(zp, 2))


def from_tq2_0(raw: np.ndarray, shape: tuple[int, int]) -> QuantizedTensor:
    """GGUF TQ2_0 -> ``ternary`` block 256, exact."""
    return _from_tq(raw, shape, "TQ2_0")


def from_tq1_0(raw: np.ndarray, shape: tuple[int, int]) -> QuantizedTensor:
    """GGUF TQ1_0 -> ``ternary`` block 256, exact."""
    return _from_tq(raw, shape, "TQ1_0")


CONVERTERS = {
    "Q8_0": from_q8_0,
    "Q4_0": from_q4_0,
    "Q4_1": from_q4_1,
    "TQ2_0": from_tq2_0,
    "TQ1_0": from_tq1_0,
}


def from_gguf(raw: np.ndarray, shape: tuple[int, int], qtype: str) -> QuantizedTensor:
    """Convert raw GGUF blocks of type ``qtype`` (a name like ``"Q4_0"``) for an ``(N, K)`` tensor."""
    try:
        conv = CONVERTERS[qtype]
    except KeyError:
        from edgerun.errors import UnsupportedError

        raise UnsupportedError(
            f"no direct conversion from GGUF {qtype}; dequantize and requantize it instead"
        ) from None
    return conv(raw, shape)
