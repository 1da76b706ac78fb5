"""Fuzzing the readers of untrusted files: GGUF, artifact, safetensors/config.json, CTranslate2, WAV/FLAC.

Every input must end in the reader's one-line `EdgerunError` or be read; anything else is a crash.
A short coverage-guided run (atheris, a few seconds per reader) is part of the default suite; the long
one is `-m slow`. Inputs that crashed once are replayed here on every run (tests/fuzz/regressions/).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).parent
sys.path.insert(0, str(HERE))
TARGETS = ["gguf", "artifact", "safetensors", "ct2", "audio"]


def fuzz(target: str, seconds: int, *extra: str) -> dict:
    out = subprocess.run([sys.executable, str(HERE / "run.py"), target, "--seconds", str(seconds), *extra],
                         capture_output=True, text=True, timeout=seconds + 600)  # fmt: skip
    lines = out.stdout.strip().splitlines()
    assert lines, out.stderr[-3000:]
    r = json.loads(lines[-1])
    assert out.returncode == 0 and not r["crashes"], (r, out.stderr[-3000:])
    return r


@pytest.mark.parametrize("target", TARGETS)
def test_regressions_and_seeds(target):
    """Seeds are read without error; every kept crash input now gives an EdgerunError (or is read)."""
    import targets
    from edgerun.errors import EdgerunError

    fn, seeds = targets.TARGETS[target]
    for s in seeds():
        fn(s)
    kept = sorted(targets.regression_dir(target).glob("*"))
    for p in kept:
        try:
            fn(p.read_bytes())
        except EdgerunError as e:
            assert "\n" not in str(e)


def test_known_crashes_from_the_issue():
    """The issue's cases: mutated GGUF tokenizer merges, a manifest shape flipped (re-signed or not)."""
    import targets
    from edgerun.errors import CorruptFileError

    data = targets.tiny_gguf_bytes()
    i = data.index(b"h e")  # a merge whose right part becomes a piece that is not in the vocabulary
    with pytest.raises(CorruptFileError, match="merge"):
        targets.gguf_target(data[:i] + b"h \x01" + data[i + 3 :])
    m = targets.artifact_seeds()[0]
    j = m.index(b'"shape": [', m.index(b'"parts"'))  # the first tensor part's shape (the issue's reshape error)
    k = m.index(b"]", j)
    while not m[k - 1 : k].isdigit():
        k -= 1
    flipped = m[: k - 1] + bytes([m[k - 1] ^ 1]) + m[k:]  # a dimension's last digit changes (one bit)
    with pytest.raises(CorruptFileError, match="checksum mismatch"):
        targets.artifact_target(flipped)
    with pytest.raises(CorruptFileError, match="bytes|malformed|shape"):
        targets.artifact_target(bytes([1]) + flipped[1:])  # the same edit, re-signed: the structure check


@pytest.mark.parametrize("target", TARGETS)
def test_fuzz_short(target):
    r = fuzz(target, 3)
    assert r["execs"] > 0


@pytest.mark.slow
@pytest.mark.parametrize("target", TARGETS)
def test_fuzz_long(target):
    r = fuzz(target, 300)
    assert r["execs"] > 0


@pytest.mark.slow
@pytest.mark.parametrize("target", TARGETS)
def test_fuzz_random_mutator(target):
    """The seeded (non coverage-guided) mutator, where atheris is not installed, and as a cross-check."""
    r = fuzz(target, 120, "--random", "--runs", "2000")
    assert r["execs"] > 0
