"""Whisper on short clips (< 3 s): WER and hallucinations for the ways of encoding a short utterance.

Clips: 20 short commands/questions spoken by the packaged Piper voice + 3 clips without speech
(`edgerun.bench.speech.short_clips`). Systems: edgerun with the full 30-s window (1500 encoder frames), with
the audio's own frames and the cached silence context (`audio_ctx`, the default), with the window cut 1 s after
the audio (what whisper.cpp's audio_ctx does), streamed (0.5 s silence + clip + 1 s silence in 100 ms chunks
through ASRStream: VAD, partials, the final on the VAD segment), and faster-whisper int8 beam 1 (30-s window).

    python benchmarks/asr_short_clips.py
"""

from __future__ import annotations

import time

from edgerun.bench.speech import hallucinations, run_edgerun_stream, short_clips, wer


def main() -> None:
    from edgerun.export.whisper_export import assemble_ct2_dir
    from edgerun.runtime.audio.asr import ASR
    from faster_whisper import WhisperModel

    clips = short_clips()
    speech = [(x, t) for x, t in clips if t]
    ctx, full = ASR(), ASR(audio_ctx=False)
    fw = WhisperModel(assemble_ct2_dir(), device="cpu", compute_type="int8", cpu_threads=2)

    def cut(x):
        d = full.decode(x, full_window=False)
        return "" if d.silent else full.text(d.tokens)

    systems = {
        "edgerun 30-s window": lambda x: full.transcribe(x, 16000, use_vad=False).text,
        "edgerun audio_ctx (silence context)": lambda x: ctx.transcribe(x, 16000, use_vad=False).text,
        "edgerun streaming (ASRStream final)": lambda x: run_edgerun_stream(ctx, x, 16000)["text"],
        "edgerun window cut 1 s after audio": cut,
        "faster-whisper int8 beam 1": lambda x: " ".join(
            s.text for s in fw.transcribe(x, beam_size=1, language="en", without_timestamps=True)[0]),
    }
    dur = sum(len(x) for x, _ in clips) / 16000
    print(f"{len(speech)} spoken clips ({min(len(x) for x, _ in speech) / 16000:.1f}-"
          f"{max(len(x) for x, _ in speech) / 16000:.1f} s) + {len(clips) - len(speech)} without speech, "
          f"{dur:.1f} s in all")
    print(f"{'system':38s} {'WER %':>6s} {'halluc.':>7s} {'no-speech ok':>12s} {'s':>6s}")
    for fn in systems.values():
        fn(clips[0][0])  # warm-up
    hyps = {k: [] for k in systems}
    secs = dict.fromkeys(systems, 0.0)
    for x, _ in clips:  # interleaved, so load on the machine hits every system alike
        for name, fn in systems.items():
            t0 = time.perf_counter()
            hyps[name].append(fn(x))
            secs[name] += time.perf_counter() - t0
    for name in systems:
        hs = hyps[name]
        w = wer([t for _, t in speech], [h for h, (_, t) in zip(hs, clips, strict=True) if t])
        hal = sum(hallucinations(t, h) for h, (_, t) in zip(hs, clips, strict=True))
        quiet = sum(not h.strip() for h, (_, t) in zip(hs, clips, strict=True) if not t)
        print(f"{name:38s} {w:6.2f} {hal:7d} {quiet:>8d}/{len(clips) - len(speech)} {secs[name]:6.2f}")
        for h, (_, t) in zip(hs, clips, strict=True):
            if (hallucinations(t, h) or wer([t], [h]) > 0) if t else h.strip():
                print(f"    ref {t!r:34s} got {h.strip()!r}")

if __name__ == "__main__":
    main()
