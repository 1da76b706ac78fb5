"""Exact dequantization of verbatim ggml blocks (quant/ggml_blocks.py) as standard ONNX ops.

``dequant(g, blocks, fmt, lead)``: uint8 ``[*lead, type_size]`` -> float32 ``[*lead, QK]``, the same
float32 operations in the same order as ``quant.ggml_blocks.dequantize_blocks`` (so the same bits as
ggml). ``lead`` is the number of leading axes (2 for a matrix ``[N, nb]``, 3 for gathered embedding rows
``[1, T, nb]``); reshapes copy them with ``0`` so a dynamic ``T`` works.

ONNX has no bitcast, so an f16 field is two bytes -> index ``lo + 256 * hi`` -> ``Gather`` from a
65536-entry table of every f16 value as float32 (exact); bit fields are ``BitShift`` + ``BitwiseAnd`` on
uint8. On a matrix every input is a constant, so onnxruntime folds the whole subgraph once at session
creation: the session holds a float32 copy of the weight (4 bytes per weight) and the file none.
"""

from __future__ import annotations

import numpy as np
from edgerun.quant import BLOCK_TYPES


class BlockDequant:
    """Builds the dequantization subgraphs on a graph builder ``g`` (export/onnx_graph.py ``_G``)."""

    def __init__(self, g):
        self.g = g
        self._table = None

    # --- small pieces
    def _i64(self, v) -> str:
        return self.g.const(np.array(v, np.int64))

    def _slice(self, x: str, a: int, b: int) -> str:
        """Bytes a:b of the last axis."""
        return self.g.op("Slice", [x, self._i64([a]), self._i64([b]), self._i64([-1])])

    def _f32(self, x: str) -> str:
        return self.g.op("Cast", [x], to=1)

    def _f16(self, b: str, at: int) -> str:
        """The f16 field at byte ``at`` -> float32 [*lead, 1]."""
        g = self.g
        if self._table is None:
            self._table = g.const(np.arange(65536, dtype=np.uint16).view(np.float16).astype(np.float32), "f16_table")
        lo = g.op("Cast", [self._slice(b, at, at + 1)], to=7)
        hi = g.op("Cast", [self._slice(b, at + 1, at + 2)], to=7)
        idx = g.op("Add", [lo, g.op("Mul", [hi, self._i64(256)])])
        return g.op("Gather", [self._table, idx], axis=0)

    def _bits(self, x: str, width: int, count: int, group: int, lead: int) -> str:
        """uint8 [*lead, G*group] -> [*lead, G*count*group]: per group of bytes, field 0 of every byte (shift 0),
        then field 1 (shift width), ... (numpy ``_bits``; nibbles: width 4, count 2)."""
        g = self.g
        x = g.op("Reshape", [x, self._i64([0] * lead + [-1, 1, group])])
        shifts = g.const((np.arange(count) * width).astype(np.uint8).reshape(count, 1))
        x = g.op("BitShift", [x, shifts], direction="RIGHT")  # [*lead, G, count, group]
        x = g.op("BitwiseAnd", [x, g.const(np.array((1 << width) - 1, np.uint8))])
        return g.op("Reshape", [x, self._i64([0] * lead + [-1])])

    def _nibbles(self, x: str, group: int, lead: int) -> str:
        return self._bits(x, 4, 2, group, lead)

    def _or_shift4(self, lo: str, hi: str) -> str:
        """lo | hi << 4 on uint8."""
        g = self.g
        return g.op("BitwiseOr", [lo, g.op("BitShift", [hi, g.const(np.array(4, np.uint8))], direction="LEFT")])

    def _sub_blocks(self, dl: str, q: str, ml: str | None, n_sub: int, lead: int) -> str:
        """(dl [*lead, n_sub] -> [..., 1]) * q [*lead, QK] as [*lead, n_sub, QK/n_sub] (- ml), back to [*lead, QK]."""
        g = self.g
        q = g.op("Reshape", [q, self._i64([0] * lead + [n_sub, -1])])
        y = g.op("Mul", [g.op("Unsqueeze", [dl, self._i64([-1])]), q])
        if ml is not None:
            y = g.op("Sub", [y, g.op("Unsqueeze", [ml, self._i64([-1])])])
        return g.op("Reshape", [y, self._i64([0] * lead + [-1])])

    def _signed(self, x: str) -> str:
        """uint8 read as int8 -> float32 (x - 256 where x >= 128)."""
        g = self.g
        f = self._f32(x)
        return g.op("Where", [g.op("GreaterOrEqual", [f, g.const(np.array(128, np.float32))]),
                              g.op("Sub", [f, g.const(np.array(256, np.float32))]), f])

    def _c(self, v: float) -> str:
        return self.g.const(np.array(v, np.float32))

    # --- formats
    def dequant(self, b: str, fmt: str, lead: int) -> str:
        """uint8 blocks [*lead, type_size] of ``fmt`` -> float32 [*lead, QK]."""
        return getattr(self, "_" + fmt)(b, lead)

    def _q4_1(self, b, lead):
        g = self.g
        q = self._f32(self._nibbles(self._slice(b, 4, 20), 16, lead))
        return g.op("Add", [g.op("Mul", [self._f16(b, 0), q]), self._f16(b, 2)])

    def _q5(self, b, qh_at, lead):
        hi = self._bits(self._slice(b, qh_at, qh_at + 4), 1, 8, 1, lead)  # bit s of byte i -> weight 8i + s
        return self._f32(self._or_shift4(self._nibbles(self._slice(b, qh_at + 4, qh_at + 20), 16, lead), hi))

    def _q5_0(self, b, lead):
        g = self.g
        return g.op("Mul", [self._f16(b, 0), g.op("Sub", [self._q5(b, 2, lead), self._c(16)])])

    def _q5_1(self, b, lead):
        g = self.g
        return g.op("Add", [g.op("Mul", [self._f16(b, 0), self._q5(b, 4, lead)]), self._f16(b, 2)])

    def _q2_k(self, b, lead):
        g = self.g
        s = self._slice(b, 0, 16)
        dl = g.op("Mul", [self._f16(b, 80), self._f32(g.op("BitwiseAnd", [s, g.const(np.array(15, np.uint8))]))])
        m = g.op("BitShift", [s, g.const(np.array(4, np.uint8))], direction="RIGHT")
        ml = g.op("Mul", [self._f16(b, 82), self._f32(m)])
        q = self._f32(self._bits(self._slice(b, 16, 80), 2, 4, 32, lead))
        return self._sub_blocks(dl, q, ml, 16, lead)

    def _q3_k(self, b, lead):
        g = self.g
        s = self._slice(b, 96, 108)
        sc = self._or_shift4(self._nibbles(self._slice(s, 0, 8), 8, lead), self._bits(self._slice(s, 8, 12), 2, 4, 4,
                                                                                        lead))
        dl = g.op("Mul", [self._f16(b, 108), g.op("Sub", [self._f32(sc), self._c(32)])])
        low = self._f32(self._bits(self._slice(b, 32, 96), 2, 4, 32, lead))
        h = self._f32(self._bits(self._slice(b, 0, 32), 1, 8, 32, lead))
        q = g.op("Sub", [low, g.op("Mul", [self._c(4), g.op("Sub", [self._c(1), h])])])
        return self._sub_blocks(dl, q, None, 16, lead)

    def _scale_min_k4(self, s):
        """[*lead, 12] packed -> (sc, m) float32 [*lead, 8] (ggml get_scale_min_k4)."""
        g = self.g
        u8 = lambda v: g.const(np.array(v, np.uint8))  # noqa: E731
        lo, hi, mix = self._slice(s, 0, 4), self._slice(s, 4, 8), self._slice(s, 8, 12)
        top = lambda x: g.op("BitShift", [g.op("BitShift", [x, u8(6)], direction="RIGHT"), u8(4)],  # noqa: E731
                             direction="LEFT")
        sc = g.op("Concat", [g.op("BitwiseAnd", [lo, u8(63)]),
                             g.op("BitwiseOr", [g.op("BitwiseAnd", [mix, u8(15)]), top(lo)])], axis=-1)
        m = g.op("Concat", [g.op("BitwiseAnd", [hi, u8(63)]),
                            g.op("BitwiseOr", [g.op("BitShift", [mix, u8(4)], direction="RIGHT"), top(hi)])], axis=-1)
        return self._f32(sc), self._f32(m)

    def _q45_k(self, b, q, lead):
        g = self.g
        sc, m = self._scale_min_k4(self._slice(b, 4, 16))
        dl = g.op("Mul", [self._f16(b, 0), sc])
        ml = g.op("Mul", [self._f16(b, 2), m])
        return self._sub_blocks(dl, self._f32(q), ml, 8, lead)

    def _q4_k(self, b, lead):
        return self._q45_k(b, self._nibbles(self._slice(b, 16, 144), 32, lead), lead)

    def _q5_k(self, b, lead):
        hi = self._bits(self._slice(b, 16, 48), 1, 8, 32, lead)
        return self._q45_k(b, self._or_shift4(self._nibbles(self._slice(b, 48, 176), 32, lead), hi), lead)

    def _q6_k(self, b, lead):
        g = self.g
        lo = self._nibbles(self._slice(b, 0, 128), 64, lead)
        hi = self._bits(self._slice(b, 128, 192), 2, 4, 32, lead)
        q = g.op("Sub", [self._f32(self._or_shift4(lo, hi)), self._c(32)])
        dl = g.op("Mul", [self._f16(b, 208), self._signed(self._slice(b, 192, 208))])
        return self._sub_blocks(dl, q, None, 16, lead)


def supported(fmt: str) -> bool:
    """Whether ``fmt`` is a verbatim ggml block format this module dequantizes."""
    return fmt in BLOCK_TYPES
