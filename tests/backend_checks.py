"""Comparisons shared by the backend tests (onnxruntime, TVM, GGUF block import) against native/reference."""

from __future__ import annotations

import numpy as np
from edgerun.bench import perplexity as ev


def rel(a, b) -> float:
    """Relative L2 distance of `a` from `b`."""
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


def same_greedy(a, b, ids, n: int) -> bool:
    """Greedy of `a` equals `b`'s, unless they part at a near-tie of `b` (random tiny models have them);
    a parting anywhere else fails. Returns whether all `n` tokens were identical."""
    ga, gb = ev.greedy(a, ids, n), ev.greedy(b, ids, n)
    if ga != gb:
        i = next(j for j in range(n) if ga[j] != gb[j])
        lb = b.logits(ids + gb[:i])[-1]
        assert lb[gb[i]] - lb[ga[i]] < 0.02 * np.abs(lb).max(), (i, ga, gb)
    return ga == gb
