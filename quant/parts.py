"""Rebuild quantized tensors from an artifact's tensor-table entry and its stored parts.

An artifact entry (see ``edgerun/export/artifact.py``) of a block-quantized tensor looks like::

    {"format": "int4", "shape": [N, K], "quant": {"bits": 4, "block_size": 32, ...},
     "parts": {"data": {...}, "scales": {...}, "zero_points": {...}?}}

The parts are the MatMulNBits inputs (``data`` is MatMulNBits' ``B``; ``B`` is accepted as
an alias); the verbatim ggml block formats (``q4_k`` ...) have ``data`` alone, (N, n_blocks,
type_size) with the scales inside the blocks. The arrays handed in here may be read-only views of
the memory-mapped ``weights.bin``: nothing is copied until :func:`dequantize_parts` computes floats.
"""

from __future__ import annotations

import numpy as np
from edgerun.quant.formats import FORMATS, QuantizedTensor, get_format

PLAIN = ("f16", "f32", "bf16")


def codes_part(parts: dict) -> np.ndarray:
    """The packed codes (MatMulNBits ``B``), stored under ``data`` (or ``B``)."""
    return parts["data"] if "data" in parts else parts["B"]


def missing_part(fmt: str, parts) -> str | None:
    """The first part a block-quantized format needs that `parts` (names) lacks: the codes (``data`` / ``B``), and
    the scales of the MatMulNBits formats (the GGUF block formats keep theirs inside the blocks); None when
    complete, or for plain and unknown formats (left to their own checks)."""
    cls = FORMATS.get(fmt)
    if fmt in PLAIN or cls is None:
        return None
    if "data" not in parts and "B" not in parts:
        return "data"
    if not getattr(cls, "type_size", 0) and "scales" not in parts:
        return "scales"
    return None


def quantized_from_parts(entry: dict, parts: dict[str, np.ndarray]) -> QuantizedTensor:
    """A :class:`QuantizedTensor` of views over ``parts`` as the manifest ``entry`` describes it."""
    fmt = entry["format"]
    cls = get_format(fmt)
    q = entry.get("quant") or {}
    bits = int(q.get("bits", cls.bits))
    block = int(q.get("block_size", cls.default_block))
    n, k = (int(d) for d in entry["shape"])
    nb = -(-k // block)
    blob = getattr(cls, "type_size", 0) or block * bits // 8  # ggml block formats: the whole block
    missing = missing_part(fmt, parts)
    if missing:
        raise ValueError(f"{fmt} tensor without its {missing!r} part")
    data = codes_part(parts).reshape(n, nb, blob)
    scales = parts["scales"].reshape(n, nb) if "scales" in parts else None
    zp = parts.get("zero_points")
    zp = None if zp is None else zp.reshape(n, -1)
    return QuantizedTensor(fmt, (n, k), block, bits, data, scales, zp)


def dequantize_parts(entry: dict, parts: dict[str, np.ndarray]) -> np.ndarray:
    """Float32 array of the tensor described by ``entry`` (plain or block-quantized) from its parts."""
    fmt = entry["format"]
    if fmt in PLAIN:
        return np.asarray(parts["data"], dtype=np.float32).reshape(entry["shape"])
    if fmt not in FORMATS:
        get_format(fmt)  # raises UnsupportedError naming the formats
    return quantized_from_parts(entry, parts).dequantize()


def dequantize_rows(entry: dict, parts: dict[str, np.ndarray], rows: np.ndarray) -> np.ndarray:
    """Float32 rows ``rows`` (e.g. token ids of an embedding lookup) without dequantizing the rest."""
    rows = np.asarray(rows, dtype=np.int64)
    fmt = entry["format"]
    if fmt in PLAIN:
        return np.asarray(parts["data"][rows], dtype=np.float32)
    q = quantized_from_parts(entry, parts)
    sc, zp = (None if a is None else a[rows] for a in (q.scales, q.zero_points))
    sub = QuantizedTensor(q.format, (len(rows), q.shape[1]), q.block_size, q.bits, q.data[rows], sc, zp)
    return sub.dequantize()
