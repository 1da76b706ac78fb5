"""Same quantized weights in llama.cpp and edgerun: top-1 agreement over WikiText chunks (ctx 512).

GGUFs are written with gguf's own quantizers (`retype_gguf`: Q8_0, Q4_0, TQ2_0), imported into
edgerun bit-exactly (`weights="auto"`: Q8_0 -> int8, Q4_0 -> int4, TQ2_0 -> ternary) and run on the
native C kernels. Both engines quantize activations to 8 bits inside their kernels, so top-1 may
differ on near-ties only. The ternary case uses a random-weight llama with dims that are multiples
of 256 (no trained ternary model ships offline), so llama.cpp's TQ2_0 covers every matrix.

Both engines quantize activations the same way (kernels: llama.cpp's Q8_0 per 32 with fp16 d and
round-half-even; Q8_K per 256 for ternary), yet top-1 agreement stays near 0.95 because a forward with
8-bit activations is chaotic: a 1-ulp change of the embeddings alone moves the native backend's own
top-1 on 4% of positions (max logit change 1.8), while the float reference does not move (8.6e-5);
llama.cpp itself with an f32 instead of f16 KV cache agrees with its default on 0.965 of one chunk.
Any ulp-level difference from llama.cpp (summation order in its kernels, expf, f16 KV) therefore
decorrelates the two quantization noises; 0.98 would need a bit-exact copy of llama.cpp's graph.
The disagreements are near-ties of llama.cpp itself: where its top-1 leads the runner-up by more than
MARGIN logits the engines agree (1 chunk: 1.000 for all three formats; every disagreement had a margin
below 0.35), which is what this test checks strictly.

Measured (3 chunks, `pytest -s tests/test_quant_export_llama_cpp.py -k "not 40"`): top-1 agreement
Q4_0 0.955, Q8_0 0.956, TQ2_0 0.949 (before the llama.cpp-style activation rounding: 0.951, 0.956,
0.941); perplexities within 0.7%.

The same weights through edgerun's llama.cpp-order forward (`runtime/backends/ggml_exact.py`: the
float operations of an x86 AVX2 llama.cpp build in its order) give **bit-identical logits** on every
position of the 3 chunks for all three formats (top-1 1.0000), which shows the imports and the integer
kernels are exact and that the serving path's 0.95 is the float-order chaos above, nothing else.
That check needs the peer to be the build it mirrors (x86-64 with AVX2 and without AVX-512, as
`llama_print_system_info` reports); elsewhere it is skipped with the reason.
"""

from __future__ import annotations

import os

import numpy as np
import pytest
from edgerun.bench import perplexity as ev

pytestmark = pytest.mark.model
N_CTX = 512
FAST_CHUNKS = int(os.environ.get("EDGERUN_PPL_CHUNKS", "3"))
MARGIN = 0.5  # logits between llama.cpp's top-1 and runner-up: not a near-tie


def _peer_gguf(src, qtype, name):
    from edgerun.export.gguf_writer import retype_gguf
    from edgerun.runtime.store.defaults import _source_key, cache_dir

    out = cache_dir() / f"{name}-{qtype.lower()}-{_source_key(src)}.gguf"
    if not out.exists():
        retype_gguf(src, out, qtype)
    return out


@pytest.fixture(scope="module", params=["Q4_0", "Q8_0", "TQ2_0"])
def setup(request, llama_cpp, smollm2_gguf):
    import edgerun
    from edgerun.bench.speed import random_llama_gguf
    from edgerun.runtime.store.defaults import cache_dir, cached_export

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
    clear = []  # agreement flags where llama.cpp's top-1 is not a near-tie
    for c in chunk_list:
        a, b = model.logits(c), peer(c)
        same = a.argmax(-1) == b.argmax(-1)
        top2 = np.sort(b, axis=-1)[:, -2:]
        top1.append(np.mean(same))
        clear.append(same[top2[:, 1] - top2[:, 0] > MARGIN])
        s1, k = ev.chunk_nll(a, c)
        s2, _ = ev.chunk_nll(b, c)
        nll_a, nll_b, n = nll_a + s1, nll_b + s2, n + k
    agree = float(np.mean(top1))
    clear = np.concatenate(clear)
    agree_clear = float(np.mean(clear))
    print(f"\n{qtype} ({len(chunk_list)} chunks of {N_CTX}): top-1 agreement {agree:.4f}; "
          f"where llama.cpp's margin > {MARGIN}: {agree_clear:.4f} on {len(clear)} positions; "
          f"PPL edgerun {np.exp(nll_a / n):.4f}, llama.cpp {np.exp(nll_b / n):.4f}")
    # all-position top-1 is bounded by the chaos of 8-bit activations (module doc): guard at 0.94
    assert agree >= 0.94
    assert len(clear) >= 50 and agree_clear >= 0.99
    assert abs(nll_a - nll_b) / n < 0.02  # perplexities within 2% (measured <= 0.95%)


def test_top1_agreement_with_llama_cpp(setup, wikitext):
    _check(setup, wikitext, FAST_CHUNKS)


@pytest.mark.slow
def test_top1_agreement_with_llama_cpp_40_chunks(setup, wikitext):
    _check(setup, wikitext, 40)


def _mirrored_build() -> str | None:
    """Why the llama.cpp-order forward cannot mirror this llama.cpp build, or None when it can."""
    import platform

    import llama_cpp
    from edgerun.kernels import ggml_exact

    info = llama_cpp.llama_print_system_info().decode()
    if platform.machine() not in ("x86_64", "AMD64") or not ggml_exact.available():
        return f"the llama.cpp-order kernels mirror an x86-64 AVX2 build; this is {platform.machine()}"
    if "AVX512 = 1" in info or "AVX2 = 1" not in info or "FMA = 1" not in info:
        return f"llama.cpp here is not an AVX2/FMA build without AVX-512: {info.strip()}"
    return None


def _check_exact(setup, wikitext, n_chunks):
    from edgerun.runtime.backends.ggml_exact import GgmlExactForward

    reason = _mirrored_build()
    if reason:
        pytest.skip(reason)
    qtype, model, peer = setup
    exact = GgmlExactForward(model.model)
    tok = model.tokenizer
    ids = tok.encode(wikitext[: 6000 * n_chunks], add_bos=tok.add_bos)
    agree, identical, n = 0, 0, 0
    for c in ev.chunks(ids, N_CTX, n_chunks, tok.bos_token_id if tok.add_bos else None):
        a, b = exact.logits(c), peer(c)
        agree += int(np.sum(a.argmax(-1) == b.argmax(-1)))
        identical += int(np.sum(np.all(a == b, axis=-1)))
        n += len(c)
    print(f"\n{qtype} llama.cpp-order forward ({n_chunks} chunks of {N_CTX}): top-1 agreement "
          f"{agree / n:.4f}, rows with bit-identical logits {identical / n:.4f}")
    assert agree / n >= 0.98


def test_llama_cpp_order_forward_top1_with_llama_cpp(setup, wikitext):
    """The imported weights in llama.cpp's float order: top-1 >= 0.98 (measured 1.0, logits bit-identical)."""
    _check_exact(setup, wikitext, FAST_CHUNKS)


@pytest.mark.slow
def test_llama_cpp_order_forward_top1_with_llama_cpp_40_chunks(setup, wikitext):
    _check_exact(setup, wikitext, 40)
