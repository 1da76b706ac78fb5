"""Degenerate loops in generated token streams (a small model, or Whisper, repeating one pattern forever)."""

from __future__ import annotations


def repeating_period(tokens: list[int], times: int, max_period: int, min_tokens: int = 0) -> int:
    """The period p when the tail of `tokens` is one p-token pattern (1 <= p <= max_period) repeated at least
    `times` times and the repeats cover at least `min_tokens` tokens, else 0 (the shortest such p).

    tokens [5, 1, 2, 1, 2, 1, 2], times 3 -> 2; [1, 2, 3, 1, 2, 3] -> 0 (only twice)."""
    n_tok = len(tokens)
    for p in range(1, max_period + 1):
        n = max(p * times, -(-min_tokens // p) * p)  # whole copies of the pattern covering min_tokens
        if n_tok < n:
            continue
        tail = tokens[n_tok - p :]
        if all(tokens[n_tok - n + i] == tail[i % p] for i in range(n)):
            return p
    return 0
