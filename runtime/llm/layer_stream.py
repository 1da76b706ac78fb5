"""Layer streaming with prefetch (TPI-LLM's sliding-window memory scheduler, Li et al. 2024, arXiv:2410.00531).

When the decoder layers do not fit the RAM budget, each layer's byte range of `weights.bin`
is read into one of `k` fixed, page-aligned buffers::

    buffers:  [ b0 ][ b1 ] ... [ b(k-1) ]        allocated once, never grown
    layer j of the streamed order lives in buffer j % k
    compute:      L0   L1   L2   L3 ...  L(n-1) | L0 (next token) ...
    read thread:  L1   L2   L3   L4 ...  L0     | L1 ...   (k-1 layers ahead, cyclic across tokens)

`get(i)` waits until layer i is in its buffer; `release(i)` hands the buffer back so the
reader can fill it with layer i + k. Reads use os.preadv (the GIL is released, so reading
overlaps numpy / C compute). Layers in `pinned` are read once and stay resident; when the
buffers can hold every streamed layer, everything is resident and nothing is re-read.

cache: "drop" (default) reads buffered then drops the pages from the page cache, so every
re-read is a real disk read, as on a device whose RAM cannot cache the model; "keep" leaves the
page cache alone; "direct" uses O_DIRECT. `throttle` (bytes/s) emulates a slower disk (SD card, eMMC).
"""

from __future__ import annotations

import mmap
import os
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
from edgerun.errors import CorruptFileError

PAGE = 4096


def _aligned_buffer(nbytes: int) -> mmap.mmap:
    """A page-aligned anonymous buffer (what O_DIRECT needs)."""
    return mmap.mmap(-1, max(PAGE, -(-nbytes // PAGE) * PAGE))


@dataclass
class StreamStats:
    """Counters: reads per layer, bytes read, time spent reading and time compute waited for a layer."""

    reads: dict[int, int] = field(default_factory=dict)
    bytes_read: int = 0
    read_s: float = 0.0
    wait_s: float = 0.0

    @property
    def read_bytes_per_s(self) -> float:
        """Measured read speed of the streamer's own reads."""
        return self.bytes_read / self.read_s if self.read_s > 0 else 0.0


class LayerStreamer:
    """Serve decoder layers' bytes from a fixed pool of buffers, prefetching ahead on a thread.

    path: weights.bin. layers: [{"index", "offset", "nbytes"}] (the artifact manifest's layer groups).
    n_buffers: k >= 1 buffers for the streamed layers. pinned: layer indices kept resident.
    """

    def __init__(
        self,
        path: str | os.PathLike,
        layers: Sequence[dict],
        n_buffers: int = 2,
        pinned: Sequence[int] = (),
        cache: str = "drop",
        throttle: float | None = None,
    ):
        self.path = str(path)
        self.layers = {int(g["index"]): (int(g["offset"]), int(g["nbytes"])) for g in layers}
        self.order = sorted(self.layers)
        size = os.path.getsize(self.path)
        for i, (off, nb) in self.layers.items():
            if off + nb > size:
                raise CorruptFileError(
                    f"{self.path}: layer {i} ends at byte {off + nb} past the file end ({size}); "
                    "the file is truncated, export again"
                )
        if cache not in ("drop", "keep", "direct"):
            raise ValueError(f"cache={cache!r}: use 'drop', 'keep' or 'direct'")
        self.cache, self.throttle = cache, throttle
        self.stats = StreamStats()
        self._fd = os.open(self.path, os.O_RDONLY)
        self._dfd = None
        if cache == "direct" and hasattr(os, "O_DIRECT"):
            try:
                self._dfd = os.open(self.path, os.O_RDONLY | os.O_DIRECT)
            except OSError:
                self._dfd = None
        pinned = [i for i in pinned if i in self.layers]
        streamed = [i for i in self.order if i not in pinned]
        if n_buffers >= len(streamed):  # the budget holds every layer: all resident, read once
            pinned, streamed = list(self.order), []
        self.pinned = pinned
        self.streamed = streamed
        self.k = min(max(1, n_buffers), len(streamed)) if streamed else 0
        self._resident: dict[int, mmap.mmap] = {}
        for i in pinned:
            buf = _aligned_buffer(self.layers[i][1])
            self._read(i, buf)
            self._resident[i] = buf
        cap = max((self.layers[i][1] for i in streamed), default=0)
        self._bufs = [_aligned_buffer(cap) for _ in range(self.k)]
        self._slot_of = {i: j for j, i in enumerate(streamed)}
        self._cv = threading.Condition()
        self._loaded = [-1] * self.k  # streamed-order sequence number held by each buffer (-1 none)
        self._free = [True] * self.k
        self._next_seq = 0  # next sequence number the reader loads (cyclic over `streamed`)
        self._want = 0  # sequence number the compute side asks next
        self._closed = False
        self._error: BaseException | None = None
        self._thread = None
        if self.k:
            self._thread = threading.Thread(target=self._reader, name="edgerun-layer-prefetch", daemon=True)
            self._thread.start()

    # ------------------------------------------------------------------ reading
    def _read(self, i: int, buf: mmap.mmap) -> None:
        off, nb = self.layers[i]
        mv = memoryview(buf)
        t0 = time.perf_counter()
        fd = self._dfd if self._dfd is not None else self._fd
        start = off
        if fd == self._dfd:  # O_DIRECT: aligned offset and length; the layer starts page-aligned
            start = off - off % PAGE
        lead = off - start
        want = lead + nb
        if fd == self._dfd:
            want = -(-want // PAGE) * PAGE
            if want > len(buf):
                fd, start, lead, want = self._fd, off, 0, nb
        done = 0
        try:
            while done < want:
                got = os.preadv(fd, [mv[done:want]], start + done)
                if got <= 0:
                    break
                done += got
        finally:
            mv.release()
        if done < lead + nb:
            raise CorruptFileError(f"{self.path}: short read of layer {i} ({done - lead} of {nb} bytes)")
        if lead:
            buf.move(0, lead, nb)
        if self.cache == "drop" and hasattr(os, "posix_fadvise"):
            os.posix_fadvise(self._fd, off, nb, os.POSIX_FADV_DONTNEED)
        dt = time.perf_counter() - t0
        if self.throttle:
            rest = nb / self.throttle - dt
            if rest > 0:
                time.sleep(rest)
                dt += rest
        self.stats.reads[i] = self.stats.reads.get(i, 0) + 1
        self.stats.bytes_read += nb
        self.stats.read_s += dt

    def _reader(self) -> None:
        m = len(self.streamed)
        try:
            while True:
                with self._cv:
                    slot = self._next_seq % self.k
                    # read ahead at most k-1 layers past the one compute wants, into a free buffer
                    while not self._closed and not (self._free[slot] and self._next_seq < self._want + self.k):
                        self._cv.wait()
                    if self._closed:
                        return
                    seq = self._next_seq
                    self._free[slot] = False
                self._read(self.streamed[seq % m], self._bufs[slot])
                with self._cv:
                    self._loaded[slot] = seq
                    self._next_seq += 1
                    self._cv.notify_all()
        except BaseException as e:  # surfaced to the compute thread in get()
            with self._cv:
                self._error = e
                self._cv.notify_all()

    # ------------------------------------------------------------------ compute side
    def get(self, i: int) -> memoryview:
        """The bytes of layer i (read-only view, valid until `release(i)`); blocks until loaded.

        Streamed layers must be asked in order 0..n-1, 0..n-1, ... (one pass per token)."""
        if i in self._resident:
            return memoryview(self._resident[i])[: self.layers[i][1]].toreadonly()
        m = len(self.streamed)
        if self.streamed[self._want % m] != i:
            raise RuntimeError(f"layer {i} asked out of order; expected {self.streamed[self._want % m]}")
        slot = self._want % self.k
        t0 = time.perf_counter()
        with self._cv:
            while self._loaded[slot] != self._want and self._error is None:
                self._cv.wait()
            if self._error is not None:
                raise self._error
        self.stats.wait_s += time.perf_counter() - t0
        return memoryview(self._bufs[slot])[: self.layers[i][1]].toreadonly()

    def release(self, i: int) -> None:
        """Done with layer i: its buffer may be refilled with the layer k places ahead."""
        if i in self._resident:
            return
        with self._cv:
            slot = self._want % self.k
            self._loaded[slot] = -1
            self._free[slot] = True
            self._want += 1
            self._cv.notify_all()

    def array(self, i: int, offset: int, dtype, shape) -> np.ndarray:
        """A numpy view of a tensor part inside layer i's buffer (offset: absolute in weights.bin)."""
        buf = self.get(i)
        lo = offset - self.layers[i][0]
        n = int(np.prod(shape)) * np.dtype(dtype).itemsize
        return np.frombuffer(buf[lo : lo + n], dtype=dtype).reshape(shape)

    @property
    def nbytes(self) -> int:
        """Bytes held: the k buffers plus pinned layers."""
        return sum(len(b) for b in self._bufs) + sum(len(b) for b in self._resident.values())

    def close(self) -> None:
        """Stop the reader thread and free the buffers."""
        with self._cv:
            self._closed = True
            self._cv.notify_all()
        if self._thread is not None:
            self._thread.join()
        for fd in (self._fd, self._dfd):
            if fd is not None:
                os.close(fd)
        self._fd = self._dfd = None

    def __enter__(self) -> LayerStreamer:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
