"""Silero VAD streaming segmentation on real speech (LibriVox clips of pocketsphinx-testdata)."""

import glob

import numpy as np
import pytest
from edgerun.runtime.audio.resample import resample
from edgerun.runtime.audio.vad import VAD, detect_speech
from edgerun.runtime.audio.wavio import read_audio

LIBRIVOX = "/usr/share/pocketsphinx/test/data/librivox"
pytestmark = pytest.mark.model


def _clips():
    files = sorted(glob.glob(f"{LIBRIVOX}/*.wav"))
    if not files:
        pytest.skip("pocketsphinx-testdata not installed (apt-get install pocketsphinx-testdata)")
    return [read_audio(f)[0] for f in files[:3]]


def _with_gaps(clips, gap=1.0):
    parts, spans, t = [], [], 0.0
    for c in clips:
        parts += [np.zeros(int(gap * 16000), np.float32), c]
        spans.append((t + gap, t + gap + len(c) / 16000))
        t += gap + len(c) / 16000
    parts.append(np.zeros(16000, np.float32))
    return np.concatenate(parts), spans


def test_segments_match_clips():
    audio, spans = _with_gaps(_clips())
    segs = detect_speech(audio, 16000)
    assert len(segs) == len(spans)
    for s, (a, b) in zip(segs, spans, strict=True):
        assert a - 0.3 < s.start < a + 0.5 and b - 0.6 < s.end < b + 0.3
        assert len(s.samples) == pytest.approx((s.end - s.start) * 16000, abs=2)


def test_end_pad_cuts_after_the_first_silent_window():
    """Segments end `end_pad_ms` after the silence the VAD noticed, and only the end moves with it."""
    audio, spans = _with_gaps(_clips())
    long, short = detect_speech(audio, 16000), detect_speech(audio, 16000, end_pad_ms=32)
    assert len(long) == len(short) == len(spans)
    for a, b, (_, end) in zip(long, short, spans, strict=True):
        assert b.start == a.start
        assert b.end == pytest.approx(a.end - 0.068, abs=1e-9)
        assert b.end > end - 0.6  # still after (or at most a short pause before) the clip's end
        np.testing.assert_array_equal(b.samples, a.samples[: len(b.samples)])


def test_min_speech_counts_the_voiced_part_not_the_pads():
    """A fragment of speech shorter than `min_speech_ms` is dropped however long the pads are (a 300-ms lead pad
    alone is longer than the 200-ms minimum); a longer one is kept, starting the pad before its onset."""
    x = _clips()[1]  # "He was not an ill-disposed young man."
    silence = np.zeros(16000, np.float32)

    def cut(ms):
        a = np.concatenate([silence, x[24000 : 24000 + ms * 16], silence])
        return detect_speech(a, 16000, speech_pad_ms=300, end_pad_ms=32)

    for ms in (64, 96, 128, 160):
        assert cut(ms) == [], ms
    kept = cut(256)
    assert len(kept) == 1 and 0.6 <= kept[0].start <= 1.0 - 0.3 + 0.064


def test_stream_any_rate_stereo_chunks():
    audio, spans = _with_gaps(_clips())
    x = resample(audio, 16000, 44100)
    st = np.stack([x, x], 1)
    vad = VAD()
    segs = []
    for i in range(0, len(st), 1234):
        segs += vad.accept_waveform(44100, st[i : i + 1234])
    segs += vad.flush()
    ref = detect_speech(audio, 16000)
    assert len(segs) == len(ref)
    for s, r in zip(segs, ref, strict=True):
        assert abs(s.start - r.start) < 0.1 and abs(s.end - r.end) < 0.1


def test_silence_and_noise_give_nothing():
    rng = np.random.default_rng(0)
    assert detect_speech(np.zeros(3 * 16000, np.float32), 16000) == []
    assert detect_speech(0.01 * rng.standard_normal(3 * 16000).astype(np.float32), 16000) == []
    vad = VAD()
    assert vad.accept_waveform(16000, np.zeros(0, np.float32)) == [] and vad.flush() == []


def test_flush_with_resampler_tail_longer_than_a_window():
    vad = VAD()
    rng = np.random.default_rng(0)
    # 44.1 kHz input whose pending 16 kHz samples + resampler tail exceed one 512-sample window
    for n in (1400, 1415, 1419):  # 1415, 1419: 497-498 pending + 17 tail samples > 512
        vad.reset()
        vad.accept_waveform(44100, 0.01 * rng.standard_normal(n).astype(np.float32))
        assert vad.flush() == []
