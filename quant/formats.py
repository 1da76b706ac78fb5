"""Block-quantized weight formats in the layout onnxruntime's ``com.microsoft::MatMulNBits`` reads.

One class per format, self-registering in :data:`FORMATS` (like gguf-py ``quants.py``). Every
format stores a weight ``W`` of logical shape ``(N, K)`` (``N`` output rows, ``K`` the reduction
axis, i.e. a ``torch.nn.Linear.weight``) as three arrays:

``data``         uint8 ``(N, n_blocks, blob_size)``   ``blob_size = block_size * bits / 8``
``scales``       float16 ``(N, n_blocks)``
``zero_points``  uint8 ``(N, ceil(n_blocks * bits / 8))`` packed, or ``None`` (= ``2**(bits-1)``)

with ``n_blocks = ceil(K / block_size)``; ``K`` is zero-padded up to a block multiple. Codes are
packed low-bits-first along ``K``: for 4 bits, byte ``j`` of a blob holds element ``2j`` in its
low nibble and ``2j+1`` in its high nibble; for 2 bits, byte ``j`` holds elements ``4j..4j+3`` at
bit offsets 0, 2, 4, 6. Zero points are packed the same way along the block axis of each row.
Dequantization is ``w = scale * (code - zero_point)``, exactly MatMulNBits' definition, so the
same bytes in ``weights.bin`` serve the native C kernels and a stock onnxruntime session.

Scale dtype: **float16**. MatMulNBits requires ``scales`` to have the dtype of its input ``A``,
so an ONNX graph using these scales runs the node on float16 ``A`` (``Cast`` to f16 before,
``Cast`` to f32 after). Measured with onnxruntime 1.31 on this 2-core x86 machine
(2 threads, block 32): the f16 path runs as fast as the f32 one (4096x4096 int4 decode
1.16 vs 1.15 ms, 49152x576 2.01 vs 2.03 ms; 64-token prefill 25.8 vs 24.8 ms), while f16 scales
cut the weight bytes of int4/32 from 5.0 to 4.5 bits per weight (-10% decode memory traffic
for the native kernels, which convert them with F16C), keep ternary at <= 2.1 bits per weight
at block 256, and make the GGUF conversions (whose scales are f16) bit-exact. The cost: the
onnxruntime output of such a node is f16 (range 65504; fine for linear-layer outputs).

Formats (``name``: bits, default block, zero point):

* ``int8``       8 bits, block 32, symmetric, codes ``q + 128`` (zero point absent = 128)
* ``int4``       4 bits, block 32 (64/128 too), symmetric like Q4_0 (zero point absent = 8)
* ``int4_asym``  4 bits, block 32 (64/128 too), per-block integer zero point (stored)
* ``ternary``    2 bits, block 256 (any power of two >= 16), values {-1, 0, +1} * scale:
                 codes 0/1/2 with a stored zero point of 1 (absent would mean 2)
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

FORMATS: dict[str, type[QuantFormat]] = {}


@dataclass
class QuantizedTensor:
    """A block-quantized ``(N, K)`` weight in MatMulNBits layout (see module docstring).

    ``data`` (N, n_blocks, blob_size) uint8; ``scales`` (N, n_blocks) float16;
    ``zero_points`` (N, ceil(n_blocks*bits/8)) uint8 or None. The verbatim ggml block formats
    (quant/ggml_blocks.py: q4_1 ... q6_k) keep their scales inside the blocks: ``data`` is
    (N, n_blocks, type_size) and ``scales`` / ``zero_points`` are None.
    """

    format: str
    shape: tuple[int, int]
    block_size: int
    bits: int
    data: np.ndarray
    scales: np.ndarray | None
    zero_points: np.ndarray | None = None

    @property
    def n_blocks(self) -> int:
        """Blocks per row (``ceil(K / block_size)``)."""
        return -(-self.shape[1] // self.block_size)

    @property
    def nbytes(self) -> int:
        """Total stored bytes (codes + scales + zero points)."""
        extra = [a.nbytes for a in (self.scales, self.zero_points) if a is not None]
        return self.data.nbytes + sum(extra)

    def parts(self) -> dict[str, np.ndarray]:
        """The stored arrays by MatMulNBits input name (``B``, ``scales``, ``zero_points``); only ``B``
        for the ggml block formats."""
        out = {"B": self.data}
        if self.scales is not None:
            out["scales"] = self.scales
        if self.zero_points is not None:
            out["zero_points"] = self.zero_points
        return out

    def dequantize(self) -> np.ndarray:
        """Float32 ``(N, K)`` weight."""
        return get_format(self.format).dequantize(self)


def get_format(name: str) -> type[QuantFormat]:
    """The format class registered under ``name`` (``int8``, ``int4``, ``int4_asym``, ``ternary``, and the
    ggml block formats ``q4_1 q5_0 q5_1 q2_k q3_k q4_k q5_k q6_k``)."""
    try:
        return FORMATS[name]
    except KeyError:
        from edgerun.errors import UnsupportedError

        raise UnsupportedError(
            f"unknown quantization format {name!r}; use one of {', '.join(sorted(FORMATS))}"
        ) from None


# ---------------------------------------------------------------------------------------------
# bit packing (low bits first), shared by every format


def pack_codes(codes: np.ndarray, bits: int) -> np.ndarray:
    """Pack integer codes ``(..., L)`` (L a multiple of 8/bits) into uint8 ``(..., L*bits/8)``."""
    per = 8 // bits
    c = codes.astype(np.uint8).reshape(*codes.shape[:-1], codes.shape[-1] // per, per)
    out = np.zeros(c.shape[:-1], dtype=np.uint8)
    for i in range(per):
        out |= c[..., i] << np.uint8(bits * i)
    return out


def unpack_codes(packed: np.ndarray, bits: int, length: int | None = None) -> np.ndarray:
    """Inverse of :func:`pack_codes`: uint8 ``(..., B)`` -> codes uint8 ``(..., B*8/bits)``."""
    per = 8 // bits
    mask = np.uint8((1 << bits) - 1)
    shifts = (np.arange(per, dtype=np.uint8) * bits).astype(np.uint8)
    c = (packed[..., None] >> shifts) & mask
    c = c.reshape(*packed.shape[:-1], packed.shape[-1] * per)
    return c if length is None else c[..., :length]


def pack_zero_points(zp: np.ndarray, bits: int) -> np.ndarray:
    """Zero points ``(N, n_blocks)`` -> MatMulNBits packed uint8 ``(N, ceil(n_blocks*bits/8))``."""
    per = 8 // bits
    n, nb = zp.shape
    padded = np.zeros((n, -(-nb // per) * per), dtype=np.uint8)
    padded[:, :nb] = zp
    return pack_codes(padded, bits)


def unpack_zero_points(packed: np.ndarray, bits: int, n_blocks: int) -> np.ndarray:
    """Packed zero points -> uint8 ``(N, n_blocks)``."""
    return unpack_codes(packed, bits, n_blocks)


# ---------------------------------------------------------------------------------------------


class QuantFormat:
    """Base of every format: class attributes plus numpy ``quantize``/``dequantize``.

    Subclasses set ``name``, ``bits``, ``default_block``, ``block_sizes`` (allowed) and
    ``stores_zero_points`` and implement ``_codes(blocks) -> (codes, scales_f16, zp | None)``.
    """

    name: str = ""
    bits: int = 0
    default_block: int = 32
    block_sizes: tuple[int, ...] = (32,)
    stores_zero_points: bool = False

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        if cls.name:
            FORMATS[cls.name] = cls

    # ---- sizes

    @classmethod
    def check_block(cls, block_size: int | None) -> int:
        """Validate ``block_size`` (None = default) and return it."""
        bs = cls.default_block if block_size is None else int(block_size)
        if bs not in cls.block_sizes:
            from edgerun.errors import UnsupportedError

            raise UnsupportedError(
                f"format {cls.name} does not support block size {bs}; use one of {cls.block_sizes}"
            )
        assert bs >= 16 and bs & (bs - 1) == 0, "MatMulNBits needs a power-of-two block >= 16"
        return bs

    @classmethod
    def blob_size(cls, block_size: int | None = None) -> int:
        """Bytes of codes per block."""
        return cls.check_block(block_size) * cls.bits // 8

    @classmethod
    def bytes_per_block(cls, block_size: int | None = None) -> float:
        """Codes + f16 scale (+ packed zero point share) per block, in bytes."""
        bs = cls.check_block(block_size)
        zp = cls.bits / 8 if cls.stores_zero_points else 0.0
        return bs * cls.bits / 8 + 2 + zp

    @classmethod
    def bits_per_weight(cls, block_size: int | None = None) -> float:
        """Stored bits per weight for K a multiple of the block (scales and zero points included)."""
        bs = cls.check_block(block_size)
        return cls.bytes_per_block(bs) * 8 / bs

    @classmethod
    def nbytes(cls, shape: tuple[int, int], block_size: int | None = None) -> int:
        """Exact stored bytes for a ``(N, K)`` weight (what :meth:`quantize` returns)."""
        bs = cls.check_block(block_size)
        n, k = shape
        nb = -(-k // bs)
        zp = n * (-(-nb * cls.bits // 8)) if cls.stores_zero_points else 0
        return n * nb * (bs * cls.bits // 8) + n * nb * 2 + zp

    # ---- numpy reference quantize / dequantize

    @classmethod
    def quantize(cls, w: np.ndarray, block_size: int | None = None) -> QuantizedTensor:
        """Quantize a float ``(N, K)`` weight (K zero-padded to a block multiple)."""
        bs = cls.check_block(block_size)
        w = np.asarray(w, dtype=np.float32)
        assert w.ndim == 2, f"expected a 2-D (N, K) weight, got shape {w.shape}"
        n, k = w.shape
        nb = -(-k // bs)
        wp = np.zeros((n, nb * bs), dtype=np.float32)
        wp[:, :k] = w
        blocks = wp.reshape(n, nb, bs)  # (N, n_blocks, block)
        codes, scales, zp = cls._codes(blocks)
        data = pack_codes(codes, cls.bits)  # (N, n_blocks, blob)
        zpp = pack_zero_points(zp, cls.bits) if cls.stores_zero_points else None
        q = QuantizedTensor(cls.name, (n, k), bs, cls.bits, data, scales.astype(np.float16), zpp)
        assert q.nbytes == cls.nbytes((n, k), bs)
        return q

    @classmethod
    def zero_point_array(cls, q: QuantizedTensor) -> np.ndarray:
        """Unpacked zero points ``(N, n_blocks)`` as int32 (the default when none are stored)."""
        n = q.shape[0]
        if q.zero_points is None:
            return np.full((n, q.n_blocks), 1 << (q.bits - 1), dtype=np.int32)
        return unpack_zero_points(q.zero_points, q.bits, q.n_blocks).astype(np.int32)

    @classmethod
    def dequantize(cls, q: QuantizedTensor) -> np.ndarray:
        """Float32 ``(N, K)``: ``scale * (code - zero_point)`` (MatMulNBits semantics)."""
        n, k = q.shape
        codes = unpack_codes(q.data, q.bits).astype(np.int32)  # (N, n_blocks, block)
        zp = cls.zero_point_array(q)[..., None]
        w = (codes - zp).astype(np.float32) * q.scales.astype(np.float32)[..., None]
        return w.reshape(n, -1)[:, :k]

    @classmethod
    def _codes(cls, blocks: np.ndarray):
        raise NotImplementedError


def _f16_scale(d: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Round scales to f16 (what is stored) and return (scale_f16, 1/scale as f32, 0 where 0)."""
    d16 = np.clip(d, 0, 65504).astype(np.float16)
    d32 = d16.astype(np.float32)
    with np.errstate(divide="ignore"):
        inv = np.where(d32 == 0, 0, 1 / d32).astype(np.float32)
    return d16, inv


class Int8(QuantFormat):
    """Symmetric 8-bit, block 32: ``d = amax/127``, codes ``round(w/d) + 128`` (like Q8_0)."""

    name = "int8"
    bits = 8
    default_block = 32
    block_sizes = (32, 64, 128, 256)

    @classmethod
    def _codes(cls, blocks):
        d16, inv = _f16_scale(np.abs(blocks).max(axis=-1) / 127)
        q = np.clip(np.rint(blocks * inv[..., None]), -127, 127)
        return (q + 128).astype(np.uint8), d16, None


class Int4(QuantFormat):
    """Symmetric 4-bit (like Q4_0): ``d = w[argmax|w|] / -8`` (signed scale), codes ``round(w/d) + 8``.

    The largest-magnitude weight maps exactly to code 0 (value -8*d), using all 16 levels.
    """

    name = "int4"
    bits = 4
    default_block = 32
    block_sizes = (32, 64, 128, 256)

    @classmethod
    def _codes(cls, blocks):
        imax = np.abs(blocks).argmax(axis=-1)[..., None]
        d16 = (np.take_along_axis(blocks, imax, axis=-1)[..., 0] / -8).astype(np.float16)  # signed
        d32 = d16.astype(np.float32)
        with np.errstate(divide="ignore"):
            inv = np.where(d32 == 0, 0, 1 / d32).astype(np.float32)
        q = np.clip(np.rint(blocks * inv[..., None]), -8, 7)
        return (q + 8).astype(np.uint8), d16, None


class Int4Asym(QuantFormat):
    """Asymmetric 4-bit: ``s = (max - min)/15`` over a range holding 0, integer zero point."""

    name = "int4_asym"
    bits = 4
    default_block = 32
    block_sizes = (32, 64, 128, 256)
    stores_zero_points = True

    @classmethod
    def _codes(cls, blocks):
        lo = np.minimum(blocks.min(axis=-1), 0)
        hi = np.maximum(blocks.max(axis=-1), 0)
        d16, inv = _f16_scale((hi - lo) / 15)
        zp = np.clip(np.rint(-lo * inv), 0, 15)
        q = np.clip(np.rint(blocks * inv[..., None]) + zp[..., None], 0, 15)
        return q.astype(np.uint8), d16, zp.astype(np.uint8)


class Ternary(QuantFormat):
    """Ternary {-1, 0, +1} * scale (BitNet b1.58 absmean scale), 2-bit codes 0/1/2, zero point 1.

    Default block 256: 2 + (16 + 2)/256 = 2.07 bits per weight. Blocks 32..128 (and 512, 1024) also work
    (K is padded to the block), e.g. 64 for rows of 576 (2.28 bits per weight, no padding).
    """

    name = "ternary"
    bits = 2
    default_block = 256
    block_sizes = (32, 64, 128, 256, 512, 1024)
    stores_zero_points = True

    @classmethod
    def _codes(cls, blocks):
        d16, inv = _f16_scale(np.abs(blocks).mean(axis=-1))
        q = np.clip(np.rint(blocks * inv[..., None]), -1, 1)
        zp = np.ones(blocks.shape[:-1], dtype=np.uint8)
        return (q + 1).astype(np.uint8), d16, zp


def quantize(w: np.ndarray, fmt: str, block_size: int | None = None) -> QuantizedTensor:
    """Quantize a float ``(N, K)`` weight to format ``fmt`` (see :data:`FORMATS`)."""
    return get_format(fmt).quantize(w, block_size)


def dequantize(q: QuantizedTensor) -> np.ndarray:
    """Float32 ``(N, K)`` weight of a :class:`QuantizedTensor`."""
    return get_format(q.format).dequantize(q)
