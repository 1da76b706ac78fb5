"""runtime/llm/layer_stream.py on a synthetic weights file: contents, read counts, prefetch overlap, RSS."""

import subprocess
import sys
import time

import numpy as np
import pytest
from edgerun.errors import CorruptFileError
from edgerun.runtime.llm.layer_stream import LayerStreamer


def make_file(path, n=8, nbytes=100_000, head=4096):
    """n layers, page-aligned, each filled with its own byte pattern; returns the layer table."""
    layers, off, blob = [], head, bytearray(head)
    for i in range(n):
        data = (np.arange(nbytes, dtype=np.uint32) * (i + 7) % 251).astype(np.uint8).tobytes()
        layers.append({"index": i, "offset": off, "nbytes": nbytes})
        pad = -(off + nbytes) % 4096
        blob += data + bytes(pad)
        off += nbytes + pad
    path.write_bytes(bytes(blob))
    return layers


def expected(i, nbytes=100_000):
    return (np.arange(nbytes, dtype=np.uint32) * (i + 7) % 251).astype(np.uint8)


@pytest.mark.parametrize("cache", ["drop", "keep", "direct"])
@pytest.mark.parametrize("k", [1, 2, 3])
def test_contents_and_read_counts(tmp_path, cache, k):
    layers = make_file(tmp_path / "w.bin")
    with LayerStreamer(tmp_path / "w.bin", layers, n_buffers=k, pinned=[0], cache=cache) as s:
        for _token in range(3):
            for i in range(8):
                got = np.frombuffer(s.get(i), np.uint8)
                assert np.array_equal(got, expected(i)), (i, _token)
                s.release(i)
        assert s.stats.reads[0] == 1  # pinned: read once
        assert all(s.stats.reads[i] >= 3 for i in range(1, 8))  # streamed: once per token
        assert all(s.stats.reads[i] <= 4 for i in range(1, 8))  # (+1 prefetched for the next token)
        assert s.nbytes <= (k + 1) * 102_400


def test_everything_resident_when_buffers_hold_all(tmp_path):
    layers = make_file(tmp_path / "w.bin")
    with LayerStreamer(tmp_path / "w.bin", layers, n_buffers=8) as s:
        for _ in range(5):
            for i in range(8):
                assert s.get(i)[5] == expected(i)[5]
                s.release(i)
        assert s.stats.reads == {i: 1 for i in range(8)} and s._thread is None


def test_out_of_order_and_truncated(tmp_path):
    layers = make_file(tmp_path / "w.bin")
    with LayerStreamer(tmp_path / "w.bin", layers, n_buffers=2) as s:
        with pytest.raises(RuntimeError, match="out of order"):
            s.get(3)
    bad = layers + [{"index": 8, "offset": 10**9, "nbytes": 10}]
    with pytest.raises(CorruptFileError, match="truncated"):
        LayerStreamer(tmp_path / "w.bin", bad)


def run_pass(s, compute_s, tokens=2):
    t0 = time.perf_counter()
    for _ in range(tokens):
        for i in range(8):
            s.get(i)
            time.sleep(compute_s)  # compute of layer i (sleep releases the GIL, like numpy / C kernels)
            s.release(i)
    return time.perf_counter() - t0


def test_prefetch_overlaps_reads_with_compute(tmp_path):
    layers = make_file(tmp_path / "w.bin")
    per = 0.02  # read throttled to 20 ms per layer (a 5 MB/s SD card), compute 20 ms per layer
    with LayerStreamer(tmp_path / "w.bin", layers, n_buffers=1, throttle=100_000 / per) as s:
        serial = run_pass(s, per)
    with LayerStreamer(tmp_path / "w.bin", layers, n_buffers=2, throttle=100_000 / per) as s:
        overlapped = run_pass(s, per)
        waited = s.stats.wait_s
    # serial ~ 16 * (read + compute) = 0.64 s; overlapped ~ 16 * max(read, compute) = 0.32 s
    assert serial > 0.55
    assert overlapped < 0.75 * serial, (serial, overlapped)
    assert waited < 0.5 * 16 * per


RSS_SCRIPT = """
import sys, numpy as np
from edgerun.runtime.llm.layer_stream import LayerStreamer
from edgerun.runtime.memory import rss_bytes, PeakRSS
path, n, nb = sys.argv[1], 20, 10 << 20
layers = [{"index": i, "offset": i * nb, "nbytes": nb} for i in range(n)]
base = rss_bytes()
with PeakRSS() as p:
    with LayerStreamer(path, layers, n_buffers=2, cache="keep") as s:
        for _ in range(2):
            for i in range(n):
                a = np.frombuffer(s.get(i), np.uint8)
                assert a[0] == i % 251
                s.release(i)
print(p.peak - base)
"""


def test_rss_bounded_by_buffers(tmp_path):
    nb = 10 << 20
    with open(tmp_path / "big.bin", "wb") as f:
        for i in range(20):
            f.write(bytes([i % 251]) * nb)
    out = subprocess.run([sys.executable, "-c", RSS_SCRIPT, str(tmp_path / "big.bin")], capture_output=True,
                         text=True, check=True)  # fmt: skip
    growth = int(out.stdout.strip())
    assert growth < 2 * nb + (8 << 20), growth  # 2 buffers (+ slack), not the 200 MB file
