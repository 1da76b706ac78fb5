"""Voice assistant: phrase grouping, headless files, and the live loop through a fake ALSA device."""

import os
import re
import shutil
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from edgerun.runtime.audio.assistant import _reply_is_done, llm_phrases


def test_llm_phrases_groups_stream():
    pieces = ["Paris", " is the", " capital.", " It has", " many, many", " museums, and", " parks!", " Bye"]
    assert list(llm_phrases(iter(pieces))) == [
        "Paris is the capital.", "It has many, many museums,", "and parks!", "Bye"]
    assert list(llm_phrases(iter([]))) == []


SPEECH = os.path.join(os.path.dirname(__file__), "fixtures", "speech")


def spoken(name: str) -> np.ndarray:
    """A question spoken by the packaged Piper voice, kept as a file (Piper samples noise: a new synthesis may be
    heard differently), 22.05 kHz, 0.1 s of silence before the speech and none after its last voiced sample."""
    from edgerun.runtime.audio.wavio import read_audio

    x, sr = read_audio(os.path.join(SPEECH, f"{name}.wav"))
    assert sr == 22050
    return x


@pytest.fixture(scope="module")
def question_wav(tmp_path_factory):
    from edgerun.runtime.audio.wavio import write_wav

    d = tmp_path_factory.mktemp("assistant")
    q = spoken("capital_of_france")
    p = str(d / "question.wav")
    write_wav(p, np.concatenate([np.zeros(11025, np.float32), q, np.zeros(22050, np.float32)]), 22050)
    return p


@pytest.mark.model
def test_a_voice_reply_ends():
    assert not _reply_is_done(["Paris is the capital of France."], 2)
    assert _reply_is_done(["Paris is the capital.", "It is big."], 2)
    assert _reply_is_done(["I like cats,", "and dogs,", "I like cats,"], 5)  # a loop
    assert not _reply_is_done(["I like cats,", "and dogs,"], 2)


def test_headless_files(question_wav, tmp_path):
    from edgerun.runtime.audio.assistant import assistant
    from edgerun.runtime.audio.wavio import read_audio

    lines = []
    out = str(tmp_path / "reply.wav")
    png = tmp_path / "timeline.png"
    turns = assistant(input=question_wav, output=out, max_tokens=40, echo=lines.append, timeline=str(png))
    assert len(turns) == 1
    t = turns[0]
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and f"wrote {png}" in lines
    kinds = [e[1] for e in t.events]
    assert "token" in kinds and "phrase" in kinds and "audio" in kinds
    assert kinds.index("token") < kinds.index("phrase")
    assert "capital" in t.transcript.lower() and "france" in t.transcript.lower()
    assert t.reply and 0 < t.first_audio_seconds < 60
    y, sr = read_audio(out)
    assert sr == 22050 and len(y) / sr > 0.5 and np.abs(y).max() > 0.05
    assert any(s.startswith("you: ") for s in lines) and any(s.startswith("assistant: ") for s in lines)


@pytest.mark.model
def test_headless_silent_input_is_clean(tmp_path):
    from edgerun.runtime.audio.assistant import assistant
    from edgerun.runtime.audio.wavio import write_wav

    p = write_wav(str(tmp_path / "silent.wav"), np.zeros(16000, np.float32), 16000)
    lines = []
    assert assistant(input=p, output=str(tmp_path / "r.wav"), echo=lines.append) == []
    assert lines == ["(no speech in the input)"]


ASOUNDRC = """
pcm.!default {{ type asym; playback.pcm "er_out"; capture.pcm "er_in" }}
pcm.er_out {{ type plug; slave {{ pcm "er_out_file"; rate 22050; channels 1; format S16_LE }} }}
pcm.er_out_file {{ type file; slave.pcm "null"; file "{out}"; format "raw" }}
pcm.er_in {{ type plug; slave {{ pcm "er_in_file"; rate 16000; channels 1; format S16_LE }} }}
pcm.er_in_file {{ type file; slave.pcm "null"; file "/dev/null"; infile "{inp}"; format "raw" }}
"""


def _fake_alsa(tmp_path, pcm16k: np.ndarray) -> dict:
    """Environment whose ALSA default device reads `pcm16k` as the microphone and writes the speaker to a file.

    Written before sounddevice (PortAudio) is imported: the test runs the loop in a child process."""
    if not os.path.exists("/usr/share/alsa/alsa.conf"):
        pytest.skip("ALSA configuration missing (apt-get install libportaudio2 libasound2)")
    inp, out = tmp_path / "mic.raw", tmp_path / "speaker.raw"
    (np.clip(pcm16k, -1, 1) * 32767).astype("<i2").tofile(inp)
    rc = tmp_path / "asoundrc"
    rc.write_text(ASOUNDRC.format(out=out, inp=inp))
    env = dict(os.environ, ALSA_CONFIG_PATH=f"/usr/share/alsa/alsa.conf:{rc}", OPENBLAS_NUM_THREADS="1")
    probe = subprocess.run([sys.executable, "-c", "import sounddevice as sd; sd.query_devices(None, 'input')"],
                           env=env, capture_output=True, text=True)
    if probe.returncode != 0:
        pytest.skip(f"PortAudio/ALSA unavailable: {probe.stderr.strip().splitlines()[-1:]}")
    return dict(env=env, out=out)


@pytest.mark.model
def test_live_loop_fake_alsa_with_barge_in(question_wav, tmp_path):
    from edgerun.runtime.audio.resample import resample
    from edgerun.runtime.audio.wavio import read_audio

    q, sr = read_audio(question_wav)
    second = spoken("berlin_instead")
    mic = np.concatenate([resample(q, sr, 16000), np.zeros(16000, np.float32),
                          resample(second, 22050, 16000), np.zeros(16000 * 3, np.float32)])
    fake = _fake_alsa(tmp_path, mic)
    code = textwrap.dedent("""
        from edgerun.runtime.audio.assistant import assistant
        turns = assistant(seconds=40, max_turns=2, max_tokens=60)
        for t in turns:
            print("TURN", repr(t.transcript), t.interrupted, round(t.first_audio_seconds, 3))
    """)
    try:
        r = subprocess.run([sys.executable, "-c", code], env=fake["env"], capture_output=True, text=True,
                           timeout=300)
    finally:
        spk = np.fromfile(fake["out"], dtype="<i2") if fake["out"].exists() else np.zeros(0, np.int16)
        fake["out"].unlink(missing_ok=True)  # the fake speaker runs free and writes a lot of silence
    assert r.returncode == 0, r.stderr[-2000:]
    turns = [line for line in r.stdout.splitlines() if line.startswith("TURN")]
    assert len(turns) == 2, r.stdout
    assert "capital" in turns[0].lower() and "berlin" in turns[1].lower()
    assert turns[0].split()[-2] == "True", "the second utterance must barge in on the first reply"
    assert spk.size and np.abs(spk).max() > 1000  # the reply reached the speaker


def test_missing_device_one_line(tmp_path):
    if shutil.which("edgerun") is None:
        pytest.skip("edgerun console script not installed")
    rc = tmp_path / "asoundrc"
    rc.write_text("pcm.!default { type hw; card 7 }\n")
    env = dict(os.environ, ALSA_CONFIG_PATH=f"/usr/share/alsa/alsa.conf:{rc}")
    r = subprocess.run(["edgerun", "assistant", "--input-device", "no-such-mic"], env=env, capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 1
    err = r.stderr.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error:") and "Traceback" not in r.stderr


ASSISTANT_UNDER_BUDGET = r"""
import sys
from edgerun.runtime.memory import peak_rss_bytes, reset_peak_rss, rss_bytes
from edgerun.runtime.audio.assistant import assistant
base = rss_bytes()
reset_peak_rss()
lines = []
assistant(input=sys.argv[1], output=sys.argv[2], ram=sys.argv[3], max_tokens=24, echo=lines.append)
print("\n".join(lines))
print("GROWTH", peak_rss_bytes() - base)
"""


@pytest.mark.model
def test_headless_under_one_budget_for_all_models(question_wav, tmp_path):
    """--ram covers ASR + TTS + LLM: the speech models are measured at work, the LLM gets the rest."""
    import subprocess
    import sys

    from edgerun.runtime.memory import parse_budget

    ram = "500MB"
    out = subprocess.run([sys.executable, "-c", ASSISTANT_UNDER_BUDGET, question_wav, str(tmp_path / "r.wav"), ram],
                         capture_output=True, text=True)  # fmt: skip
    assert out.returncode == 0, out.stderr[-2000:]
    assert "capital" in out.stdout.lower()
    mem = [s for s in out.stdout.splitlines() if s.startswith("memory: peak")]
    assert mem and "speech models" in mem[0], out.stdout
    growth = int(out.stdout.split("GROWTH")[-1])
    assert 0 < growth <= parse_budget(ram), out.stdout


@pytest.mark.model
def test_budget_below_speech_models_fails_in_one_line(question_wav, tmp_path):
    """In a fresh process (what a user runs): one line, exit code 1, the total minimum stated."""
    out = subprocess.run([sys.executable, "-c", "from edgerun.cli import main; main()", "assistant", "--input",
                          question_wav, "--output", str(tmp_path / "r.wav"), "--ram", "200MB"],
                         capture_output=True, text=True)  # fmt: skip
    assert out.returncode == 1, out.stderr[-2000:]
    msg = (out.stdout + out.stderr).strip()
    assert "\n" not in msg and "Traceback" not in msg, msg
    assert re.search(r"below the assistant's minimum: .* use ram of at least", msg), msg


@pytest.fixture(scope="module")
def realtime_assistant():
    from edgerun.runtime.audio.assistant import Assistant

    return Assistant(max_tokens=24)


def _last_voiced(x: np.ndarray) -> int:
    return int(np.flatnonzero(np.abs(x) > 0.01)[-1]) + 1


@pytest.mark.model
def test_realtime_loop_never_speaks_before_the_endpoint(realtime_assistant, tmp_path):
    """In real time, with the reply prepared during the silence: one turn, and its first audio reaches the
    speaker only after the user's speech ended and the endpoint's silence was heard."""
    from edgerun.runtime.audio.wavio import write_wav

    a = realtime_assistant
    a.history.clear()
    sr = a.tts.sample_rate
    q = spoken("capital_of_france")
    p = write_wav(str(tmp_path / "q.wav"), np.concatenate([np.zeros(sr // 2, np.float32), q,
                                                           np.zeros(sr * 3 // 2, np.float32)]), sr)
    speech_end = (sr // 2 + _last_voiced(q)) / sr
    turns, t0 = a.run_realtime(p)
    assert len(turns) == 1 and "france" in turns[0].transcript.lower()
    t = turns[0]
    assert t.first_audio_wall is not None and t.reply
    assert t.first_audio_wall - (t0 + speech_end) >= 0.15  # the VAD heard at least the endpoint's silence
    assert len(a.history) == 2 and a.history[0]["content"] == t.transcript


@pytest.mark.model
def test_realtime_loop_drops_a_reply_when_the_user_speaks_on(realtime_assistant, tmp_path):
    """A pause long enough for a tentative transcript but shorter than the endpoint: the reply prepared for
    the first half is dropped (not spoken, not in the history) and the whole question is answered."""
    from edgerun.runtime.audio.wavio import write_wav

    a = realtime_assistant
    a.history.clear()
    sr = a.tts.sample_rate
    part1, part2 = spoken("tell_me_the_capital"), spoken("of_germany_please")[int(0.1 * sr) :]
    x = np.concatenate([np.zeros(sr // 2, np.float32), part1, np.zeros(int(0.17 * sr), np.float32), part2,
                        np.zeros(sr * 3 // 2, np.float32)])
    p = write_wav(str(tmp_path / "q2.wav"), x, sr)
    before = a.dropped_replies
    turns, _ = a.run_realtime(p)
    assert a.dropped_replies > before, "the pause produced no tentative transcript"
    assert len(turns) == 1 and "germany" in turns[0].transcript.lower()
    assert len(a.history) == 2


@pytest.mark.model
def test_headless_realtime_reports_latency_from_end_of_speech(question_wav, tmp_path):
    from edgerun.runtime.audio.assistant import assistant
    from edgerun.runtime.audio.wavio import read_audio

    lines = []
    out = str(tmp_path / "reply.wav")
    turns = assistant(input=question_wav, output=out, max_tokens=24, echo=lines.append, realtime=True)
    assert len(turns) == 1 and turns[0].speech_end is not None
    lat = [s for s in lines if s.startswith("latency:")]
    assert lat and "after the end of speech (real time" in lat[0], lines
    ms = float(lat[0].split("audio ")[1].split(" ms")[0])
    assert ms >= 100  # at least the endpoint's silence
    y, sr = read_audio(out)
    assert len(y) / sr > 0.5
