"""`export(source, out)`: read a real model, apply a weight recipe, write an artifact.

Sources: a `.gguf` file, or a Hugging Face checkpoint folder (`config.json` +
`*.safetensors` + `tokenizer.json`). The recipe says which format each tensor gets;
it is written into the manifest and the loader rebuilds the model from it.
"""

from __future__ import annotations

import datetime as _dt
import os
from collections.abc import Callable, Iterator
from pathlib import Path

from edgerun import __version__
from edgerun.errors import EdgerunError
from edgerun.export.artifact import TensorParts, layer_of, write_artifact
from edgerun.export.source import SourceModel, SourceTensor
from edgerun.export.tokenizer_builder import EOG_TEXTS, build_tokenizer

# Bump when the exporter's output changes, so cached artifacts are rebuilt.
EXPORTER_REVISION = 4  # 4: GGUF sources default to weights="auto" (Q4_1/Q5_x/K-quant blocks kept verbatim)

def read_source(source: str | os.PathLike) -> SourceModel:
    """Open a source model by what it is: a GGUF file or a Hugging Face checkpoint folder."""
    p = Path(source)
    if not p.exists():
        raise EdgerunError(f"{p}: not found; give a .gguf file or a Hugging Face checkpoint folder")
    if p.is_dir():
        from edgerun.export.hf_reader import read_hf

        return read_hf(p)
    from edgerun.export.gguf_reader import read_gguf

    return read_gguf(p)


def _sort_key(name: str) -> tuple[int, str]:
    layer = layer_of(name)
    return (-1 if layer is None else layer, name)


def _ordered(src: SourceModel) -> Iterator[SourceTensor]:
    """Yield tensors grouped by layer (global ones first), buffering only what arrives out of order."""
    pending: dict[str, SourceTensor] = {}
    order = sorted(src.tensor_names, key=_sort_key)
    it = src.tensors()
    for want in order:
        while want not in pending:
            t = next(it)
            pending[t.name] = t
        yield pending.pop(want)


def export(
    source: str | os.PathLike,
    out: str | os.PathLike,
    weights: str | None = None,
    progress: Callable[[int, int, str], None] | None = None,
    embeddings: str | None = None,
    output: str | None = None,
    block_size: int | None = None,
    onnx: bool = True,
) -> Path:
    """Export `source` (GGUF file or HF folder) to the artifact folder `out`; returns its path.

    `weights` / `embeddings` / `output` / `block_size` make the recipe (export/recipe.py: f16, f32,
    int8, int4, int4_asym, ternary, auto). `weights=None`: "auto" for a GGUF (every tensor keeps its own
    quantization, blocks copied verbatim), "f16" for a Hugging Face checkpoint.
    `progress(done, total, tensor_name)` is called after each
    tensor. The manifest's `quant_errors` holds each tensor's format and relative RMS error.
    `onnx`: for quantized recipes, also write `model.onnx` over the same weights.bin (export/onnx_graph.py).
    """
    from edgerun.export.recipe import PLAIN, GGUFRaw, convert, make_recipe

    src = read_source(source)
    reader = getattr(src, "gguf_reader", None)
    if weights is None:
        weights = "auto" if reader is not None else "f16"
    recipe = make_recipe(weights, embeddings, output, block_size)
    raw = GGUFRaw(source, src.arch, src.config, reader) if reader is not None else None
    errors: dict[str, list] = {}
    tok = build_tokenizer(src.tokenizer)
    spec = src.tokenizer
    stop_ids = [i for i in [spec.eos_token_id, *spec.extra_eos_ids] if i is not None]
    for text in EOG_TEXTS:  # chat-turn terminators, as llama.cpp's end-of-generation set
        tid = tok.token_to_id(text)
        if tid is not None and tid not in stop_ids:
            stop_ids.append(tid)
    total = len(src.tensor_names)

    def stream() -> Iterator[TensorParts]:
        for i, t in enumerate(_ordered(src)):
            parts, err = convert(t, recipe, raw(t.name) if raw else None)
            errors[t.name] = [parts.format, round(err, 7)]
            yield parts
            if progress:
                progress(i + 1, total, t.name)

    def token_text(i):
        return None if i is None else spec.tokens[i] if spec.tokens else tok.id_to_token(i)

    manifest = {
        "arch": src.arch,
        "config": src.config,
        "recipe": recipe,
        "quant_errors": errors,  # filled while the tensors stream, before the manifest is written
        "tokenizer": {
            "file": "tokenizer.json",
            "bos_token_id": spec.bos_token_id,
            "bos_token": token_text(spec.bos_token_id),
            "eos_token_id": spec.eos_token_id,
            "eos_token": token_text(spec.eos_token_id),
            "stop_token_ids": stop_ids,
            "add_bos": spec.add_bos,
            "chat_template": spec.chat_template,  # none invented: a base model has none
        },
        "provenance": {
            **src.provenance,
            "exporter": f"edgerun {__version__} (exporter revision {EXPORTER_REVISION})",
            "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        },
        "targets": ["native"],
    }
    path = write_artifact(out, manifest, stream(), tok.to_str())
    if onnx and recipe["weights"] not in PLAIN:
        from edgerun.export.onnx_graph import SUPPORTED_ARCHS, build_onnx

        if src.arch in SUPPORTED_ARCHS:
            build_onnx(path)
    return path
