"""Sample-rate conversion: windowed-sinc (Kaiser) interpolation, exact rational positions, streaming state.

Output sample k sits at input position k * sr_in / sr_out (kept as integers, so no drift on long streams).
Each output is the sum over 2N input samples around it of x[j] * fc * sinc(fc * (t - j)) * kaiser((t - j) / N),
with fc = min(1, sr_out / sr_in) * 0.94 (anti-aliasing below the lower Nyquist).
"""

from __future__ import annotations

import numpy as np
from edgerun.runtime.audio.wavio import check_rate, to_mono

_ZEROS = 16  # sinc zero crossings on each side
_BETA = 8.0


class StreamResampler:
    """Convert a mono stream from `sr_in` to `sr_out` chunk by chunk; `flush()` returns the tail."""

    def __init__(self, sr_in: int, sr_out: int):
        self.sr_in, self.sr_out = check_rate(sr_in), check_rate(sr_out)
        g = np.gcd(self.sr_in, self.sr_out)
        self.up, self.down = self.sr_out // g, self.sr_in // g  # output k at input k*down/up
        self.fc = min(1.0, self.sr_out / self.sr_in) * 0.94
        self.half = int(np.ceil(_ZEROS / self.fc))  # taps each side
        # one filter per phase (num % up): (up, 2N); built once
        offs = np.arange(-self.half + 1, self.half + 1)  # (2N,)
        t = (np.arange(self.up) / self.up)[:, None] - offs[None, :]
        win = np.i0(_BETA * np.sqrt(np.clip(1 - (t / self.half) ** 2, 0, 1))) / np.i0(_BETA)
        self.table = (self.fc * np.sinc(self.fc * t) * win).astype(np.float32)  # (up, 2N)
        self.offs = offs
        self.reset()

    def reset(self) -> None:
        """Forget the stream (history, position)."""
        self.buf = np.zeros(self.half, np.float32)  # history; buf[0] is input index `base`
        self.base = -self.half
        self.k = 0  # next output index
        self.n_in = 0

    def _outputs_ready(self, end: int) -> int:
        # output k needs input up to floor(k*down/up) + half; return the first k that cannot be made yet
        lim = end - self.half  # floor(k*down/up) + 1 <= lim  ->  k*down < lim*up
        if lim <= 0:
            return self.k
        return max(self.k, -(-lim * self.up // self.down))

    def _make(self, k_end: int) -> np.ndarray:
        if k_end <= self.k:
            return np.zeros(0, np.float32)
        k = np.arange(self.k, k_end, dtype=np.int64)
        num = k * self.down
        i0 = num // self.up  # (n_out,)
        w = self.table[num % self.up]  # (n_out, 2N)
        idx = (i0[:, None] + self.offs[None, :]) - self.base
        y = np.einsum("ij,ij->i", self.buf[idx], w)
        self.k = k_end
        keep_from = (self.k * self.down) // self.up - self.half - self.base
        if keep_from > 0:
            self.buf = self.buf[keep_from:]
            self.base += keep_from
        return y.astype(np.float32)

    def process(self, x: np.ndarray) -> np.ndarray:
        """Feed input samples; return the output samples that are ready."""
        x = to_mono(x)
        if self.up == self.down:
            self.n_in += len(x)
            return x.copy()
        self.buf = np.concatenate([self.buf, x])
        self.n_in += len(x)
        return self._make(self._outputs_ready(self.base + len(self.buf)))

    def flush(self) -> np.ndarray:
        """Return the remaining outputs (input padded with zeros); total = ceil(n_in * sr_out / sr_in)."""
        if self.up == self.down:
            return np.zeros(0, np.float32)
        total = -(-self.n_in * self.up // self.down)
        self.buf = np.concatenate([self.buf, np.zeros(2 * self.half + 1, np.float32)])
        return self._make(total)


def resample(x: np.ndarray, sr_in: int, sr_out: int) -> np.ndarray:
    """Resample a whole mono (or stereo, mixed down) signal."""
    r = StreamResampler(sr_in, sr_out)
    y = r.process(x)
    return np.concatenate([y, r.flush()])
