"""Time of one final transcription of a short spoken question (what the voice loop waits for after the endpoint).

Clips: the 22 questions of `asr_assistant_latency.py` spoken by the packaged Piper voice (1.3-2.8 s; written
once to `--clips`, an .npz, and read from there afterwards, so two trees can be timed on the same audio). Each
clip is transcribed as a stream's final does it: `ASR.decode` with the partials' hypothesis as the draft (here
the transcript of the clip minus its last 0.5 s), and also without a draft (a final nothing was streamed
before). Reported per thread count: mean over clips of each clip's fastest of `--reps` runs (wall clock; the
clips are interleaved, so load on the machine hits every clip alike), plus the mean CPU seconds.

    python benchmarks/asr_final_latency.py [--threads 1 2] [--reps 5] [--clips /tmp/questions.npz]
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np


def load_or_make_clips(path: str) -> list[np.ndarray]:
    """The questions as 16 kHz float32 arrays, synthesized into `path` on first use."""
    if os.path.isfile(path):
        with np.load(path) as z:
            return [z[f"a{i}"] for i in range(len(z["texts"]))]
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from asr_assistant_latency import QUESTIONS
    from edgerun.runtime.audio.resample import resample
    from edgerun.runtime.audio.tts import TTS

    tts = TTS()
    texts = [q for q, _ in QUESTIONS]
    clips = [resample(tts.generate(t), tts.sample_rate, 16000).astype(np.float32) for t in texts]
    np.savez(path, texts=np.array(texts), **{f"a{i}": c for i, c in enumerate(clips)})
    return clips


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--clips", default=os.path.join(os.environ.get("TMPDIR", "/tmp"), "edgerun-questions.npz"))
    args = ap.parse_args()

    from edgerun.kernels import set_num_threads
    from edgerun.runtime.audio.asr import ASR

    clips = load_or_make_clips(args.clips)
    asr = ASR()
    set_num_threads(max(args.threads))
    drafts = [asr.decode(c[:-8000]).tokens for c in clips]  # the partials' hypothesis: audio minus 0.5 s
    texts = [asr.text(asr.decode(c).tokens) for c in clips]
    dur = np.mean([len(c) / 16000 for c in clips])
    print(f"{len(clips)} questions, {dur:.2f} s mean; {args.reps} reps, fastest per clip; "
          f"load {os.getloadavg()[0]:.1f}")
    print(f"{'threads':>7s} {'final, draft ms':>16s} {'cpu ms':>7s} {'no draft ms':>12s} {'cpu ms':>7s}")
    for th in args.threads:
        set_num_threads(th)
        asr.decode(clips[0], draft=drafts[0])
        best = {k: np.full(len(clips), np.inf) for k in ("d", "dc", "n", "nc")}
        for _ in range(args.reps):
            for i, c in enumerate(clips):
                for key, draft in (("d", drafts[i]), ("n", None)):
                    t0, c0 = time.perf_counter(), time.process_time()
                    d = asr.decode(c, draft=draft)
                    best[key][i] = min(best[key][i], time.perf_counter() - t0)
                    best[key + "c"][i] = min(best[key + "c"][i], time.process_time() - c0)
                    assert asr.text(d.tokens) == texts[i], (texts[i], asr.text(d.tokens))
        print(f"{th:7d} {1e3 * best['d'].mean():16.1f} {1e3 * best['dc'].mean():7.1f} "
              f"{1e3 * best['n'].mean():12.1f} {1e3 * best['nc'].mean():7.1f}")


if __name__ == "__main__":
    main()
