"""Public functions behind the speech commands of the CLI (`edgerun transcribe`, `edgerun speak`).

Each returns a plain result and prints nothing unless given an `echo` callable, so the typer commands in
cli.py stay thin and the same calls work from Python.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import numpy as np
from edgerun.errors import EdgerunError
from edgerun.runtime.audio.wavio import read_audio, write_wav


def transcribe(
    audio: str,
    stream: bool = False,
    model: str | None = None,
    chunk_ms: int = 200,
    echo: Callable[[str], object] | None = None,
) -> dict:
    """Transcribe an audio file. With `stream`, feed it in `chunk_ms` chunks to the streaming recognizer
    and report partial results (through `echo`) and a final per utterance.

    Returns {"text", "segments": [{"start", "end", "text"}], "duration", "compute_seconds", "rtf",
    "no_speech"}; an empty or silent file gives text "" and no_speech True.
    """
    from edgerun.runtime.audio.asr import ASR

    x, sr = read_audio(audio)
    asr = ASR(model)
    say = echo or (lambda s: None)
    if not stream:
        tr = asr.transcribe(x, sr)
        segs = [dict(start=round(r.start, 2), end=round(r.end, 2), text=r.text) for r in tr.segments if r.text]
        say(tr.text if tr.text else "(no speech)")
        return dict(text=tr.text, segments=segs, duration=tr.duration, compute_seconds=tr.compute_seconds,
                    rtf=tr.rtf, no_speech=tr.no_speech)
    s = asr.create_stream()
    step = max(1, int(sr * chunk_ms / 1000))
    finals = []
    t0 = time.perf_counter()
    last_partial = ""

    def handle(results):
        nonlocal last_partial
        for r in results:
            if r.is_final:
                if r.text:
                    finals.append(r)
                    say(f"[{r.start:6.2f} - {r.end:6.2f}] {r.text}")
                last_partial = ""
            elif r.text != last_partial:
                last_partial = r.text
                say(f"  ... {r.text}")

    for i in range(0, len(x), step):
        handle(s.accept_waveform(sr, x[i : i + step]))
    handle(s.input_finished())
    compute = time.perf_counter() - t0
    dur = len(x) / sr if len(x) else 0.0
    text = " ".join(r.text for r in finals)
    if not finals:
        say("(no speech)")
    return dict(text=text, segments=[dict(start=round(r.start, 2), end=round(r.end, 2), text=r.text) for r in finals],
                duration=dur, compute_seconds=compute, rtf=compute / dur if dur else 0.0, no_speech=not text)


def speak(text: str, out: str, voice: str | None = None, echo: Callable[[str], object] | None = None) -> dict:
    """Synthesize `text` to the WAV file `out`; returns timing figures (time to first audio, RTF)."""
    from edgerun.runtime.audio.tts import TTS

    if not text or not text.strip():
        raise EdgerunError("nothing to say: give some text, e.g. edgerun speak \"Hello there\" -o hello.wav")
    tts = TTS(voice)
    t0 = time.perf_counter()
    first = None
    parts = []
    for chunk in tts.stream(text):
        if first is None:
            first = time.perf_counter() - t0
        parts.append(chunk.samples)
    total = time.perf_counter() - t0
    if not parts:
        raise EdgerunError("the text has nothing speakable (no letters or digits); give words to say")
    audio = np.concatenate(parts)
    write_wav(out, audio, tts.sample_rate)
    dur = len(audio) / tts.sample_rate
    res = dict(out=out, duration=dur, sample_rate=tts.sample_rate, first_audio_seconds=first,
               synth_seconds=total, rtf=total / dur if dur else 0.0, phrases=len(parts))
    if echo:
        echo(f"wrote {out}: {dur:.2f} s audio, first audio after {first * 1000:.0f} ms, RTF {res['rtf']:.3f}")
    return res
