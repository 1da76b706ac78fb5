"""Verbatim ggml block formats (quant/ggml_blocks.py): our numpy dequantization is bit-identical to gguf-py's."""

from __future__ import annotations

import numpy as np
import pytest
from edgerun.quant import BLOCK_TYPES, FORMATS, dequantize, dequantize_blocks, dequantize_rows, from_gguf_blocks
from edgerun.quant.parts import dequantize_parts, quantized_from_parts
from gguf import GGMLQuantizationType
from gguf.quants import dequantize as gg_dequantize


def _random_blocks(fmt: str, n: int, rng) -> np.ndarray:
    """n random blocks of `fmt` (every bit random) with finite f16 scale fields."""
    bt = BLOCK_TYPES[fmt]
    b = rng.integers(0, 256, (n, bt.type_size), dtype=np.uint8)
    f16_at = {"q4_1": (0, 2), "q5_0": (0,), "q5_1": (0, 2), "q2_k": (80, 82), "q3_k": (108,),
              "q4_k": (0, 2), "q5_k": (0, 2), "q6_k": (208,)}[fmt]  # fmt: skip
    for at in f16_at:
        b[:, at : at + 2] = rng.normal(0, 0.05, (n, 1)).astype(np.float16).view(np.uint8)
    return b


@pytest.mark.parametrize("fmt", sorted(BLOCK_TYPES))
def test_random_blocks_bit_exact(fmt):
    rng = np.random.default_rng(7)
    bt = BLOCK_TYPES[fmt]
    b = _random_blocks(fmt, 3000, rng)
    ours = dequantize_blocks(b, fmt)  # (n, qk)
    ref = gg_dequantize(b, GGMLQuantizationType[bt.ggml]).reshape(-1, bt.qk)
    assert ours.dtype == np.float32 and ours.shape == ref.shape
    np.testing.assert_array_equal(ours.view(np.uint32), ref.view(np.uint32))  # bit for bit (signed zeros too)


@pytest.mark.parametrize("fmt", sorted(BLOCK_TYPES))
def test_format_tensor_parts_and_rows(fmt):
    """A (N, K) tensor of raw blocks: sizes, parts without scales, row lookups, manifest round trip."""
    rng = np.random.default_rng(3)
    bt = BLOCK_TYPES[fmt]
    n, k = 6, 2 * max(bt.qk, 256)
    raw = _random_blocks(fmt, n * k // bt.qk, rng).reshape(n, -1)
    q = from_gguf_blocks(raw, (n, k), bt.ggml)
    assert (q.format, q.block_size, q.bits, q.scales, q.zero_points) == (fmt, bt.qk, bt.bits, None, None)
    assert q.data.shape == (n, k // bt.qk, bt.type_size)
    assert q.nbytes == raw.nbytes == FORMATS[fmt].nbytes((n, k)) and set(q.parts()) == {"B"}
    ref = gg_dequantize(raw, GGMLQuantizationType[bt.ggml]).reshape(n, k)
    np.testing.assert_array_equal(dequantize(q), ref)
    entry = {"format": fmt, "shape": [n, k], "quant": {"bits": bt.bits, "block_size": bt.qk}}
    parts = {"data": raw.reshape(-1)}  # stored flat: the entry gives the shape
    assert quantized_from_parts(entry, parts).data.shape == q.data.shape
    np.testing.assert_array_equal(dequantize_parts(entry, parts), ref)
    np.testing.assert_array_equal(dequantize_rows(entry, parts, np.array([4, 0, 4])), ref[[4, 0, 4]])


@pytest.mark.parametrize("fmt", ["q4_1", "q5_0", "q5_1"])
def test_legacy_quantize_through_gguf(fmt):
    w = np.random.default_rng(0).standard_normal((4, 96)).astype(np.float32)
    q = FORMATS[fmt].quantize(w)
    assert q.format == fmt and np.abs(dequantize(q) - w).max() < 0.25


def test_k_quants_are_import_only():
    from edgerun.errors import UnsupportedError

    with pytest.raises(UnsupportedError, match="imported from GGUF"):
        FORMATS["q4_k"].quantize(np.zeros((1, 256), np.float32))


@pytest.mark.model
@pytest.mark.parametrize("which", ["smollm2", "gemma3"])
def test_every_tensor_of_the_packaged_ggufs(which, smollm2_gguf, gemma3_gguf):
    """Every block-format tensor of both packaged GGUFs dequantizes exactly to gguf-py's values."""
    from edgerun.export.gguf_reader import open_gguf
    from edgerun.quant import FORMAT_OF_GGML

    reader = open_gguf(smollm2_gguf if which == "smollm2" else gemma3_gguf)
    seen = {}
    for t in reader.tensors:
        fmt = FORMAT_OF_GGML.get(t.tensor_type.name)
        if fmt is None:
            continue
        shape = tuple(int(d) for d in reversed(t.shape.tolist()))
        raw = np.asarray(t.data, np.uint8).reshape(shape[0], -1)
        got = dequantize(from_gguf_blocks(raw, shape, t.tensor_type.name))
        ref = gg_dequantize(t.data, t.tensor_type).reshape(shape)
        np.testing.assert_array_equal(got.view(np.uint32), ref.view(np.uint32), err_msg=t.name)
        seen[fmt] = seen.get(fmt, 0) + 1
    expected = {"smollm2": {"q4_1": 210}, "gemma3": {"q5_0": 81, "q4_k": 27, "q6_k": 9}}[which]
    assert seen == expected
