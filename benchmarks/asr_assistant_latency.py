"""Voice-assistant latency: end of user speech -> first reply audio, headless (files), packaged models.

Questions are synthesized with the Piper voice, written as WAVs (0.5 s silence before, 1 s after) and run
through `Assistant.run_files` (VAD -> streaming ASR -> LLM stream -> phrase TTS). For each turn:
  endpoint wait  the silence the VAD needs to declare the end of speech (audio time, 400 ms default)
  ASR final      the final Whisper decode after the endpoint
  LLM first      endpoint -> first complete reply phrase from the streamed LLM
  first audio    endpoint -> first reply phrase synthesized (what the user waits for, + endpoint wait)

    python benchmarks/asr_assistant_latency.py [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile

import numpy as np

QUESTIONS = [
    "What is the capital of France?",
    "How many legs does a spider have?",
    "Can you suggest a name for a small black cat?",
    "What should I cook for dinner tonight?",
]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", default=None)
    ap.add_argument("--max-tokens", type=int, default=60)
    args = ap.parse_args()

    from edgerun.runtime.audio.assistant import Assistant

    a = Assistant(max_tokens=args.max_tokens)
    rows = []
    with tempfile.TemporaryDirectory() as d:
        print(f"warm-up at start: {a.warmup_seconds * 1000:.0f} ms (the first turn below is measured warm)")
        for q in QUESTIONS:
            a.history.clear()
            turns = a.run_files(_question_wav(a, q, d), os.path.join(d, "reply.wav"))
            for t in turns:
                rows.append(dict(question=q, transcript=t.transcript, reply=t.reply,
                                 endpoint_wait_ms=1000 * t.endpoint_wait_seconds,
                                 asr_final_ms=1000 * t.asr_final_seconds,
                                 llm_first_phrase_ms=1000 * t.first_text_seconds,
                                 first_audio_ms=1000 * t.first_audio_seconds,
                                 reply_audio_s=len(t.audio) / t.sample_rate))
    for r in rows:
        print(f"Q: {r['question']}\n   heard: {r['transcript']}\n   reply: {r['reply']}\n"
              f"   endpoint wait {r['endpoint_wait_ms']:.0f} ms + first audio {r['first_audio_ms']:.0f} ms "
              f"(ASR final {r['asr_final_ms']:.0f}, LLM first phrase {r['llm_first_phrase_ms']:.0f})")
    med = {k: statistics.median(r[k] for r in rows) for k in
           ("endpoint_wait_ms", "asr_final_ms", "llm_first_phrase_ms", "first_audio_ms")}
    print("median: " + ", ".join(f"{k} {v:.0f}" for k, v in med.items())
          + f"; end of speech -> first reply audio = {med['endpoint_wait_ms'] + med['first_audio_ms']:.0f} ms")
    if args.json:
        with open(args.json, "w", encoding="utf-8") as fh:
            json.dump(dict(rows=rows, median=med), fh, indent=1)


def _question_wav(a, text: str, d: str) -> str:
    from edgerun.runtime.audio.wavio import write_wav

    sr = a.tts.sample_rate
    q = a.tts.generate(text)
    path = os.path.join(d, "question.wav")
    write_wav(path, np.concatenate([np.zeros(sr // 2, np.float32), q, np.zeros(sr, np.float32)]), sr)
    return path


if __name__ == "__main__":
    main()
