"""Weight recipes: which format each tensor of a model gets, written into the manifest.

``make_recipe("int4")`` -> the dict stored as ``manifest["recipe"]``::

    {"weights": "int4", "embeddings": "int8", "output": "int8", "vectors": "f32",
     "block_size": null, "exact_import": true}

* ``weights``     format of the decoder matrices: f16, f32, int8, int4, int4_asym, ternary, or
                  ``auto`` (the default for GGUF sources: keep each GGUF tensor's own quantization:
                  Q8_0 -> int8, Q4_0 -> int4, TQ2_0/TQ1_0 -> ternary, Q4_1 Q5_0 Q5_1 Q2_K..Q6_K ->
                  the verbatim block formats q4_1 ... q6_k (quant/ggml_blocks.py), F32 -> f32,
                  F16/BF16 -> f16; any other type -> int8)
* ``embeddings``  ``token_embd.weight`` (also the head when tied); default int8 for quantized
                  recipes ("auto" keeps the source's), else the weights' format
* ``output``      ``output.weight`` (untied head), same default as embeddings
* ``vectors``     1-D tensors (norms, biases): f32
* ``block_size``  None = the format's default, shrunk for ternary to a block dividing the row
* ``exact_import`` when a GGUF tensor already is in the target format (Q8_0 for int8, Q4_0 for
                  int4, TQ2_0/TQ1_0 for ternary, its own block format for q4_1 ... q6_k) its blocks
                  are copied bit-exactly instead of
                  being dequantized and quantized again; a matrix whose values already are
                  {-s, 0, +s} per block (BitNet checkpoints: source type TERNARY from the HF
                  reader, or any float tensor found so under ``auto``) becomes ternary holding
                  exactly those values (``exact_ternary``) under ``auto`` and ``ternary``

The loader rebuilds every tensor from its own table entry (``format`` + ``quant``), so the
recipe is a record of intent and the per-tensor entries are the truth.
"""

from __future__ import annotations

import numpy as np
from edgerun.errors import EdgerunError
from edgerun.export.artifact import TensorParts
from edgerun.export.source import SourceTensor
from edgerun.quant import (
    BLOCK_TYPES,
    FORMAT_OF_GGML,
    FORMATS,
    QuantizedTensor,
    dequantize,
    from_gguf,
    from_gguf_blocks,
    get_format,
    pack_codes,
    pack_zero_points,
    quantize,
)

PLAIN = {"f16": np.float16, "f32": np.float32}
WEIGHT_CHOICES = ("f16", "f32", "int8", "int4", "int4_asym", "ternary", "auto")
# GGUF type -> edgerun format it maps to exactly
EXACT_FROM_GGUF = {"Q8_0": "int8", "Q4_0": "int4", "TQ2_0": "ternary", "TQ1_0": "ternary", **FORMAT_OF_GGML}
EMBEDDING_NAMES = ("token_embd.weight",)
OUTPUT_NAMES = ("output.weight",)


def make_recipe(weights: str = "f16", embeddings: str | None = None, output: str | None = None,
                block_size: int | None = None, exact_import: bool = True) -> dict:
    """The recipe dict for `weights` (see module docstring); raises EdgerunError for unknown formats."""
    for what, fmt in (("weights", weights), ("embeddings", embeddings), ("output", output)):
        if fmt is not None and fmt not in WEIGHT_CHOICES:
            raise EdgerunError(f"{what} format '{fmt}' is not available; choose one of: {', '.join(WEIGHT_CHOICES)}")
    quantized = weights not in PLAIN
    keep = "auto" if weights == "auto" else ("int8" if quantized else weights)
    return {
        "weights": weights,
        "embeddings": embeddings or keep,
        "output": output or embeddings or keep,
        "vectors": "f32",
        "block_size": block_size,
        "exact_import": exact_import,
    }


def tensor_format(name: str, ndim: int, recipe: dict) -> str:
    """The format the recipe gives tensor `name` (before `auto` is resolved against the source)."""
    if ndim < 2:
        return recipe["vectors"]
    if name in EMBEDDING_NAMES:
        return recipe["embeddings"]
    if name in OUTPUT_NAMES:
        return recipe["output"]
    return recipe["weights"]


def pick_block(fmt: str, k: int, block_size: int | None) -> int:
    """Block size for a row of length k: the asked/default one, shrunk while it does not divide k."""
    cls = get_format(fmt)
    bs = cls.check_block(block_size)
    if block_size is None:
        while k % bs and bs // 2 in cls.block_sizes:
            bs //= 2
    return bs


def exact_ternary(w: np.ndarray, block_size: int | None = None, round_scale: bool = False) -> QuantizedTensor | None:
    """`w` (N, K) as ternary blocks holding exactly its values, when every block is {-s, 0, +s} for one
    s per block (per tensor or per row included); None otherwise.

    The block scale is f16: an s that f16 does not hold exactly gives None, unless `round_scale`
    (weights known to be ternary, e.g. BitNet's t / weight_scale), where s is rounded to f16
    (relative error <= 2^-11; codes still exact) as long as it stays finite and non-zero."""
    w = np.asarray(w, np.float32)
    if w.ndim != 2 or w.size == 0:
        return None
    n, k = w.shape
    if n > 8 and exact_ternary(w[:4], block_size, round_scale) is None:
        return None  # cheap reject of ordinary weights from their first rows
    bs = pick_block("ternary", k, block_size)
    nb = -(-k // bs)
    if nb * bs != k:
        wp = np.zeros((n, nb * bs), np.float32)
        wp[:, :k] = w
    else:
        wp = w
    blocks = wp.reshape(n, nb, bs)  # (N, n_blocks, block)
    a = np.abs(blocks)
    s = a.max(axis=-1)  # (N, n_blocks)
    if not ((a == 0) | (a == s[..., None])).all() or (n > 8 and not s.any()):
        return None
    with np.errstate(over="ignore"):
        s16 = s.astype(np.float16)
    s32 = s16.astype(np.float32)
    if not np.isfinite(s32).all() or ((s32 == 0) & (s != 0)).any():
        return None
    if not round_scale and not np.array_equal(s32, s):
        return None
    codes = (np.sign(blocks) + 1).astype(np.uint8)  # 0/1/2 = -1/0/+1
    zp = pack_zero_points(np.ones((n, nb), np.uint8), 2)
    return QuantizedTensor("ternary", (n, k), bs, 2, pack_codes(codes, 2), s16, zp)


def _auto_format(source_type: str) -> str:
    if source_type == "TERNARY":
        return "ternary"
    if source_type in EXACT_FROM_GGUF:
        return EXACT_FROM_GGUF[source_type]
    if source_type in ("F32", "F64"):
        return "f32"
    if source_type in ("F16", "BF16"):
        return "f16"
    return "int8"


def rel_rms(ref: np.ndarray, got: np.ndarray) -> float:
    """Relative RMS error ||got - ref|| / ||ref|| (0 for an all-zero reference matched exactly)."""
    ref = np.asarray(ref, np.float32).reshape(-1)
    got = np.asarray(got, np.float32).reshape(-1)
    den = float(np.sqrt(np.mean(ref.astype(np.float64) ** 2)))
    num = float(np.sqrt(np.mean((got - ref).astype(np.float64) ** 2)))
    return num / den if den else num


def quant_parts(name: str, q: QuantizedTensor, source: str) -> TensorParts:
    """TensorParts of a QuantizedTensor: parts data (MatMulNBits B), scales, [zero_points]; data alone for
    the verbatim ggml block formats."""
    parts = {"data": q.data}
    if q.scales is not None:
        parts["scales"] = q.scales
    if q.zero_points is not None:
        parts["zero_points"] = q.zero_points
    quant = {"bits": q.bits, "block_size": q.block_size, "source": source}
    return TensorParts(name, q.format, tuple(q.shape), parts, quant)


def convert(t: SourceTensor, recipe: dict, raw=None) -> tuple[TensorParts, float]:
    """Convert one source tensor as the recipe says; returns (parts to write, relative RMS error).

    `raw`: optional ``(raw_bytes (N, row_bytes) uint8, gguf_type, row_permutation | None)`` for a
    GGUF tensor, used for an exact block copy when the target format matches the source blocks.
    """
    w = t.data
    fmt = recipe_fmt = tensor_format(t.name, w.ndim, recipe)
    if fmt == "auto":
        fmt = _auto_format(t.source_type) if w.ndim >= 2 else recipe["vectors"]
    if w.ndim == 2 and raw is None and (fmt == "ternary" or recipe_fmt == "auto") \
            and recipe.get("exact_import", True):
        q = exact_ternary(w, recipe.get("block_size"), round_scale=t.source_type == "TERNARY")
        if q is not None:
            src = "BitNet ternary exact" if t.source_type == "TERNARY" else f"{t.source_type} ternary-valued exact"
            return quant_parts(t.name, q, src), rel_rms(w, dequantize(q))
    if fmt in PLAIN:
        arr = np.asarray(w, dtype=PLAIN[fmt])
        return TensorParts(t.name, fmt, tuple(arr.shape), {"data": arr}), rel_rms(w, arr)
    if fmt not in FORMATS:
        get_format(fmt)
    w2 = np.asarray(w, np.float32).reshape(w.shape[0], -1)
    if raw is not None and recipe.get("exact_import", True) and EXACT_FROM_GGUF.get(raw[1]) == fmt \
            and (fmt in BLOCK_TYPES or recipe.get("block_size") in (None, 32 if fmt != "ternary" else 256)):
        data, qtype, perm = raw
        q = (from_gguf_blocks if fmt in BLOCK_TYPES else from_gguf)(data, w2.shape, qtype)
        if perm is not None:  # llama Q/K: the reader's row un-permutation, applied to whole rows of blocks
            sc, zp = (None if a is None else a[perm] for a in (q.scales, q.zero_points))
            q = QuantizedTensor(q.format, q.shape, q.block_size, q.bits, q.data[perm], sc, zp)
        return quant_parts(t.name, q, f"{qtype} exact"), rel_rms(w2, dequantize(q))
    if fmt in BLOCK_TYPES:
        raise EdgerunError(f"{t.name}: format {fmt} holds GGUF {BLOCK_TYPES[fmt].ggml} blocks as they are; this "
                           f"tensor is {t.source_type}. Use weights='auto' or a quantized format such as int4")
    bs = pick_block(fmt, w2.shape[1], recipe.get("block_size"))
    q = quantize(w2, fmt, bs)
    return quant_parts(t.name, q, f"{t.source_type} quantized"), rel_rms(w2, dequantize(q))


class GGUFRaw:
    """Raw blocks of a GGUF's tensors by name (memory-mapped), for exact imports."""

    def __init__(self, path, arch: str, config: dict, reader=None):
        from edgerun.export.gguf_reader import open_gguf, unpermute_rope_rows

        self.reader = reader if reader is not None else open_gguf(path)
        self.tensors = {t.name: t for t in self.reader.tensors}
        self.arch, self.config = arch, config
        self._unpermute = unpermute_rope_rows

    def __call__(self, name: str):
        t = self.tensors.get(name)
        if t is None or t.tensor_type.name not in EXACT_FROM_GGUF:
            return None
        shape = tuple(int(d) for d in reversed(t.shape.tolist()))
        if len(shape) != 2:
            return None
        perm = None
        if self.arch == "llama" and name.endswith(("attn_q.weight", "attn_k.weight")):
            heads = self.config["n_heads"] if "attn_q" in name else self.config["n_kv_heads"]
            perm = self._unpermute(np.arange(shape[0])[:, None], heads)[:, 0]
        raw = np.asarray(t.data, np.uint8).reshape(shape[0], -1)
        return raw, t.tensor_type.name, perm


def format_error_table(errors: dict[str, tuple[str, float]], weights_bytes: int | None = None) -> str:
    """Human-readable per-tensor table: name, format, relative RMS error; then the artifact size."""
    lines = [f"{'tensor':<34} {'format':<10} {'rel. RMS error':>14}"]
    for name, (fmt, err) in errors.items():
        lines.append(f"{name:<34} {fmt:<10} {err:>14.5f}")
    if weights_bytes is not None:
        lines.append(f"weights.bin: {weights_bytes / 1e6:.1f} MB")
    return "\n".join(lines)
