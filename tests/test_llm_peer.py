"""The numpy reference forward against llama.cpp on the packaged GGUFs (SmolLM2 llama, Gemma-3).

Two peers per model:
- llama.cpp on a GGUF holding exactly the weights edgerun runs (the packaged GGUF dequantized
  to F32, F16 KV cache as edgerun's full cache): same numbers in, so greedy text and top-1 must agree
  (llama.cpp also rounds the query to f16 in its attention product: near-ties may still flip).
- llama.cpp on the packaged quantized GGUF itself: it quantizes activations to 8 bits inside
  its Q4_1/Q8_0 kernels, so top-1 differs on near-ties; perplexity must still be within 1%.

Perplexity follows llama.cpp's `perplexity` tool (ctx 512, second half of each chunk scored).
The default run scores a few chunks; `-m slow` runs the 40 chunks of the closing figures.
llama.cpp runs on one thread here: its spinning thread barriers collapse on a busy machine,
and the thread count does not change its results.
"""

from __future__ import annotations

import os

import numpy as np
import pytest
from edgerun.bench import perplexity as ev

pytestmark = pytest.mark.model

PROMPTS = [
    "The capital of France is",
    "def fibonacci(n):\n",
    "Once upon a time, in a small village,",
    "The three primary colors are",
    "In 1969, Neil Armstrong",
    "Water boils at a temperature of",
    "import numpy as np\n\n# compute the mean of a list\n",
    "The quick brown fox",
    "Photosynthesis is the process by which",
    "1, 2, 3, 4, 5,",
]
N_CTX = 512
FAST_CHUNKS = int(os.environ.get("EDGERUN_PPL_CHUNKS", "3"))


@pytest.fixture(scope="module", params=["smollm2", "gemma3"])
def setup(request, llama_cpp, smollm2_gguf, gemma3_gguf):
    """(edgerun model on f32 weights, llama.cpp scorer on the same weights, source GGUF)."""
    import edgerun
    from edgerun.export.gguf_writer import retype_gguf
    from edgerun.runtime.store.defaults import _source_key, cache_dir, cached_export

    src = smollm2_gguf if request.param == "smollm2" else gemma3_gguf
    f32_gguf = cache_dir() / f"{request.param}-f32-{_source_key(src)}.gguf"
    if not f32_gguf.exists():
        retype_gguf(src, f32_gguf, "F32")
    model = edgerun.load(cached_export(src, name=request.param, weights="f32"))
    peer = ev.llama_cpp_scorer(f32_gguf, N_CTX, threads=1, flash_attn=False, type_k=1, type_v=1)
    return request.param, model, peer, src


def _chunks(model, text, n):
    tok = model.tokenizer
    ids = tok.encode(text, add_bos=tok.add_bos)
    return ev.chunks(ids, N_CTX, n, tok.bos_token_id if tok.add_bos else None)


def test_greedy_continuations_match_llama_cpp(setup):
    name, model, peer, _ = setup
    agree = 0
    for prompt in PROMPTS:
        ids = model.tokenizer.encode(prompt)
        ours = ev.greedy(model, ids, 32)
        theirs = ev.llama_cpp_greedy(peer.llm, ids, 32)
        agree += ours == theirs
    print(f"\n{name}: greedy 32-token continuations identical on {agree}/10 prompts")
    assert agree >= 9


def _agreement_and_ppl(model, peer, chunk_list):
    top1, ours_nll, peer_nll, n = [], 0.0, 0.0, 0
    for c in chunk_list:
        a, b = model.logits(c), peer(c)
        top1.append(np.mean(a.argmax(-1) == b.argmax(-1)))
        s1, k = ev.chunk_nll(a, c)
        s2, _ = ev.chunk_nll(b, c)
        ours_nll, peer_nll, n = ours_nll + s1, peer_nll + s2, n + k
    return float(np.mean(top1)), float(np.exp(ours_nll / n)), float(np.exp(peer_nll / n))


def _check(setup, wikitext, n_chunks):
    name, model, peer, src = setup
    chunk_list = _chunks(model, wikitext, n_chunks)
    top1, ppl, ppl_peer = _agreement_and_ppl(model, peer, chunk_list)
    quant = ev.perplexity(ev.llama_cpp_scorer(src, N_CTX, threads=1), chunk_list).ppl
    print(
        f"\n{name} ({len(chunk_list)} chunks of {N_CTX}): top-1 agreement {top1:.4f}; "
        f"PPL edgerun {ppl:.4f}, llama.cpp same weights {ppl_peer:.4f}, llama.cpp quantized GGUF {quant:.4f}"
    )
    assert top1 >= 0.99
    assert abs(ppl / ppl_peer - 1) <= 0.01
    assert abs(ppl / quant - 1) <= 0.01


def test_top1_and_perplexity_match_llama_cpp(setup, wikitext):
    _check(setup, wikitext, FAST_CHUNKS)


@pytest.mark.slow
def test_top1_and_perplexity_match_llama_cpp_40_chunks(setup, wikitext):
    _check(setup, wikitext, 40)


def test_default_export_on_reference_matches_llama_cpp_f32(setup, wikitext):
    """The default export (GGUF blocks kept verbatim: Q4_1 / Q5_0 / Q4_K / Q6_K / Q8_0) run by the numpy reference
    backend against llama.cpp on the same GGUF dequantized to F32: the same weights, so float-order noise only
    (measured max |diff| 1e-4 of logits up to 35 on SmolLM2; Gemma-3 0.045 of 45, relative RMS 4e-4)."""
    import edgerun
    from edgerun.runtime.store.defaults import cached_export

    name, _, peer, src = setup
    ref = edgerun.load(cached_export(src, name=name), backend="reference")
    formats = {e["format"] for e in ref.artifact.tensors.values()}
    assert "f16" not in formats and formats & {"q4_1", "q5_0", "q4_k", "q6_k"}
    chunk = _chunks(ref, wikitext, 1)[0][:256]
    a, b = ref.logits(chunk), peer(chunk)
    assert np.linalg.norm(a - b) / np.linalg.norm(b) < 1e-3
    assert (a.argmax(-1) == b.argmax(-1)).mean() >= 0.99
