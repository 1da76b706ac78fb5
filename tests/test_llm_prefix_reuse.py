"""Prompt-prefix reuse (`reuse_prefix=True`): the next call prefills only what follows the shared tokens and
generates what a fresh call generates, on every backend whose cache can be truncated."""

from __future__ import annotations

import numpy as np
import pytest
from tiny_models import make_tiny


@pytest.fixture(scope="module")
def tiny(tmp_path_factory, smollm2_gguf):
    from edgerun.export.exporter import export

    d = tmp_path_factory.mktemp("prefix")
    hf, _ = make_tiny("llama", d, smollm2_gguf)
    return export(hf, d / "llama.edge", weights="int8")


@pytest.mark.parametrize("backend", ["native", "reference", "onnxruntime"])
def test_second_turn_reuses_the_first(tiny, backend):
    from edgerun.runtime.llm.model import load

    m = load(tiny, backend=backend)
    chat = [{"role": "system", "content": "You answer briefly."}, {"role": "user", "content": "Name a colour."}]
    first = list(m.stream_chat(chat, max_tokens=6, reuse_prefix=True))
    reply = "".join(r.text for r in first)
    chat2 = chat + [{"role": "assistant", "content": reply}, {"role": "user", "content": "And another one?"}]
    ids2 = m.tokenizer.encode_chat(chat2)
    reused = list(m.stream(ids2, max_tokens=6, reuse_prefix=True))
    fresh = list(load(tiny, backend=backend).stream(ids2, max_tokens=6))
    assert reused[0].prompt_tokens < len(ids2) // 2 + 8  # the system prompt and first turn were not run again
    assert fresh[0].prompt_tokens == len(ids2)
    assert [r.token for r in reused] == [r.token for r in fresh]


def test_truncate_then_refill_gives_the_same_logits(tiny):
    from edgerun.runtime.llm.model import load

    m = load(tiny)
    ids = m.tokenizer.encode("The quick brown fox jumps over the lazy dog")
    want = m.logits(ids)[-1]
    cache = m.new_cache()
    m.prefill(ids + [5, 6, 7], cache)
    cache.truncate(len(ids) - 2)
    got = m.prefill(ids[-2:], cache)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)
