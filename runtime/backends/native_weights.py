"""Where the native backend's weights live: the weights.bin map, or the layer streamer's fixed buffers.

Every matrix becomes a :class:`edgerun.kernels.Weight` over read-only views of the stored bytes
(quantized parts or f16/f32 data, never copied); vectors (norms, biases) are small float32 copies read
with pread (never through the map: see _vector).

```
no plan / plan "resident":  every layer    -> views of the weights.bin map (pages counted once touched)
plan "streamed":            pinned layers  -> views of the streamer's resident buffers (read once)
                            other layers   -> views of one of k prefetch buffers, valid between
                                              layer(i) and release(i); Weights cached per (layer, buffer)
plan.stream_globals:        the embedding rows and the head are read with pread, the head row chunk by
                            row chunk into one fixed buffer (no map pages held)
```

Checksums: each tensor part is verified once, on first use (streamed layers: in the buffer the
first time they are read; streamed globals: through a small read buffer, so RSS stays flat).
"""

from __future__ import annotations

import mmap
import os
import zlib

import numpy as np
from edgerun.errors import CorruptFileError
from edgerun.export.artifact import Artifact
from edgerun.quant.parts import dequantize_rows, quantized_from_parts

PLAIN = ("f16", "f32")
LAYER_MATRICES = {
    "wq": "attn_q.weight", "wk": "attn_k.weight", "wv": "attn_v.weight", "wo": "attn_output.weight",
    "wg": "ffn_gate.weight", "wu": "ffn_up.weight", "wd": "ffn_down.weight",
}  # fmt: skip
ROW_CHUNK_BYTES = 4 << 20  # bytes of a streamed global read per matmul chunk


def _addr(a) -> int:
    return np.frombuffer(a, np.uint8, 1).__array_interface__["data"][0]


def _weight(entry: dict, parts: dict[str, np.ndarray]):
    from edgerun import kernels

    if entry["format"] in PLAIN:
        return kernels.Weight(parts["data"])
    q = quantized_from_parts(entry, parts)
    return _f16_fallback(q) or kernels.Weight(q)


def _kernel_formats() -> frozenset:
    from edgerun.kernels import ops

    global _KERNEL_FORMATS
    if _KERNEL_FORMATS is None:
        _KERNEL_FORMATS = frozenset(ops.supported_formats())
    return _KERNEL_FORMATS


_KERNEL_FORMATS = None


def _f16_fallback(q):
    """A dequantized f16 ``kernels.Weight`` (a private copy: 2 bytes per weight) for a GGUF block format the
    compiled library has no kernel for (a library built without it); None, the normal case, when the kernels
    read the format as stored."""
    from edgerun import kernels
    from edgerun.quant import BLOCK_TYPES

    if q.format not in BLOCK_TYPES or q.format in _kernel_formats():
        return None
    return kernels.Weight(q.dequantize().astype(np.float16))


def copy_nbytes(entry: dict) -> int:
    """Bytes of the private copy the native backend makes of a tensor it cannot run as stored (the f16
    fallback above: 2 per weight), else 0. The memory plan counts these (runtime/llm/model.py footprint)."""
    from edgerun.quant import BLOCK_TYPES

    if entry["format"] in BLOCK_TYPES and entry["format"] not in _kernel_formats():
        return 2 * int(np.prod(entry["shape"]))
    return 0


class WeightSource:
    """The native model's matrices and vectors under an optional memory plan (see the module doc).

    layer(i) -> {"wq", "wk", "wv", "wo", "wg", "wu", "wd"} as kernels.Weight; call release(i) after
    the layer's compute (a no-op for resident layers). Streamed layers must be asked in order.
    """

    def __init__(self, artifact: Artifact, n_layers: int, plan=None, read_cache: str = "drop"):
        self.artifact = artifact
        self.tensors = artifact.tensors
        self.n_layers = n_layers
        self.stream_globals = bool(plan is not None and plan.stream_globals)
        self.streamer = None
        if plan is not None and plan.weights == "streamed":
            from edgerun.runtime.llm.layer_stream import LayerStreamer

            self.streamer = LayerStreamer(artifact.weights_path, artifact.manifest["layers"], plan.n_buffers,
                                          plan.pinned, cache=read_cache)  # fmt: skip
        self._fd = os.open(artifact.weights_path, os.O_RDONLY)
        size = os.path.getsize(artifact.weights_path)
        self._map = mmap.mmap(self._fd, size, prot=mmap.PROT_READ) if size else None
        self._verified: set[str] = set()
        self._globals: dict[str, dict[str, np.ndarray]] = {}  # embedding / head part views, built once
        self._chunk_bufs: dict[str, dict[str, np.ndarray]] = {}  # streamed head: one row-chunk buffer per part
        self._resident: dict[int, dict] = {}
        self._streamed_cache: dict[tuple[int, int], dict] = {}  # (layer, buffer address) -> Weights
        for i in range(n_layers):
            if self.streamer is None:
                self._resident[i] = self._layer_weights(i, self._map_parts)
            elif i in self.streamer.pinned:
                buf = self.streamer.get(i)
                self._resident[i] = self._layer_weights(i, lambda n, b=buf, i=i: self._buffer_parts(n, i, b))
        self.vectors = {n: self._vector(n) for n, e in self.tensors.items() if len(e["shape"]) == 1}

    # --- parts
    def _check(self, name: str, part: str, data, info: dict) -> None:
        key = f"{name}:{part}"
        if key in self._verified:
            return
        crc = zlib.crc32(data) if data is not None else self._file_crc(info["offset"], info["nbytes"])
        if crc != info["crc32"]:
            raise CorruptFileError(
                f"{self.artifact.weights_path}: checksum mismatch in tensor {name} ({part}) at byte "
                f"{info['offset']}; the file is corrupt, export again"
            )
        self._verified.add(key)

    def _map_parts(self, name: str, verify: str = "map") -> dict[str, np.ndarray]:
        """Views of a tensor's parts in the file map (verify: "map" through the map, "file" via pread)."""
        out = {}
        for part, info in self.tensors[name]["parts"].items():
            raw = np.frombuffer(self._map, np.uint8, info["nbytes"], info["offset"])
            self._check(name, part, raw if verify == "map" else None, info)
            out[part] = raw.view(info["dtype"]).reshape(info["shape"])
        return out

    def _buffer_parts(self, name: str, layer: int, buf) -> dict[str, np.ndarray]:
        """Views of a tensor's parts inside the streamer buffer that holds `layer`."""
        base = self.streamer.layers[layer][0]
        out = {}
        for part, info in self.tensors[name]["parts"].items():
            raw = np.frombuffer(buf, np.uint8, info["nbytes"], info["offset"] - base)
            self._check(name, part, raw, info)
            out[part] = raw.view(info["dtype"]).reshape(info["shape"])
        return out

    def _layer_weights(self, i: int, parts_of) -> dict:
        prefix = f"blk.{i}."
        out = {}
        for short, suffix in LAYER_MATRICES.items():
            name = prefix + suffix
            if name not in self.tensors:
                raise CorruptFileError(f"{self.artifact.path}/manifest.json: tensor {name!r} is missing")
            out[short] = _weight(self.tensors[name], parts_of(name))
        out["refs"] = tuple(out[short]._ref for short in LAYER_MATRICES)  # what the decode loop passes to C
        return out

    def _vector(self, name: str) -> np.ndarray:
        """A norm / bias vector as a float32 copy, read with pread: touching it through the map would keep the
        page-cache folio around it mapped (up to 2 MB of a streamed layer per vector where the kernel caches the
        file in large folios), outside the memory plan."""
        info = self.tensors[name]["parts"]["data"]
        raw = np.empty(info["nbytes"], np.uint8)
        mv, done = memoryview(raw), 0
        while done < info["nbytes"]:
            got = os.preadv(self._fd, [mv[done:]], info["offset"] + done)
            if got <= 0:
                raise CorruptFileError(f"{self.artifact.weights_path}: ends inside tensor {name}; export again")
            done += got
        self._check(name, "data", raw, info)
        return raw.view(info["dtype"]).reshape(info["shape"]).astype(np.float32)

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

    # --- layers
    def layer(self, i: int) -> dict:
        """Layer i's matrices as kernels.Weight (streamed: blocks until its buffer is loaded)."""
        w = self._resident.get(i)
        if w is not None:
            return w
        buf = self.streamer.get(i)
        key = (i, _addr(buf))
        w = self._streamed_cache.get(key)
        if w is None:
            w = self._layer_weights(i, lambda n: self._buffer_parts(n, i, buf))
            if any(copy_nbytes(self.tensors[f"blk.{i}.{s}"]) for s in LAYER_MATRICES.values()):
                w["transient"] = True  # holds private copies: nobody keeps it past this layer's use
            else:
                self._streamed_cache[key] = w  # views of the buffer only
        return w

    def release(self, i: int) -> None:
        """Done with layer i: a streamed layer's buffer may be refilled."""
        if i not in self._resident:
            self.streamer.release(i)

    # --- globals
    def global_weight(self, name: str):
        """A resident global matrix (the head when it is not streamed)."""
        return _weight(self.tensors[name], self._global_parts(name))

    def _global_parts(self, name: str) -> dict[str, np.ndarray]:
        """A global tensor's part views, built (and checksummed) once: every token looks them up."""
        parts = self._globals.get(name)
        if parts is None:
            parts = self._globals[name] = self._map_parts(name, verify="file" if self.stream_globals else "map")
        return parts

    def embed_rows(self, name: str, tokens: np.ndarray) -> np.ndarray:
        """Rows `tokens` of the embedding as float32 (T, dim); streamed globals read them with pread.

        (Through the map, each row's page fault also maps its neighbours — hundreds of kB per token
        that would stay in RSS.)"""
        entry = self.tensors[name]
        tokens = np.asarray(tokens, np.int64).reshape(-1)
        parts = self._global_parts(name)
        if not self.stream_globals:
            return dequantize_rows(entry, parts, tokens)
        n_out = entry["shape"][0]
        rows = {}
        for part, info in entry["parts"].items():
            per = info["nbytes"] // n_out
            raw = np.empty((len(tokens), per), np.uint8)
            for j, t in enumerate(tokens):
                os.preadv(self._fd, [memoryview(raw[j])], info["offset"] + int(t) * per)
            rows[part] = raw.view(info["dtype"]).reshape(len(tokens), *info["shape"][1:])
        return dequantize_rows(_rows_entry(entry, len(tokens)), rows, np.arange(len(tokens)))

    def streamed_matmul(self, name: str, x: np.ndarray, out: np.ndarray) -> np.ndarray:
        """out (M, N) = x (M, K) @ W.T, W read by pread in row chunks into one fixed buffer per part.

        (Read through the map, each chunk's page faults also mapped neighbouring pages: a 4.2 MiB chunk
        of Gemma-3's head raised RSS by 6.4 MiB and a whole pass by ~10 MiB that the plan did not count.
        The buffers here are ROW_CHUNK_BYTES in all, allocated once and counted in `act_fixed`.)"""
        from edgerun import kernels

        entry = self.tensors[name]
        self._global_parts(name)  # checksums, verified once through a small read buffer
        n_out = entry["shape"][0]
        row_bytes = sum(p["nbytes"] for p in entry["parts"].values()) / n_out
        step = min(n_out, max(1, int(ROW_CHUNK_BYTES // row_bytes)))
        bufs = self._chunk_bufs.get(name)
        if bufs is None:
            bufs = self._chunk_bufs[name] = {
                p: np.empty((step, *info["shape"][1:]), np.dtype(info["dtype"])) for p, info in entry["parts"].items()
            }  # (step, ...) per part
        for r0 in range(0, n_out, step):
            r1 = min(n_out, r0 + step)
            sub = {}
            for part, info in entry["parts"].items():
                per = info["nbytes"] // n_out
                view = bufs[part][: r1 - r0]
                got = os.preadv(self._fd, [memoryview(view.reshape(-1).view(np.uint8))], info["offset"] + r0 * per)
                if got != (r1 - r0) * per:
                    raise CorruptFileError(f"{self.artifact.weights_path}: short read in tensor {name}; "
                                           "the file changed while in use, export again")  # fmt: skip
                sub[part] = view
            out[:, r0:r1] = kernels.matmul(_weight(_rows_entry(entry, r1 - r0), sub), x)
        return out

    def close(self) -> None:
        """Stop the streamer thread; the map goes when the last view does."""
        if self.streamer is not None:
            self.streamer.close()
            self.streamer = None
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


def _rows_entry(entry: dict, rows: int) -> dict:
    """The manifest entry of the first `rows` rows of a matrix (for views of a row chunk)."""
    sub = dict(entry)
    sub["shape"] = [rows, entry["shape"][1]]
    return sub
