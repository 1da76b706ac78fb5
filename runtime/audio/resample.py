"""Sample-rate conversion by libsoxr (the `soxr` package): whole signals and streams, same output.

`StreamResampler(sr_in, sr_out).process(chunk)` returns the samples ready so far and `flush()` the tail;
the concatenation equals `resample(x, sr_in, sr_out)` of the whole signal bit for bit (soxr's streaming
state), and its length is round(n_in * sr_out / sr_in). Quality "HQ" (20-bit, linear phase, passband to
~0.91 of the lower Nyquist); the resampler is created once per stream, so per-chunk cost is the filter only.
"""

from __future__ import annotations

import numpy as np
from edgerun.runtime.audio.wavio import check_rate, to_mono

QUALITY = "HQ"


def _soxr():
    try:
        import soxr
    except ImportError:  # a dependency of the package; only a broken install lacks it
        from edgerun.errors import EdgerunError

        raise EdgerunError("resampling needs the soxr package; run: pip install soxr") from None
    return soxr


class StreamResampler:
    """Convert a mono stream from `sr_in` to `sr_out` chunk by chunk; `flush()` returns the tail."""

    def __init__(self, sr_in: int, sr_out: int):
        self.sr_in, self.sr_out = check_rate(sr_in), check_rate(sr_out)
        self._stream = None if self.sr_in == self.sr_out else _soxr().ResampleStream(
            self.sr_in, self.sr_out, 1, dtype="float32", quality=QUALITY)  # fmt: skip
        self.n_in = 0

    def reset(self) -> None:
        """Forget the stream (history, position)."""
        if self._stream is not None:
            self._stream.clear()
        self.n_in = 0

    def process(self, x: np.ndarray) -> np.ndarray:
        """Feed input samples (mono, or mixed down); return the output samples that are ready."""
        x = np.ascontiguousarray(to_mono(x), dtype=np.float32)
        self.n_in += len(x)
        if self._stream is None:
            return x.copy()
        return self._stream.resample_chunk(x)

    def flush(self) -> np.ndarray:
        """Return the remaining outputs; the stream is then reset for reuse."""
        if self._stream is None:
            return np.zeros(0, np.float32)
        tail = self._stream.resample_chunk(np.zeros(0, np.float32), last=True)
        self.reset()
        return tail


def resample(x: np.ndarray, sr_in: int, sr_out: int) -> np.ndarray:
    """Resample a whole mono (or stereo, mixed down) signal."""
    sr_in, sr_out = check_rate(sr_in), check_rate(sr_out)
    x = np.ascontiguousarray(to_mono(x), dtype=np.float32)
    if sr_in == sr_out:
        return x.copy()
    return _soxr().resample(x, sr_in, sr_out, quality=QUALITY).astype(np.float32, copy=False)
