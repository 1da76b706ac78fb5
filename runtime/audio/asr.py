"""Speech recognition with Whisper (edgerun artifact, numpy runtime): whole files and streaming.

    asr = ASR()                                    # packaged Whisper base, exported to INT8 on first use
    print(asr.transcribe(samples, sample_rate).text)

    s = asr.create_stream()
    for chunk in mic_chunks:                       # any rate, mono or stereo
        for r in s.accept_waveform(sr, chunk):     # partials while speech goes on, a final at each endpoint
            print("FINAL" if r.is_final else "partial", r.text)
    s.input_finished(); s.reset()

Encoding (`audio_ctx`, the default): Whisper sees a 30-s window, but only the audio's own frames are
computed; the rest of the window, silence, comes from keys/values cached once at load (`SilenceContext` in
models/whisper.py), so an utterance costs its length, not 30 s, with the full window's transcripts (a window
simply cut after the audio makes Whisper repeat short utterances). `ASR(audio_ctx=False)` encodes all 1500
frames.

Streaming: Silero VAD cuts the audio into utterances. While an utterance goes on, every `partial_step`
seconds it is decoded again with the already-committed tokens forced as a prefix; the tokens two successive
hypotheses agree on are committed (LocalAgreement-2, Machacek et al. 2023, whisper_streaming), up to a word
boundary, so partial text only grows and never flickers. At the endpoint the utterance is decoded once more
with no forced prefix (`final_uses_prefix=False`), giving the final text, which may still correct the partials.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field

import numpy as np
from edgerun.errors import EdgerunError
from edgerun.runtime.audio.features import N_SAMPLES, SAMPLE_RATE, log_mel
from edgerun.runtime.audio.resample import resample
from edgerun.runtime.audio.vad import VAD, SileroModel, SpeechSegment, detect_speech
from edgerun.runtime.audio.wavio import check_rate, to_mono
from edgerun.runtime.llm.repetition import repeating_period
from edgerun.runtime.models.whisper import SILENCE_FLOOR, SilenceContext, Whisper, load_whisper


def cache_dir() -> str:
    """Where exported default artifacts live (EDGERUN_CACHE or ~/.cache/edgerun)."""
    return os.environ.get("EDGERUN_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "edgerun")


def default_asr_model(weights: str = "int8") -> str:
    """The packaged Whisper base as an artifact; exported (a few seconds) on first use."""
    from edgerun.export.artifact import FORMAT_VERSION
    from edgerun.export.whisper_export import export_whisper

    path = os.path.join(cache_dir(), f"whisper-base-{weights}-v{FORMAT_VERSION}.edge")  # a new format re-exports
    if not os.path.isfile(os.path.join(path, "manifest.json")):
        os.makedirs(cache_dir(), exist_ok=True)
        export_whisper(None, path, weights=weights)
    return path


@dataclass
class Decoded:
    """One Whisper decode: new tokens (after the forced prefix) and their scores."""

    tokens: list[int]
    avg_logprob: float  # Whisper's: the log-probs of the tokens and of the end token, / (len(tokens) + 1)
    no_speech_prob: float
    seconds: float

    @property
    def silent(self) -> bool:
        """Whisper's no-speech rule (openai-whisper, faster-whisper): no-speech probability > 0.6 while the text
        is unlikely (average log-prob < -1)."""
        return self.no_speech_prob > 0.6 and self.avg_logprob < -1.0


@dataclass
class ASRResult:
    """A partial or final recognition result for one utterance."""

    text: str  # what to show: stable + unstable for partials, the final text for finals
    is_final: bool
    stable: str = ""  # committed text (only grows during an utterance)
    unstable: str = ""  # latest tentative tail
    start: float = 0.0  # utterance start/end (s from stream start)
    end: float = 0.0
    segment: int = 0
    no_speech: bool = False
    compute_seconds: float = 0.0  # time spent producing this result after its endpoint
    timings: dict = field(default_factory=dict)
    endpoint_delay: float = 0.0  # finals: audio seconds from the end of speech to the endpoint decision
    tentative: bool = False  # decoded at the first silence: the final's text if no speech comes back


@dataclass
class Transcript:
    """The result of transcribing a whole signal."""

    text: str
    segments: list[ASRResult]
    duration: float
    compute_seconds: float

    @property
    def no_speech(self) -> bool:
        return not self.text.strip()

    @property
    def rtf(self) -> float:
        return self.compute_seconds / self.duration if self.duration else 0.0


# audio before the speech onset the VAD heard that a final decodes: `transcribe` gets its VAD's pad + its window
# pad (300 ms), a stream asks its VAD for the same
VAD_PAD_MS, WINDOW_PAD_S = 100, 0.2
LEAD_CONTEXT_MS = VAD_PAD_MS + int(WINDOW_PAD_S * 1000)


class ASR:
    """Whisper speech recognizer (greedy decoding, English by default)."""

    def __init__(self, model: str | None = None, language: str = "en", final_full_window: bool = True,
                 final_uses_prefix: bool = False, audio_ctx: bool = True):
        path = model or default_asr_model()
        self.model_path = path
        self.model, self.manifest, tok_json = load_whisper(path)
        from tokenizers import Tokenizer

        self.tokenizer = Tokenizer.from_str(tok_json)
        cfg = self.manifest["config"]
        tid = self.tokenizer.token_to_id
        self.eot = tid("<|endoftext|>")
        self.sot = tid("<|startoftranscript|>")
        lang = tid(f"<|{language}|>")
        if lang is None:
            raise EdgerunError(f"Whisper does not know language '{language}'; use a code like en, de, fr")
        self.prompt = [self.sot, lang, tid("<|transcribe|>"), tid("<|notimestamps|>")]
        self.no_speech_id = tid("<|nospeech|>") or tid("<|nocaptions|>")
        n_vocab = self.model.args.n_vocab
        sup = np.zeros(n_vocab, bool)
        sup[[i for i in cfg.get("suppress_ids", []) if 0 <= i < n_vocab]] = True
        sup[self.eot + 1 :] = True  # every special/timestamp token after <|endoftext|>
        self.suppress = sup
        self.suppress_begin = sup.copy()
        self.suppress_begin[[i for i in cfg.get("suppress_ids_begin", []) if 0 <= i < n_vocab]] = True
        self.final_full_window = final_full_window
        self.final_uses_prefix = final_uses_prefix
        self._vad_model: SileroModel | None = None
        self.max_new_tokens = self.model.args.n_text_ctx // 2
        t0 = time.perf_counter()
        self.model.prepare()
        # audio_ctx: a "30-s window" is encoded on the audio's own frames (+ 1 s) with the cached silence
        # context standing in for the rest (models/whisper.py SilenceContext); False: all 1500 frames
        self.silence = self._silence_context() if audio_ctx else None
        self.prepare_seconds = time.perf_counter() - t0

    def _silence_context(self) -> SilenceContext:
        """The model's silence context: read from the cache folder (37 MB for base) when this artifact's was kept
        there, else computed (one full-window encode, ~1-3 s) and kept."""
        import hashlib

        try:
            with open(os.path.join(self.model_path, "manifest.json"), "rb") as fh:
                key = hashlib.sha256(fh.read() + f"|floor {SILENCE_FLOOR}|v1".encode()).hexdigest()[:16]
        except OSError:
            return self.model.silence_context()
        path = os.path.join(cache_dir(), f"whisper-silence-{key}.npz")
        if os.path.isfile(path):
            try:
                return SilenceContext.load(path, self.model.args)
            except (OSError, ValueError, KeyError, EOFError):
                pass  # unreadable or stale: computed again below
        ctx = self.model.silence_context()
        try:
            os.makedirs(cache_dir(), exist_ok=True)
            ctx.save(path)
        except OSError:
            pass  # a read-only cache costs the computation at each load, nothing else
        return ctx

    # ------------------------------------------------------------------ core
    def encode(self, audio16k: np.ndarray, full_window: bool = True) -> np.ndarray:
        """Encoder output for up to 30 s of 16 kHz audio: the 30-s window (with `audio_ctx`, only the audio's
        frames are computed and the cached silence context stands in for the rest: pass the same `full_window`
        to `new_state`), or the window cut 1 s after the audio (streaming partials)."""
        a = np.asarray(audio16k, np.float32)[:N_SAMPLES]
        if full_window and self.silence is not None:
            # the audio's own frames, rounded up to 0.1 s: no margin of computed silence (with the context, a
            # margin made the encoder output further from the full window's on LibriVox, not closer)
            n = min(N_SAMPLES, max(1, int(np.ceil(len(a) / 1600))) * 1600)
            # + 2 encoder frames of the zero padding: the convolutions' right context, as in the full window
            mel = log_mel(a, self.model.args.n_mels, pad_to=min(N_SAMPLES, n + 640))
            return self.model.encode(mel, silence=self.silence, frames=n // 320)
        short = min(N_SAMPLES, (int(np.ceil(len(a) / SAMPLE_RATE)) + 1) * SAMPLE_RATE)
        return self.model.encode(log_mel(a, self.model.args.n_mels, pad_to=N_SAMPLES if full_window else short))

    def new_state(self, enc: np.ndarray, full_window: bool = True):
        """Decoder state for an encoder output of `encode(..., full_window)`."""
        return self.model.new_state(enc, self.silence if full_window else None)

    def decode(self, audio16k: np.ndarray, prefix: list[int] | None = None, full_window: bool = True,
               max_new_tokens: int | None = None, draft: list[int] | None = None) -> Decoded:
        """Greedy decoding of one window, continuing after the forced `prefix` tokens.

        `draft`: tokens the text probably continues with (a stream's latest partial hypothesis). They go through
        the decoder in the same batched call as the prompt, and each is kept while it is the token greedy decoding
        picks from that call's logits; decoding goes on one token at a time from the first one that is not. The
        result is greedy decoding's (up to float rounding between the batched and one-token kernels), in fewer
        sequential decoder steps."""
        t0 = time.perf_counter()
        m: Whisper = self.model
        enc = self.encode(audio16k, full_window)
        state = self.new_state(enc, full_window)
        prefix = list(prefix or [])
        head = self.prompt + prefix
        draft = list(draft or [])[: max(0, m.args.n_text_ctx - len(head) - 1)]
        # logits of position 0 (no-speech) and from the last head token on (the next tokens); not of the prompt's
        sel = sorted({0, *range(len(head) - 1, len(head) + len(draft))})
        at = {r: i for i, r in enumerate(sel)}
        logits = m.decode(head + draft, state, rows=sel)  # (len(sel), n_vocab)
        p0 = _log_softmax(logits[0])
        no_speech = float(np.exp(p0[self.no_speech_id])) if self.no_speech_id is not None else 0.0
        last = logits[at[len(head) - 1]]
        limit = min(max_new_tokens or self.max_new_tokens, m.args.n_text_ctx - len(head) - 1)
        matched, in_draft = 0, bool(draft)  # the state holds head + draft; valid up to len(head) + matched
        out: list[int] = []
        logprob = 0.0
        for i in range(limit):
            lp = _log_softmax(last)
            lp[self.suppress_begin if (i == 0 and not prefix) else self.suppress] = -np.inf
            tok = int(np.argmax(lp))
            logprob += float(lp[tok])  # the end token's too, as Whisper's average counts it
            if tok == self.eot:
                break
            out.append(tok)
            period = repeating_period(out, times=4, max_period=8)  # a Whisper loop
            if period:
                del out[len(out) - period * 3 :]  # keep one copy of the looped pattern
                break
            cut = _repeated_ngram(prefix + out)
            if cut:
                del out[len(out) - cut :]
                break
            if in_draft and matched < len(draft) and tok == draft[matched]:
                matched += 1
                last = logits[at[len(head) - 1 + matched]]
                continue
            if in_draft:  # forget the draft tokens after the last one kept
                state.length = len(head) + matched
                in_draft = False
            last = m.decode([tok], state)[-1]
        return Decoded(out, logprob / (len(out) + 1), no_speech, time.perf_counter() - t0)

    def text(self, tokens: list[int]) -> str:
        """Token ids -> text (special tokens dropped)."""
        return self.tokenizer.decode([t for t in tokens if t < self.eot]).strip() if tokens else ""

    def vad_model(self) -> SileroModel:
        """A Silero model shared by this recognizer's streams (loaded on first use)."""
        if self._vad_model is None:
            self._vad_model = SileroModel()
        return self._vad_model

    # ------------------------------------------------------------------ whole signals
    def transcribe(self, samples, sample_rate: int = SAMPLE_RATE, use_vad: bool = True) -> Transcript:
        """Transcribe a whole signal (any rate, mono or stereo). Silence or empty input -> empty text."""
        t0 = time.perf_counter()
        sr = check_rate(sample_rate)
        x = to_mono(samples)
        if sr != SAMPLE_RATE:
            x = resample(x, sr, SAMPLE_RATE)
        dur = len(x) / SAMPLE_RATE
        if len(x) == 0 or not np.any(x):
            return Transcript("", [], dur, time.perf_counter() - t0)
        if use_vad:
            windows = _merge_segments(detect_speech(x, SAMPLE_RATE, speech_pad_ms=VAD_PAD_MS), x)
        else:
            windows = [SpeechSegment(s / SAMPLE_RATE, min(len(x), s + N_SAMPLES) / SAMPLE_RATE, x[s : s + N_SAMPLES])
                       for s in range(0, len(x), N_SAMPLES)]
        results = []
        for i, w in enumerate(windows):
            d = self.decode(w.samples, full_window=True)
            silent = d.silent
            text = "" if silent else self.text(d.tokens)
            results.append(ASRResult(text, True, text, "", w.start, w.end, i, silent or not text, d.seconds))
        text = " ".join(r.text for r in results if r.text)
        return Transcript(text, results, dur, time.perf_counter() - t0)

    def create_stream(self, **kw) -> ASRStream:
        """A new streaming recognizer (own VAD state; model weights shared)."""
        return ASRStream(self, **kw)


class ASRStream:
    """Streaming recognition: `accept_waveform(sr, samples)` -> partial and final `ASRResult`s."""

    def __init__(self, asr: ASR, partial_step: float = 1.0, min_partial_audio: float = 1.0,
                 vad: VAD | None = None, early_silence: float | None = 0.2, tentative_silence: float | None = 0.0,
                 end_pad_ms: int = 32, speech_pad_ms: int = LEAD_CONTEXT_MS, **vad_kw):
        self.asr = asr
        # a segment starts `speech_pad_ms` before the speech the VAD heard, as `transcribe` cuts it: the same lead
        # context as offline (it costs no latency; only the end pad does)
        # segments end `end_pad_ms` after the first window the VAD scores silent (Silero is 0-110 ms late, so the
        # word's tail is in): the tentative decode can start at the first silent window (32 ms of silence)
        self.vad = vad or VAD(model=asr.vad_model(), speech_pad_ms=speech_pad_ms, end_pad_ms=end_pad_ms, **vad_kw)
        self.partial_step = partial_step
        self.min_partial_audio = min_partial_audio
        self.early_silence = early_silence
        # the utterance is decoded once this much silence follows it, and at least the VAD's end pad (the
        # segment is then the same audio the final cuts): a tentative result a caller may act on at once
        self.tentative_silence = (None if early_silence is None or tentative_silence is None
                                  else min(max(tentative_silence, self.vad.end_pad / SAMPLE_RATE), early_silence))
        self.reset()

    def reset(self) -> None:
        """Forget all audio and state (the next sample is t = 0 again)."""
        self.vad.reset()
        self.segment = 0
        self._new_utterance()

    def _new_utterance(self) -> None:
        self.committed: list[int] = []
        self.prev_tail: list[int] = []
        self.last_partial_len = 0
        self.last_partial_text = ""
        self._early = None  # (segment end, Decoded, text) decoded during the trailing silence

    @property
    def in_speech(self) -> bool:
        """True while an utterance is going on (VAD)."""
        return self.vad.in_speech

    def accept_waveform(self, sample_rate: int, samples) -> list[ASRResult]:
        """Feed audio; returns the results it produced (partials and/or finals), in order."""
        out: list[ASRResult] = []
        for seg in self.vad.accept_waveform(sample_rate, samples):
            out.append(self._final(seg))
        early = self._early_endpoint()
        if early is not None:
            out.append(early)
        if self.vad.in_speech and self.vad.trailing_silence == 0.0:
            audio = self.vad.current_audio()
            n = len(audio)
            if (n >= self.min_partial_audio * SAMPLE_RATE
                    and n - self.last_partial_len >= self.partial_step * SAMPLE_RATE):
                r = self._partial(audio)
                if r is not None:
                    out.append(r)
        return out

    def input_finished(self) -> list[ASRResult]:
        """End of input: close the utterance in progress and return its final result."""
        return [self._final(seg) for seg in self.vad.flush()]

    # ------------------------------------------------------------------ policy
    def _partial(self, audio: np.ndarray) -> ASRResult | None:
        asr = self.asr
        self.last_partial_len = len(audio)
        # with the silence context (audio_ctx) as the finals: a window cut 1 s after a short audio makes Whisper
        # repeat itself (9 of 20 short commands, benchmarks/asr_short_clips.py)
        d = asr.decode(audio, prefix=self.committed, full_window=asr.silence is not None, max_new_tokens=64,
                       draft=self.prev_tail)
        hyp = d.tokens
        # LocalAgreement-2: commit the common prefix of this and the previous tail, up to a word boundary
        agree = 0
        for a, b in zip(hyp, self.prev_tail, strict=False):
            if a != b:
                break
            agree += 1
        agree = min(agree, len(hyp) - 1)  # never the last token (the audio may cut it mid-word)
        while agree > 0 and not self._starts_word(hyp[agree]):
            agree -= 1
        self.committed += hyp[:agree]
        self.prev_tail = hyp[agree:]
        stable = asr.text(self.committed)
        unstable = asr.text(hyp[agree:]) if hyp[agree:] else ""
        text = (stable + " " + unstable).strip() if unstable else stable
        start = self.vad.speech_start or 0.0
        return ASRResult(text, False, stable, unstable, start, self.vad.time, self.segment, False, d.seconds)

    def _starts_word(self, tok: int) -> bool:
        piece = self.asr.tokenizer.id_to_token(tok) or ""
        return piece.startswith("Ġ") or piece.startswith(" ") or not piece[:1].isalnum()

    def _early_endpoint(self) -> ASRResult | None:
        """Endpointing that does not always wait the VAD's full silence.

        Once speech has been followed by `tentative_silence` seconds of silence (at least the VAD's end pad, 32
        ms: the segment is then exactly the audio a final would cut), the utterance is decoded at once and returned
        as a *tentative* result: a caller may start working on it (the assistant prepares its reply) while the
        silence goes on.
        At `early_silence` seconds (200 ms), if that text is a complete sentence (ends in . ? or !), the
        endpoint is declared with that text; otherwise the decode is kept, and the final at the VAD endpoint
        reuses it when no speech came back in between (the same audio), so no final costs a decode after
        its endpoint unless the decode itself is slower than the silence it overlaps.
        """
        v = self.vad
        if self.early_silence is None or not v.in_speech:
            return None
        silence = v.trailing_silence
        if silence < self.tentative_silence:
            return None
        seg = v.pending_segment()
        if seg is None:
            return None
        if self._early is None or self._early[0] != seg.end:  # first silence after this speech: decode it now
            d, text, prefix = self._decode_final(seg)
            self._early = (seg.end, d, text, prefix, silence)
            if silence < self.early_silence:
                return ASRResult(text, False, text, "", seg.start, seg.end, self.segment, not text, d.seconds,
                                 tentative=True)
        _, d, text, prefix, decoded_at = self._early
        if silence >= self.early_silence and text.rstrip().endswith((".", "?", "!")) \
                and not text.rstrip().endswith("..."):
            closed = v.close_now()
            if closed is not None:  # in real time the decode ran from `decoded_at` into this silence
                r = self._result(closed, d, text, prefix, compute=max(0.0, decoded_at + d.seconds - silence),
                                 delay=silence)
                r.timings["decoded_during_silence"] = True
                return r
        return None

    def _decode_final(self, seg: SpeechSegment):
        asr = self.asr
        prefix = self.committed if asr.final_uses_prefix else []
        draft = (self.committed + self.prev_tail)[len(prefix) :]  # the partials' text, checked token by token
        d = asr.decode(seg.samples, prefix=prefix, full_window=asr.final_full_window, draft=draft)
        silent = not prefix and d.silent
        return d, ("" if silent else asr.text(prefix + d.tokens)), prefix

    def _result(self, seg: SpeechSegment, d: Decoded, text: str, prefix, compute: float, delay: float) -> ASRResult:
        silent = not text
        r = ASRResult(text, True, text, "", seg.start, seg.end, self.segment, silent, compute, endpoint_delay=delay)
        self.segment += 1
        self._new_utterance()
        return r

    def _final(self, seg: SpeechSegment) -> ASRResult:
        wait = max(0.0, self.vad.time - seg.end + self.vad.end_pad / SAMPLE_RATE)  # silence heard before the endpoint
        if self._early is not None and self._early[0] == seg.end:  # decoded during the silence: same audio
            _, d, text, prefix, silence = self._early
            # in real time that decode ran from `silence` into the wait; the endpoint is ready when both are done
            r = self._result(seg, d, text, prefix, compute=max(0.0, silence + d.seconds - wait), delay=wait)
            r.timings["decoded_during_silence"] = True  # compute_seconds: what real time would still wait
            return r
        d, text, prefix = self._decode_final(seg)
        return self._result(seg, d, text, prefix, compute=d.seconds, delay=wait)


# ---------------------------------------------------------------------- helpers


def _log_softmax(x: np.ndarray) -> np.ndarray:
    x = x.astype(np.float32, copy=True)
    m = x.max()
    return x - (m + np.log(np.exp(x - m).sum()))


def _repeated_ngram(tokens: list[int], n: int = 6) -> int:
    """When the last `n` tokens already occurred earlier (Whisper starting the text over), return `n`
    (the number of tokens to drop), else 0."""
    if len(tokens) < 2 * n:
        return 0
    tail = tokens[-n:]
    for i in range(len(tokens) - 2 * n + 1):
        if tokens[i : i + n] == tail:
            return n
    return 0


def _merge_segments(segs: list[SpeechSegment], x: np.ndarray, max_s: float = 28.0,
                    pad_s: float = WINDOW_PAD_S) -> list[SpeechSegment]:
    """Merge VAD segments into windows of at most `max_s` seconds, with `pad_s` of context around."""
    out: list[SpeechSegment] = []
    cur: list[float] | None = None
    for s in segs:
        if cur is not None and s.end - cur[0] <= max_s:
            cur[1] = s.end
            continue
        if cur is not None:
            out.append(cur)
        cur = [s.start, s.end]
    if cur is not None:
        out.append(cur)
    wins = []
    for a, b in out:
        i0 = max(0, int((a - pad_s) * SAMPLE_RATE))
        i1 = min(len(x), int((b + pad_s) * SAMPLE_RATE))
        wins.append(SpeechSegment(i0 / SAMPLE_RATE, i1 / SAMPLE_RATE, x[i0:i1]))
    return wins


__all__ = ["ASR", "ASRResult", "ASRStream", "Transcript", "default_asr_model"]
