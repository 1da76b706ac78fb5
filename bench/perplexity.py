"""Model evaluation: perplexity and top-1 agreement, the way llama.cpp's `perplexity` tool measures.

llama.cpp's method: tokenize the whole text (with BOS when the model adds one), cut it
into chunks of `n_ctx` tokens, put BOS in each chunk's first slot, and score only the
second half of every chunk (positions n_ctx/2 .. n_ctx-2 predicting the next token), so
each scored token has at least n_ctx/2 tokens of context.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np


def log_softmax(x: np.ndarray) -> np.ndarray:
    """x: (..., vocab) -> log-probabilities, computed in float64."""
    x = x.astype(np.float64)
    m = x.max(axis=-1, keepdims=True)
    return x - m - np.log(np.exp(x - m).sum(axis=-1, keepdims=True))


def chunks(tokens: list[int], n_ctx: int, n_chunks: int | None, bos: int | None) -> list[list[int]]:
    """llama.cpp's chunking: consecutive n_ctx windows; BOS replaces the first token when given."""
    total = len(tokens) // n_ctx
    n = total if n_chunks is None else min(n_chunks, total)
    out = []
    for i in range(n):
        c = list(tokens[i * n_ctx : (i + 1) * n_ctx])
        if bos is not None:
            c[0] = bos
        out.append(c)
    return out


@dataclass
class PerplexityResult:
    """Perplexity over the scored halves of the chunks, with per-chunk NLL sums."""

    ppl: float
    nll: float
    n_scored: int
    chunk_nll: list[float] = field(default_factory=list)


def chunk_nll(logits: np.ndarray, chunk: list[int]) -> tuple[float, int]:
    """Sum of NLL over the second half of one chunk. logits: (n_ctx, vocab)."""
    n_ctx = len(chunk)
    first = n_ctx // 2
    lp = log_softmax(logits[first : n_ctx - 1])  # (n_ctx/2 - 1, vocab)
    targets = np.asarray(chunk[first + 1 : n_ctx])
    return float(-lp[np.arange(len(targets)), targets].sum()), len(targets)


def perplexity(score: Callable[[list[int]], np.ndarray], chunk_list: list[list[int]]) -> PerplexityResult:
    """Perplexity of `score(chunk) -> logits (n_ctx, vocab)` over the chunks."""
    total, n, per = 0.0, 0, []
    for c in chunk_list:
        s, k = chunk_nll(score(c), c)
        total, n = total + s, n + k
        per.append(s)
    return PerplexityResult(float(np.exp(total / n)), total / n, n, per)


def llama_cpp_scorer(gguf_path: str, n_ctx: int, threads: int | None = None, **kwargs):
    """A `score(chunk) -> logits` function backed by llama.cpp (llama-cpp-python) on a GGUF."""
    from llama_cpp import Llama

    llm = Llama(
        model_path=str(gguf_path),
        n_ctx=n_ctx,
        n_batch=n_ctx,
        n_ubatch=n_ctx,
        logits_all=True,
        n_threads=threads,
        verbose=False,
        **kwargs,
    )

    def score(chunk: list[int]) -> np.ndarray:
        llm.reset()
        llm.eval(chunk)
        return np.array(llm.scores[: len(chunk)], dtype=np.float32)

    score.llm = llm
    return score


def llama_cpp_greedy(llm, prompt_ids: list[int], n: int) -> list[int]:
    """Greedy continuation of `n` tokens with llama.cpp (argmax of its logits, EOS not special)."""
    llm.reset()
    llm.eval(prompt_ids)
    out = []
    for _ in range(n):
        tok = int(np.argmax(llm.scores[llm.n_tokens - 1]))
        out.append(tok)
        llm.eval([tok])
    return out


def greedy(model, prompt_ids: list[int], n: int) -> list[int]:
    """Greedy continuation of `n` tokens with an edgerun model (EOS not special), for comparisons."""
    cache = model.new_cache()
    logits = model.prefill(prompt_ids, cache)
    out = []
    for _ in range(n):
        tok = int(np.argmax(logits))
        out.append(tok)
        logits = model.decode_step(tok, cache)
    return out
