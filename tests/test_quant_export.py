"""Recipes, dequantize_parts and quantized export: formats in the manifest, errors, exact GGUF imports."""

from __future__ import annotations

import json

import numpy as np
import pytest
from edgerun.errors import EdgerunError
from edgerun.export.recipe import make_recipe, pick_block, rel_rms
from edgerun.quant import FORMATS, MATMULNBITS_FORMATS, dequantize, dequantize_parts, dequantize_rows, quantize


@pytest.mark.parametrize("fmt", sorted(MATMULNBITS_FORMATS))
def test_dequantize_parts_matches_dequantize(fmt):
    rng = np.random.default_rng(0)
    w = rng.standard_normal((48, 320)).astype(np.float32)
    bs = pick_block(fmt, 320, None)
    q = quantize(w, fmt, bs)
    entry = {"format": fmt, "shape": [48, 320], "quant": {"bits": q.bits, "block_size": q.block_size}}
    parts = {"data": q.data, "scales": q.scales}
    if q.zero_points is not None:
        parts["zero_points"] = q.zero_points
    got = dequantize_parts(entry, parts)
    np.testing.assert_array_equal(got, dequantize(q))
    rows = np.array([5, 0, 47, 5])
    np.testing.assert_array_equal(dequantize_rows(entry, parts, rows), dequantize(q)[rows])
    flat = {k: v.reshape(-1) for k, v in parts.items()}  # stored flat: shapes come from the entry
    flat["B"] = flat.pop("data")  # MatMulNBits' name is accepted too
    np.testing.assert_array_equal(dequantize_parts(entry, flat), dequantize(q))
    assert rel_rms(w, got) < {"int8": 0.01, "int4": 0.15, "int4_asym": 0.15, "ternary": 0.7}[fmt]


def test_recipe_defaults_and_errors():
    r = make_recipe("int4")
    assert (r["weights"], r["embeddings"], r["output"], r["vectors"]) == ("int4", "int8", "int8", "f32")
    assert make_recipe("f16")["embeddings"] == "f16"
    assert make_recipe("ternary", embeddings="int4")["output"] == "int4"
    assert make_recipe("auto")["embeddings"] == "auto"
    with pytest.raises(EdgerunError, match="int3"):
        make_recipe("int3")
    assert pick_block("ternary", 576, None) == 64 and pick_block("ternary", 1024, None) == 256
    assert pick_block("int4", 576, None) == 32


@pytest.fixture(scope="module")
def tiny_gguf(tmp_path_factory, smollm2_gguf):
    from edgerun.bench.speed import random_llama_gguf

    d = tmp_path_factory.mktemp("tiny")
    return random_llama_gguf(d / "tiny.gguf", smollm2_gguf, dim=256, n_layers=2, n_heads=4, n_kv_heads=2,
                             ffn_dim=512, context_length=256)


@pytest.mark.model
@pytest.mark.parametrize("weights,limit", [("int8", 0.01), ("int4", 0.15), ("ternary", 0.7)])
def test_export_recipe_into_manifest(tiny_gguf, tmp_path, weights, limit):
    from edgerun.export.artifact import Artifact
    from edgerun.export.exporter import export

    out = export(tiny_gguf, tmp_path / f"t-{weights}.edge", weights=weights)
    art = Artifact(out)
    m = art.manifest
    assert m["recipe"]["weights"] == weights
    t = m["tensors"]
    assert t["blk.0.ffn_up.weight"]["format"] == weights
    assert t["blk.0.attn_norm.weight"]["format"] == "f32"
    emb = "f16" if weights == "f16" else "int8"
    assert t["token_embd.weight"]["format"] == emb and t["output.weight"]["format"] == emb
    if weights != "f16":
        assert set(t["blk.0.ffn_up.weight"]["parts"]) >= {"data", "scales"}
        assert t["blk.0.ffn_up.weight"]["quant"]["bits"] == FORMATS[weights].bits
    errs = m["quant_errors"]
    assert 0 < errs["blk.1.ffn_down.weight"][1] < limit
    # the loader rebuilds each tensor from its table entry
    from edgerun.export.gguf_reader import open_gguf
    from gguf.quants import dequantize as gg_deq

    src = {x.name: x for x in open_gguf(tiny_gguf).tensors}
    w0 = gg_deq(src["blk.1.ffn_down.weight"].data, src["blk.1.ffn_down.weight"].tensor_type)
    assert rel_rms(w0, art.tensor("blk.1.ffn_down.weight")) == pytest.approx(errs["blk.1.ffn_down.weight"][1], rel=1e-3)


@pytest.mark.model
@pytest.mark.parametrize("qtype,fmt", [("Q8_0", "int8"), ("Q4_0", "int4"), ("TQ2_0", "ternary"),
                                       pytest.param("TQ1_0", "ternary", marks=pytest.mark.slow)])
def test_exact_gguf_import(tiny_gguf, tmp_path, qtype, fmt):
    """GGUF blocks become the matching edgerun format bit-exactly (`--weights auto` and `--weights FMT`)."""
    from edgerun.export.artifact import Artifact
    from edgerun.export.exporter import export
    from edgerun.export.gguf_reader import open_gguf, unpermute_rope_rows
    from edgerun.export.gguf_writer import retype_gguf
    from gguf.quants import dequantize as gg_deq

    g = retype_gguf(tiny_gguf, tmp_path / f"tiny-{qtype}.gguf", qtype)
    src = {x.name: x for x in open_gguf(g).tensors}
    for weights in ("auto",) if qtype != "Q4_0" else ("auto", fmt):
        art = Artifact(export(g, tmp_path / f"{weights}.edge", weights=weights, embeddings="auto"))
        for name in ("blk.0.attn_q.weight", "blk.1.ffn_down.weight", "token_embd.weight"):
            e = art.tensors[name]
            assert e["format"] == fmt and e["quant"]["source"] == f"{qtype} exact", (name, e)
            x = src[name]
            ref = gg_deq(x.data, x.tensor_type).reshape(e["shape"])
            if name.endswith("attn_q.weight"):
                ref = unpermute_rope_rows(ref, art.config["n_heads"])
            np.testing.assert_array_equal(art.tensor(name), ref)
            assert art.manifest["quant_errors"][name][1] == 0.0
        json.dumps(art.manifest["recipe"])
