"""Split a Piper (VITS) voice graph into ONNX parts, so the waveform can be made window by window.

A Piper voice is one ONNX graph: text encoder (enc_p) -> stochastic duration predictor (dp) -> length
regulation -> prior sample z_p = m_p + noise * exp(logs_p) * noise_scale -> flow (reverse) -> HiFi-GAN
decoder (dec). `split_voice` cuts it at z_p and at the decoder input, and the flow and the decoder again
into stages, and writes

    encoder.onnx        input, input_lengths, scales -> z_p (1, C, T)   (all the sampling noise is in here)
    flow.<k>.onnx       one per coupling layer: x, y_mask (1, 1, T) -> x (1, C, T); the last gives z
    decoder.<k>.onnx    conv_pre, then one per upsampling stage: (1, C_k, r_k*T) -> (1, C_k+1, r_k+1*T),
                        the last -> audio (1, 1, 1, hop*T)

Flow and decoder are deterministic stacks of convolutions, so frame t of a stage's output depends only on
frames t-r .. t+r of its input (r: the stage's receptive field in latent frames, measured here by
perturbing one frame and recorded in `meta.json`). A window of frames run with r frames of context on
each side therefore gives the one-shot output for its centre part, up to float rounding
(`runtime/audio/tts.py` streams that way). Stage by stage, each stage only runs on the frames the next
one needs: the decoder's late, high-rate stages (70 % of its work) see 1 frame of context instead of the
whole decoder's 12, the flow's last coupling layer 8 instead of 32.

The cut is found from the graph's structure, not from node names: the decoder input is the data input of
the Conv on `dec.conv_pre.weight`; z_p is the first Add after the RandomNormalLike whose result no
duration-predictor (`dp.*`) weight sees; the flow must read nothing but z_p and the frame mask. Anything
else (another architecture, a multi-speaker voice whose flow and decoder take a speaker embedding) is an
`UnsupportedError` in one line. The stage cuts are the data inputs of the coupling layers' Splits and of
the decoder's upsampling ConvTransposes, each stage checked to read nothing but the previous cut (and the
frame mask); a flow or decoder whose cuts are not found stays one stage. The files are written once per
voice into the edgerun cache (`$EDGERUN_CACHE/piper-split/<sha256 of the voice>-v<SPLIT_VERSION>/`) and
reused.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import tempfile
from collections import defaultdict
from pathlib import Path

import numpy as np
from edgerun.errors import CorruptFileError, UnsupportedError

SPLIT_VERSION = 2


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
    """Locate the cut tensors of a Piper VITS graph: {"z_p", "y_mask", "dec_in", "output", "channels",
    "flow_inputs", "decoder_inputs"} (the last two: the first tensor of each flow / decoder stage).

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
    y_mask = ext.pop()
    producer = {t: n for n in g.node for t in n.output}
    flow_cuts = []  # the input of every coupling layer but the first: its Split's data input
    for i in sorted(flow):
        n = g.node[i]
        if n.op_type == "Conv" and len(n.input) > 1 and re.fullmatch(r"flow\.flows\.\d+\.pre\.weight", n.input[1]):
            src = producer.get(n.input[0])
            if src is not None and src.op_type == "Split":
                flow_cuts.append(src.input[0])
    dec_cuts = [g.node[i].input[0] for i in sorted(dec) if g.node[i].op_type == "ConvTranspose"
                and len(g.node[i].input) > 1 and re.fullmatch(r"dec\.ups\.\d+\.weight", g.node[i].input[1])]
    return dict(z_p=z_p, y_mask=y_mask, dec_in=dec_in, output=output, channels=int(channels),
                flow_inputs=_stages(g, [z_p] + flow_cuts[1:], dec_in, {y_mask}),
                decoder_inputs=_stages(g, [dec_in] + dec_cuts, output, set()))


def _stages(g, cuts: list[str], end: str, side: set[str]) -> list[str]:
    """The cut tensors that start each stage from `cuts[0]` to `end`, or just `[cuts[0]]` (one stage) unless
    every stage reads nothing but its own first tensor and `side` (no skip connection across a cut)."""
    for a, b in zip(cuts, cuts[1:] + [end], strict=True):
        nodes = _descendants(g, {a}) & _ancestors(g, {b})
        if not nodes or _external_inputs(g, nodes) - {a} - side:
            return cuts[:1]
    return cuts


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


def _run_stage(sess, x: np.ndarray, mask: np.ndarray | None) -> np.ndarray:
    ins = sess.get_inputs()
    feeds = {ins[0].name: x} if mask is None else {ins[0].name: x, ins[1].name: mask}
    return sess.run(None, feeds)[0]


def _probe_stages(sessions, x: np.ndarray, frames: int, mask: np.ndarray | None) -> tuple[list, list, np.ndarray]:
    """Receptive field (frames, each side) and output rate (samples per frame) of each stage in turn, by
    perturbing the middle frame of its input; returns (contexts, rates, the last stage's output)."""
    mid, contexts, rates = frames // 2, [], []
    for sess in sessions:
        rate_in = x.shape[-1] // frames
        y0 = _run_stage(sess, x, mask)
        rate = y0.size // y0.shape[1] // frames if y0.ndim == 3 else y0.size // frames
        y0 = y0.reshape(1, -1, frames * rate)
        half = _run_stage(sess, np.ascontiguousarray(x[..., : rate_in * (frames // 2)]),
                          None if mask is None else mask[..., : frames // 2])
        if rate * frames != y0.shape[-1] or half.size * 2 != y0.size:
            raise UnsupportedError("a stage of the voice's flow or decoder does not give a whole number of samples "
                                   "per latent frame")
        x1 = x.copy()
        x1[..., mid * rate_in : (mid + 1) * rate_in] += 1.0
        y1 = _run_stage(sess, x1, mask).reshape(y0.shape)
        reach = _reach(np.abs(y1 - y0).max(axis=(0, 1)).reshape(frames, rate).max(axis=1), mid)
        if reach >= mid - 1:
            raise UnsupportedError("the voice's flow or decoder is not local (receptive field spans the probe window)")
        contexts.append(reach)
        rates.append(rate)
        x = y0
    return contexts, rates, x


def probe(folder: Path, split: dict, frames: int = 160) -> dict:
    """Measure the decoder's hop and the receptive fields (in frames, each side) of every flow and decoder
    stage by perturbing one input frame of random latents and seeing how far the output changes; the
    decoder stages' rates (samples per frame at each stage's input, then the output's: the hop)."""
    rng = np.random.default_rng(0)
    mask = np.ones((1, 1, frames), np.float32)
    zp = rng.standard_normal((1, split["channels"], frames)).astype(np.float32)
    flow = [_session(str(folder / f)) for f in stage_files(split, "flow")]
    dec = [_session(str(folder / f)) for f in stage_files(split, "decoder")]
    flow_ctx, _, z = _probe_stages(flow, zp, frames, mask)
    dec_ctx, rates, _ = _probe_stages(dec, z, frames, None)
    return dict(hop=rates[-1], flow_contexts=flow_ctx, decoder_contexts=dec_ctx, decoder_rates=[1] + rates,
                flow_context=sum(flow_ctx), decoder_context=sum(dec_ctx))


def stage_files(split: dict, part: str) -> list[str]:
    """File names of the flow's (`part` "flow") or the decoder's ("decoder") stages, in order."""
    return [f"{part}.{k}.onnx" for k in range(len(split[f"{part}_inputs"]))]


def _cached(folder: Path) -> dict | None:
    """The meta of a cache entry: an error verdict, or a split whose files are all there; else None."""
    try:
        meta = json.loads((folder / "meta.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):  # missing, or a damaged cache entry: split again
        return None
    if not isinstance(meta, dict) or "error" in meta:
        return meta if isinstance(meta, dict) else None
    try:
        files = ["encoder.onnx"] + stage_files(meta, "flow") + stage_files(meta, "decoder")
    except (KeyError, TypeError):
        return None
    return meta if all((folder / f).is_file() for f in files) else None


def split_voice(model_path: str, cache: str | os.PathLike | None = None) -> tuple[Path, dict]:
    """Split the voice at `model_path` (once; cached) and return (folder with the encoder, flow and decoder
    stage .onnx files, meta). meta holds the cut tensor names (`flow_inputs`, `decoder_inputs`: the first
    tensor of each stage), channels, hop (samples per frame), the decoder stages' rates and the measured
    contexts per stage (`flow_contexts`, `decoder_contexts`) and in all (`flow_context`, `decoder_context`)."""
    import onnx
    import onnx.utils

    if cache is None:
        from edgerun.runtime.store.defaults import cache_dir

        cache = cache_dir()
    sha = file_sha256(model_path)
    folder = Path(cache) / "piper-split" / f"{sha[:20]}-v{SPLIT_VERSION}"
    meta_path = folder / "meta.json"
    meta = _cached(folder)
    if meta is not None:
        if "error" in meta:
            raise UnsupportedError(meta["error"])
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
        for part, ends in (("flow", split["flow_inputs"] + [split["dec_in"]]),
                           ("decoder", split["decoder_inputs"] + [split["output"]])):
            for f, a, b in zip(stage_files(split, part), ends[:-1], ends[1:], strict=True):
                ins = [a, split["y_mask"]] if part == "flow" else [a]
                onnx.save(ex.extract_model(ins, [b]), str(tmp / f))
        del ex, model
        meta = dict(split, **probe(tmp, split), sha256=sha, version=SPLIT_VERSION, source=name)
        (tmp / "meta.json").write_text(json.dumps(meta, indent=1), encoding="utf-8")
        os.chmod(tmp, 0o755)  # mkdtemp made it private
        if folder.exists() and _cached(folder) is None:  # a failed earlier attempt
            shutil.rmtree(folder, ignore_errors=True)
        try:
            os.rename(tmp, folder)  # atomic: a folder with meta.json is always complete
        except OSError:  # another process finished first: use its copy
            if _cached(folder) is None:
                raise
        for old in folder.parent.glob(f"{sha[:20]}-v*"):  # earlier split versions of this voice: never read again
            if old.name != folder.name and old.name[len(sha[:20]) + 2 :].isdigit() and old.is_dir():
                shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return folder, json.loads(meta_path.read_text(encoding="utf-8"))
