"""GGUF (ggml) weight blocks kept verbatim: formats ``q4_1 q5_0 q5_1 q2_k q3_k q4_k q5_k q6_k``.

A tensor in one of these formats is a :class:`~edgerun.quant.formats.QuantizedTensor` with
``data`` uint8 ``(N, K // QK, type_size)`` = each row's GGUF blocks byte for byte, ``scales=None``
and ``zero_points=None`` (the scales live inside the blocks). This module documents the block
layouts and holds our numpy dequantization of each, written from the layouts below and checked bit
for bit against gguf-py (``tests/test_quant_ggml_blocks.py``). All multi-byte fields are
little-endian; ``f16`` is IEEE half. Arithmetic is float32 in ggml's order (``(d * sc) * q - dmin * m``),
which is what makes the results bit-identical to ``ggml``'s ``dequantize_row_*``.

Legacy blocks (QK = 32 weights):

``q4_1``  20 B: ``d f16 | m f16 | qs[16]``; weight j (0..15) = low nibble of ``qs[j]``, j+16 = high
          nibble; ``w = d * q + m``
``q5_0``  22 B: ``d f16 | qh u32 | qs[16]``; 5-bit ``q`` = nibble as q4 | bit j of ``qh`` << 4;
          ``w = d * (q - 16)``
``q5_1``  24 B: ``d f16 | m f16 | qh u32 | qs[16]``; ``w = d * q + m``

K-quant super-blocks (QK = 256 weights, in sub-blocks of 16 or 32):

``q2_k``   84 B: ``scales[16] | qs[64] | d f16 | dmin f16``; sub-block i (16 weights) has
           ``sc = scales[i] & 15``, ``m = scales[i] >> 4``. Codes: 2 bits; each half (128 weights)
           reads 32 bytes ``qs[32h:32h+32]`` at shifts 0, 2, 4, 6 (32 weights per shift).
           ``w = (d * sc) * q - (dmin * m)``
``q3_k``  110 B: ``hmask[32] | qs[64] | scales[12] | d f16``; 16 six-bit scales (low 4 bits from
           bytes 0..7 low/high nibbles, high 2 bits from bytes 8..11 at shifts 0, 2, 4, 6), minus 32.
           Codes: 2 low bits as in q2_k, minus 4 where the ``hmask`` bit (byte l, bit j for the
           j-th group of 32 weights) is 0. ``w = (d * (sc - 32)) * q``
``q4_k``  144 B: ``d f16 | dmin f16 | scales[12] | qs[128]``; 8 sub-blocks of 32 with six-bit
           ``sc``/``m`` packed as in ggml ``get_scale_min_k4`` (j < 4: ``s[j] & 63``,
           ``s[j+4] & 63``; j >= 4: ``s[j+4] & 15 | (s[j-4] >> 6) << 4``,
           ``s[j+4] >> 4 | (s[j] >> 6) << 4``). Codes: 64 weights per 32 bytes, low nibbles first.
           ``w = (d * sc) * q - (dmin * m)``
``q5_k``  176 B: ``d f16 | dmin f16 | scales[12] | qh[32] | qs[128]``; as q4_k, plus bit j of
           ``qh[l]`` as bit 4 of weight l of sub-block j
``q6_k``  210 B: ``ql[128] | qh[64] | scales[16] int8 | d f16``; each half (128 weights) reads
           ``ql[64h:64h+64]`` (low nibbles: weights 0..63, high: 64..127) and ``qh[32h:32h+32]``
           (2 bits per weight at shifts 0, 2, 4, 6 for groups of 32); ``q - 32``, sub-blocks of 16.
           ``w = (d * sc) * (q - 32)``
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from edgerun.quant.formats import QuantFormat, QuantizedTensor


@dataclass(frozen=True)
class BlockType:
    """One ggml block type: GGUF type name, weights per block, bytes per block, nominal bits."""

    ggml: str
    qk: int
    type_size: int
    bits: int


BLOCK_TYPES: dict[str, BlockType] = {
    "q4_1": BlockType("Q4_1", 32, 20, 4),
    "q5_0": BlockType("Q5_0", 32, 22, 5),
    "q5_1": BlockType("Q5_1", 32, 24, 5),
    "q2_k": BlockType("Q2_K", 256, 84, 2),
    "q3_k": BlockType("Q3_K", 256, 110, 3),
    "q4_k": BlockType("Q4_K", 256, 144, 4),
    "q5_k": BlockType("Q5_K", 256, 176, 5),
    "q6_k": BlockType("Q6_K", 256, 210, 6),
}
FORMAT_OF_GGML = {b.ggml: name for name, b in BLOCK_TYPES.items()}  # "Q4_K" -> "q4_k"


def _f16(b: np.ndarray, at: int) -> np.ndarray:
    """Field ``f16`` at byte ``at`` of each block (n, type_size) -> (n, 1) float32."""
    return np.ascontiguousarray(b[:, at : at + 2]).view(np.float16).astype(np.float32)


def _nibbles(qs: np.ndarray, group: int) -> np.ndarray:
    """uint8 (n, G * group) -> (n, G * 2 * group): per group of bytes, all low nibbles then all high."""
    n = qs.shape[0]
    q = qs.reshape(n, -1, 1, group) >> np.array([0, 4], np.uint8).reshape(1, 1, 2, 1)
    return (q & np.uint8(15)).reshape(n, -1)


def _bits(mask: np.ndarray, width: int, count: int, group: int) -> np.ndarray:
    """``width``-bit fields of bytes (n, G * group) at shifts 0, width, ..  (``count`` of them) ->
    (n, G * count * group): for each group of bytes, field 0 of every byte, then field 1, ..."""
    n = mask.shape[0]
    shifts = (np.arange(count) * width).astype(np.uint8).reshape(1, 1, count, 1)
    q = mask.reshape(n, -1, 1, group) >> shifts
    return (q & np.uint8((1 << width) - 1)).reshape(n, -1)


def _scale_min_k4(s: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The 12 packed scale bytes of q4_k/q5_k (n, 12) -> six-bit (sc, m), each (n, 8) float32."""
    lo, hi, mix = s[:, 0:4], s[:, 4:8], s[:, 8:12]
    sc = np.concatenate([lo & 63, (mix & 15) | ((lo >> 6) << 4)], axis=1)
    m = np.concatenate([hi & 63, (mix >> 4) | ((hi >> 6) << 4)], axis=1)
    return sc.astype(np.float32), m.astype(np.float32)


def _q3_k_scales(s: np.ndarray) -> np.ndarray:
    """The 12 packed scale bytes of q3_k (n, 12) -> 16 signed scales (n, 16) float32 (six bits, -32)."""
    low = _nibbles(s[:, 0:8], 8)  # (n, 16): bytes 0..7 low nibbles, then high nibbles
    high = _bits(s[:, 8:12], 2, 4, 4)  # (n, 16): bytes 8..11 at shifts 0, 2, 4, 6
    return ((low | (high << 4)).astype(np.int16) - 32).astype(np.float32)


def _q4_1(b):
    d, m = _f16(b, 0), _f16(b, 2)
    return d * _nibbles(b[:, 4:20], 16).astype(np.float32) + m


def _q5(b, qh_at):
    qh = np.ascontiguousarray(b[:, qh_at : qh_at + 4]).view("<u4")  # (n, 1)
    hi = ((qh >> np.arange(32, dtype=np.uint32)) & np.uint32(1)).astype(np.uint8)  # (n, 32)
    return _nibbles(b[:, qh_at + 4 : qh_at + 20], 16) | (hi << 4)  # (n, 32) codes 0..31


def _q5_0(b):
    return _f16(b, 0) * (_q5(b, 2).astype(np.float32) - 16)


def _q5_1(b):
    return _f16(b, 0) * _q5(b, 4).astype(np.float32) + _f16(b, 2)


def _q2_k(b):
    n = b.shape[0]
    s = b[:, 0:16]
    d, dmin = _f16(b, 80), _f16(b, 82)
    dl = (d * (s & 15).astype(np.float32))[..., None]  # (n, 16, 1)
    ml = (dmin * (s >> 4).astype(np.float32))[..., None]
    q = _bits(b[:, 16:80], 2, 4, 32).reshape(n, 16, 16).astype(np.float32)
    return (dl * q - ml).reshape(n, 256)


def _q3_k(b):
    n = b.shape[0]
    d = _f16(b, 108)
    dl = (d * _q3_k_scales(b[:, 96:108]))[..., None]  # (n, 16, 1)
    low = _bits(b[:, 32:96], 2, 4, 32).astype(np.int8)  # (n, 256)
    h = _bits(b[:, 0:32], 1, 8, 32).astype(np.int8)  # (n, 256): 1 = no offset, 0 = -4
    q = (low - 4 * (1 - h)).reshape(n, 16, 16).astype(np.float32)
    return (dl * q).reshape(n, 256)


def _q45_k(b, q):
    n = b.shape[0]
    sc, m = _scale_min_k4(b[:, 4:16])
    dl = (_f16(b, 0) * sc)[..., None]  # (n, 8, 1)
    ml = (_f16(b, 2) * m)[..., None]
    return (dl * q.reshape(n, 8, 32).astype(np.float32) - ml).reshape(n, 256)


def _q4_k(b):
    return _q45_k(b, _nibbles(b[:, 16:144], 32))


def _q5_k(b):
    hi = _bits(b[:, 16:48], 1, 8, 32)  # (n, 256): bit j of byte l -> weight 32j + l
    return _q45_k(b, _nibbles(b[:, 48:176], 32) | (hi << 4))


def _q6_k(b):
    n = b.shape[0]
    lo = _nibbles(b[:, 0:128], 64)  # (n, 256)
    hi = _bits(b[:, 128:192], 2, 4, 32)  # (n, 256)
    q = ((lo | (hi << 4)).astype(np.int16) - 32).reshape(n, 16, 16).astype(np.float32)
    sc = b[:, 192:208].view(np.int8).astype(np.float32)
    dl = (_f16(b, 208) * sc)[..., None]  # (n, 16, 1)
    return (dl * q).reshape(n, 256)


_DEQUANT = {"q4_1": _q4_1, "q5_0": _q5_0, "q5_1": _q5_1, "q2_k": _q2_k, "q3_k": _q3_k, "q4_k": _q4_k,
            "q5_k": _q5_k, "q6_k": _q6_k}  # fmt: skip


def dequantize_blocks(blocks: np.ndarray, fmt: str) -> np.ndarray:
    """uint8 blocks ``(..., type_size)`` of format ``fmt`` -> float32 ``(..., QK)``."""
    bt = BLOCK_TYPES[fmt]
    blocks = np.asarray(blocks, np.uint8)
    assert blocks.shape[-1] == bt.type_size, f"{fmt} blocks are {bt.type_size} bytes, got {blocks.shape[-1]}"
    flat = np.ascontiguousarray(blocks.reshape(-1, bt.type_size))
    return _DEQUANT[fmt](flat).reshape(*blocks.shape[:-1], bt.qk)


def from_gguf_blocks(raw: np.ndarray, shape: tuple[int, int], ggml_type: str) -> QuantizedTensor:
    """Raw GGUF bytes ``(N, row_bytes)`` of an ``(N, K)`` tensor -> the verbatim-block QuantizedTensor."""
    fmt = FORMAT_OF_GGML[ggml_type]
    bt = BLOCK_TYPES[fmt]
    n, k = (int(x) for x in shape)
    if k % bt.qk:
        from edgerun.errors import CorruptFileError

        raise CorruptFileError(f"{ggml_type} tensor rows of {k} are not a multiple of its block of {bt.qk}")
    data = np.asarray(raw, np.uint8).reshape(n, k // bt.qk, bt.type_size)
    return QuantizedTensor(fmt, (n, k), bt.qk, bt.bits, data, None, None)


class GGMLBlockFormat(QuantFormat):
    """A verbatim ggml block format (see the module docstring); imported from GGUF, not quantized here."""

    type_size: int = 0
    ggml: str = ""

    @classmethod
    def blob_size(cls, block_size=None) -> int:
        """Bytes per block (the whole ggml block, scales included)."""
        cls.check_block(block_size)
        return cls.type_size

    @classmethod
    def bytes_per_block(cls, block_size=None) -> float:
        """Bytes per block (the whole ggml block)."""
        return float(cls.blob_size(block_size))

    @classmethod
    def nbytes(cls, shape, block_size=None) -> int:
        """Stored bytes of an ``(N, K)`` weight: ``N * K / QK * type_size``."""
        n, k = shape
        return n * -(-k // cls.check_block(block_size)) * cls.type_size

    @classmethod
    def quantize(cls, w, block_size=None) -> QuantizedTensor:
        """Q4_1 / Q5_0 / Q5_1 through gguf-py's (ggml's) quantizer; K-quants are import-only."""
        from edgerun.errors import UnsupportedError

        if cls.name not in ("q4_1", "q5_0", "q5_1"):
            raise UnsupportedError(f"format {cls.name} is imported from GGUF files only; export a {cls.ggml} "
                                   "GGUF with weights='auto', or pick int4 / int8")  # fmt: skip
        from gguf import GGMLQuantizationType
        from gguf.quants import quantize as gg_quantize

        cls.check_block(block_size)
        w = np.asarray(w, np.float32)
        raw = gg_quantize(w, GGMLQuantizationType[cls.ggml])  # (N, row_bytes)
        return from_gguf_blocks(raw, w.shape, cls.ggml)

    @classmethod
    def dequantize(cls, q: QuantizedTensor) -> np.ndarray:
        """Float32 ``(N, K)``, bit-identical to ggml's ``dequantize_row``."""
        n, k = q.shape
        return dequantize_blocks(q.data, cls.name).reshape(n, -1)[:, :k]


for _name, _bt in BLOCK_TYPES.items():
    type(f"Format_{_name}", (GGMLBlockFormat,), {
        "name": _name, "bits": _bt.bits, "default_block": _bt.qk, "block_sizes": (_bt.qk,),
        "type_size": _bt.type_size, "ggml": _bt.ggml,
        "__doc__": f"GGUF {_bt.ggml} blocks verbatim ({_bt.qk} weights in {_bt.type_size} bytes).",
    })  # fmt: skip
