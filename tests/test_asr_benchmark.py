"""Slow: the full LibriVox WER check against faster-whisper (benchmarks/asr_wer.py has the timings)."""

import pytest


def test_normalize_and_wer():
    from edgerun.bench.speech import normalize, wer

    assert normalize("Mr. Dashwood's favourite 3 ill-disposed men!") == [
        "mister", "dashwood's", "favorite", "three", "ill", "disposed", "men"]
    assert wer(["a b c d"], ["a x c"]) == 50.0


@pytest.mark.slow
@pytest.mark.model
def test_wer_within_one_point_of_faster_whisper():
    fw = pytest.importorskip("faster_whisper")
    from edgerun.bench.speech import load_clips, wer
    from edgerun.export.whisper_export import assemble_ct2_dir
    from edgerun.runtime.audio.asr import ASR
    from edgerun.runtime.audio.wavio import read_audio

    clips = load_clips()
    if not clips:
        pytest.skip("pocketsphinx-testdata not installed")
    refs = [r for _, r in clips]
    asr = ASR()
    peer = fw.WhisperModel(assemble_ct2_dir(), device="cpu", compute_type="int8", cpu_threads=2)
    ours = [asr.transcribe(*read_audio(f)).text for f, _ in clips]
    theirs = [" ".join(s.text for s in peer.transcribe(f, beam_size=5, language="en")[0]) for f, _ in clips]
    assert wer(refs, ours) <= wer(refs, theirs) + 1.0, (ours, theirs)
