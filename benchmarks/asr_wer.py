"""ASR quality and speed: edgerun Whisper (INT8 artifact, C kernels) vs faster-whisper (same model, int8), same run.

Data: the LibriVox clips of Debian `pocketsphinx-testdata` with their `transcription` file (71 words: one word is
1.41 pt); `--data cards` its 5 short recordings of card names (21 words, one word 4.8 pt), `--data all` both.
edgerun encodes each utterance on its own frames with the cached silence context standing in for the rest of
the 30-s window (`audio_ctx`, the default); "30-s window" rows encode all 1500 frames, as faster-whisper does.
Reports WER (normalized: lower case, no punctuation, hyphens split, Mr. -> mister), real-time factor
(compute / audio seconds), and the latency from the end of speech to the final text:
  * offline (edgerun transcribe, faster-whisper): the time to process the utterance once it is complete;
  * streaming (edgerun ASRStream, clip + 1 s silence fed in 100 ms chunks): VAD endpoint wait (audio time
    past the clip end) + the final decode's compute time;
  * faster-whisper on the streaming segments: the peer run on exactly the audio each streaming final decoded
    (WER only): what the VAD cut does to Whisper, apart from edgerun's decoder;
  * streaming vs offline on the same signal: each clip with 0.25 / 0.5 / 0.75 / 1.0 s of silence before it
    (where the 32-ms VAD windows fall moves with it; one near-tie word can flip with that alone), edgerun
    streaming and edgerun offline both fed that signal; WER per lead and the mean.

    python benchmarks/asr_wer.py [--runs 2] [--data librivox|cards|all] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time

from edgerun.bench.speech import (
    SPEECH_SETS,
    load_clips,
    normalize,
    run_edgerun_stream,
    stream_padded,
    stream_segment_audio,
    wer,
)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=2, help="timed repetitions (median reported)")
    ap.add_argument("--limit", type=int, default=None, help="use only the first N clips of each set")
    ap.add_argument("--data", choices=[*SPEECH_SETS, "all"], default="librivox", help="which recordings")
    ap.add_argument("--threads", type=int, default=2, help="faster-whisper cpu_threads")
    ap.add_argument("--json", default=None, help="write the figures as JSON here")
    args = ap.parse_args()

    from edgerun.export.whisper_export import assemble_ct2_dir
    from edgerun.runtime.audio.asr import ASR
    from edgerun.runtime.audio.wavio import read_audio
    from faster_whisper import WhisperModel

    sets = list(SPEECH_SETS) if args.data == "all" else [args.data]
    clips = [c for name in sets for c in load_clips(args.limit, SPEECH_SETS[name])]
    audio = [read_audio(f) for f, _ in clips]
    refs = [r for _, r in clips]
    total_audio = sum(len(x) / sr for x, sr in audio)

    t = time.perf_counter()
    asr = ASR()  # audio_ctx: the audio's frames + the cached silence context (offline and streaming finals)
    load_edge = time.perf_counter() - t
    asr_full = ASR(audio_ctx=False)  # all 1500 frames of the 30-s window
    asr_short = ASR(final_full_window=False)  # finals on the window cut 1 s after the audio (no silence context)
    t = time.perf_counter()
    fw = WhisperModel(assemble_ct2_dir(), device="cpu", compute_type="int8", cpu_threads=args.threads)
    load_fw = time.perf_counter() - t

    systems = {
        "edgerun offline (greedy, audio_ctx)": lambda x, sr: asr.transcribe(x, sr).text,
        "edgerun offline (greedy, 30-s window)": lambda x, sr: asr_full.transcribe(x, sr).text,
        "faster-whisper int8 beam 5": lambda x, sr: " ".join(
            s.text for s in fw.transcribe(x, beam_size=5, language="en")[0]
        ),
        "faster-whisper int8 beam 1": lambda x, sr: " ".join(
            s.text for s in fw.transcribe(x, beam_size=1, language="en")[0]
        ),
    }
    # warm-up (first-call costs are not part of the steady state)
    for fn in systems.values():
        fn(*audio[0])
    times = {k: [[] for _ in clips] for k in systems}
    texts = {k: [""] * len(clips) for k in systems}
    stream_runs = {"edgerun streaming (final audio_ctx)": asr, "edgerun streaming (final cut window)": asr_short}
    stream_res = {k: [[] for _ in clips] for k in stream_runs}
    for _ in range(args.runs):
        for i, (x, sr) in enumerate(audio):  # interleaved, so load on the machine hits all alike
            for k, fn in systems.items():
                t = time.perf_counter()
                texts[k][i] = fn(x, sr)
                times[k][i].append(time.perf_counter() - t)
            for k, a in stream_runs.items():
                stream_res[k][i].append(run_edgerun_stream(a, x, sr))

    rows = []
    for k in systems:
        per_clip = [statistics.median(t) for t in times[k]]
        rows.append(dict(system=k, wer=wer(refs, texts[k]), rtf=sum(per_clip) / total_audio,
                         latency_end_to_final_s=statistics.median(per_clip), texts=texts[k]))
    for k in stream_runs:
        res = stream_res[k]
        comp = [statistics.median(r["compute"] for r in rr) for rr in res]
        lat = [statistics.median(r["endpoint_wait"] + r["final_compute"] for r in rr) for rr in res]
        fin = [statistics.median(r["final_compute"] for r in rr) for rr in res]
        hyp = [rr[-1]["text"] for rr in res]
        rows.append(dict(system=k, wer=wer(refs, hyp), rtf=sum(comp) / (total_audio + 1.5 * len(clips)),
                         latency_end_to_final_s=statistics.median(lat), final_decode_s=statistics.median(fin),
                         endpoint_wait_s=statistics.median(r["endpoint_wait"] for rr in res for r in rr),
                         partials=sum(rr[-1]["partials"] for rr in res), texts=hyp))
    # the peer on exactly the audio the streaming finals decoded (the VAD's segments): separates what the cut
    # does to Whisper from what edgerun's decoder does
    for beam in (1, 5):
        hyp = [" ".join(" ".join(s.text for s in fw.transcribe(seg, beam_size=beam, language="en",
                                                              vad_filter=False)[0])
                        for seg in stream_segment_audio(x, sr, rr[-1]["segments"]))
               for (x, sr), rr in zip(audio, stream_res["edgerun streaming (final audio_ctx)"], strict=True)]
        rows.append(dict(system=f"faster-whisper beam {beam}, streaming segments", wer=wer(refs, hyp), rtf=None,
                         latency_end_to_final_s=None, texts=hyp))  # WER only: not timed
    print(f"{len(clips)} clips ({'+'.join(sets)}), {sum(len(normalize(r)) for r in refs)} words, "
          f"{total_audio:.1f} s audio; load: edgerun {load_edge:.2f} s "
          f"(incl. weight prep and silence context), faster-whisper {load_fw:.2f} s; OPENBLAS_NUM_THREADS="
          f"{os.environ.get('OPENBLAS_NUM_THREADS', 'default')}, fw threads {args.threads}")
    print(f"{'system':42s} {'WER %':>6s} {'RTF':>6s} {'end->final s':>12s}")
    for r in rows:
        if r["rtf"] is None:
            print(f"{r['system']:42s} {r['wer']:6.2f} {'-':>6s} {'-':>12s}")
            continue
        print(f"{r['system']:42s} {r['wer']:6.2f} {r['rtf']:6.3f} {r['latency_end_to_final_s']:12.3f}"
              + (f"   (endpoint wait {r['endpoint_wait_s']:.2f} s + final decode {r['final_decode_s']:.2f} s,"
                 f" {r['partials']} partials)" if "final_decode_s" in r else ""))
    for r in rows:
        for i, t in enumerate(r["texts"]):
            if normalize(t) != normalize(refs[i]):
                print(f"  {r['system'][:28]:28s} clip {i}: {t.strip()}")
    leads = []
    for lead in (0.25, 0.5, 0.75, 1.0):
        hs = [run_edgerun_stream(asr, x, sr, lead_s=lead)["text"] for x, sr in audio]
        ho = [asr.transcribe(stream_padded(x, sr, lead), sr).text for x, sr in audio]
        leads.append(dict(lead_s=lead, streaming_wer=wer(refs, hs), offline_wer=wer(refs, ho)))
    print("streaming vs offline on the same signal (silence before the clip: " +
          ", ".join(f"{r['lead_s']:g} s" for r in leads) + "): streaming WER " +
          " / ".join(f"{r['streaming_wer']:.2f}" for r in leads) +
          f" (mean {statistics.mean(r['streaming_wer'] for r in leads):.2f}), offline " +
          " / ".join(f"{r['offline_wer']:.2f}" for r in leads) +
          f" (mean {statistics.mean(r['offline_wer'] for r in leads):.2f})")
    if args.json:
        with open(args.json, "w", encoding="utf-8") as fh:
            json.dump(dict(clips=len(clips), audio_seconds=total_audio, rows=rows, same_signal=leads), fh,
                      indent=1)


if __name__ == "__main__":
    main()
