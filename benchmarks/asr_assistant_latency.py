"""Voice-assistant latency and answer accuracy, live loop in real time, packaged models.

Each question (20 short questions with a known answer word) is synthesized with the Piper voice at three
speaking rates, written as a WAV (0.5 s silence before, 1.5 s after) and played into the assistant's live
loop (`Assistant.run_realtime`): audio blocks of 32 ms arrive at real-time pace on their own thread while
VAD, streaming ASR, LLM and TTS work, exactly as from a microphone. For each turn:

  latency      end of user speech (the question's last voiced sample, from the synthesized signal) ->
               first reply audio handed to the speaker (wall clock): what the user waits for
  ASR final    the final transcript's decode time after its endpoint (0 when decoded during the silence)
  correct      the answer word (or an accepted variant) occurs in the reply
  heard        the transcript equals the question (normalized)

The first question is the first turn after start-up (models warmed at load, `Assistant.warm_up`); it is
reported on its own as well. `--no-speculate` turns off the reply prepared during the endpoint silence,
for comparison in the same run (`--compare`).

    python benchmarks/asr_assistant_latency.py [--compare] [--limit N] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import tempfile
import time

import numpy as np

# (question, accepted answer words): short questions with one known answer
QUESTIONS = [
    ("What is the capital of France?", ["paris"]),
    ("How many legs does a spider have?", ["eight", "8"]),
    ("What color is the sky on a clear day?", ["blue"]),
    ("What is the opposite of hot?", ["cold"]),
    ("How many days are in a week?", ["seven", "7"]),
    ("Which animal says moo?", ["cow"]),
    ("What is the largest planet in our solar system?", ["jupiter"]),
    ("What do bees make?", ["honey"]),
    ("What is frozen water called?", ["ice"]),
    ("What is the capital of Japan?", ["tokyo"]),
    ("Which planet do we live on?", ["earth"]),
    ("What color are ripe bananas?", ["yellow"]),
    ("How many wheels does a bicycle have?", ["two", "2"]),
    ("Who wrote Romeo and Juliet?", ["shakespeare"]),
    ("What is the first month of the year?", ["january"]),
    ("What is the tallest animal in the world?", ["giraffe"]),
    ("What is the capital of Italy?", ["rome"]),
    ("What do you call a baby dog?", ["puppy", "puppies"]),
    ("Which star gives the Earth light and heat?", ["sun"]),
    ("What language is spoken in Spain?", ["spanish"]),
    ("How many minutes are in an hour?", ["sixty", "60"]),
    ("What is the color of grass?", ["green"]),
]
RATES = (1.0, 0.9, 1.15)  # Piper length_scale: normal, faster, slower speech


def _words(s: str) -> list[str]:
    return re.sub(r"[^a-z0-9 ]", " ", s.lower()).split()


def question_wav(tts, text: str, length_scale: float, path: str) -> float:
    """Write `text` spoken by `tts` with silence around it; return the time (s) of its last voiced sample."""
    from edgerun.runtime.audio.wavio import write_wav

    sr = tts.sample_rate
    q = tts.generate(text, length_scale=length_scale)
    voiced = np.flatnonzero(np.abs(q) > 0.01)  # -40 dBFS
    q = q[: voiced[-1] + 1]
    lead = np.zeros(sr // 2, np.float32)
    write_wav(path, np.concatenate([lead, q, np.zeros(int(1.5 * sr), np.float32)]), sr)
    return (len(lead) + len(q)) / sr


def run(a, questions, wavs, speculate: bool) -> list[dict]:
    """Ask each question (its WAV and speech end in `wavs`) through the real-time loop; one row per question."""
    rows = []
    for k, (q, answers) in enumerate(questions):
        a.history.clear()
        path, speech_end = wavs[k]
        turns, t0 = a.run_realtime(path, speculate=speculate)
        t = next((t for t in turns if t.first_audio_wall is not None), None)
        row = dict(question=q, rate=RATES[k % len(RATES)], heard="", reply="", latency_ms=None,
                   asr_final_ms=None, correct=False, heard_ok=False, turns=len(turns))
        if t is not None:
            first = {}
            for when, kind, _ in t.events:  # seconds after the reply's work began
                first.setdefault(kind, 1000 * when)
            row.update(endpoint_ms=1000 * (t.first_audio_wall - t.first_audio_seconds - (t0 + speech_end)),
                       first_token_ms=first.get("token"), first_phrase_ms=first.get("phrase"),
                       first_tts_ms=first.get("audio"))
            row.update(heard=t.transcript, reply=t.reply,
                       latency_ms=1000 * (t.first_audio_wall - (t0 + speech_end)),
                       asr_final_ms=1000 * t.asr_final_seconds,
                       correct=any(w in _words(t.reply) for w in answers),
                       heard_ok=_words(t.transcript) == _words(q))
        rows.append(row)
    return rows


def peer_cascade(questions, wavs, system_prompt: str, threads: int = 2, vad_silence: float = 0.4) -> list[dict]:
    """The same questions through the peers chained one after the other, as a plain pipeline would:
    `vad_silence` of silence to declare the endpoint, faster-whisper (same Whisper base, int8, beam 1) on the
    utterance, llama.cpp (same GGUF) streaming the reply until its first phrase, piper-tts (same voice) until
    its first audio. Latency = the sum; compute times measured, the silence counted as audio time."""
    from edgerun.export.whisper_export import assemble_ct2_dir
    from edgerun.runtime.audio.assistant import _reply_is_done, llm_phrases
    from edgerun.runtime.audio.resample import resample
    from edgerun.runtime.audio.tts import default_voice
    from edgerun.runtime.audio.wavio import read_audio
    from edgerun.runtime.store.defaults import packaged_smollm2_gguf
    from faster_whisper import WhisperModel
    from llama_cpp import Llama
    from piper import PiperVoice

    fw = WhisperModel(assemble_ct2_dir(), device="cpu", compute_type="int8", cpu_threads=threads)
    llm = Llama(model_path=str(packaged_smollm2_gguf()), n_ctx=1024, n_threads=threads, verbose=False)
    voice = PiperVoice.load(default_voice())
    rows = []
    asked = list(zip(questions, wavs, strict=True))
    for k, ((q, answers), (path, speech_end)) in enumerate(asked[:1] + asked):
        x, sr = read_audio(path)  # k = 0: the first question once more, unmeasured, to warm the peers up
        seg = resample(x[: int((speech_end + 0.1) * sr)], sr, 16000)
        t0 = time.perf_counter()
        heard = " ".join(s.text for s in fw.transcribe(seg, beam_size=1, language="en",
                                                        without_timestamps=True)[0]).strip()
        t_asr = time.perf_counter() - t0
        msgs = [{"role": "system", "content": system_prompt}, {"role": "user", "content": heard}]
        t0 = time.perf_counter()
        pieces = (c["choices"][0]["delta"].get("content", "") for c in
                  llm.create_chat_completion(msgs, max_tokens=60, temperature=0.0, stream=True))
        phrases, t_llm = [], None
        for ph in llm_phrases(pieces):
            t_llm = t_llm if t_llm is not None else time.perf_counter() - t0
            phrases.append(ph)
            if _reply_is_done(phrases, 2):
                break
        t0 = time.perf_counter()
        next(iter(voice.synthesize(phrases[0] if phrases else "Sorry.")))
        t_tts = time.perf_counter() - t0
        if k == 0:
            continue
        reply = " ".join(phrases)
        rows.append(dict(question=q, heard=heard, reply=reply, correct=any(w in _words(reply) for w in answers),
                         heard_ok=_words(heard) == _words(q), asr_final_ms=1000 * t_asr,
                         latency_ms=1000 * (vad_silence + t_asr + (t_llm or 0.0) + t_tts)))
    return rows


def summary(rows: list[dict]) -> dict:
    """Median / p90 latency (ms), first-turn latency, answer accuracy and transcript accuracy."""
    lat = sorted(r["latency_ms"] for r in rows if r["latency_ms"] is not None)
    p90 = lat[min(len(lat) - 1, int(np.ceil(0.9 * len(lat))) - 1)] if lat else float("nan")
    return dict(n=len(rows), answered=len(lat), median_ms=statistics.median(lat) if lat else float("nan"),
                p90_ms=p90, first_turn_ms=rows[0]["latency_ms"] if rows else None,
                correct=sum(r["correct"] for r in rows) / max(1, len(rows)),
                heard=sum(r["heard_ok"] for r in rows) / max(1, len(rows)))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", default=None)
    ap.add_argument("--limit", type=int, default=None, help="only the first N questions")
    ap.add_argument("--model", default=None, help="LLM (GGUF or artifact; default: the packaged SmolLM2)")
    ap.add_argument("--max-tokens", type=int, default=60)
    ap.add_argument("--system-prompt", default=None, help="instead of the assistant's default")
    ap.add_argument("--no-speculate", action="store_true", help="wait for the endpoint before replying")
    ap.add_argument("--compare", action="store_true", help="run with and without speculation, same run")
    ap.add_argument("--verbose", action="store_true", help="print every question, transcript and reply")
    ap.add_argument("--peers", action="store_true",
                    help="also the peers chained (faster-whisper -> llama.cpp -> piper-tts), same questions")
    args = ap.parse_args()

    from edgerun.runtime.audio.assistant import Assistant

    kw = {} if args.system_prompt is None else dict(system_prompt=args.system_prompt)
    a = Assistant(llm=args.model, max_tokens=args.max_tokens, **kw)
    print(f"warm-up at start: {a.warmup_seconds * 1000:.0f} ms; threads: {getattr(a.llm, 'threads', '?')}")
    questions = QUESTIONS[: args.limit]
    modes = [True, False] if args.compare else [not args.no_speculate]
    out = {}
    with tempfile.TemporaryDirectory() as d:
        wavs = []  # synthesized once: both modes hear the same audio (Piper samples noise)
        for k, (q, _) in enumerate(questions):
            path = os.path.join(d, f"q{k}.wav")
            wavs.append((path, question_wav(a.tts, q, RATES[k % len(RATES)], path)))
        for spec in modes + (["peers"] if args.peers else []):
            if spec == "peers":
                rows, name = peer_cascade(questions, wavs, a.system_prompt), "peers chained"
            else:
                rows, name = run(a, questions, wavs, spec), "speculative" if spec else "after endpoint"
            s = summary(rows)
            out[name] = dict(rows=rows, summary=s)
            if args.verbose:
                for r in rows:
                    lat = "-" if r["latency_ms"] is None else f"{r['latency_ms']:.0f} ms"
                    print(f"  [{lat:>7}] {'ok ' if r['correct'] else 'NO '} {r['question']}\n"
                          f"            heard: {r['heard']}\n            reply: {r['reply']}")
            stages = ("endpoint_ms", "first_token_ms", "first_phrase_ms", "first_tts_ms")
            if spec != "peers":
                med = {k: statistics.median(r[k] for r in rows if r.get(k) is not None) for k in stages}
                print(f"{name:>15}: stages, median ms: endpoint after speech end {med['endpoint_ms']:.0f}; after "
                      f"the reply began: first token {med['first_token_ms']:.0f}, first phrase "
                      f"{med['first_phrase_ms']:.0f}, first audio synthesized {med['first_tts_ms']:.0f}")
            print(f"{name:>15}: end of speech -> first reply audio median {s['median_ms']:.0f} ms, "
                  f"p90 {s['p90_ms']:.0f} ms, first turn {s['first_turn_ms'] or float('nan'):.0f} ms; "
                  f"answers correct {s['correct']:.0%}, transcripts exact {s['heard']:.0%} "
                  f"({s['answered']}/{s['n']} answered)")
    if args.json:
        with open(args.json, "w", encoding="utf-8") as fh:
            json.dump(out, fh, indent=1)


if __name__ == "__main__":
    main()
