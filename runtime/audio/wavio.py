"""Audio files in and out: read any soundfile-supported file (WAV/FLAC/OGG...), write 16-bit WAV.

Errors a user can fix (missing file, not audio, empty) raise `EdgerunError` with one line.
"""

from __future__ import annotations

import os
import wave

import numpy as np
from edgerun.errors import EdgerunError

MIN_RATE = 4000
MAX_RATE = 384000


def check_rate(sr: int) -> int:
    """Validate a sample rate (4 kHz .. 384 kHz) and return it as int."""
    try:
        sr_i = int(sr)
    except (TypeError, ValueError):
        raise EdgerunError(f"sample rate {sr!r} is not a number; give the rate in Hz (e.g. 16000)") from None
    if sr_i != sr or not MIN_RATE <= sr_i <= MAX_RATE:
        raise EdgerunError(f"unsupported sample rate {sr} Hz; use an integer rate between {MIN_RATE} and {MAX_RATE}")
    return sr_i


def as_float_audio(samples) -> np.ndarray:
    """Samples (n,) or (n, channels), int or float -> float32 in [-1, 1], same layout."""
    x = np.asarray(samples)
    if x.dtype.kind == "i":
        x = x.astype(np.float32) / float(np.iinfo(x.dtype).max + 1)
    elif x.dtype.kind == "u":
        info = np.iinfo(x.dtype)
        x = (x.astype(np.float32) - (info.max + 1) / 2) / ((info.max + 1) / 2)
    elif x.dtype.kind == "f":
        x = x.astype(np.float32, copy=False)
    else:
        raise EdgerunError(f"audio samples of dtype {x.dtype} are not supported; pass int16 or float32 samples")
    if x.ndim > 2:
        raise EdgerunError(f"audio must be (samples,) or (samples, channels); got shape {x.shape}")
    return x


def to_mono(x: np.ndarray) -> np.ndarray:
    """(n,) or (n, channels) -> (n,) by averaging the channels."""
    x = as_float_audio(x)
    if x.ndim == 2:
        # a (channels, n) array with few rows is taken as channel-first
        if x.shape[0] <= 8 < x.shape[1]:
            x = x.T
        x = x.mean(axis=1)
    return np.ascontiguousarray(x, dtype=np.float32)


def read_audio(path: str) -> tuple[np.ndarray, int]:
    """Read an audio file -> (float32 samples (n,) or (n, channels), sample rate)."""
    if not os.path.exists(path):
        raise EdgerunError(f"audio file '{path}' does not exist; check the path")
    if os.path.isdir(path):
        raise EdgerunError(f"'{path}' is a directory; give an audio file (WAV, FLAC, OGG)")
    if os.path.getsize(path) == 0:
        raise EdgerunError(f"audio file '{path}' is empty (0 bytes); record or pick another file")
    try:
        import soundfile as sf

        try:
            info = sf.info(path)
            if info.format in ("WAV", "WAVEX", "AIFF") and info.subtype.startswith(("PCM", "FLOAT", "DOUBLE")) \
                    and info.frames * info.channels > os.path.getsize(path):  # uncompressed: >= 1 byte a sample
                raise EdgerunError(f"'{path}': its header claims {info.frames} frames but the file holds "
                                   f"{os.path.getsize(path)} bytes; the file is truncated or corrupt")
            x, sr = sf.read(path, dtype="float32", always_2d=False)
        except (sf.LibsndfileError, RuntimeError) as e:
            raise EdgerunError(f"'{path}' is not a readable audio file ({str(e).splitlines()[0]}); "
                               "give a WAV, FLAC or OGG file") from None
        except (MemoryError, ValueError):  # a compressed file whose header claims more audio than memory holds
            # (numpy refuses an array that large with ValueError before trying to allocate it)
            raise EdgerunError(f"'{path}': its header claims more audio than fits in memory; "
                               "the file is corrupt") from None
    except ImportError:  # pragma: no cover - soundfile is optional: plain WAV through the stdlib
        x, sr = _read_wav_stdlib(path)
    check_rate(sr)
    return x, int(sr)


def _read_wav_stdlib(path: str) -> tuple[np.ndarray, int]:
    try:
        with wave.open(path, "rb") as w:
            sr, ch, width, n = w.getframerate(), w.getnchannels(), w.getsampwidth(), w.getnframes()
            raw = w.readframes(n)
    except (wave.Error, EOFError) as e:
        raise EdgerunError(f"'{path}' is not a readable WAV file ({e}); give a 16-bit PCM WAV") from None
    dt = {1: np.uint8, 2: np.int16, 4: np.int32}.get(width)
    if dt is None:
        raise EdgerunError(f"'{path}' uses {8 * width}-bit samples; give 8/16/32-bit PCM")
    x = as_float_audio(np.frombuffer(raw, dtype=dt).reshape(-1, ch))
    return (x[:, 0] if ch == 1 else x), sr


def write_wav(path: str, samples: np.ndarray, sample_rate: int) -> str:
    """Write float or int16 samples (n,) or (n, channels) as a 16-bit PCM WAV."""
    x = as_float_audio(samples)
    pcm = (np.clip(x, -1.0, 1.0) * 32767.0).astype("<i2")
    ch = 1 if pcm.ndim == 1 else pcm.shape[1]
    d = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(d):
        raise EdgerunError(f"cannot write '{path}': folder '{d}' does not exist")
    with wave.open(path, "wb") as w:
        w.setnchannels(ch)
        w.setsampwidth(2)
        w.setframerate(check_rate(sample_rate))
        w.writeframes(pcm.tobytes())
    return path
