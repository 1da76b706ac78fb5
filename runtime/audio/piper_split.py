"""Split a Piper (VITS) voice graph into three ONNX models, so the waveform can be made window by window.

A Piper voice is one ONNX graph: text encoder (enc_p) -> stochastic duration predictor (dp) -> length
regulation -> prior sample z_p = m_p + noise * exp(logs_p) * noise_scale -> flow (reverse) -> HiFi-GAN
decoder (dec). `split_voice` cuts it at two tensors and writes

    encoder.onnx   input, input_lengths, scales -> z_p (1, C, T)     (all the sampling noise is in here)
    flow.onnx      z_p, y_mask (1, 1, T)        -> z (1, C, T)       (4 coupling layers of local convolutions)
    decoder.onnx   z                            -> audio (1, 1, 1, hop*T)

Flow and decoder are deterministic stacks of convolutions, so frame t of their output depends only on
frames t-r .. t+r of their input (r: the receptive field, measured here by perturbing one frame and
recorded in `meta.json`). A window of frames run with r frames of context on each side therefore gives
the one-shot output for its centre part, up to float rounding (`runtime/audio/tts.py` streams that way).

The cut is found from the graph's structure, not from node names: the decoder input is the data input of
the Conv on `dec.conv_pre.weight`; z_p is the first Add after the RandomNormalLike whose result no
duration-predictor (`dp.*`) weight sees; the flow must read nothing but z_p and the frame mask. Anything
else (another architecture, a multi-speaker voice whose flow and decoder take a speaker embedding) is an
`UnsupportedError` in one line. The three files are written once per voice into the edgerun cache
(`$EDGERUN_CACHE/piper-split/<sha256 of the voice>-v<SPLIT_VERSION>/`) and reused.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections import defaultdict
from pathlib import Path

import numpy as np
from edgerun.errors import CorruptFileError, UnsupportedError

SPLIT_VERSION = 1
PARTS = ("encoder", "flow", "decoder")


def file_sha256(path: str) -> str:
    """sha256 hex digest of a file, read in 4 MiB blocks."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(1 << 22):
            h.update(block)
    return h.hexdigest()


def _descendants(graph, start: set[str]) -> set[int]:
    """Indices of the nodes that (transitively) read one of the tensors in `start`."""
    readers = defaultdict(list)
    for i, n in enumerate(graph.node):
        for t in n.input:
            readers[t].append(i)
    seen: set[int] = set()
    todo = [i for t in start for i in readers[t]]
    while todo:
        i = todo.pop()
        if i in seen:
            continue
        seen.add(i)
        todo.extend(j for t in graph.node[i].output for j in readers[t])
    return seen


def _ancestors(graph, start: set[str]) -> set[int]:
    """Indices of the nodes that (transitively) produce one of the tensors in `start`."""
    producer = {t: i for i, n in enumerate(graph.node) for t in n.output}
    seen: set[int] = set()
    todo = [producer[t] for t in start if t in producer]
    while todo:
        i = todo.pop()
        if i in seen:
            continue
        seen.add(i)
        todo.extend(producer[t] for t in graph.node[i].input if t in producer)
    return seen


def _external_inputs(graph, nodes: set[int]) -> set[str]:
    """Tensors the node set reads that it neither produces nor gets as weights / constants."""
    produced = {t for i in nodes for t in graph.node[i].output}
    consts = {i.name for i in graph.initializer}
    consts |= {t for n in graph.node if n.op_type == "Constant" for t in n.output}
    return {t for i in nodes for t in graph.node[i].input if t and t not in produced and t not in consts}


def find_split(model, name: str = "voice") -> dict:
    """Locate the cut tensors of a Piper VITS graph: {"z_p", "y_mask", "dec_in", "output", "channels"}.

    Raises `UnsupportedError` (one line) when the graph does not have the expected structure.
    """
    g = model.graph
    bad = f"'{name}' is not a single-speaker Piper VITS graph"
    convs = [n for n in g.node if n.op_type == "Conv" and len(n.input) > 1 and n.input[1] == "dec.conv_pre.weight"]
    if len(convs) != 1:
        raise UnsupportedError(f"{bad} (no Conv on dec.conv_pre.weight: the decoder input is not found)")
    dec_in = convs[0].input[0]
    if len(g.output) != 1:
        raise UnsupportedError(f"{bad} ({len(g.output)} graph outputs, expected 1)")
    output = g.output[0].name
    weights_of = {i: {t for t in n.input if t.startswith(("dp.", "enc_p."))} for i, n in enumerate(g.node)}
    z_p = None
    for n in g.node:
        if n.op_type != "RandomNormalLike":
            continue
        below = _descendants(g, set(n.output))
        if any(weights_of[i] for i in below):
            continue  # the duration predictor's noise
        t, hops = n.output[0], 0
        readers = [m for m in g.node if t in m.input]
        while len(readers) == 1 and readers[0].op_type == "Mul" and hops < 4:
            t, hops = readers[0].output[0], hops + 1
            readers = [m for m in g.node if t in m.input]
        if len(readers) == 1 and readers[0].op_type == "Add":
            z_p = readers[0].output[0]
    if z_p is None:
        raise UnsupportedError(f"{bad} (no prior sample z_p = m_p + noise * exp(logs_p) * scale before the flow)")
    flow = _descendants(g, {z_p}) & _ancestors(g, {dec_in})
    if not any(t.startswith("flow.") for i in flow for t in g.node[i].input):
        raise UnsupportedError(f"{bad} (no flow weights between z_p and the decoder)")
    ext = _external_inputs(g, flow) - {z_p}
    if len(ext) != 1:
        raise UnsupportedError(f"{bad} (the flow reads {sorted(ext)} besides z_p: speaker inputs unsupported)")
    dec = _descendants(g, {dec_in}) & _ancestors(g, {output})
    if _external_inputs(g, dec) - {dec_in}:
        raise UnsupportedError(f"{bad} (the decoder reads more than its input z)")
    channels = next(i.dims[1] for i in g.initializer if i.name == "dec.conv_pre.weight")
    return dict(z_p=z_p, y_mask=ext.pop(), dec_in=dec_in, output=output, channels=int(channels))


def _session(path: str, threads: int = 1):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.log_severity_level = 3
    return ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])


def _reach(diff: np.ndarray, at: int) -> int:
    """How far from `at` (in frames) the nonzero entries of a per-frame difference reach."""
    nz = np.nonzero(diff)[0]
    return int(max(at - nz.min(), nz.max() - at)) if nz.size else 0


def probe(folder: Path, split: dict, frames: int = 160) -> dict:
    """Measure the decoder's hop and the receptive fields (in frames, each side) of flow and decoder by
    perturbing one input frame of random latents and seeing how far the output changes."""
    rng = np.random.default_rng(0)
    c, mid = split["channels"], frames // 2
    flow, dec = _session(str(folder / "flow.onnx")), _session(str(folder / "decoder.onnx"))
    mask = np.ones((1, 1, frames), np.float32)
    zp = rng.standard_normal((1, c, frames)).astype(np.float32)
    z0 = flow.run(None, {split["z_p"]: zp, split["y_mask"]: mask})[0]
    zp[:, :, mid] += 1.0
    z1 = flow.run(None, {split["z_p"]: zp, split["y_mask"]: mask})[0]
    flow_rf = _reach(np.abs(z1 - z0).max(axis=(0, 1)), mid)
    a0 = dec.run(None, {split["dec_in"]: z0})[0].reshape(-1)
    hop = len(a0) // frames
    half = dec.run(None, {split["dec_in"]: z0[:, :, : frames // 2]})[0].size
    if hop * frames != len(a0) or half != hop * (frames // 2):
        raise UnsupportedError("the voice's decoder output is not a whole number of samples per latent frame")
    z0[:, :, mid] += 1.0
    a1 = dec.run(None, {split["dec_in"]: z0})[0].reshape(-1)
    per_frame = np.abs(a1 - a0).reshape(frames, hop).max(axis=1)
    dec_rf = _reach(per_frame, mid)
    if flow_rf >= mid - 1 or dec_rf >= mid - 1:
        raise UnsupportedError("the voice's flow or decoder is not local (receptive field spans the probe window)")
    return dict(hop=hop, flow_context=flow_rf, decoder_context=dec_rf)


def _complete(folder: Path) -> bool:
    return (folder / "meta.json").is_file() and all((folder / f"{p}.onnx").is_file() for p in PARTS)


def split_voice(model_path: str, cache: str | os.PathLike | None = None) -> tuple[Path, dict]:
    """Split the voice at `model_path` (once; cached) and return (folder with encoder/flow/decoder .onnx,
    meta). meta holds the cut tensor names, channels, hop (samples per frame) and the measured contexts."""
    import onnx
    import onnx.utils

    if cache is None:
        from edgerun.runtime.store.defaults import cache_dir

        cache = cache_dir()
    sha = file_sha256(model_path)
    folder = Path(cache) / "piper-split" / f"{sha[:20]}-v{SPLIT_VERSION}"
    meta_path = folder / "meta.json"
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8")) if meta_path.is_file() else None
    except (OSError, ValueError):  # a damaged cache entry: split again
        meta = None
    if isinstance(meta, dict):
        if "error" in meta:
            raise UnsupportedError(meta["error"])
        if _complete(folder):
            return folder, meta
    name = os.path.basename(model_path)
    try:
        model = onnx.load(model_path)
    except Exception as e:  # protobuf's DecodeError and friends
        why = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise CorruptFileError(f"cannot load voice '{model_path}' as ONNX ({why})") from None
    folder.parent.mkdir(parents=True, exist_ok=True)
    try:
        split = find_split(model, name)
    except UnsupportedError as e:  # remember the verdict: the next load does not parse the graph again
        folder.mkdir(exist_ok=True)
        meta_path.write_text(json.dumps(dict(error=str(e), sha256=sha)), encoding="utf-8")
        raise
    tmp = Path(tempfile.mkdtemp(prefix=folder.name + ".", dir=folder.parent))
    try:
        ex = onnx.utils.Extractor(model)
        inputs = [i.name for i in model.graph.input]
        onnx.save(ex.extract_model(inputs, [split["z_p"]]), str(tmp / "encoder.onnx"))
        onnx.save(ex.extract_model([split["z_p"], split["y_mask"]], [split["dec_in"]]), str(tmp / "flow.onnx"))
        onnx.save(ex.extract_model([split["dec_in"]], [split["output"]]), str(tmp / "decoder.onnx"))
        del ex, model
        meta = dict(split, **probe(tmp, split), sha256=sha, version=SPLIT_VERSION, source=name)
        (tmp / "meta.json").write_text(json.dumps(meta, indent=1), encoding="utf-8")
        os.chmod(tmp, 0o755)  # mkdtemp made it private
        if folder.exists() and not _complete(folder):  # a failed earlier attempt
            shutil.rmtree(folder, ignore_errors=True)
        try:
            os.rename(tmp, folder)  # atomic: a folder with meta.json is always complete
        except OSError:  # another process finished first: use its copy
            if not _complete(folder):
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return folder, json.loads(meta_path.read_text(encoding="utf-8"))
