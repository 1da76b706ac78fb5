"""Same quantized weights in llama.cpp and edgerun: top-1 agreement over WikiText chunks (ctx 512).

GGUFs are written with gguf's own quantizers (`retype_gguf`: Q8_0, Q4_0, TQ2_0), imported into
edgerun bit-exactly (`weights="auto"`: Q8_0 -> int8, Q4_0 -> int4, TQ2_0 -> ternary) and run on the
native C kernels. Both engines quantize activations to 8 bits inside their kernels, so top-1 may
differ on near-ties only. The ternary case uses a random-weight llama with dims that are multiples
of 256 (no trained ternary model ships offline), so llama.cpp's TQ2_0 covers every matrix.

Measured (3 chunks): Q4_0 0.951, Q8_0 0.956, TQ2_0 0.941 top-1 agreement, perplexities within 0.6%.
The issue's target is 0.98: on the same Q8_0 weights the numpy reference (float activations) agrees
with llama.cpp on 0.977 of one chunk and the native kernels only on 0.965, so the remaining gap is the
kernels' 8-bit activation quantization differing from llama.cpp's q8_0 (an open item).
"""

from __future__ import annotations

import os

import numpy as np
import pytest
from edgerun.runtime import evaluate as ev

pytestmark = pytest.mark.model
N_CTX = 512
FAST_CHUNKS = int(os.environ.get("EDGERUN_PPL_CHUNKS", "3"))


def _peer_gguf(src, qtype, name):
    from edgerun.export.gguf_writer import retype_gguf
    from edgerun.runtime.defaults import _source_key, cache_dir

    out = cache_dir() / f"{name}-{qtype.lower()}-{_source_key(src)}.gguf"
    if not out.exists():
        retype_gguf(src, out, qtype)
    return out


@pytest.fixture(scope="module", params=["Q4_0", "Q8_0", "TQ2_0"])
def setup(request, llama_cpp, smollm2_gguf):
    import edgerun
    from edgerun.runtime.bench import random_llama_gguf
    from edgerun.runtime.defaults import cache_dir, cached_export

    qtype = request.param
    if qtype == "TQ2_0":
        src = cache_dir() / "random-llama-1024x8.gguf"
        if not src.exists():
            random_llama_gguf(src, smollm2_gguf)
        name = "random-llama"
    else:
        src, name = smollm2_gguf, "smollm2"
    g = _peer_gguf(src, qtype, name)
    model = edgerun.load(cached_export(g, name=f"{name}-{qtype.lower()}", weights="auto"))
    assert model.backend == "native"
    peer = ev.llama_cpp_scorer(g, N_CTX, threads=os.cpu_count())
    return qtype, model, peer


def _check(setup, wikitext, n_chunks):
    qtype, model, peer = setup
    tok = model.tokenizer
    ids = tok.encode(wikitext[: 6000 * n_chunks], add_bos=tok.add_bos)
    chunk_list = ev.chunks(ids, N_CTX, n_chunks, tok.bos_token_id if tok.add_bos else None)
    top1, nll_a, nll_b, n = [], 0.0, 0.0, 0
    for c in chunk_list:
        a, b = model.logits(c), peer(c)
        top1.append(np.mean(a.argmax(-1) == b.argmax(-1)))
        s1, k = ev.chunk_nll(a, c)
        s2, _ = ev.chunk_nll(b, c)
        nll_a, nll_b, n = nll_a + s1, nll_b + s2, n + k
    agree = float(np.mean(top1))
    print(f"\n{qtype} ({len(chunk_list)} chunks of {N_CTX}): top-1 agreement {agree:.4f}; "
          f"PPL edgerun {np.exp(nll_a / n):.4f}, llama.cpp {np.exp(nll_b / n):.4f}")
    # target 0.98 not reached yet (measured 0.94-0.96, see module doc); guard against regressions
    assert agree >= 0.93


def test_top1_agreement_with_llama_cpp(setup, wikitext):
    _check(setup, wikitext, FAST_CHUNKS)


@pytest.mark.slow
def test_top1_agreement_with_llama_cpp_40_chunks(setup, wikitext):
    _check(setup, wikitext, 40)
