"""Next-token sampling: greedy, temperature, top-k, top-p (nucleus), repetition penalty, with a seeded generator."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class SamplingParams:
    """How to pick the next token. temperature 0 means greedy (argmax)."""

    temperature: float = 0.0
    top_k: int = 0  # 0: no limit
    top_p: float = 1.0  # 1.0: no nucleus cut
    seed: int | None = None
    repeat_penalty: float = 1.0  # > 1 discourages the last `repeat_last_n` tokens (llama.cpp's rule); 1.0: off
    repeat_last_n: int = 64


class Sampler:
    """Draws tokens from logits according to `SamplingParams`; reproducible for a given seed."""

    def __init__(self, params: SamplingParams):
        if params.temperature < 0:
            raise ValueError("temperature must be >= 0")
        if not 0.0 < params.top_p <= 1.0:
            raise ValueError("top_p must be in (0, 1]")
        if params.repeat_penalty <= 0:
            raise ValueError("repeat_penalty must be > 0")
        self.p = params
        self.rng = np.random.default_rng(params.seed)
        self.recent: list[int] = []  # the last repeat_last_n tokens (prompt, then sampled)

    def prime(self, ids) -> None:
        """Record the prompt's tokens for the repetition penalty."""
        self.recent = list(ids)[-self.p.repeat_last_n :] if self.p.repeat_last_n > 0 else []

    def __call__(self, logits: np.ndarray) -> int:
        """logits: (vocab,) -> token id (recorded for the repetition penalty)."""
        token = self._pick(self._penalize(logits))
        if self.p.repeat_penalty != 1.0 and self.p.repeat_last_n > 0:
            self.recent = (self.recent + [token])[-self.p.repeat_last_n :]
        return token

    def _penalize(self, logits: np.ndarray) -> np.ndarray:
        """llama.cpp's repetition penalty: a recent token's logit is divided by the penalty when positive,
        multiplied by it when negative."""
        if self.p.repeat_penalty == 1.0 or not self.recent:
            return logits
        x = logits.astype(np.float32, copy=True)
        ids = np.unique(np.asarray(self.recent, np.int64))
        v = x[ids]
        x[ids] = np.where(v > 0, v / self.p.repeat_penalty, v * self.p.repeat_penalty)
        return x

    def _pick(self, logits: np.ndarray) -> int:
        p = self.p
        if p.temperature == 0.0:
            return int(np.argmax(logits))
        x = logits.astype(np.float64) / p.temperature
        if p.top_k and p.top_k < x.shape[0]:
            idx = np.argpartition(-x, p.top_k - 1)[: p.top_k]
        else:
            idx = np.arange(x.shape[0])
        x = x[idx]
        order = np.argsort(-x, kind="stable")
        idx, x = idx[order], x[order]
        probs = np.exp(x - x[0])
        probs /= probs.sum()
        if p.top_p < 1.0:
            keep = int(np.searchsorted(np.cumsum(probs), p.top_p) + 1)
            idx, probs = idx[:keep], probs[:keep] / probs[:keep].sum()
        return int(idx[self.rng.choice(len(idx), p=probs)])
