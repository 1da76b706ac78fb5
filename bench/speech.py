"""Speech measurements: word error rate (normalized as the LibriVox references need), the LibriVox
clips of Debian's `pocketsphinx-testdata`, and the streaming-ASR latency probe.

Used by `benchmarks/asr_wer.py`, `benchmarks/tts_bench.py` and the tests.
"""

from __future__ import annotations

import glob
import os
import re
import time

import numpy as np

POCKETSPHINX_DATA = "/usr/share/pocketsphinx/test/data"  # Debian pocketsphinx-testdata
LIBRIVOX = os.path.join(POCKETSPHINX_DATA, "librivox")  # 5 sentences read from a LibriVox book, 71 words
CARDS = os.path.join(POCKETSPHINX_DATA, "cards")  # 5 short spoken card names (1.1-3.5 s, loud), 21 words
SPEECH_SETS = {"librivox": LIBRIVOX, "cards": CARDS}


_NUMBERS = ("zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen "
            "sixteen seventeen eighteen nineteen twenty").split()


def normalize(text: str) -> list[str]:
    """Lower case words without punctuation; hyphenated words split; a few spoken forms; 0-20 as words;
    -our/-or spelling folded (favourite = favorite)."""
    t = text.lower().replace("-", " ")
    t = re.sub(r"\b(\d{1,2})\b", lambda m: _NUMBERS[int(m.group(1))] if int(m.group(1)) <= 20 else m.group(1), t)
    t = re.sub(r"(\w{3,})our(ite|ed|s)?\b", r"\1or\2", t)
    t = re.sub(r"\bmr\b\.?", "mister", t)
    t = re.sub(r"\bmrs\b\.?", "missus", t)
    t = re.sub(r"[^a-z0-9' ]", " ", t)
    return t.split()


def edit_distance(ref: list[str], hyp: list[str]) -> int:
    """Word-level Levenshtein distance."""
    d = list(range(len(hyp) + 1))
    for i, r in enumerate(ref, 1):
        prev, d[0] = d[0], i
        for j, h in enumerate(hyp, 1):
            cur = min(d[j] + 1, d[j - 1] + 1, prev + (r != h))
            prev, d[j] = d[j], cur
    return d[len(hyp)]


def wer(refs: list[str], hyps: list[str]) -> float:
    """Corpus WER in percent."""
    errors = sum(edit_distance(normalize(r), normalize(h)) for r, h in zip(refs, hyps, strict=True))
    words = sum(len(normalize(r)) for r in refs)
    return 100.0 * errors / max(1, words)


def load_clips(limit: int | None = None, folder: str = LIBRIVOX) -> list[tuple[str, str]]:
    """[(wav path, reference text)] from a pocketsphinx-testdata folder of recordings (LIBRIVOX, CARDS) and
    its transcription file (lines `<s> text </s> (file id)`)."""
    refs = {}
    path = os.path.join(folder, "transcription")  # librivox/; cards/ names it cards.transcription
    if not os.path.isfile(path):
        path = os.path.join(folder, os.path.basename(folder) + ".transcription")
    with open(path, encoding="utf-8") as fh:
        for line in fh:
            m = re.match(r"<s>(.*)</s>\s*\((.+)\)", line.strip())
            if m:
                refs[m.group(2)] = m.group(1).strip()
    files = sorted(glob.glob(os.path.join(folder, "*.wav")))
    out = [(f, refs[os.path.basename(f)[:-4]]) for f in files if os.path.basename(f)[:-4] in refs]
    return out[:limit] if limit else out


STREAM_LEAD_S, STREAM_TAIL_S = 0.5, 1.0  # silence around a clip in a streaming run


def stream_padded(x: np.ndarray, sr: int, lead_s: float = STREAM_LEAD_S) -> np.ndarray:
    """The signal a streaming run is fed: `lead_s` of silence, the clip, `STREAM_TAIL_S` of silence."""
    return np.concatenate([np.zeros(int(lead_s * sr), np.float32), np.asarray(x, np.float32),
                           np.zeros(int(STREAM_TAIL_S * sr), np.float32)])


def run_edgerun_stream(asr, x: np.ndarray, sr: int, chunk_s: float = 0.1, lead_s: float = STREAM_LEAD_S) -> dict:
    """Stream one clip (`lead_s` silence + clip + 1 s silence); final text, compute, endpoint latency, and the
    finals' segments as (start, end) seconds of that padded signal."""
    a = stream_padded(x, sr, lead_s)
    s = asr.create_stream()
    step = int(chunk_s * sr)
    finals, partials = [], 0
    t0 = time.perf_counter()
    fed_at_final = None
    for i in range(0, len(a), step):
        for r in s.accept_waveform(sr, a[i : i + step]):
            if r.is_final:
                finals.append(r)
                fed_at_final = fed_at_final or min(len(a), i + step) / sr
            else:
                partials += 1
    for r in s.input_finished():
        finals.append(r)
        fed_at_final = fed_at_final or len(a) / sr
    compute = time.perf_counter() - t0
    speech_end = (int(lead_s * sr) + len(x)) / sr
    final_compute = finals[-1].compute_seconds if finals else 0.0
    return dict(
        text=" ".join(r.text for r in finals),
        compute=compute,
        partials=partials,
        endpoint_wait=max(0.0, fed_at_final - speech_end) if fed_at_final else 0.0,
        final_compute=final_compute,
        segments=[(r.start, r.end) for r in finals],
    )


def stream_segment_audio(x: np.ndarray, sr: int, segments: list[tuple[float, float]]) -> list[np.ndarray]:
    """The 16 kHz audio of the segments `run_edgerun_stream` finalized (its padded signal, cut the same way), so
    a peer can be run on exactly the audio the streaming finals saw."""
    from edgerun.runtime.audio.resample import resample

    a = stream_padded(x, sr)
    if sr != 16000:
        a = resample(a, sr, 16000)
    return [a[int(round(s * 16000)) : int(round(e * 16000))] for s, e in segments]


SHORT_PHRASES = [
    "Yes.", "No, thank you.", "Stop.", "What time is it?", "Turn on the lights.", "Good morning.",
    "How are you today?", "Play some music.", "Call my mother.", "Set a timer for ten minutes.",
    "What is the weather like?", "Open the door.", "I am hungry.", "Thank you very much.", "Where are my keys?",
    "Tell me a joke.", "Cancel that.", "Read my messages.", "It is cold outside.", "See you tomorrow.",
]


def short_clips(tts=None) -> list[tuple[np.ndarray, str]]:
    """[(16 kHz float32 audio, text)]: `SHORT_PHRASES` spoken by Piper (the packaged voice), each 0.5-2.5 s,
    then three clips with no speech (1 s silence, 1 s and 2 s of faint noise; reference text empty)."""
    from edgerun.runtime.audio.resample import resample
    from edgerun.runtime.audio.tts import TTS

    tts = tts or TTS()
    out = [(resample(tts.generate(t), tts.sample_rate, 16000), t) for t in SHORT_PHRASES]
    rng = np.random.default_rng(0)
    out += [(np.zeros(16000, np.float32), ""), ((0.003 * rng.standard_normal(16000)).astype(np.float32), ""),
            ((0.003 * rng.standard_normal(32000)).astype(np.float32), "")]
    return out


def hallucinations(ref: str, hyp: str) -> bool:
    """A transcript with words the speech does not hold: text on a clip without speech, a word repeated 3 times
    in a row, or more than 2 extra words against the reference."""
    r, h = normalize(ref), normalize(hyp)
    if not r:
        return bool(h)
    if any(h[i] == h[i + 1] == h[i + 2] for i in range(len(h) - 2)):
        return True
    return len(h) > len(r) + 2
