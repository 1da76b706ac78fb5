"""The native (C kernel) backend against the numpy reference on tiny random llama artifacts."""

from __future__ import annotations

import edgerun
import numpy as np
import pytest
from edgerun.bench import perplexity as ev

pytestmark = pytest.mark.model


@pytest.fixture(scope="module")
def tiny(tmp_path_factory, smollm2_gguf):
    from edgerun.bench.speed import random_llama_gguf
    from edgerun.export.exporter import export

    d = tmp_path_factory.mktemp("native")
    g = random_llama_gguf(d / "tiny.gguf", smollm2_gguf, dim=256, n_layers=2, n_heads=4, n_kv_heads=2,
                          ffn_dim=512, context_length=512)
    return {w: export(g, d / f"{w}.edge", weights=w) for w in ("f16", "int4", "ternary")}


def test_backend_choice(tiny):
    assert edgerun.load(tiny["int4"]).backend == "native"
    assert edgerun.load(tiny["f16"]).backend == "native"  # the C kernels run every format
    assert edgerun.load(tiny["f16"], backend="reference").backend == "reference"
    with pytest.raises(edgerun.errors.EdgerunError, match="backend"):
        edgerun.load(tiny["f16"], backend="gpu")


def test_native_f16_matches_reference(tiny):
    ref = edgerun.load(tiny["f16"], backend="reference")
    nat = edgerun.load(tiny["f16"], backend="native")
    ids = ref.tokenizer.encode("The quick brown fox jumps over the lazy dog. " * 4)
    np.testing.assert_allclose(nat.logits(ids), ref.logits(ids), atol=2e-3, rtol=1e-3)
    c1, c2 = ref.new_cache(), nat.new_cache()
    ref.prefill(ids, c1), nat.prefill(ids, c2)
    for tok in (5, 17, 900):
        np.testing.assert_allclose(nat.decode_step(tok, c2), ref.decode_step(tok, c1), atol=2e-3, rtol=1e-3)
    assert ev.greedy(nat, ids, 24) == ev.greedy(ref, ids, 24)


@pytest.mark.parametrize("weights", ["int4", "ternary"])
def test_native_quantized_close_to_reference(tiny, weights):
    """Quantized: the kernels quantize activations to 8 bits (like llama.cpp), so allow small drift."""
    ref = edgerun.load(tiny[weights], backend="reference")
    nat = edgerun.load(tiny[weights])
    ids = ref.tokenizer.encode("Once upon a time, in a small village, there lived " * 3)
    lr, ln = ref.logits(ids), nat.logits(ids)
    rel = np.linalg.norm(ln - lr) / np.linalg.norm(lr)
    assert rel < 0.05, rel
    assert (lr.argmax(-1) == ln.argmax(-1)).mean() >= 0.9
    # decode steps agree with the prefill of the same tokens (the KV cache path)
    c = nat.new_cache()
    nat.prefill(ids[:5], c)
    steps = np.stack([nat.decode_step(t, c) for t in ids[5:12]])
    np.testing.assert_allclose(steps, ln[5:12], atol=0.05 * np.abs(ln).max())


def test_native_weights_are_views_of_the_file(tiny):
    nat = edgerun.load(tiny["int4"])
    mm = np.frombuffer(nat.model.src._map, np.uint8)
    w = nat.model.src.layer(0)["wu"]
    assert w.format == "int4"
    for arr in w._keep:
        if arr is not None:
            assert np.shares_memory(arr, mm)
