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
from edgerun.export.source import SourceModel, SourceTensor, TokenizerSpec, check_tensors

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


_GGUF_SIZES = {0: 1, 1: 1, 2: 2, 3: 2, 4: 4, 5: 4, 6: 4, 7: 1, 10: 8, 11: 8, 12: 8}  # fixed-size value types
_GGUF_STRING, _GGUF_ARRAY = 8, 9


def _check_kv_section(path: Path) -> None:
    """Walk the metadata of a v2/v3 GGUF checking every length and count against the bytes left, before
    gguf-py reads it (a count mutated to 2^40 made it loop for minutes). One-line CorruptFileError."""
    import mmap
    import struct

    def bad(what):
        raise CorruptFileError(f"{path}: corrupt GGUF metadata ({what}); download or copy it again")

    with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as mm:
        size = len(mm)
        if size < 24:
            bad("truncated header")
        version, _n_tensors, n_kv = struct.unpack_from("<IQQ", mm, 4)
        if version not in (2, 3):
            return  # gguf-py says what it thinks of other versions
        pos = 24

        def u64(at):
            if at + 8 > size:
                bad("truncated")
            return struct.unpack_from("<Q", mm, at)[0]

        def value(vtype, at, depth=0):
            if vtype in _GGUF_SIZES:
                return at + _GGUF_SIZES[vtype]
            if vtype == _GGUF_STRING:
                n = u64(at)
                if n > size - at - 8:
                    bad(f"a string of {n} bytes at byte {at}")
                return at + 8 + n
            if vtype == _GGUF_ARRAY and depth < 4:
                if at + 12 > size:
                    bad("truncated")
                etype, count = struct.unpack_from("<IQ", mm, at)
                at += 12
                if etype in _GGUF_SIZES:
                    if count * _GGUF_SIZES[etype] > size - at:
                        bad(f"an array of {count} values at byte {at}")
                    return at + count * _GGUF_SIZES[etype]
                if count > (size - at) // 8:
                    bad(f"an array of {count} values at byte {at}")
                for _ in range(count):
                    at = value(etype, at, depth + 1)
                return at
            bad(f"value type {vtype} at byte {at}")

        if n_kv > (size - pos) // 12:
            bad(f"{n_kv} key/value pairs")
        for _ in range(n_kv):
            pos = value(_GGUF_STRING, pos)  # the key
            if pos + 4 > size:
                bad("truncated")
            vtype = struct.unpack_from("<I", mm, pos)[0]
            pos = value(vtype, pos + 4)
            if pos > size:
                bad("truncated")


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
    _check_kv_section(path)
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


def _config_from_meta(meta: dict, arch: str, vocab_size: int, has_output: bool, path: Path | str = "GGUF") -> dict:
    g = meta["general.architecture"]

    def get(key, default=None, kind=int):
        v = meta.get(f"{g}.{key}", default)
        ok = isinstance(v, (int, float)) and not isinstance(v, bool) and v == v and abs(v) < 1e30
        if not ok or (kind is int and (v != int(v) or not 0 < v < 1 << 31)):
            raise CorruptFileError(f"{path}: metadata {g}.{key} is {v!r}, not a valid {kind.__name__}; "
                                   "the file is corrupt, download it again")  # fmt: skip
        return kind(v)

    dim = get("embedding_length")
    n_heads = get("attention.head_count")
    n_kv = get("attention.head_count_kv", n_heads)
    head_dim = get("attention.key_length", dim // n_heads if dim >= n_heads else 0)
    cfg = {
        "dim": dim,
        "n_layers": get("block_count"),
        "n_heads": n_heads,
        "n_kv_heads": n_kv,
        "head_dim": head_dim,
        "ffn_dim": get("feed_forward_length"),
        "vocab_size": get("vocab_size", vocab_size),
        "norm_eps": get("attention.layer_norm_rms_epsilon", 1e-5, float),
        "rope_theta": get("rope.freq_base", 10000.0, float),
        "context_length": get("context_length", 2048),
        "tie_embeddings": not has_output,
    }
    if n_heads % n_kv or head_dim % 2 or cfg["vocab_size"] != vocab_size:
        raise CorruptFileError(f"{path}: inconsistent hyper-parameters (heads {n_heads}, kv heads {n_kv}, head "
                               f"size {head_dim}, vocab {cfg['vocab_size']} vs {vocab_size} tokens); "
                               "the file is corrupt, download it again")  # fmt: skip
    scaling_type = meta.get(f"{g}.rope.scaling.type")
    if scaling_type not in (None, "none") and meta.get(f"{g}.rope.scaling.factor"):
        cfg["rope_scaling"] = {"type": str(scaling_type), "factor": get("rope.scaling.factor", kind=float)}
    if arch == "gemma3":
        cfg["sliding_window"] = get("attention.sliding_window", 512)
        cfg["sliding_window_pattern"] = 6
        cfg["rope_local_theta"] = 10000.0
        cfg["query_pre_attn_scalar"] = float(head_dim)
    return cfg


def _tokenizer_spec(reader, meta: dict, path: Path | str = "GGUF") -> TokenizerSpec:
    def arr(key):
        f = reader.fields.get(key)
        return None if f is None else _field_value(f)

    def bad(what):
        raise CorruptFileError(f"{path}: tokenizer metadata {what}; the file is corrupt, download it again")

    tokens = arr("tokenizer.ggml.tokens")
    if not tokens:
        raise UnsupportedError(f"{path}: no tokenizer vocabulary (tokenizer.ggml.tokens); re-convert it with one")
    n = len(tokens)
    if not isinstance(tokens, list) or not all(isinstance(t, str) and t for t in tokens):
        bad("tokenizer.ggml.tokens is not a list of non-empty strings")
    if len(set(tokens)) != n:
        bad("tokenizer.ggml.tokens holds the same piece twice")
    for key, kind in (("scores", (int, float)), ("token_type", int)):
        v = arr(f"tokenizer.ggml.{key}")
        if v is not None and (not isinstance(v, list) or len(v) != n or not all(isinstance(x, kind) for x in v)):
            bad(f"tokenizer.ggml.{key} does not have one number per token")
    merges = arr("tokenizer.ggml.merges")
    if merges is not None:
        vocab = set(tokens)
        if not isinstance(merges, list) or not all(isinstance(m, str) for m in merges):
            bad("tokenizer.ggml.merges is not a list of strings")
        for m in merges:
            a, _, b = m.partition(" ")
            if a not in vocab or b not in vocab or a + b not in vocab:
                bad(f"merge {m[:40]!r} uses pieces that are not in the vocabulary")
    for key in ("bos", "eos", "eot", "unknown", "padding"):
        v = meta.get(f"tokenizer.ggml.{key}_token_id")
        if v is not None and (type(v) is not int or not 0 <= v < n):
            bad(f"tokenizer.ggml.{key}_token_id {v!r} is not a token id below {n}")
    for key in ("model", "pre", "chat_template"):
        v = meta.get(f"tokenizer.{key}" if key == "chat_template" else f"tokenizer.ggml.{key}")
        if v is not None and not isinstance(v, str):
            bad(f"{key} is not a string")
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
    tok = _tokenizer_spec(reader, meta, path)
    tok.source = str(path)
    config = _config_from_meta(meta, arch, len(tok.tokens), has_output="output.weight" in names, path=path)
    # gguf lists dims fastest-first; numpy order is the reverse.
    shapes = {t.name: tuple(int(d) for d in reversed(t.shape.tolist())) for t in reader.tensors}
    check_tensors(arch, config, shapes, path)

    def tensors() -> Iterator[SourceTensor]:
        for t in reader.tensors:
            shape = shapes[t.name]
            try:
                w = dequantize(t.data, t.tensor_type).reshape(shape)
            except (ValueError, NotImplementedError, KeyError) as e:
                raise CorruptFileError(f"{path}: tensor {t.name} ({t.tensor_type.name}, shape {shape}) cannot be "
                                       f"decoded ({str(e)[:80]}); the file is corrupt") from None  # fmt: skip
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
