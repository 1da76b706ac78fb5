"""Sampling: greedy, temperature, top-k, top-p, seeds."""

from __future__ import annotations

import numpy as np
import pytest
from edgerun.runtime.llm.sampling import Sampler, SamplingParams

LOGITS = np.log(np.array([0.5, 0.25, 0.15, 0.07, 0.03]))


def draw(params: SamplingParams, n: int = 20000) -> np.ndarray:
    s = Sampler(params)
    return np.bincount([s(LOGITS) for _ in range(n)], minlength=len(LOGITS)) / n


def test_greedy_is_argmax():
    assert Sampler(SamplingParams())(np.array([0.1, 3.0, -1.0])) == 1


def test_temperature_one_follows_the_distribution():
    freq = draw(SamplingParams(temperature=1.0, seed=0))
    np.testing.assert_allclose(freq, np.exp(LOGITS), atol=0.015)


def test_top_k_keeps_k_best():
    freq = draw(SamplingParams(temperature=1.0, top_k=2, seed=0))
    assert freq[2:].sum() == 0
    np.testing.assert_allclose(freq[:2], [2 / 3, 1 / 3], atol=0.015)


def test_top_p_keeps_the_nucleus():
    freq = draw(SamplingParams(temperature=1.0, top_p=0.8, seed=0))  # 0.5 + 0.25 < 0.8 <= 0.9
    assert freq[3:].sum() == 0
    np.testing.assert_allclose(freq[:3], np.array([0.5, 0.25, 0.15]) / 0.9, atol=0.015)


def test_seed_reproduces_and_differs():
    a = [Sampler(SamplingParams(temperature=1.0, seed=7))(LOGITS) for _ in range(1)]
    s1, s2 = Sampler(SamplingParams(temperature=1.0, seed=7)), Sampler(SamplingParams(temperature=1.0, seed=7))
    seq1 = [s1(LOGITS) for _ in range(50)]
    seq2 = [s2(LOGITS) for _ in range(50)]
    assert seq1 == seq2 and a[0] == seq1[0]
    s3 = Sampler(SamplingParams(temperature=1.0, seed=8))
    assert [s3(LOGITS) for _ in range(50)] != seq1


def test_bad_parameters():
    with pytest.raises(ValueError):
        Sampler(SamplingParams(temperature=-1))
    with pytest.raises(ValueError):
        Sampler(SamplingParams(top_p=0.0))


def test_repeat_penalty_is_llama_cpp_rule():
    """Recent tokens: positive logits divided by the penalty, negative ones multiplied (llama.cpp's
    llama_sampler_penalties); the prompt counts, and so does every sampled token."""
    s = Sampler(SamplingParams(repeat_penalty=2.0, repeat_last_n=3))
    s.prime([0, 1])
    logits = np.array([2.0, -1.0, 0.5, 1.1], np.float32)
    np.testing.assert_array_equal(s._penalize(logits), np.array([1.0, -2.0, 0.5, 1.1], np.float32))
    assert s(logits) == 3  # 1.1 beats the penalized 2.0
    assert s.recent == [0, 1, 3]
    assert s(logits) == 0  # 3 is recent now (1.1 -> 0.55): the penalized 2.0 -> 1.0 wins
