"""A language model held inside a RAM budget: the glue between the memory plan and the model.

``load_budgeted(path, ram="300MB", kv_window=..., kv_sinks=..., kv_bits=...)`` (what
``edgerun.load(..., ram=...)`` calls) measures the model (:func:`footprint`), plans it
(:func:`edgerun.runtime.memory.plan_memory`), and then runs the unchanged numpy model with

- weights from :class:`BudgetWeights`: float32 copies when the plan is "dense"; otherwise each
  matrix is a :class:`LazyMatrix` that stays in its stored format and is multiplied in row
  chunks through one preallocated float32 scratch (``x @ W.T`` works unchanged); decoder layers
  of a "streamed" plan come from the :class:`LayerStreamer` buffers (prefetched, released behind);
  the big embedding / tied head of a plan with ``stream_globals`` is read through the file map in
  chunks and dropped from RSS after each chunk;
- the KV cache :class:`SinkWindowKVCache` sized by the plan (sinks + window, kv_bits);
- prefill in chunks of ``plan.prefill_chunk`` tokens, so activations never grow with the prompt.
"""

from __future__ import annotations

import mmap
import os
import zlib

import numpy as np

from ..export.artifact import Artifact
from ..export.errors import CorruptFileError
from .api import LLM, resolve_model
from .kv_cache import SinkWindowKVCache
from .layer_stream import LayerStreamer
from .memory import AttnLayer, MemoryPlan, ModelFootprint, kv_specs, plan_memory, rss_bytes

ROW_CHUNK_BYTES = 4 << 20  # float32 scratch for one chunk of matrix rows
GLOBAL_STREAM_MIN = 16 << 20  # globals larger than this may be streamed (embedding / tied head)


def _f32_nbytes(entry: dict) -> int:
    return int(np.prod(entry["shape"])) * 4


def _stored_nbytes(entry: dict) -> int:
    return sum(p["nbytes"] for p in entry["parts"].values())


def footprint(artifact: Artifact, args, model, overhead: int = 0, chunk: int = 64) -> ModelFootprint:
    """Measure what the model needs from its manifest: layer byte ranges, globals, KV shapes, scratch."""
    tensors = artifact.tensors
    layers = artifact.manifest["layers"]
    glob = {n: e for n, e in tensors.items() if e.get("layer") is None}
    global_bytes = sum(_stored_nbytes(e) for e in glob.values())
    big = [e for e in glob.values() if len(e["shape"]) == 2 and _stored_nbytes(e) > GLOBAL_STREAM_MIN]
    stream = sum(_stored_nbytes(e) for e in big)
    dense_layers = [0] * len(layers)
    for e in tensors.values():
        if e.get("layer") is not None:
            dense_layers[e["layer"]] += _f32_nbytes(e)
    a = args
    attn = [AttnLayer(a.n_heads, a.n_kv_heads, a.head_dim, model.window(i)) for i in range(a.n_layers)]
    width = max(a.dim, a.ffn_dim, a.n_heads * a.head_dim)
    per_token = 4 * (6 * a.dim + 4 * a.ffn_dim + 4 * a.n_heads * a.head_dim + 4 * a.n_kv_heads * a.head_dim)
    fixed = ROW_CHUNK_BYTES + 4 * width * 16 + 4 * a.vocab_size * 3  # row scratch, logits (+ sampling copies)
    return ModelFootprint(
        layer_bytes=[g["nbytes"] for g in layers],
        global_bytes=global_bytes,
        attn=attn,
        act_bytes_per_token=per_token,
        act_fixed=fixed,
        overhead=overhead,
        layer_dense_bytes=dense_layers,
        global_dense_bytes=sum(_f32_nbytes(e) for e in glob.values()),
        context_length=a.context_length,
        global_stream_bytes=stream,
    )


class LazyMatrix:
    """A weight matrix (out, in) kept in its stored form; ``x @ W.T`` and ``W[rows]`` dequantize in chunks.

    numpy defers ``x @ W.T`` to ``__rmatmul__`` because ``__array_ufunc__ = None``.
    """

    __array_ufunc__ = None

    def __init__(self, owner: BudgetWeights, name: str, entry: dict):
        self.owner, self.name, self.entry = owner, name, entry
        self.shape = tuple(entry["shape"])
        self.dtype = np.float32

    @property
    def T(self) -> _Transposed:  # noqa: N802 - numpy spelling
        return _Transposed(self)

    def __getitem__(self, rows) -> np.ndarray:
        """Rows (e.g. an embedding lookup) as float32."""
        idx = np.asarray(rows)
        out = np.stack([self.owner.rows(self, int(r), int(r) + 1)[0].copy() for r in idx.reshape(-1)])
        return out.reshape(*idx.shape, self.shape[1])

    def matmul_t(self, x: np.ndarray) -> np.ndarray:
        """x (T, in) @ W.T -> (T, out): the C kernel on the stored f16/f32 bytes, or numpy on row chunks."""
        n_out, n_in = self.shape
        x = np.asarray(x, np.float32)
        kern = _kernels()
        if kern is not None:
            return self.owner.kernel_matmul(self, np.ascontiguousarray(x.reshape(-1, n_in)), kern).reshape(
                *x.shape[:-1], n_out
            )
        out = np.empty((*x.shape[:-1], n_out), np.float32)
        step = max(1, min(n_out, ROW_CHUNK_BYTES // (4 * n_in)))
        for r0 in range(0, n_out, step):
            r1 = min(n_out, r0 + step)
            out[..., r0:r1] = x @ self.owner.rows(self, r0, r1).T
        self.owner.done(self)
        return out


_KERNELS: list = []


def _kernels():
    """edgerun.kernels when its C library loads, else None (numpy fallback)."""
    if not _KERNELS:
        try:
            from .. import kernels

            kernels.get_num_threads()
            _KERNELS.append(kernels)
        except Exception:  # noqa: BLE001 - no compiled library: numpy path
            _KERNELS.append(None)
    return _KERNELS[0]


class _Transposed:
    __array_ufunc__ = None

    def __init__(self, m: LazyMatrix):
        self.m = m
        self.shape = m.shape[::-1]

    def __rmatmul__(self, x):
        return self.m.matmul_t(x)


class BudgetWeights:
    """The model's `weights(name)` under a plan: dense float32, lazy stored-format, or streamed layers."""

    def __init__(self, artifact: Artifact, plan: MemoryPlan):
        self.artifact, self.plan = artifact, plan
        self.tensors = artifact.tensors
        self._fd = os.open(artifact.weights_path, os.O_RDONLY)
        size = os.path.getsize(artifact.weights_path)
        self._map = mmap.mmap(self._fd, size, prot=mmap.PROT_READ) if size else None
        self._scratch = np.empty(ROW_CHUNK_BYTES // 4, np.float32)  # the one dequantization scratch
        self._scratch.fill(0)  # touched now: counted from load, never grown later
        self._verified: set[str] = set()
        self.streamer = None
        if plan.weights == "streamed":
            self.streamer = LayerStreamer(
                artifact.weights_path, artifact.manifest["layers"], plan.n_buffers, plan.pinned,
                cache=getattr(plan, "read_cache", "drop"),
            )  # fmt: skip
        self._current: int | None = None  # streamed layer whose buffer is in use

    def __call__(self, name: str):
        e = self.tensors.get(name)
        if e is None:
            raise CorruptFileError(f"{self.artifact.path}/manifest.json: tensor {name!r} is missing")
        if self.plan.weights == "dense" or len(e["shape"]) != 2:
            return self.artifact.tensor(name, np.float32)  # vectors: small float32 copies
        return LazyMatrix(self, name, e)

    def has(self, name: str) -> bool:
        return name in self.tensors

    def _layer_is_streamed(self, layer) -> bool:
        return self.streamer is not None and layer is not None and layer not in self.streamer._resident

    def _data(self, m: LazyMatrix) -> np.ndarray:
        """The stored data part of a matrix: a view of the streamer buffer or of the file map."""
        return self._part(m, "data")

    def _part(self, m: LazyMatrix, part: str) -> np.ndarray:
        """One stored part of a matrix (data / scales / zero_points), checksum-verified on first use."""
        info = m.entry["parts"][part]
        layer = m.entry.get("layer")
        if self._current is not None and layer != self._current:
            self.streamer.release(self._current)  # leaving a streamed layer: free its buffer
            self._current = None
        if self.streamer is not None and layer is not None:  # pinned or streamed: the streamer's buffers
            arr = self.streamer.array(layer, info["offset"], info["dtype"], info["shape"])
            if self._layer_is_streamed(layer):
                self._current = layer
        else:
            n = info["nbytes"]
            arr = np.frombuffer(self._map, np.uint8, n, info["offset"]).view(info["dtype"]).reshape(info["shape"])
        key = f"{m.name}:{part}"
        if key not in self._verified:
            if self._layer_is_streamed(layer) or layer is not None or not self.plan.stream_globals:
                crc = zlib.crc32(arr.view(np.uint8))
            else:  # a streamed global: checksum it through a small buffer, not the map (RSS stays flat)
                crc = self._file_crc(info["offset"], info["nbytes"])
            if crc != info["crc32"]:
                raise CorruptFileError(
                    f"{self.artifact.weights_path}: checksum mismatch in tensor {m.name} at byte {info['offset']}; "
                    "the file is corrupt, export again"
                )
            self._verified.add(key)
        return arr

    def quantized(self, m: LazyMatrix, r0: int = 0, r1: int | None = None):
        """Rows r0:r1 of a block-quantized matrix as a QuantizedTensor of views (no copy)."""
        from ..quant.formats import QuantizedTensor

        e, q = m.entry, m.entry.get("quant") or {}
        r1 = m.shape[0] if r1 is None else r1
        arrs = {p: self._part(m, p) for p in e["parts"]}
        zp = arrs.get("zero_points")
        zp = None if zp is None else zp[r0:r1]
        shape = (r1 - r0, m.shape[1])
        return QuantizedTensor(e["format"], shape, int(q["block_size"]), int(q["bits"]), arrs["data"][r0:r1],
                               arrs["scales"][r0:r1], zp)  # fmt: skip

    def kernel_matmul(self, m: LazyMatrix, x: np.ndarray, kern) -> np.ndarray:
        """x (M, in) float32 @ W.T with the C kernel reading W's stored bytes (streamed globals: in row chunks)."""
        quant = m.entry["format"] not in ("f16", "f32")
        n_out, n_in = m.shape
        if not (self.plan.stream_globals and m.entry.get("layer") is None and self._map is not None):
            return kern.matmul(kern.Weight(self.quantized(m) if quant else self._data(m)), x)
        out = np.empty((x.shape[0], n_out), np.float32)
        row_bytes = sum(p["nbytes"] for p in m.entry["parts"].values()) / n_out
        step = max(1, int(ROW_CHUNK_BYTES // row_bytes))
        for r0 in range(0, n_out, step):
            r1 = min(n_out, r0 + step)
            w = self.quantized(m, r0, r1) if quant else self._data(m)[r0:r1]
            out[:, r0:r1] = kern.matmul(kern.Weight(w), x)
            self._drop_rows(m, r0, r1)
        return out

    def _drop_rows(self, m: LazyMatrix, r0: int, r1: int) -> None:
        """Drop the file pages of rows r0:r1 (every part) from this process's RSS (page cache untouched)."""
        n_out = m.shape[0]
        for info in m.entry["parts"].values():
            per = info["nbytes"] // n_out
            lo = info["offset"] + r0 * per
            lo_al = lo - lo % mmap.PAGESIZE
            self._map.madvise(mmap.MADV_DONTNEED, lo_al, info["offset"] + r1 * per - lo_al)

    def _file_crc(self, offset: int, nbytes: int) -> int:
        crc, buf = 0, bytearray(1 << 20)
        mv = memoryview(buf)
        done = 0
        while done < nbytes:
            got = os.preadv(self._fd, [mv[: min(len(buf), nbytes - done)]], offset + done)
            if got <= 0:
                break
            crc = zlib.crc32(mv[:got], crc)
            done += got
        return crc

    def rows(self, m: LazyMatrix, r0: int, r1: int) -> np.ndarray:
        """Rows r0:r1 of matrix m as float32 (a view of the shared scratch, valid until the next call)."""
        fmt = m.entry["format"]
        n_in = m.shape[1]
        if fmt in ("f16", "f32"):
            src = self._data(m)[r0:r1]
            dst = self._scratch[: (r1 - r0) * n_in].reshape(r1 - r0, n_in)
            np.copyto(dst, src, casting="unsafe")
        else:  # block-quantized (MatMulNBits layout): dequantize only these rows
            from ..quant.formats import get_format

            dst = get_format(fmt).dequantize(self.quantized(m, r0, r1)).astype(np.float32, copy=False)
        if self.plan.stream_globals and m.entry.get("layer") is None and self._map is not None:
            self._drop_rows(m, r0, r1)
        return dst

    def done(self, m: LazyMatrix) -> None:
        """A matmul finished (hook for future per-matrix release)."""

    def close(self) -> None:
        """Stop the streamer and unmap the file."""
        if self.streamer is not None:
            self.streamer.close()
        if self._map is not None:
            try:
                self._map.close()
            except BufferError:  # views still alive; the map goes with them
                pass
        os.close(self._fd)


class BudgetLLM(LLM):
    """An :class:`LLM` whose weights, KV cache and scratch live inside `plan.budget` (see module doc)."""

    def __init__(self, artifact: Artifact, threads: int | None = None, ram=None, kv_window=None, kv_sinks=None,
                 kv_bits=None, prefill_chunk: int = 64, read_cache: str = "drop",
                 count_tokenizer: bool = True):  # fmt: skip
        self.baseline_rss = rss_bytes()
        model_cls = self._open(artifact, threads)
        probe = model_cls(self.args, None)  # only for window(layer): no weights touched
        self.tokenizer_rss = max(0, rss_bytes() - self.baseline_rss)  # measured, e.g. ~400 MB for Gemma-3's
        if not count_tokenizer:  # budget the model alone (weights, KV, scratch); the tokenizer is reported
            self.baseline_rss = rss_bytes()
        overhead = (self.tokenizer_rss if count_tokenizer else 0) + (4 << 20)  # + bookkeeping
        self.footprint = footprint(artifact, self.args, probe, overhead, prefill_chunk)
        self.plan = plan_memory(ram, self.footprint, kv_bits=16 if kv_bits is None else kv_bits,
                                kv_window=kv_window, kv_sinks=kv_sinks, prefill_chunk=prefill_chunk)  # fmt: skip
        self.plan.read_cache = read_cache
        if threads:
            kern = _kernels()
            if kern is not None:
                kern.set_num_threads(int(threads))
        self.weights = BudgetWeights(artifact, self.plan)
        self.model = model_cls(self.args, self.weights)
        if self.plan.weights == "dense":
            self.model.load_all(artifact.tensors)
        else:  # vectors now (small), matrices stay lazy
            self.model.load_all(n for n, e in artifact.tensors.items() if len(e["shape"]) != 2)

    def new_cache(self) -> SinkWindowKVCache:
        """A preallocated sink + window cache sized by the plan."""
        p = self.plan
        return SinkWindowKVCache(kv_specs(self.footprint, p.kv_window, p.kv_sinks), bits=p.kv_bits,
                                 chunk=p.prefill_chunk)  # fmt: skip

    def forward_chunked(self, ids, cache, last_only: bool = True):
        """Run ids through the model in chunks of `plan.prefill_chunk`; logits of the last (or every) position."""
        ids = np.asarray(ids, dtype=np.int64)
        c = self.plan.prefill_chunk
        outs = []
        for i in range(0, len(ids), c):
            lg = self.model.forward(ids[i : i + c], cache, last_only=last_only)
            outs.append(lg)
        return outs[-1] if last_only else np.concatenate(outs, axis=0)

    def prefill(self, ids: list[int], cache) -> np.ndarray:
        """Process prompt ids into `cache` chunk by chunk; return the last position's logits (vocab,)."""
        return self.forward_chunked(ids, cache, last_only=True)[-1]

    def logits(self, token_ids) -> np.ndarray:
        """Logits (T, vocab) of every position (fresh cache, chunked)."""
        return self.forward_chunked(token_ids, self.new_cache(), last_only=False)

    def _ids(self, prompt):
        ids = self.tokenizer.encode(prompt) if isinstance(prompt, str) else list(prompt)
        if not ids:
            from ..export.errors import EdgerunError

            raise EdgerunError("the prompt is empty; give some text to continue")
        return ids  # no context limit: the window slides

    def stream(self, prompt, max_tokens: int = 128, **kw):
        """As :meth:`LLM.stream`, but any length: the sink + window cache never fills up."""
        ctx = self.args.context_length
        self.args.context_length = 1 << 62  # the base loop caps max_tokens by the context; the window slides
        try:
            yield from super().stream(prompt, max_tokens=max_tokens, **kw)
        finally:
            self.args.context_length = ctx

    def memory_report(self) -> dict:
        """Plan and measured memory: budget, plan total, baseline, current RSS and growth."""
        from .memory import peak_rss_bytes

        return {
            "budget": self.plan.budget,
            "plan": self.plan.describe(),
            "plan_bytes": self.plan.total,
            "baseline_rss": self.baseline_rss,
            "rss": rss_bytes(),
            "peak_rss": peak_rss_bytes(),
            "model_rss": rss_bytes() - self.baseline_rss,
            "tokenizer_rss": self.tokenizer_rss,
        }

    def close(self) -> None:
        """Release the streamer thread and file map."""
        self.weights.close()


def load_budgeted(path=None, ram=None, kv_window=None, kv_sinks=None, kv_bits=None, threads=None, progress=None,
                  **kw) -> BudgetLLM:  # fmt: skip
    """Load a model inside a RAM budget (what ``edgerun.load(path, ram=...)`` does)."""
    return BudgetLLM(Artifact(resolve_model(path, progress)), threads=threads, ram=ram, kv_window=kv_window,
                     kv_sinks=kv_sinks, kv_bits=kv_bits, **kw)  # fmt: skip
