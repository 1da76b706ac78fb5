"""Audio file I/O, sample-rate conversion and their one-line errors."""

import numpy as np
import pytest
from edgerun.errors import EdgerunError
from edgerun.runtime.audio.resample import StreamResampler, resample
from edgerun.runtime.audio.wavio import check_rate, read_audio, to_mono, write_wav


@pytest.mark.parametrize("sr_in,sr_out", [(44100, 16000), (48000, 16000), (8000, 16000), (16000, 22050)])
def test_resample_sine_and_length(sr_in, sr_out):
    t = np.arange(sr_in) / sr_in
    x = np.sin(2 * np.pi * 440 * t).astype(np.float32)
    y = resample(x, sr_in, sr_out)
    assert len(y) == int(np.ceil(len(x) * sr_out / sr_in))
    ref = np.sin(2 * np.pi * 440 * np.arange(len(y)) / sr_out)
    assert np.abs(y - ref)[100:-100].max() < 1e-3


def test_resample_removes_alias():
    sr_in = 48000
    x = np.sin(2 * np.pi * 12000 * np.arange(sr_in) / sr_in).astype(np.float32)  # above 8 kHz Nyquist
    y = resample(x, sr_in, 16000)
    assert np.abs(y[200:-200]).max() < 0.01


def test_stream_resampler_matches_whole():
    rng = np.random.default_rng(0)
    x = rng.standard_normal(30000).astype(np.float32)
    whole = resample(x, 44100, 16000)
    r = StreamResampler(44100, 16000)
    parts = [r.process(c) for c in np.array_split(x, 13)] + [r.flush()]
    np.testing.assert_array_equal(np.concatenate(parts), whole)  # soxr's streaming state: the same samples


def test_wav_roundtrip_stereo(tmp_path):
    x = np.stack([np.linspace(-0.5, 0.5, 1000), np.zeros(1000)], 1).astype(np.float32)
    p = write_wav(str(tmp_path / "a.wav"), x, 22050)
    y, sr = read_audio(p)
    assert sr == 22050 and y.shape == (1000, 2)
    np.testing.assert_allclose(y, x, atol=1e-4)
    np.testing.assert_allclose(to_mono(y), x.mean(1), atol=1e-4)


def test_int16_input_scaled():
    assert np.isclose(to_mono(np.array([16384, -32768], np.int16))[1], -1.0)


@pytest.mark.parametrize("bad", [0, 100, 1_000_000, 16000.5, "x"])
def test_unsupported_rate(bad):
    with pytest.raises(EdgerunError, match="sample rate"):
        check_rate(bad)


def test_read_errors_are_one_line(tmp_path):
    (tmp_path / "empty.wav").write_bytes(b"")
    (tmp_path / "text.wav").write_text("this is not audio\n" * 20)
    for p, pat in [
        (tmp_path / "missing.wav", "does not exist"),
        (tmp_path / "empty.wav", "empty"),
        (tmp_path / "text.wav", "not a readable audio file"),
        (tmp_path, "directory"),
    ]:
        with pytest.raises(EdgerunError, match=pat) as e:
            read_audio(str(p))
        assert "\n" not in str(e.value)


def test_header_only_wav_reads_as_empty(tmp_path):
    p = write_wav(str(tmp_path / "zero.wav"), np.zeros(0, np.float32), 16000)
    y, sr = read_audio(p)
    assert sr == 16000 and y.size == 0
