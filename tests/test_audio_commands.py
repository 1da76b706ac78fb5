"""`edgerun speak` / `edgerun transcribe`: the command functions and the CLI's one-line errors."""

import os
import shutil
import subprocess
import wave

import numpy as np
import pytest
from edgerun.errors import EdgerunError
from edgerun.runtime.audio.commands import speak, transcribe
from edgerun.runtime.audio.wavio import write_wav


def _cli(*args, timeout=300):
    if shutil.which("edgerun") is None:
        pytest.skip("edgerun console script not installed")
    env = dict(os.environ, OPENBLAS_NUM_THREADS="1")
    return subprocess.run(["edgerun", *args], capture_output=True, text=True, timeout=timeout, env=env)


@pytest.mark.model
def test_speak_then_transcribe_round_trip(tmp_path):
    out = str(tmp_path / "s.wav")
    res = speak("Turn on the kitchen lights, please.", out)
    assert res["duration"] > 1.0 and 0 < res["first_audio_seconds"] <= res["synth_seconds"]
    text = transcribe(out)["text"].lower()
    assert "kitchen" in text, text  # VITS samples its durations/noise: only the key word is asserted
    lines = []
    streamed = transcribe(out, stream=True, echo=lines.append)
    assert "kitchen" in streamed["text"].lower() and any(s.startswith("[") for s in lines), lines


@pytest.mark.model
def test_silent_and_empty_files_are_no_speech(tmp_path):
    silent = write_wav(str(tmp_path / "silent.wav"), np.zeros(32000, np.float32), 16000)
    empty = write_wav(str(tmp_path / "empty.wav"), np.zeros(0, np.float32), 16000)
    for p in (silent, empty):
        for stream in (False, True):
            r = transcribe(p, stream=stream)
            assert r["no_speech"] and r["text"] == ""


def test_speak_nothing_is_an_error(tmp_path):
    with pytest.raises(EdgerunError, match="nothing to say"):
        speak("   ", str(tmp_path / "x.wav"))


def test_cli_errors_are_one_line(tmp_path):
    txt = tmp_path / "notes.wav"
    txt.write_text("not audio at all\n" * 10)
    low = tmp_path / "low.wav"
    with wave.open(str(low), "wb") as w:  # a valid WAV at a rate edgerun does not take
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(1000)
        w.writeframes(np.zeros(1000, "<i2").tobytes())
    (tmp_path / "zero.wav").write_bytes(b"")
    for path, pat in [(txt, "not a readable audio file"), (low, "unsupported sample rate"),
                      (tmp_path / "missing.wav", "does not exist"), (tmp_path / "zero.wav", "empty")]:
        r = _cli("transcribe", str(path))
        err = r.stderr.strip().splitlines()
        assert r.returncode == 1 and len(err) == 1 and pat in err[0] and "Traceback" not in r.stderr, r.stderr
    r = _cli("assistant", "--input", str(txt))
    assert r.returncode == 1 and "needs both" in r.stderr
