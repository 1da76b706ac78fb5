"""Piper TTS: espeak-ng phonemes, Piper ids, phrase streaming on the packaged voice."""

import time
import unicodedata

import numpy as np
import pytest
from edgerun.runtime.audio.phonemes import phoneme_ids, phonemize, split_clauses
from edgerun.runtime.audio.tts import TTS, split_phrases


def test_split_clauses_keeps_abbreviations_and_numbers():
    got = split_clauses("Mr. Smith paid 3.50 dollars, then left! Why?")
    assert got == [("Mr. Smith paid 3.50 dollars", ","), ("then left", "!"), ("Why", "?")]


def test_split_phrases_first_is_short():
    text = "Well, this is a long sentence that keeps going, with clauses, and more clauses. Then a short one."
    ph = split_phrases(text)
    assert " ".join(ph).replace(" ", "") == " ".join(text.split()).replace(" ", "")
    assert len(ph[0].split()) <= 10 and len(ph) >= 3


def test_phoneme_ids_piper_layout():
    m = {"_": [0], "^": [1], "$": [2], "a": [5], "b": [6]}
    assert phoneme_ids("ab?", m) == [1, 0, 5, 0, 6, 0, 2]


@pytest.mark.model
def test_phonemize_espeak_ipa():
    got = phonemize("Hello world, how are you?")
    assert got.startswith(unicodedata.normalize("NFD", "həlˈoʊ wˈɜːld, h")) and got.endswith("juː?")
    assert phonemize("Hello world", backend="cli") == phonemize("Hello world", backend="lib")
    assert phonemize("") == ""


@pytest.mark.model
def test_stream_first_chunk_early_and_audio_sane():
    tts = TTS()
    text = "Hello there. This second sentence is a good deal longer than the first one, so it takes more time."
    t0 = time.perf_counter()
    chunks = []
    for c in tts.stream(text):
        c.timings["at"] = time.perf_counter() - t0
        chunks.append(c)
    assert len(chunks) >= 2 and chunks[0].text == "Hello there."
    assert chunks[0].timings["at"] < chunks[1].timings["at"]
    audio = np.concatenate([c.samples for c in chunks])
    dur = len(audio) / tts.sample_rate
    assert tts.sample_rate == 22050 and 4.0 < dur < 12.0
    assert np.sqrt(np.mean(audio**2)) > 0.01 and np.abs(audio).max() <= 1.0
    # a callback can stop generation after the first phrase
    seen = []
    got = tts.generate(text, callback=lambda c: bool(seen.append(c)))
    assert len(seen) == 1 and len(got) == len(seen[0].samples)  # VITS durations are sampled: compare to itself


@pytest.mark.model
def test_empty_text_gives_no_audio():
    tts = TTS()
    assert tts.generate("").size == 0
    assert list(tts.stream("  ...  ")) == []


@pytest.mark.model
def test_phoneme_ids_match_piper_tts():
    """Golden check against piper-tts's own phonemizer and id mapping, on texts where Debian's espeak-ng 1.51
    differs from the build Piper voices were trained with ("has been", "before", "three o'clock")."""
    piper = pytest.importorskip("piper")
    from edgerun.runtime.audio.tts import default_voice

    peer = piper.PiperVoice.load(default_voice())
    tts = TTS()
    for text in ["Hello world, how are you?", "The quick brown fox jumps over the lazy dog.",
                 "Please turn off the lights in the kitchen before you go to bed.",
                 "The meeting has been moved to Thursday at three o'clock."]:
        (sentence,) = peer.phonemize(text)  # one sentence: a list of phoneme characters
        assert phoneme_ids("".join(sentence), tts.voice.id_map) == peer.phonemes_to_ids(sentence)
        assert phonemize(text) == "".join(sentence)
        assert phoneme_ids(phonemize(text), tts.voice.id_map) == peer.phonemes_to_ids(sentence)
