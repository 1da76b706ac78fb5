"""The native backend's sink + window decode equals the numpy reference running the same cache.

Decode goes far past the window, so eviction, the StreamingLLM sink rotation (native: sink keys
shifted, or for KIVI the query rotated in C; reference: the query rotated at its in-cache position) and
Gemma-3's own local windows are all exercised. The reference is the numpy model with the numpy path of
:meth:`SinkWindowKVCache.attend` (native=False); the native KIVI caches attend in C.
"""

from __future__ import annotations

import numpy as np
import pytest
from tiny_models import make_tiny


@pytest.fixture(scope="module")
def tiny(tmp_path_factory, smollm2_gguf):
    from edgerun.export.exporter import export

    d = tmp_path_factory.mktemp("kvnative")
    out = {}
    for arch in ("llama", "gemma3"):
        hf, _ = make_tiny(arch, d, smollm2_gguf)
        out[arch] = export(hf, d / f"{arch}.edge", weights="f32")
    return out


@pytest.mark.parametrize("arch", ["llama", "gemma3"])
@pytest.mark.parametrize("bits", [32, 16, 8, 4, 2])
def test_ring_decode_matches_reference(tiny, arch, bits):
    from edgerun.export.artifact import Artifact
    from edgerun.runtime.llm.kv_cache import SinkWindowKVCache
    from edgerun.runtime.llm.model import LLM, load

    m = load(tiny[arch], ram=None, kv_bits=bits, kv_window=24, kv_sinks=4, prefill_chunk=8)
    assert m.backend == "native"
    ref = LLM(Artifact(tiny[arch]), backend="reference")
    c_nat = m.new_cache()  # KIVI: attention and store in C (er_decode_layer_kivi / er_kivi_attention)
    c_ref = SinkWindowKVCache(c_nat.specs, bits=bits, chunk=8, native=False)  # the same layout, numpy attention
    assert c_nat.native == (bits <= 16)
    rng = np.random.default_rng(bits)
    prompt = rng.integers(10, m.args.vocab_size, 13).tolist()
    got, want = [m.prefill(prompt, c_nat)], [ref.prefill(prompt, c_ref)]
    for t in rng.integers(10, m.args.vocab_size, 60).tolist():  # 73 tokens through a 24-token window
        got.append(m.decode_step(t, c_nat))
        want.append(ref.decode_step(t, c_ref))
    m.close()
    got, want = np.stack(got), np.stack(want)
    tol = 2e-4 if bits == 32 else 3e-3
    np.testing.assert_allclose(got, want, atol=tol * np.abs(want).max())
    assert (got.argmax(-1) == want.argmax(-1)).all()


def test_ring_differs_from_full_attention_past_the_window(tiny):
    """The check above is not vacuous: past the window, the ring's logits leave full attention's."""
    from edgerun.runtime.llm.model import load

    m = load(tiny["llama"], ram=None, kv_bits=32, kv_window=24, kv_sinks=4, prefill_chunk=8)
    full = load(tiny["llama"], ram=None, kv_bits=32, kv_window=512, kv_sinks=4, prefill_chunk=8)
    ids = np.random.default_rng(0).integers(10, m.args.vocab_size, 60).tolist()
    a, b = m.logits(ids), full.logits(ids)
    np.testing.assert_allclose(a[:24], b[:24], atol=1e-4 * np.abs(b).max())
    assert np.abs(a[40:] - b[40:]).max() > 1e-2 * np.abs(b).max()
