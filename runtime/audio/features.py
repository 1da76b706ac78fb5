"""Whisper log-mel features in numpy (openai/whisper `audio.py`; mel filters as librosa, Slaney scale/norm)."""

from __future__ import annotations

from functools import lru_cache

import numpy as np

SAMPLE_RATE = 16000
N_FFT = 400
HOP = 160
CHUNK_SECONDS = 30
N_SAMPLES = CHUNK_SECONDS * SAMPLE_RATE  # 480000
N_FRAMES = N_SAMPLES // HOP  # 3000


def _hz_to_mel(f: np.ndarray) -> np.ndarray:
    f = np.asarray(f, dtype=np.float64)
    f_sp = 200.0 / 3
    mels = f / f_sp
    min_log_hz, min_log_mel, logstep = 1000.0, 1000.0 / f_sp, np.log(6.4) / 27.0
    return np.where(f >= min_log_hz, min_log_mel + np.log(np.maximum(f, 1e-10) / min_log_hz) / logstep, mels)


def _mel_to_hz(m: np.ndarray) -> np.ndarray:
    m = np.asarray(m, dtype=np.float64)
    f_sp = 200.0 / 3
    min_log_hz, min_log_mel, logstep = 1000.0, 1000.0 / f_sp, np.log(6.4) / 27.0
    return np.where(m >= min_log_mel, min_log_hz * np.exp(logstep * (m - min_log_mel)), f_sp * m)


@lru_cache(maxsize=4)
def mel_filters(n_mels: int = 80, sr: int = SAMPLE_RATE, n_fft: int = N_FFT) -> np.ndarray:
    """Triangular Slaney mel filterbank, (n_mels, n_fft//2 + 1) float32."""
    fft_freqs = np.fft.rfftfreq(n_fft, 1.0 / sr)
    mel_pts = np.linspace(_hz_to_mel(0.0), _hz_to_mel(sr / 2), n_mels + 2)
    hz = _mel_to_hz(mel_pts)  # (n_mels + 2,)
    fdiff = np.diff(hz)
    ramps = hz[:, None] - fft_freqs[None, :]
    lower = -ramps[:-2] / fdiff[:-1, None]
    upper = ramps[2:] / fdiff[1:, None]
    w = np.maximum(0.0, np.minimum(lower, upper))
    w *= (2.0 / (hz[2 : n_mels + 2] - hz[:n_mels]))[:, None]
    return w.astype(np.float32)


@lru_cache(maxsize=1)
def _window() -> np.ndarray:
    return (0.5 - 0.5 * np.cos(2 * np.pi * np.arange(N_FFT) / N_FFT)).astype(np.float32)  # periodic Hann


def log_mel(audio: np.ndarray, n_mels: int = 80, pad_to: int | None = N_SAMPLES) -> np.ndarray:
    """16 kHz mono float audio -> normalized log-mel (n_mels, n_frames).

    With `pad_to` the audio is zero-padded to that many samples first (Whisper's 30-s window),
    giving `pad_to // 160` frames; with None the frames cover the audio only.
    """
    x = np.asarray(audio, dtype=np.float32).reshape(-1)
    if pad_to is not None:
        x = x[:pad_to]
        x = np.pad(x, (0, pad_to - len(x)))
    n_frames = len(x) // HOP
    xp = np.pad(x, (N_FFT // 2, N_FFT // 2), mode="reflect" if len(x) > N_FFT // 2 else "constant")
    idx = np.arange(n_frames)[:, None] * HOP + np.arange(N_FFT)[None, :]  # (n_frames, N_FFT)
    frames = xp[idx] * _window()
    spec = np.fft.rfft(frames, axis=-1)  # (n_frames, 201)
    power = (spec.real**2 + spec.imag**2).astype(np.float32)
    logm = np.log10(np.maximum(_mel_power(power, n_mels), 1e-10))  # (n_frames, n_mels)
    logm = np.maximum(logm, logm.max() - 8.0)
    return np.ascontiguousarray(((logm + 4.0) / 4.0).T, dtype=np.float32)  # (n_mels, n_frames)


@lru_cache(maxsize=4)
def _mel_weight(n_mels: int):
    """The filterbank as a C-kernel float32 weight, or None without the compiled kernels."""
    from edgerun.runtime.backends import kernels_available

    if not kernels_available():
        return None
    from edgerun.kernels import Weight

    return Weight(mel_filters(n_mels))


def _mel_power(power: np.ndarray, n_mels: int) -> np.ndarray:
    """power (n_frames, n_fft//2 + 1) -> mel power (n_frames, n_mels). In C when the kernels load: numpy's BLAS
    starts its threads for this small product, and beside other busy threads (the kernels' pool, an LLM) they
    took 15-30 ms of a 2-s utterance's ~1 ms."""
    w = _mel_weight(n_mels)
    if w is None:
        return power @ mel_filters(n_mels).T
    from edgerun.kernels import matmul

    return matmul(w, np.ascontiguousarray(power))
