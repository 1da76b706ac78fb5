"""Sink + sliding-window KV cache (StreamingLLM) with optional KIVI int8/int4/int2 storage.

Every buffer is allocated once, in the constructor, from the layer specs; nothing grows per token.

Per layer::

    sinks  [0 .. S)            first S tokens, kept forever          (n_kv, S, hd)  float
    window ring of W slots     token at absolute p >= S -> slot (p - S) % W
           (kv_bits 16/32)     float16/float32                       (n_kv, W, hd)
           (kv_bits 8/4/2)     full-precision residual of one group  (n_kv, G, hd)  float16
                               + ring of ceil(W/G) quantized groups  KIVI: keys per channel, values per token
                                 (group b holds the G consecutive positions q_start[b] ..)

Positions (the StreamingLLM rule, without ever re-encoding a stored key):
keys are stored RoPE-rotated at their ABSOLUTE position. A query at absolute p attends to
the sinks and to the keys at p-W < a <= p. For window keys the relative distance p - a is the
true one, so the query is rotated at p. StreamingLLM gives cached tokens their *in-cache*
positions: sinks 0..S-1, window S..S+W-1, the query S+W-1 once eviction has begun; since
R(x)q . R(y)k depends only on y - x, that equals rotating the query at
``p_cache = min(p, S + W - 1)`` for the sink scores only. Eviction is a ring-slot overwrite:
no shift, no re-rotation, no pause.

Entry point: :meth:`SinkWindowKVCache.attend` ``(layer, q, k, v, rope, pos)`` — the model passes
un-rotated q/k of the new block and a ``rope(x, pos)`` callable; the cache rotates, attends over
sinks + window + the block itself (causal), then stores the block. Models never see the layout.
With ``native=True`` (the native backend's caches) the KIVI layouts attend and store in C
(``er_kivi_attention`` / ``er_kivi_store``, kernels/src/kv_attention.c: codes dequantized per group in
registers/L1, no float copy of the window); the numpy path below is their reference. The fused decode
reads the same buffers through :meth:`_LayerKV.kivi` (``er_decode_layer_kivi``).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
from edgerun.quant import kv as kvq

Rope = Callable[[np.ndarray, np.ndarray], np.ndarray]  # (n, T, hd), (T,) -> (n, T, hd)


def _kernels_load() -> bool:
    """Whether the C kernels are built (the cache's native path needs them)."""
    try:
        from edgerun.kernels import _lib  # noqa: F401
    except Exception:  # noqa: BLE001 - not built: the numpy path
        return False
    return True


def _alloc(shape, dtype) -> np.ndarray:
    """A zeroed buffer whose pages are touched now, so RSS holds it from the start (not as tokens arrive)."""
    a = np.empty(shape, dtype)
    a.fill(0)
    return a


@dataclass(frozen=True)
class LayerSpec:
    """One attention layer's cache shape: heads, head size, window W (incl. the current token), sinks S."""

    n_heads: int
    n_kv: int
    head_dim: int
    window: int
    sinks: int = 4


def rope_neox(head_dim: int, base: float = 10000.0) -> Rope:
    """Reference RoPE, NeoX/HF "rotate half" layout: pairs (i, i + hd/2). Positions may be any ints."""
    inv = base ** (-np.arange(0, head_dim, 2, dtype=np.float64) / head_dim)  # (hd/2,)

    def rope(x: np.ndarray, pos: np.ndarray) -> np.ndarray:
        ang = np.asarray(pos, dtype=np.float64)[:, None] * inv[None, :]  # (T, hd/2)
        cos, sin = np.cos(ang).astype(np.float32), np.sin(ang).astype(np.float32)
        h = head_dim // 2
        x1, x2 = x[..., :h], x[..., h:]
        return np.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1).astype(np.float32)

    return rope


class _LayerKV:
    """Storage of one layer (see module docstring for the layout)."""

    def __init__(self, spec: LayerSpec, bits: int, group: int):
        n_kv, hd, s, w = spec.n_kv, spec.head_dim, spec.sinks, spec.window
        self.spec, self.bits, self.S, self.W = spec, bits, s, w
        fdt = np.float32 if bits == 32 else np.float16
        self.dtype = fdt
        self.sink_k = _alloc((n_kv, s, hd), fdt)  # (n_kv, S, hd) rotated at their own positions
        self.sink_pos = np.full(s, -1, np.int64)
        self.quant = bits < 16
        if not self.quant:
            # One contiguous block per kv head, [sinks | window ring], that the C attention kernel reads
            # in one call: kv_k[:, :S] holds the sink keys as the current query sees them (rotated by
            # `sink_shift` more, see `shift_sinks`), kv_k[:, S:] is the window ring itself.
            self.kv_k = _alloc((n_kv, s + w, hd), fdt)  # (n_kv, S + W, hd)
            self.kv_v = _alloc((n_kv, s + w, hd), fdt)
            self.sink_v = self.kv_v[:, :s]  # values need no shift: views
            self.win_k, self.win_v = self.kv_k[:, s:], self.kv_v[:, s:]  # (n_kv, W, hd) views
            self.win_pos = np.full(w, -1, np.int64)
            self.sink_shift = -1  # extra rotation applied to kv_k[:, :S]; -1 = stale
            self._sink_f32 = _alloc((n_kv * s, hd), np.float32)  # (n_kv * S, hd) scratch of `store_decode`
            self._kivi = None
            return
        self.sink_v = _alloc((n_kv, s, hd), fdt)
        g = group
        self.G = g
        self.vgroup = min(kvq.DEFAULT_GROUP, hd)
        self.nb = -(-w // g)  # quantized groups kept: with r < G residual tokens, ceil(W/G) groups hold the rest
        self.res_k = _alloc((n_kv, g, hd), np.float16)  # (n_kv, G, hd) newest, not yet quantized
        self.res_v = _alloc((n_kv, g, hd), np.float16)
        self.res_pos = np.full(g, -1, np.int64)
        pb = hd * bits // 8
        # group b of kv head h at [h, b]: a head's groups follow each other (the C decode streams them in order)
        self.qk = _alloc((n_kv, self.nb, g, pb), np.uint8)  # (n_kv, nb, G, hd*bits/8)
        self.qk_scale = _alloc((n_kv, self.nb, 1, hd), np.float16)
        self.qk_min = _alloc((n_kv, self.nb, 1, hd), np.float16)
        self.qv = _alloc((n_kv, self.nb, g, pb), np.uint8)
        # value scales/mins per channel group then token (n_kv, nb, hd/vgroup, G): the C decode reads a channel
        # group's G scales contiguously (quantize_values' (n_kv, G, hd/vgroup), transposed)
        self.qv_scale = _alloc((n_kv, self.nb, hd // self.vgroup, g), np.float16)
        # int8 values are symmetric: no mins (the kernels use -128 * scale)
        self.qv_min = None if bits == 8 else _alloc((n_kv, self.nb, hd // self.vgroup, g), np.float16)
        self.q_start = np.full(self.nb, -1, np.int64)  # (nb,) first position of each group's G tokens
        self._kivi = None  # the C view of these buffers (built on first use, see `kivi`)

    @property
    def capacity(self) -> int:
        """Window slots held (>= W; the quantized layout holds whole groups plus the residual)."""
        return self.W if not self.quant else self.nb * self.G + self.G

    def nbytes(self) -> int:
        """Bytes of all buffers of this layer (views into another buffer not counted twice)."""
        return sum(a.nbytes for a in vars(self).values() if isinstance(a, np.ndarray) and a.base is None)

    def reset(self) -> None:
        """Forget every token (buffers kept)."""
        for a in vars(self).values():
            if isinstance(a, np.ndarray) and a.dtype == np.int64:
                a.fill(-1)
        self.sink_shift = -1

    def write(self, k: np.ndarray, v: np.ndarray, pos: np.ndarray) -> None:
        """Store rotated keys k (n_kv, T, hd) and values v at absolute positions pos (T,), ascending."""
        s = self.S
        sink = pos < s
        if sink.any():
            idx = pos[sink]
            self.sink_k[:, idx] = k[:, sink]
            self.sink_v[:, idx] = v[:, sink]
            self.sink_pos[idx] = idx
            self.sink_shift = -1
        rest = np.nonzero(~sink)[0]
        if rest.size == 0:
            return
        if not self.quant:
            rest = rest[-self.W :]  # older ones would be overwritten in the same call
            slot = (pos[rest] - s) % self.W
            n = slot.size
            if int(slot[-1]) - int(slot[0]) == n - 1 and int(rest[-1]) - int(rest[0]) == n - 1:  # one run of slots
                a0, r0 = int(slot[0]), int(rest[0])
                self.win_k[:, a0 : a0 + n] = k[:, r0 : r0 + n]
                self.win_v[:, a0 : a0 + n] = v[:, r0 : r0 + n]
                self.win_pos[a0 : a0 + n] = pos[r0 : r0 + n]
                return
            self.win_k[:, slot] = k[:, rest]
            self.win_v[:, slot] = v[:, rest]
            self.win_pos[slot] = pos[rest]
            return
        g = self.G
        rest = rest[-(self.nb * g + g) :]
        i = 0
        while i < rest.size:  # fill the residual group by group; quantize each group as it completes
            p0 = int(pos[rest[i]])
            r0 = (p0 - s) % g
            n = min(g - r0, rest.size - i)
            sel = rest[i : i + n]
            self.res_k[:, r0 : r0 + n] = k[:, sel]
            self.res_v[:, r0 : r0 + n] = v[:, sel]
            self.res_pos[r0 : r0 + n] = pos[sel]
            if r0 + n == g:
                self._flush((p0 - s) // g)
            i += n

    def store_decode(self, k: np.ndarray, v: np.ndarray, pos: int, rotate: Callable[[np.ndarray, int], None]) -> int:
        """Decode fast path of the float layouts: store one token, return how many keys of kv_k/kv_v are valid.

        k (n_kv, hd) rotated at absolute `pos`, v (n_kv, hd). Afterwards the query at `pos` (rotated at
        `pos`) attends kv_k/kv_v[:, :n] in one call: the ring fills from slot 0, and the sink keys in
        kv_k[:, :S] carry an extra rotation by delta = pos - p_cache (p_cache = min(pos, S + W - 1)),
        since R(pos)q . R(a + delta)k = R(p_cache)q . R(a)k: the StreamingLLM in-cache position.
        rotate(x, delta) rotates x (rows, hd) float32 in place by delta positions (the layer's RoPE).
        """
        s, w = self.S, self.W
        if pos < s:
            self.sink_k[:, pos] = k
            self.sink_v[:, pos] = v
            self.sink_pos[pos] = pos
            self.sink_shift = -1
            n = pos + 1
        else:
            slot = (pos - s) % w
            self.win_k[:, slot] = k
            self.win_v[:, slot] = v
            self.win_pos[slot] = pos
            n = s + min(w, pos - s + 1)
        if s:
            delta = max(0, pos - (s + w - 1))
            if self.sink_shift != delta:
                x = self._sink_f32
                x.reshape(self.sink_k.shape)[:] = self.sink_k
                if delta:
                    rotate(x, delta)
                self.kv_k[:, :s] = x.reshape(self.sink_k.shape)
                self.sink_shift = delta
        return n

    def kivi(self, q_sink: np.ndarray):
        """The ``er_kivi`` struct (ctypes) over this layer's KIVI (or float16 ring) buffers; `q_sink` is its scratch.

        Built once: the buffers never move. Keep the returned object alive while C uses it."""
        if self._kivi is None:
            from edgerun.kernels._lib import ErKivi

            sp = self.spec

            def p(a):
                return 0 if a is None else a.__array_interface__["data"][0]

            if not self.quant:  # float16 [sinks | ring] (prefill attention only)
                c = ErKivi(bits=16, group=64, vgroup=sp.head_dim, n_blocks=-(-self.W // 64), n_kv_heads=sp.n_kv,
                           head_dim=sp.head_dim, sinks=self.S, window=self.W, sink_k=p(self.sink_k),
                           sink_pos=p(self.sink_pos), q_sink=p(q_sink), ring_k=p(self.kv_k), ring_v=p(self.kv_v),
                           ring_pos=p(self.win_pos), ring_stride=self.S + self.W)  # fmt: skip
                self._kivi = (c, q_sink)
                return c
            c = ErKivi(self.bits, self.G, self.vgroup, self.nb, sp.n_kv, sp.head_dim, self.S, self.W,
                       p(self.sink_k), p(self.sink_v), p(self.sink_pos), p(self.res_k), p(self.res_v),
                       p(self.res_pos), p(self.qk), p(self.qv), p(self.qk_scale), p(self.qk_min),
                       p(self.qv_scale), p(self.qv_min), p(self.q_start), p(q_sink))  # fmt: skip
            self._kivi = (c, q_sink)
        return self._kivi[0]

    def _flush(self, group_index: int) -> None:
        b = group_index % self.nb
        codes, sc, mn = kvq.quantize_keys(self.res_k, self.bits)
        self.qk[:, b], self.qk_scale[:, b], self.qk_min[:, b] = codes, sc, mn
        codes, sc, mn = kvq.quantize_values(self.res_v, self.bits, self.vgroup)
        self.qv[:, b], self.qv_scale[:, b] = codes, sc.transpose(0, 2, 1)
        if mn is not None:
            self.qv_min[:, b] = mn.transpose(0, 2, 1)
        self.q_start[b] = self.res_pos[0]
        self.res_pos.fill(-1)

    def gather(self, kall: np.ndarray, vall: np.ndarray, pall: np.ndarray, o: int) -> int:
        """Copy (dequantize) the window into kall/vall (n_kv, keys, hd) f32 and pall from column o; return the end."""
        if not self.quant:
            n = self.W if self.win_pos[-1] >= 0 else int(np.count_nonzero(self.win_pos >= 0))  # ring fills from 0
            np.copyto(kall[:, o : o + n], self.win_k[:, :n], casting="unsafe")
            np.copyto(vall[:, o : o + n], self.win_v[:, :n], casting="unsafe")
            pall[o : o + n] = self.win_pos[:n]
            return o + n
        g, hd = self.G, self.spec.head_dim
        r = int(np.count_nonzero(self.res_pos >= 0))  # the residual fills from slot 0 of each group
        np.copyto(kall[:, o : o + r], self.res_k[:, :r], casting="unsafe")
        np.copyto(vall[:, o : o + r], self.res_v[:, :r], casting="unsafe")
        pall[o : o + r] = self.res_pos[:r]
        o += r
        for b in range(self.nb):
            if self.q_start[b] < 0:
                continue
            kvq.dequantize_keys(self.qk[:, b], self.qk_scale[:, b], self.qk_min[:, b], self.bits, hd,
                                out=kall[:, o : o + g])  # fmt: skip
            vs = self.qv_scale[:, b].transpose(0, 2, 1)
            vm = None if self.qv_min is None else self.qv_min[:, b].transpose(0, 2, 1)
            kvq.dequantize_values(self.qv[:, b], vs, vm, self.bits, hd, out=vall[:, o : o + g])
            pall[o : o + g] = self.q_start[b] + np.arange(g)
            o += g
        return o


class SinkWindowKVCache:
    """Preallocated attention-sink + sliding-window KV cache for a stack of layers.

    specs: one :class:`LayerSpec` per layer (Gemma-3 local layers: their own window, sinks=0).
    bits: 32 (float32, exact), 16 (float16), 8/4/2 (KIVI). group: KIVI key group (tokens).
    chunk: the largest query block attended at once; longer blocks are split (scratch is sized by it).
    native: KIVI and float16 layouts attend in C (kernels/src/kv_attention.c; no numpy scratch) when the kernels
    load; False keeps the numpy path (the reference backend's, and the C path's reference).
    """

    def __init__(self, specs: Sequence[LayerSpec], bits: int = 16, group: int = kvq.DEFAULT_GROUP, chunk: int = 64,
                 native: bool = True):  # fmt: skip
        self.bits = kvq.check_bits(bits)
        self.group = group
        self.chunk = chunk
        self.specs = list(specs)
        for sp in self.specs:
            if sp.window < 1 or sp.sinks < 0 or sp.n_heads % sp.n_kv:
                raise ValueError(f"bad layer spec {sp}")
        self.native = native and self.bits <= 16 and _kernels_load() and group <= 64 and all(
            sp.sinks <= 64 and sp.head_dim * self.bits % 8 == 0 for sp in self.specs)
        self.layers = [_LayerKV(sp, self.bits, group) for sp in self.specs]
        n_kv = max(sp.n_kv for sp in self.specs)
        hd = max(sp.head_dim for sp in self.specs)
        nh = max(sp.n_heads for sp in self.specs)
        self._init_counters()
        if self.native:  # C attention: only the sink-query scratch (chunk, n_heads, hd)
            self._qsink = _alloc(chunk * nh * hd, np.float32)
            return
        cap = max(lay.capacity for lay in self.layers)
        rows = max(sp.n_heads // sp.n_kv for sp in self.specs) * chunk
        keys = max(sp.sinks for sp in self.specs) + cap + chunk
        # scratch shared by all layers: gathered keys/values/positions, scores, output
        self._kall = _alloc((n_kv, keys, hd), np.float32)  # (n_kv, S + cap + chunk, hd)
        self._vall = _alloc((n_kv, keys, hd), np.float32)
        self._pall = np.full(keys, -1, np.int64)
        self._scores = _alloc(n_kv * rows * keys, np.float32)  # viewed as (n_kv, n_rep*T, n_keys)
        self._out = _alloc(n_kv * rows * hd, np.float32)  # viewed as (n_kv, n_rep*T, hd)

    def _init_counters(self) -> None:
        self.seen = [0] * len(self.layers)  # tokens written per layer (next absolute position)
        self.length = 0  # tokens of the sequence so far (the models' cache protocol: length / advance)

    def advance(self, n: int) -> None:
        """All layers have attended `n` more tokens (the model's forward calls this)."""
        self.length += n

    @staticmethod
    def nbytes_for(specs: Sequence[LayerSpec], bits: int = 16, group: int = kvq.DEFAULT_GROUP, chunk: int = 64,
                   native: bool = True) -> int:  # fmt: skip
        """Bytes a cache with these specs allocates (without building it); `native` as the constructor's."""
        total = 0
        for sp in specs:
            fb = 4 if bits == 32 else 2
            total += 2 * sp.n_kv * sp.sinks * sp.head_dim * fb + 8 * sp.sinks
            if bits >= 16:  # + the shifted sink keys in the [sinks | window] block
                total += sp.n_kv * sp.sinks * sp.head_dim * (fb + 4)  # and their float32 scratch
                total += 2 * sp.n_kv * sp.window * sp.head_dim * fb + 8 * sp.window
            else:
                nb = -(-sp.window // group)
                total += 2 * sp.n_kv * group * sp.head_dim * 2 + 8 * group
                total += nb * kvq.key_group_nbytes(sp.n_kv, group, sp.head_dim, bits)
                total += nb * kvq.value_nbytes(sp.n_kv, group, sp.head_dim, bits, min(kvq.DEFAULT_GROUP, sp.head_dim))
                total += 8 * nb
        n_kv = max(sp.n_kv for sp in specs)
        hd = max(sp.head_dim for sp in specs)
        if native and bits <= 16 and _kernels_load() and group <= 64 and all(
                sp.sinks <= 64 and sp.head_dim * bits % 8 == 0 for sp in specs):  # fmt: skip
            return total + chunk * max(sp.n_heads for sp in specs) * hd * 4
        caps = [sp.window if bits >= 16 else (-(-sp.window // group) + 1) * group for sp in specs]
        cap = max(caps)
        rows = max(sp.n_heads // sp.n_kv for sp in specs) * chunk
        keys = max(sp.sinks for sp in specs) + cap + chunk
        total += 2 * n_kv * keys * hd * 4 + 8 * keys + n_kv * rows * keys * 4 + n_kv * rows * hd * 4
        return total

    @property
    def nbytes(self) -> int:
        """Bytes held by the cache: every layer's buffers plus the shared scratch."""
        own = sum(lay.nbytes() for lay in self.layers)
        names = ("_qsink",) if self.native else ("_kall", "_vall", "_pall", "_scores", "_out")
        return own + sum(getattr(self, n).nbytes for n in names)

    def reset(self) -> None:
        """Start a new conversation (keeps all buffers)."""
        for lay in self.layers:
            lay.reset()
        self._init_counters()

    def attend(
        self,
        layer: int,
        q: np.ndarray,
        k: np.ndarray,
        v: np.ndarray,
        rope: Rope | None,
        pos: np.ndarray | int,
        scale: float | None = None,
        softcap: float | None = None,
    ) -> np.ndarray:
        """Causal attention of a new block over sinks + window + itself, then store the block.

        q: (n_heads, T, hd) un-rotated; k, v: (n_kv, T, hd), k un-rotated; pos: (T,) absolute
        consecutive positions (or the first one as int). rope(x, pos) rotates; None = no RoPE.
        Returns (n_heads, T, hd) float32.
        """
        t = q.shape[1]
        pos = np.arange(pos, pos + t, dtype=np.int64) if np.isscalar(pos) else np.asarray(pos, np.int64)
        out = np.empty(q.shape, np.float32)
        s = self.specs[layer].sinks
        cuts = {0, t, *range(0, t, self.chunk)}
        if pos[0] < s < pos[-1] + 1:  # a block holding sink positions never reaches past them
            cuts.add(int(s - pos[0]))
        cuts = sorted(cuts)
        for c0, c1 in zip(cuts[:-1], cuts[1:], strict=False):
            out[:, c0:c1] = self._attend_chunk(
                layer, q[:, c0:c1], k[:, c0:c1], v[:, c0:c1], rope, pos[c0:c1], scale, softcap
            )
        return out

    def attend_rows(self, layer: int, q: np.ndarray, k: np.ndarray, v: np.ndarray, tables, pos: np.ndarray,
                    scale: float | None = None, softcap: float | None = None) -> np.ndarray:
        """:meth:`attend` for native caches on the block as the projections give it, with the same floats.

        q (T, n_heads, hd), k, v (T, n_kv, hd) float32 C-contiguous, un-rotated; q and k are rotated in place (C,
        ``er_rope_rows``) by the tables ``tables(pos) -> (cos, sin)`` (T, hd/2) (None: no RoPE). pos: (T,)
        consecutive absolute positions. Returns (T, n_heads, hd) — the layout the output projection reads, so the
        block makes no transposed copies of q or of the output."""
        from edgerun.kernels import ops

        if not self.native:
            raise ValueError("attend_rows needs a native cache")
        t = q.shape[0]
        pos = np.asarray(pos, np.int64)
        lay = self.layers[layer]
        sp = lay.spec
        s, w = sp.sinks, sp.window
        scale = 1.0 / math.sqrt(sp.head_dim) if scale is None else scale
        out = np.empty(q.shape, np.float32)
        cos, sin = (None, None) if tables is None else tables(pos)
        cuts = {0, t, *range(0, t, self.chunk)}
        if pos[0] < s < pos[-1] + 1:  # a block holding sink positions never reaches past them
            cuts.add(int(s - pos[0]))
        cuts = sorted(cuts)
        c = lay.kivi(self._qsink)
        for c0, c1 in zip(cuts[:-1], cuts[1:], strict=False):
            p = pos[c0:c1]
            qc, kc = q[c0:c1], k[c0:c1]
            qs = None
            if s and tables is not None and p[-1] > s + w - 1:  # sinks: the query at its in-cache position
                qs = self._qsink[: qc.size].reshape(qc.shape)
                qs[...] = qc
                ops.rope_rows(qs, *tables(np.minimum(p, s + w - 1)))
            if tables is not None:
                ops.rope_rows(qc, cos[c0:c1], sin[c0:c1])
                ops.rope_rows(kc, cos[c0:c1], sin[c0:c1])
            kr = np.ascontiguousarray(kc.transpose(1, 0, 2))  # (n_kv, T, hd)
            vr = np.ascontiguousarray(v[c0:c1].transpose(1, 0, 2))
            out[c0:c1] = ops.kivi_attention(c, qc, kr, vr, int(p[0]), scale, softcap or 0.0, q_sink=qs)
            if lay.quant:
                ops.kivi_store(c, kr, vr, int(p[0]))
            else:
                lay.write(kr, vr, p)
            self.seen[layer] = int(p[-1]) + 1
        return out

    def kivi(self, layer: int):
        """The C view (``er_kivi``) of a KIVI layer's buffers, for the fused decode (native caches only)."""
        return self.layers[layer].kivi(self._qsink)

    def _attend_native(self, li, q, k, v, rope, pos, scale, softcap):
        """KIVI / float16 layouts in C: the block attends over the cache + itself (er_kivi_attention), then is
        stored."""
        from edgerun.kernels import ops

        lay = self.layers[li]
        sp = lay.spec
        s, w = sp.sinks, sp.window
        scale = 1.0 / math.sqrt(sp.head_dim) if scale is None else scale
        ident = rope is None
        q = q.astype(np.float32, copy=False)
        qr = q if ident else rope(q, pos)  # (n_heads, T, hd)
        kr = np.ascontiguousarray(k if ident else rope(k, pos), np.float32)  # (n_kv, T, hd)
        v = np.ascontiguousarray(v, np.float32)
        qt = np.ascontiguousarray(qr.transpose(1, 0, 2))  # (T, n_heads, hd)
        qs = None
        if s and not ident and pos[-1] > s + w - 1:  # sinks: the query at its StreamingLLM in-cache position
            qs = self._qsink[: qt.size].reshape(qt.shape)
            qs[...] = rope(q, np.minimum(pos, s + w - 1)).transpose(1, 0, 2)
        c = lay.kivi(self._qsink)
        out = ops.kivi_attention(c, qt, kr, v, int(pos[0]), scale, softcap or 0.0, q_sink=qs)  # (T, n_heads, hd)
        if lay.quant:
            ops.kivi_store(c, kr, v, int(pos[0]))
        else:  # float16 ring: numpy store (a few rows per block)
            lay.write(kr, v, pos)
        self.seen[li] = int(pos[-1]) + 1
        return out.transpose(1, 0, 2)

    def _attend_chunk(self, li, q, k, v, rope, pos, scale, softcap):
        if self.native:
            return self._attend_native(li, q, k, v, rope, pos, scale, softcap)
        lay = self.layers[li]
        sp = lay.spec
        n_kv, hd, s, w = sp.n_kv, sp.head_dim, sp.sinks, sp.window
        rep = sp.n_heads // n_kv
        t = q.shape[1]
        scale = 1.0 / math.sqrt(hd) if scale is None else scale
        ident = rope is None
        q = q.astype(np.float32, copy=False)
        qr = q if ident else rope(q, pos)  # (n_heads, T, hd)
        kr = (k if ident else rope(k, pos)).astype(np.float32, copy=False)  # (n_kv, T, hd)
        v = v.astype(np.float32, copy=False)
        qg = qr.reshape(n_kv, rep * t, hd)  # head h -> kv head h // rep
        pq = np.tile(pos, rep)  # (rep*T,) query position of each row

        kall, vall, pall = self._kall, self._vall, self._pall
        o = 0
        if s:  # columns [0, S): sinks
            np.copyto(kall[:n_kv, :s, :hd], lay.sink_k, casting="unsafe")
            np.copyto(vall[:n_kv, :s, :hd], lay.sink_v, casting="unsafe")
            pall[:s] = lay.sink_pos
            o = s
        o = lay.gather(kall[:n_kv, :, :hd], vall[:n_kv, :, :hd], pall, o)  # then the window
        kall[:n_kv, o : o + t, :hd] = kr  # then the block itself
        vall[:n_kv, o : o + t, :hd] = v
        pall[o : o + t] = pos
        n = o + t
        kk, vv, pp = kall[:n_kv, :n, :hd], vall[:n_kv, :n, :hd], pall[:n]
        sc = self._scores[: n_kv * rep * t * n].reshape(n_kv, rep * t, n)  # (n_kv, rep*T, keys)
        np.matmul(qg, kk.transpose(0, 2, 1), out=sc)
        if s and not ident and pos[-1] > s + w - 1:  # sinks: the query at its StreamingLLM in-cache position
            qs = rope(q, np.minimum(pos, s + w - 1)).reshape(n_kv, rep * t, hd)
            sc[:, :, :s] = qs @ kk[:, :s].transpose(0, 2, 1)
        sc *= scale
        if softcap:
            np.tanh(sc / softcap, out=sc)
            sc *= softcap
        # key a visible to query p: a <= p and (a is a sink or p - W < a); empty slots have a = -1
        ok = (pp[None, :] >= 0) & (pp[None, :] <= pq[:, None]) & ((pp[None, :] < s) | (pp[None, :] > pq[:, None] - w))
        sc += np.where(ok, np.float32(0), np.float32(-np.inf))[None]
        sc -= sc.max(axis=-1, keepdims=True)
        np.exp(sc, out=sc)
        sc /= sc.sum(axis=-1, keepdims=True)
        out = self._out[: n_kv * rep * t * hd].reshape(n_kv, rep * t, hd)
        np.matmul(sc, vv, out=out)
        lay.write(kr, v, pos)
        self.seen[li] = int(pos[-1]) + 1
        return out.reshape(sp.n_heads, t, hd).copy()
