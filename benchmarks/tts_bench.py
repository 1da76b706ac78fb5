"""TTS speed, seams and round trip: edgerun Piper (decoder streamed over windows of latent frames, and the
older whole-phrase synthesis) vs piper-tts, same joe-medium voice, same run, interleaved.

Reports, per system: time to first audio (text in -> first samples ready; median and min over the texts x
runs, each text a 9-13 word sentence), the CPU time the process spent until then (all threads), the
real-time factor (synthesis time / audio seconds), and the round-trip WER (speak each text, transcribe it
with edgerun's Whisper ASR, compare with the text). For the streamed path: what the first audio is made
of (phonemes, encoder, flow and decoder of the first window), and the seam error: with the sampling noise
off, streamed audio against the one-shot graph's audio (max abs and SNR over all texts), with the voice's
measured contexts and with shorter ones. Also: how many texts get exactly the same Piper phoneme ids from
edgerun's espeak-ng path as from piper-tts's. The 1-minute load average is printed: on a shared machine
wall-clock figures move with it.

    python benchmarks/tts_bench.py [--runs 3] [--threads 2] [--spin] [--json out.json]
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


def seam_error(voice, contexts: list[tuple[int, int] | None]) -> list[dict]:
    """Streamed vs one-shot audio on TEXTS with the sampling noise off: max abs difference and SNR (dB)
    over all texts, per (flow, decoder) context (None: the voice's measured receptive fields)."""
    saved = voice.scales.copy()
    voice.scales[0] = voice.scales[2] = 0.0
    rows = []
    try:
        for ctx in contexts:
            err, sig, mx = 0.0, 0.0, 0.0
            for text in TEXTS:
                ids = voice.ids(text)
                one = voice.synthesize_ids(ids)
                got = np.concatenate([a for a, _ in voice.stream_ids(ids, context=ctx)])
                err += float(np.sum((got - one) ** 2))
                sig += float(np.sum(one**2))
                mx = max(mx, float(np.abs(got - one).max()))
            used = ctx or (voice.split["flow_context"], voice.split["decoder_context"])
            rows.append(dict(context=list(used), measured=ctx is None, max_abs=mx,
                             snr_db=10 * np.log10(sig / max(err, 1e-30))))
    finally:
        voice.scales[:] = saved
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2, help="onnxruntime threads of edgerun's voice")
    ap.add_argument("--spin", action="store_true", help="let onnxruntime's workers spin between ops")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()

    from edgerun.runtime.audio.asr import ASR
    from edgerun.runtime.audio.phonemes import phoneme_ids, phonemize
    from edgerun.runtime.audio.resample import resample
    from edgerun.runtime.audio.tts import TTS, PiperVoice, default_voice

    t = time.perf_counter()
    tts = TTS(threads=args.threads, spin=args.spin)
    load_edge = time.perf_counter() - t
    whole = TTS(PiperVoice(threads=args.threads, streaming=False, spin=args.spin))
    parts: dict[str, list] = {"phonemes": [], "encoder": [], "flow": [], "decoder": []}

    def edgerun_fn(engine, record=False):
        def run(text):
            t0, c0 = time.perf_counter(), time.process_time()
            first = cpu = None
            pieces = []
            for c in engine.stream(text):
                if first is None:
                    first, cpu = time.perf_counter() - t0, time.process_time() - c0
                    if record:
                        for k in parts:
                            parts[k].append(c.timings.get(k, 0.0))
                pieces.append(c.samples)
            return first, cpu, time.perf_counter() - t0, np.concatenate(pieces), engine.sample_rate

        return run

    systems = {"edgerun streamed decoder (windows of latent frames)": edgerun_fn(tts, record=True),
               "edgerun whole phrases (one ONNX run each)": edgerun_fn(whole)}
    peer = None
    try:
        from piper import PiperVoice as PeerVoice

        t = time.perf_counter()
        peer = PeerVoice.load(default_voice())
        load_peer = time.perf_counter() - t

        def piper_tts(text):
            t0, c0 = time.perf_counter(), time.process_time()
            first = cpu = None
            pieces, sr = [], 22050
            for c in peer.synthesize(text):
                if first is None:
                    first, cpu = time.perf_counter() - t0, time.process_time() - c0
                pieces.append(c.audio_float_array)
                sr = c.sample_rate
            return first, cpu, time.perf_counter() - t0, np.concatenate(pieces), sr

        systems["piper-tts " + __import__("importlib.metadata").metadata.version("piper-tts")] = piper_tts
    except ImportError:
        load_peer = None
    for fn in systems.values():
        fn("Warm up, please.")
    for v in parts.values():
        v.clear()
    loads = [os.getloadavg()[0]]
    res = {k: {"first": [], "cpu": [], "synth": 0.0, "audio": 0.0, "wav": {}} for k in systems}
    for _ in range(args.runs):
        for text in TEXTS:
            for k, fn in systems.items():
                first, cpu, synth, audio, sr = fn(text)
                r = res[k]
                r["first"].append(first)
                r["cpu"].append(cpu)
                r["synth"] += synth
                r["audio"] += len(audio) / sr
                r["wav"][text] = (audio, sr)
        loads.append(os.getloadavg()[0])
    seams = seam_error(tts.voice, [None, (24, 8), (16, 6)]) if tts.voice.split else []
    asr = ASR()
    rows = []
    for k, r in res.items():
        hyps = [asr.transcribe(resample(a, sr, 16000), 16000).text for a, sr in (r["wav"][t] for t in TEXTS)]
        rows.append(dict(system=k, first_audio_ms=1000 * statistics.median(r["first"]),
                         first_audio_min_ms=1000 * min(r["first"]), first_cpu_ms=1000 * statistics.median(r["cpu"]),
                         rtf=r["synth"] / r["audio"], roundtrip_wer=wer(TEXTS, hyps), hyps=hyps))
    same_ids = None
    if peer is not None:
        same_ids = sum(
            phoneme_ids(phonemize(t), tts.voice.id_map)
            == [i for s in peer.phonemize(t) for i in peer.phonemes_to_ids(s)] for t in TEXTS
        )
    print(f"{len(TEXTS)} texts x {args.runs} runs, interleaved; edgerun on {args.threads} onnxruntime threads"
          f"{' (spinning)' if args.spin else ''}; "
          f"load average {min(loads):.1f}-{max(loads):.1f} on {os.cpu_count()} CPUs; voice load: edgerun "
          f"{load_edge:.2f} s" + (f", piper-tts {load_peer:.2f} s" if load_peer is not None else ", piper-tts missing"))
    print(f"{'system':54s} {'first audio ms':>14s} {'(min)':>6s} {'CPU ms':>7s} {'RTF':>6s} {'round-trip WER %':>16s}")
    for r in rows:
        print(f"{r['system']:54s} {r['first_audio_ms']:14.0f} {r['first_audio_min_ms']:6.0f} {r['first_cpu_ms']:7.0f} "
              f"{r['rtf']:6.3f} {r['roundtrip_wer']:16.2f}")
    if tts.voice.split:
        sp = tts.voice.split
        made_of = ", ".join(f"{k} {1000 * statistics.median(v):.1f}" for k, v in parts.items())
        window_ms = 1000 * tts.first_frames * sp["hop"] / tts.sample_rate
        print(f"streamed first audio, median ms: {made_of} (first window {tts.first_frames} frames = {window_ms:.0f}"
              f" ms of audio; contexts flow {sp['flow_context']}, decoder {sp['decoder_context']} frames)")
        for s in seams:
            tag = " (measured, default)" if s["measured"] else ""
            print(f"seam error, context flow {s['context'][0]} / decoder {s['context'][1]} frames{tag}: "
                  f"max abs {s['max_abs']:.2e}, SNR {s['snr_db']:.1f} dB")
    if same_ids is not None:
        print(f"phoneme ids identical to piper-tts on {same_ids}/{len(TEXTS)} texts")
    for r in rows:
        for t, h in zip(TEXTS, r["hyps"], strict=True):
            if wer([t], [h]) > 0:
                print(f"  {r['system'][:20]:20s} said {t!r} heard {h!r}")
    if args.json:
        with open(args.json, "w", encoding="utf-8") as fh:
            json.dump(dict(rows=rows, same_ids=same_ids, seams=seams, threads=args.threads, loadavg=loads,
                           first_parts={k: statistics.median(v) for k, v in parts.items()}), fh, indent=1)


if __name__ == "__main__":
    main()
