"""Hugging Face checkpoints (bf16 safetensors, no torch) for llama / qwen2 / gemma3, checked
against llama.cpp running the same weights from a GGUF (tiny random models, see tiny_models.py)."""

from __future__ import annotations

import numpy as np
import pytest
from tiny_models import make_tiny


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("tiny")


@pytest.mark.parametrize("arch", ["llama", "qwen2", "gemma3"])
def test_hf_checkpoint_matches_llama_cpp(arch, tiny_dir, smollm2_gguf, llama_cpp):
    import edgerun
    from edgerun.bench import perplexity as ev
    from edgerun.export.exporter import export

    hf, gguf_path = make_tiny(arch, tiny_dir, smollm2_gguf)
    art = export(hf, tiny_dir / f"{arch}.edge", weights="f32")
    m = edgerun.load(art)
    assert m.arch == arch
    text = "The tiny model reads this sentence, and then some more words to pass the window of eight."
    ids = m.tokenizer.encode(text)
    assert len(ids) > 16  # longer than gemma3's tiny sliding window (8)
    ours = m.logits(ids)
    peer = ev.llama_cpp_scorer(gguf_path, 64, threads=1, flash_attn=False, type_k=0, type_v=0)
    theirs = peer(ids)
    assert np.array_equal(ours.argmax(-1), theirs.argmax(-1))
    np.testing.assert_allclose(ours, theirs, atol=2e-3 * np.abs(theirs).max())


def test_hf_reader_maps_names_and_config(tiny_dir, smollm2_gguf):
    from edgerun.export.hf_reader import read_hf

    hf, _ = make_tiny("gemma3", tiny_dir, smollm2_gguf)
    src = read_hf(hf)
    assert src.arch == "gemma3"
    assert src.config["sliding_window"] == 8 and src.config["tie_embeddings"]
    names = set(src.tensor_names)
    assert {"token_embd.weight", "blk.5.post_ffw_norm.weight", "blk.0.attn_q_norm.weight"} <= names
    norms = {t.name: t.data for t in src.tensors() if t.name == "blk.0.attn_norm.weight"}
    assert abs(float(norms["blk.0.attn_norm.weight"].mean()) - 1.0) < 0.2  # gemma's +1 applied
