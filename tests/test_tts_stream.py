"""Piper TTS streamed over windows of latent frames: the split graph (encoder / flow / decoder) against the
one-shot graph of the packaged voice, seam error, and voices whose graph does not split."""

import warnings

import numpy as np
import onnx
import pytest
from edgerun.errors import CorruptFileError, EdgerunError, UnsupportedError
from edgerun.runtime.audio.piper_split import find_split, split_voice
from edgerun.runtime.audio.tts import TTS, PiperVoice, default_voice

TEXT = "Please turn off the lights in the kitchen before you go to bed, and lock the door."


@pytest.fixture(scope="module")
def voice():
    v = PiperVoice()
    v.scales = np.array([0.0, 1.0, 0.0], np.float32)  # no sampling noise: one-shot and split runs comparable
    return v


def _snr(ref, x):
    return 10 * np.log10(np.sum(ref**2) / max(np.sum((ref - x) ** 2), 1e-30))


@pytest.mark.model
def test_split_is_cached_and_measured(voice):
    meta = voice.split
    assert meta is not None and voice.split_error is None
    assert meta["hop"] == 256 and meta["channels"] == 192
    assert 0 < meta["flow_context"] <= 48 and 0 < meta["decoder_context"] <= 24  # local: 32 and 12 on joe-medium
    # per stage: 4 coupling layers of 8 frames; conv_pre, then the decoder's three upsampling stages
    assert meta["flow_contexts"] == [8, 8, 8, 8] and meta["flow_context"] == 32
    assert len(meta["decoder_contexts"]) == 4 and sum(meta["decoder_contexts"]) == meta["decoder_context"]
    assert meta["decoder_contexts"][2:] == [1, 1] and meta["decoder_rates"] == [1, 1, 8, 64, 256]
    folder, again = split_voice(voice.model_path)
    assert again == meta and sorted(p.name for p in folder.iterdir()) == [
        "decoder.0.onnx", "decoder.1.onnx", "decoder.2.onnx", "decoder.3.onnx", "encoder.onnx",
        "flow.0.onnx", "flow.1.onnx", "flow.2.onnx", "flow.3.onnx", "meta.json"]


@pytest.mark.model
def test_split_models_give_the_one_shot_output(voice):
    """(a) encoder -> flow -> decoder on the whole phrase equals the original graph (deterministic scales)."""
    ids = voice.ids(TEXT)
    one = voice.synthesize_ids(ids)
    (whole, tm), = list(voice.stream_ids(ids, first_frames=10**6, max_frames=10**6))
    assert tm["last"] and len(whole) == len(one) == tm["frames"] * 256
    np.testing.assert_allclose(whole, one, rtol=0, atol=1e-5)


@pytest.mark.model
def test_streamed_windows_equal_one_shot(voice):
    """(b) windows with the measured contexts join to the one-shot output (seams within float rounding);
    with shorter contexts the error stays near the seams and is bounded."""
    ids = voice.ids(TEXT)
    one = voice.synthesize_ids(ids)
    pieces = list(voice.stream_ids(ids, first_frames=8, max_frames=64))
    frames = [tm["frames"] for _, tm in pieces]
    assert frames[:4] == [8, 16, 32, 64] and sum(frames) * 256 == len(one)
    assert [tm["last"] for _, tm in pieces] == [False] * (len(pieces) - 1) + [True]
    got = np.concatenate([a for a, _ in pieces])
    assert np.abs(got - one).max() < 1e-4 and _snr(one, got) > 90
    # a third of each context: seams audible-free (> 30 dB) and frames far from a seam exact
    got = np.concatenate([a for a, _ in voice.stream_ids(ids, first_frames=64, max_frames=64, context=(16, 6))])
    assert len(got) == len(one) and _snr(one, got) > 30
    err = np.abs(got - one).reshape(-1, 256).max(axis=1)
    far = [t for t in range(len(err)) if min(abs(t - s) for s in range(0, len(err) + 64, 64)) >= 30]
    assert far and err[far].max() < 1e-4
    assert err.max() > 1e-3  # too short a context does show at the seams: the measured one is needed for exactness


class _Counting:
    """An onnxruntime session that records how many frames of input each run gets."""

    def __init__(self, sess, rate):
        self.sess, self.rate, self.frames = sess, rate, []

    def get_inputs(self):
        return self.sess.get_inputs()

    def run(self, names, feeds):
        self.frames.append(next(iter(feeds.values())).shape[-1] // self.rate)
        return self.sess.run(names, feeds)


@pytest.mark.model
def test_stages_run_only_on_needed_frames(voice):
    """Each flow / decoder stage runs on the frames the next stage needs plus its own context, and keeps them
    for the next window: the first window's spans grow stage by stage from the output backwards, and over a
    phrase no stage runs on more than its frames plus twice its context per window."""
    sp = voice.split
    flow, dec = voice._flow, voice._dec
    rates = sp["decoder_rates"]
    try:
        voice._flow = [_Counting(s, 1) for s in flow]
        voice._dec = [_Counting(s, rates[k]) for k, s in enumerate(dec)]
        ids = voice.ids(TEXT)
        pieces = list(voice.stream_ids(ids, first_frames=4, max_frames=64))
        n = sum(tm["frames"] for _, tm in pieces)
        ctx = sp["flow_contexts"] + sp["decoder_contexts"]
        need, first = 4, []
        for c in reversed(ctx):  # the first window: output [0, 4), each stage's input [0, need + c)
            need += c
            first.insert(0, need)
        stages = voice._flow + voice._dec
        assert [s.frames[0] for s in stages] == first
        for s, c in zip(stages, ctx, strict=True):
            assert sum(s.frames) <= n + 2 * c * len(s.frames)
    finally:
        voice._flow, voice._dec = flow, dec


@pytest.mark.model
def test_tts_stream_chunks(voice):
    tts = TTS(voice)
    chunks = list(tts.stream("Hello there. How are you today?"))
    assert [c.text for c in chunks if c.part == 0] == ["Hello there.", "How are you today?"]
    assert chunks[0].part == 0 and not chunks[0].last and len(chunks[0].samples) == 4 * 256
    assert {"phonemes", "encoder", "flow", "decoder"} <= set(chunks[0].timings)
    for c in chunks:  # each phrase ends with its sentence silence, on its last piece only
        assert c.last == (c.samples[-1000:] == 0).all()
    one = TTS(voice).generate("How are you today?")
    rest = np.concatenate([c.samples for c in chunks if c.index == 1])
    np.testing.assert_allclose(rest, one, rtol=0, atol=1e-4)


def test_non_vits_graph_is_one_line_error(tmp_path):
    """(c) a graph without the VITS structure: one-line UnsupportedError; a file that is not ONNX: one-line
    CorruptFileError; the verdict is cached."""
    x = onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, 4, 8])
    y = onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1, 4, 8])
    g = onnx.helper.make_graph([onnx.helper.make_node("Tanh", ["x"], ["y"])], "g", [x], [y])
    p = tmp_path / "tiny.onnx"
    onnx.save(onnx.helper.make_model(g), str(p))
    for _ in range(2):  # the second answer comes from the cache
        with pytest.raises(UnsupportedError) as e:
            split_voice(str(p), cache=tmp_path / "cache")
        assert "not a single-speaker Piper VITS graph" in str(e.value) and "\n" not in str(e.value)
    (meta,) = (tmp_path / "cache").glob("piper-split/*/meta.json")
    meta.write_text("{ damaged")  # a damaged cache entry is judged again, not a JSON traceback
    with pytest.raises(UnsupportedError):
        split_voice(str(p), cache=tmp_path / "cache")
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"\x00 not a protobuf \xff" * 10)
    with pytest.raises(CorruptFileError) as e:
        split_voice(str(bad), cache=tmp_path / "cache")
    assert "\n" not in str(e.value)


@pytest.mark.model
def test_unsplittable_voice_falls_back_to_whole_phrases(tmp_path, monkeypatch):
    """(c) a runnable voice whose graph does not split (here: the decoder's first weight renamed) warns in one
    line and synthesizes whole phrases, as before streaming."""
    monkeypatch.setenv("EDGERUN_CACHE", str(tmp_path / "cache"))
    m = onnx.load(default_voice())
    for t in m.graph.initializer:
        if t.name == "dec.conv_pre.weight":
            t.name = "w_renamed"
    for n in m.graph.node:
        n.input[:] = ["w_renamed" if i == "dec.conv_pre.weight" else i for i in n.input]
    with pytest.raises(UnsupportedError):
        find_split(m)
    path = tmp_path / "renamed.onnx"
    onnx.save(m, str(path))
    (tmp_path / "renamed.onnx.json").write_text(open(default_voice() + ".json", encoding="utf-8").read())
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        v = PiperVoice(str(path))
    assert v.split is None and len(w) == 1 and "\n" not in str(w[0].message)
    assert "synthesizing whole phrases" in str(w[0].message)
    chunks = list(TTS(v).stream("Hello there. How are you?"))
    assert [(c.index, c.part, c.last) for c in chunks] == [(0, 0, True), (1, 0, True)]
    assert np.sqrt(np.mean(chunks[1].samples ** 2)) > 0.01


def test_missing_voice_is_one_line(tmp_path):
    with pytest.raises(EdgerunError) as e:
        PiperVoice(str(tmp_path / "nope.onnx"))
    assert "\n" not in str(e.value)


def test_split_replaces_an_earlier_version(voice, tmp_path):
    """A new split version removes the voice's folders of older versions (they are never read again), and
    nothing else in the cache."""
    from edgerun.runtime.audio.piper_split import SPLIT_VERSION, file_sha256

    root = tmp_path / "cache" / "piper-split"
    sha = file_sha256(voice.model_path)[:20]
    old, other = root / f"{sha}-v{SPLIT_VERSION - 1}", root / f"{'0' * 20}-v{SPLIT_VERSION - 1}"
    for d in (old, other):
        d.mkdir(parents=True)
        (d / "meta.json").write_text("{}")
    folder, _ = split_voice(voice.model_path, cache=tmp_path / "cache")
    assert folder.name == f"{sha}-v{SPLIT_VERSION}" and (folder / "meta.json").exists()
    assert not old.exists() and other.exists()
