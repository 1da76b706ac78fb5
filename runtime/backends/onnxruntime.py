"""The onnxruntime backend: the artifact's `model.onnx` (weights read from weights.bin as external data).

The graph takes the KV cache as explicit inputs and returns the grown cache (export/onnx_graph.py);
:class:`OrtKVCache` holds those arrays between calls. A missing `model.onnx` (an artifact exported
before ONNX export existed, or with `onnx=False`) is built on first load.
"""

from __future__ import annotations

import zlib

import numpy as np
from edgerun.errors import CorruptFileError, EdgerunError
from edgerun.export.artifact import Artifact


class OrtKVCache:
    """KV arrays for one sequence: per layer k, v [1, n_kv, length, head_dim] float32 (after RoPE)."""

    def __init__(self, n_layers: int, n_kv_heads: int, head_dim: int, limit: int):
        self.n_layers, self.n_kv_heads, self.head_dim, self.limit = n_layers, n_kv_heads, head_dim, limit
        self.reset()

    def reset(self) -> None:
        empty = np.zeros((1, self.n_kv_heads, 0, self.head_dim), np.float32)
        self.k = [empty] * self.n_layers
        self.v = [empty] * self.n_layers
        self.length = 0

    def truncate(self, n: int) -> None:
        """Keep the first n positions: prompt-prefix reuse."""
        n = min(self.length, n)
        self.k = [a[:, :, :n] for a in self.k]
        self.v = [a[:, :, :n] for a in self.v]
        self.length = n


def _return_freed_memory() -> None:
    """Give the heap onnxruntime freed while building the session back to the OS (glibc ``malloc_trim``).

    Folding the in-graph dequantization of GGUF block weights (export/onnx_blocks.py) allocates ~17 bytes
    per weight of intermediates that are freed at the end of session creation but stay in RSS otherwise
    (SmolLM2 Q4_1: 2332 MB -> 555 MB after the trim). A no-op where there is no glibc."""
    import ctypes
    import ctypes.util

    name = ctypes.util.find_library("c")
    try:
        trim = ctypes.CDLL(name).malloc_trim if name else None
    except (OSError, AttributeError):
        trim = None
    if trim is not None:
        trim(0)


class OrtModel:
    """Forward of a decoder-only model with onnxruntime; same interface as the reference Transformer."""

    def __init__(self, artifact: Artifact, ref, threads: int | None = None):
        import onnxruntime as ort
        from edgerun.export.onnx_graph import ONNX_FILE, build_onnx

        self.artifact, self.ref, self.args = artifact, ref, ref.args
        path = artifact.path / ONNX_FILE
        if not path.exists():
            try:
                build_onnx(artifact.path)
            except OSError as e:
                raise EdgerunError(f"{path}: cannot write the ONNX graph ({e}); export the model to a "
                                   "writable folder") from None
            artifact.manifest = Artifact(artifact.path).manifest
        self._check(path)
        so = ort.SessionOptions()
        if threads is not None:
            so.intra_op_num_threads = int(threads)
        so.inter_op_num_threads = 1
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        self.session = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
        _return_freed_memory()
        n = self.args.n_layers
        self._out_names = ["logits"] + [f"present_{t}_{i}" for i in range(n) for t in ("key", "value")]

    def _check(self, path) -> None:
        rec = self.artifact.manifest.get("files", {}).get(path.name)
        if rec is not None and zlib.crc32(path.read_bytes()) != rec["crc32"]:
            raise CorruptFileError(f"{path}: checksum mismatch; rebuild it (delete the file and load again)")

    def window(self, layer: int):
        return self.ref.window(layer)

    def new_cache(self) -> OrtKVCache:
        a = self.args
        return OrtKVCache(a.n_layers, a.n_kv_heads, a.head_dim, a.context_length)

    def forward(self, tokens, cache: OrtKVCache, last_only: bool = False) -> np.ndarray:
        """Run tokens (T,) at positions cache.length..; returns logits (T, vocab) or (1, vocab)."""
        tokens = np.asarray(tokens, dtype=np.int64).reshape(1, -1)
        T = tokens.shape[1]
        if cache.length + T > cache.limit:
            raise EdgerunError(f"the conversation needs {cache.length + T} positions; this model's context "
                               f"is {cache.limit}")
        feeds = {"input_ids": tokens,
                 "position_ids": np.arange(cache.length, cache.length + T, dtype=np.int64)[None, :]}
        for i in range(self.args.n_layers):
            feeds[f"past_key_{i}"] = cache.k[i]
            feeds[f"past_value_{i}"] = cache.v[i]
        out = self.session.run(self._out_names, feeds)
        cache.k = out[1::2]
        cache.v = out[2::2]
        cache.length += T
        logits = out[0][0]  # (T, vocab)
        return logits[-1:] if last_only else logits
