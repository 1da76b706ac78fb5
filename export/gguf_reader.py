"""Read GGUF model files (llama.cpp's format) through the `gguf` package.

A GGUF holds metadata (architecture, hyper-parameters, tokenizer) and tensors in
ggml block formats. This reader turns it into a `SourceModel`: a canonical
config dict, the tokenizer pieces, and tensors yielded one at a time (so a large
model never needs to be in memory at once).

Tensor names stay the GGUF ones (`blk.3.attn_q.weight`); shapes are numpy order
`(out_features, in_features)`. One fix-up makes every architecture share a single
RoPE convention (NEOX / rotate-half, as in Hugging Face checkpoints): llama.cpp's
converter permutes the rows of llama Q/K weights so that its "normal" (interleaved
pairs) RoPE matches HF; we undo that permutation here.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np
from edgerun.errors import CorruptFileError, EdgerunError, UnsupportedError
from edgerun.export.source import SourceModel, SourceTensor, TokenizerSpec

GGUF_MAGIC = b"GGUF"

# GGUF architecture name -> edgerun architecture name.
ARCH_FROM_GGUF = {"llama": "llama", "gemma3": "gemma3", "qwen2": "qwen2"}
SUPPORTED_ARCHS = sorted(set(ARCH_FROM_GGUF.values()))


def file_sha256(path: str | os.PathLike, chunk: int = 1 << 22) -> str:
    """Return the hex sha256 of a file, read in chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def _field_value(field):
    """Decode one GGUF metadata field to a Python value (str, number, list)."""
    try:
        return field.contents()
    except Exception:  # pragma: no cover - very old gguf packages
        return None


def open_gguf(path: str | os.PathLike):
    """Open a GGUF file with `gguf.GGUFReader`, turning parse failures into one-line errors."""
    import gguf

    path = Path(path)
    if not path.exists():
        raise EdgerunError(f"{path}: file not found; give the path of a .gguf file or an artifact folder")
    with open(path, "rb") as f:
        magic = f.read(4)
    if magic != GGUF_MAGIC:
        raise CorruptFileError(f"{path}: not a GGUF file (magic {magic!r}, expected b'GGUF')")
    try:
        reader = gguf.GGUFReader(str(path), "r")
    except Exception as e:  # truncated header, bad counts, tensor data past the end
        raise CorruptFileError(
            f"{path}: truncated or corrupt GGUF ({type(e).__name__}: {str(e).splitlines()[0][:120]}); "
            "download or copy it again"
        ) from None
    size = path.stat().st_size
    for t in reader.tensors:
        end = int(t.data_offset) + int(t.n_bytes)
        if end > size or t.data.nbytes != int(t.n_bytes):
            raise CorruptFileError(
                f"{path}: truncated GGUF: tensor {t.name} ends at byte {end} but the file has {size}; "
                "download or copy it again"
            )
    return reader


def unpermute_rope_rows(w: np.ndarray, n_heads: int) -> np.ndarray:
    """Undo llama.cpp's Q/K row permutation: interleaved-pair RoPE rows -> rotate-half rows.

    w: (n_heads * head_dim, in_features). Inverse of convert_hf_to_gguf.py `permute`.
    """
    out_features = w.shape[0]
    head_dim = out_features // n_heads
    return w.reshape(n_heads, head_dim // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def _meta(reader) -> dict:
    meta = {}
    for key, field in reader.fields.items():
        if key.startswith("tokenizer.ggml.") and key in (
            "tokenizer.ggml.tokens",
            "tokenizer.ggml.scores",
            "tokenizer.ggml.token_type",
            "tokenizer.ggml.merges",
        ):
            continue
        meta[key] = _field_value(field)
    return meta


def _config_from_meta(meta: dict, arch: str, vocab_size: int, has_output: bool) -> dict:
    g = meta["general.architecture"]

    def get(key, default=None):
        return meta.get(f"{g}.{key}", default)

    dim = int(get("embedding_length"))
    n_heads = int(get("attention.head_count"))
    n_kv = get("attention.head_count_kv", n_heads)
    head_dim = int(get("attention.key_length", dim // n_heads))
    cfg = {
        "dim": dim,
        "n_layers": int(get("block_count")),
        "n_heads": n_heads,
        "n_kv_heads": int(n_kv),
        "head_dim": head_dim,
        "ffn_dim": int(get("feed_forward_length")),
        "vocab_size": int(get("vocab_size", vocab_size)),
        "norm_eps": float(get("attention.layer_norm_rms_epsilon", 1e-5)),
        "rope_theta": float(get("rope.freq_base", 10000.0)),
        "context_length": int(get("context_length", 2048)),
        "tie_embeddings": not has_output,
    }
    scaling_type = get("rope.scaling.type")
    factor = get("rope.scaling.factor")
    if scaling_type not in (None, "none") and factor:
        cfg["rope_scaling"] = {"type": str(scaling_type), "factor": float(factor)}
    if arch == "gemma3":
        cfg["sliding_window"] = int(get("attention.sliding_window", 512))
        cfg["sliding_window_pattern"] = 6
        cfg["rope_local_theta"] = 10000.0
        cfg["query_pre_attn_scalar"] = float(head_dim)
    return cfg


def _tokenizer_spec(reader, meta: dict) -> TokenizerSpec:
    def arr(key):
        f = reader.fields.get(key)
        return None if f is None else _field_value(f)

    tokens = arr("tokenizer.ggml.tokens")
    if not tokens:
        raise UnsupportedError("GGUF has no tokenizer vocabulary (tokenizer.ggml.tokens); re-convert it with one")
    eos = meta.get("tokenizer.ggml.eos_token_id")
    eot = meta.get("tokenizer.ggml.eot_token_id")
    return TokenizerSpec(
        model=str(meta.get("tokenizer.ggml.model", "gpt2")),
        pre=str(meta.get("tokenizer.ggml.pre", "default")),
        tokens=list(tokens),
        scores=arr("tokenizer.ggml.scores"),
        token_types=arr("tokenizer.ggml.token_type"),
        merges=arr("tokenizer.ggml.merges"),
        bos_token_id=meta.get("tokenizer.ggml.bos_token_id"),
        eos_token_id=eos,
        extra_eos_ids=[int(eot)] if eot is not None and eot != eos else [],
        unk_token_id=meta.get("tokenizer.ggml.unknown_token_id"),
        add_bos=bool(meta.get("tokenizer.ggml.add_bos_token", False)),
        add_space_prefix=bool(meta.get("tokenizer.ggml.add_space_prefix", False)),
        chat_template=meta.get("tokenizer.chat_template"),
    )


def read_gguf(path: str | os.PathLike, hash_source: bool = True) -> SourceModel:
    """Read a GGUF file into a `SourceModel` (tensors dequantized lazily, one at a time).

    Raises CorruptFileError for truncated/corrupt files and UnsupportedError for an
    architecture edgerun does not run.
    """
    from gguf.quants import dequantize

    path = Path(path)
    reader = open_gguf(path)
    meta = _meta(reader)
    g_arch = meta.get("general.architecture")
    if g_arch not in ARCH_FROM_GGUF:
        raise UnsupportedError(
            f"{path}: architecture '{g_arch}' is not supported; supported: {', '.join(SUPPORTED_ARCHS)}"
        )
    arch = ARCH_FROM_GGUF[g_arch]
    names = {t.name for t in reader.tensors}
    tok = _tokenizer_spec(reader, meta)
    config = _config_from_meta(meta, arch, len(tok.tokens), has_output="output.weight" in names)

    def tensors() -> Iterator[SourceTensor]:
        for t in reader.tensors:
            # gguf lists dims fastest-first; numpy order is the reverse.
            shape = tuple(int(d) for d in reversed(t.shape.tolist()))
            w = dequantize(t.data, t.tensor_type).reshape(shape)
            if arch == "llama" and t.name.endswith(("attn_q.weight", "attn_k.weight")):
                heads = config["n_heads"] if "attn_q" in t.name else config["n_kv_heads"]
                w = unpermute_rope_rows(w, heads)
            yield SourceTensor(t.name, w, source_type=t.tensor_type.name)

    model = SourceModel(
        arch=arch,
        config=config,
        tokenizer=tok,
        tensor_names=[t.name for t in reader.tensors],
        tensors=tensors,
        provenance={
            "source": str(path.resolve()),
            "source_format": "gguf",
            "source_sha256": file_sha256(path) if hash_source else None,
            "source_name": meta.get("general.name"),
            "source_file_type": meta.get("general.file_type"),
        },
    )
    model.gguf_reader = reader  # the parsed file, for exact block imports (export/recipe.py GGUFRaw)
    return model
