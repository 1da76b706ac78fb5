"""TTS speed and round trip: edgerun Piper streaming vs piper-tts (same joe-medium voice), same run.

Reports, per system: time to first audio (text in -> first phrase's samples ready; median over the
sentences), real-time factor (synthesis time / audio seconds), and the round-trip WER (speak each text,
transcribe it with edgerun's Whisper ASR, compare with the text). Also: how many texts get exactly the
same Piper phoneme ids from edgerun's espeak-ng path as from piper-tts's.

    python benchmarks/tts_bench.py [--runs 3] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from asr_wer import wer  # noqa: E402

TEXTS = [
    "The quick brown fox jumps over the lazy dog.",
    "Please turn off the lights in the kitchen before you go to bed.",
    "It is going to rain tomorrow afternoon, so take an umbrella with you.",
    "My favourite book is about a sailor who travels around the world.",
    "The meeting has been moved to Thursday at three o'clock.",
    "Can you tell me how far it is to the nearest train station?",
    "Edge devices run small models, close to the people who use them.",
    "She planted tomatoes, beans and carrots in the garden last spring.",
]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--json", default=None)
    args = ap.parse_args()

    from edgerun.runtime.audio.asr import ASR
    from edgerun.runtime.audio.phonemes import phoneme_ids, phonemize
    from edgerun.runtime.audio.resample import resample
    from edgerun.runtime.audio.tts import TTS, default_voice

    t = time.perf_counter()
    tts = TTS()
    load_edge = time.perf_counter() - t

    def edge(text):
        t0 = time.perf_counter()
        first, parts = None, []
        for c in tts.stream(text):
            first = first or time.perf_counter() - t0
            parts.append(c.samples)
        return first, time.perf_counter() - t0, np.concatenate(parts), tts.sample_rate

    systems = {"edgerun (espeak-ng lib + onnxruntime, phrase streaming)": edge}
    peer = None
    try:
        from piper import PiperVoice

        t = time.perf_counter()
        peer = PiperVoice.load(default_voice())
        load_peer = time.perf_counter() - t

        def piper_tts(text):
            t0 = time.perf_counter()
            first, parts, sr = None, [], 22050
            for c in peer.synthesize(text):
                first = first or time.perf_counter() - t0
                parts.append(c.audio_float_array)
                sr = c.sample_rate
            return first, time.perf_counter() - t0, np.concatenate(parts), sr

        systems["piper-tts " + __import__("importlib.metadata").metadata.version("piper-tts")] = piper_tts
    except ImportError:
        load_peer = None
    for fn in systems.values():
        fn("Warm up.")
    res = {k: {"first": [], "synth": 0.0, "audio": 0.0, "wav": {}} for k in systems}
    for _ in range(args.runs):
        for text in TEXTS:
            for k, fn in systems.items():
                first, synth, audio, sr = fn(text)
                r = res[k]
                r["first"].append(first)
                r["synth"] += synth
                r["audio"] += len(audio) / sr
                r["wav"][text] = (audio, sr)
    asr = ASR()
    rows = []
    for k, r in res.items():
        hyps = [asr.transcribe(resample(a, sr, 16000), 16000).text for a, sr in (r["wav"][t] for t in TEXTS)]
        rows.append(dict(system=k, first_audio_ms=1000 * statistics.median(r["first"]),
                         rtf=r["synth"] / r["audio"], roundtrip_wer=wer(TEXTS, hyps), hyps=hyps))
    same_ids = None
    if peer is not None:
        same_ids = sum(
            phoneme_ids(phonemize(t), tts.voice.id_map)
            == [i for s in peer.phonemize(t) for i in peer.phonemes_to_ids(s)] for t in TEXTS
        )
    print(f"{len(TEXTS)} texts x {args.runs} runs; voice load: edgerun {load_edge:.2f} s"
          + (f", piper-tts {load_peer:.2f} s" if load_peer is not None else ", piper-tts not installed"))
    print(f"{'system':58s} {'first audio ms':>14s} {'RTF':>6s} {'round-trip WER %':>16s}")
    for r in rows:
        print(f"{r['system']:58s} {r['first_audio_ms']:14.0f} {r['rtf']:6.3f} {r['roundtrip_wer']:16.2f}")
    if same_ids is not None:
        print(f"phoneme ids identical to piper-tts on {same_ids}/{len(TEXTS)} texts")
    for r in rows:
        for t, h in zip(TEXTS, r["hyps"], strict=True):
            if wer([t], [h]) > 0:
                print(f"  {r['system'][:20]:20s} said {t!r} heard {h!r}")
    if args.json:
        with open(args.json, "w", encoding="utf-8") as fh:
            json.dump(dict(rows=rows, same_ids=same_ids), fh, indent=1)


if __name__ == "__main__":
    main()
