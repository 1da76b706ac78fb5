"""Text -> IPA phonemes with espeak-ng (as Piper voices were trained), and Piper's phoneme-id mapping.

The espeak-ng shared library is called through ctypes (`espeak_TextToPhonemes`, IPA mode), which is what
piper-phonemize does; espeak-ng keeps global state, so calls are serialized by a lock. When the library
cannot be loaded the `espeak-ng` command line (`-q --ipa`) is used instead.
Clause punctuation is not returned by espeak-ng 1.51's API, so text is split at punctuation here and the
mark is appended after each clause's phonemes (piper-phonemize does the same with the terminator).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import re
import shutil
import subprocess
import threading
import unicodedata

from edgerun.errors import EdgerunError

_LOCK = threading.Lock()
_LIB = None
_LIB_VOICE: str | None = None
_BOUNDARY = re.compile(r"([.,;:!?]+)(?=\s|$)")
_ABBREV = {"mr", "mrs", "ms", "dr", "st", "prof", "sr", "jr", "vs", "etc", "e.g", "i.e", "no", "mt", "fig"}
_LANG_FLAG = re.compile(r"\([a-z\-]+\)")  # language-switch marks like (fr) that espeak inserts

AUDIO_OUTPUT_SYNCHRONOUS = 2
ESPEAK_CHARS_UTF8 = 1
ESPEAK_PHONEMES_IPA = 0x02


def _load_lib():
    global _LIB
    if _LIB is not None:
        return _LIB or None
    name = ctypes.util.find_library("espeak-ng") or "libespeak-ng.so.1"
    try:
        lib = ctypes.CDLL(name)
        lib.espeak_Initialize.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_char_p, ctypes.c_int]
        lib.espeak_Initialize.restype = ctypes.c_int
        lib.espeak_SetVoiceByName.argtypes = [ctypes.c_char_p]
        lib.espeak_SetVoiceByName.restype = ctypes.c_int
        lib.espeak_TextToPhonemes.argtypes = [ctypes.POINTER(ctypes.c_void_p), ctypes.c_int, ctypes.c_int]
        lib.espeak_TextToPhonemes.restype = ctypes.c_char_p
        if lib.espeak_Initialize(AUDIO_OUTPUT_SYNCHRONOUS, 0, None, 0) <= 0:
            raise OSError("espeak_Initialize failed")
        _LIB = lib
    except (OSError, AttributeError):
        _LIB = False
    return _LIB or None


def _lib_phonemes(lib, text: str, voice: str) -> str:
    global _LIB_VOICE
    if _LIB_VOICE != voice:
        if lib.espeak_SetVoiceByName(voice.encode()) != 0:
            raise EdgerunError(f"espeak-ng has no voice '{voice}'; install espeak-ng-data for that language")
        _LIB_VOICE = voice
    buf = ctypes.create_string_buffer(text.encode("utf-8"))
    ptr = ctypes.c_void_p(ctypes.addressof(buf))
    parts = []
    while ptr.value:
        out = lib.espeak_TextToPhonemes(ctypes.byref(ptr), ESPEAK_CHARS_UTF8, ESPEAK_PHONEMES_IPA)
        if out:
            parts.append(out.decode("utf-8", errors="ignore"))
    return " ".join(p.strip() for p in parts if p.strip())


def _cli_phonemes(text: str, voice: str) -> str:
    exe = shutil.which("espeak-ng")
    if exe is None:
        raise EdgerunError("espeak-ng is not installed; run: apt-get install espeak-ng")
    r = subprocess.run([exe, "-q", "--ipa", "-v", voice, "--", text], capture_output=True, text=True, timeout=30)
    if r.returncode != 0:
        raise EdgerunError(f"espeak-ng failed: {r.stderr.strip().splitlines()[-1] if r.stderr else r.returncode}")
    return " ".join(line.strip() for line in r.stdout.splitlines() if line.strip())


def split_clauses(text: str) -> list[tuple[str, str]]:
    """Split text at clause punctuation followed by a space or the end: [(words, mark), ...].

    Marks inside tokens ("3.50", "e.g.") and after common abbreviations ("Mr.") do not split.
    """
    text = " ".join(text.split())
    out: list[tuple[str, str]] = []
    start = 0
    for m in _BOUNDARY.finditer(text):
        before = text[start : m.start()]
        last = before.rsplit(" ", 1)[-1].lower()
        if m.group(1) == "." and (last in _ABBREV or (len(last) == 1 and last.isalpha())):
            continue
        out.append((before.strip(), m.group(1)))
        start = m.end()
    if text[start:].strip():
        out.append((text[start:].strip(), ""))
    return out


_PIPER = None


def _piper_phonemizer():
    """piper-tts's espeak-ng (its own build and data: what Piper voices were trained on), or None."""
    global _PIPER
    if _PIPER is None:
        try:
            from piper.phonemize_espeak import EspeakPhonemizer

            _PIPER = EspeakPhonemizer()
        except (ImportError, OSError):
            _PIPER = False
    return _PIPER or None


def phonemize(text: str, voice: str = "en-us", backend: str = "auto") -> str:
    """IPA phonemes of `text` with clause punctuation kept (e.g. 'həlˈoʊ wˈɜːld, ...').

    backend "auto": piper-tts's espeak-ng build and data when installed (the phonemes Piper voices were
    trained on: Debian's espeak-ng 1.51 differs on weak forms like "has been" and on linking), else the system
    libespeak-ng ("lib"), else the espeak-ng program ("cli")."""
    if backend in ("auto", "piper"):
        ph = _piper_phonemizer()
        if ph is not None:
            with _LOCK:
                sentences = ph.phonemize(voice, " ".join(text.split()))
            return unicodedata.normalize("NFD", " ".join("".join(s).strip() for s in sentences if s))
        if backend == "piper":
            raise EdgerunError("piper-tts is not installed; run: pip install piper-tts")
    out: list[str] = []
    for words, punct in split_clauses(text):
        if not words:
            if punct and out:
                out[-1] += punct[0]
            continue
        with _LOCK:
            lib = _load_lib() if backend in ("auto", "lib") else None
            if backend == "lib" and lib is None:
                raise EdgerunError("libespeak-ng could not be loaded; run: apt-get install espeak-ng")
            ph = _lib_phonemes(lib, words, voice) if lib is not None else _cli_phonemes(words, voice)
        ph = _LANG_FLAG.sub("", ph)
        if ph:
            out.append(ph + (punct[0] if punct else ""))
    return unicodedata.normalize("NFD", " ".join(out))


def phoneme_ids(phonemes: str, id_map: dict[str, list[int]]) -> list[int]:
    """Piper's mapping: ^ _ p1 _ p2 _ ... pn _ $ (BOS, pad after every phoneme, EOS); unknown ones skipped."""
    pad, bos, eos = id_map["_"], id_map["^"], id_map["$"]
    ids = list(bos) + list(pad)
    for ch in phonemes:
        if ch in id_map:
            ids += id_map[ch] + pad
    return ids + list(eos)
