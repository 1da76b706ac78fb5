"""A chat reply caught in a degenerate loop ends there; replies that are not loops are untouched."""

from __future__ import annotations

import pytest
from edgerun.runtime.llm.repetition import repeating_period


def test_repeating_period():
    assert repeating_period([5, 1, 2, 1, 2, 1, 2], times=3, max_period=8) == 2
    assert repeating_period([1, 2, 3, 1, 2, 3], times=3, max_period=8) == 0  # only twice
    assert repeating_period([7] * 5, times=4, max_period=8) == 1
    assert repeating_period([7] * 5, times=4, max_period=8, min_tokens=24) == 0  # too short a run
    loop = [9] + [1, 2, 3, 4, 5, 6, 7] * 4  # 28 tokens of one 7-token pattern
    assert repeating_period(loop, times=3, max_period=32, min_tokens=24) == 7
    assert repeating_period(loop[:-7], times=3, max_period=32, min_tokens=24) == 0  # 21 tokens: not yet
    assert repeating_period(loop, times=3, max_period=6) == 0  # the pattern is longer than max_period
    assert repeating_period([], times=3, max_period=8) == 0


@pytest.fixture(scope="module")
def smollm2():
    import edgerun

    return edgerun.load()


@pytest.mark.model
def test_chat_stops_a_real_loop(smollm2):
    """SmolLM2-135M (Q4_1, greedy) answers "What is the capital of France?" with a clause repeated until the
    token limit (llama.cpp on the same GGUF writes the same text): the chat reply ends after a few copies."""
    m = smollm2
    msgs = [{"role": "user", "content": "What is the capital of France?"}]
    raw = list(m.stream(m.tokenizer.encode_chat(msgs), max_tokens=120))
    assert raw[-1].finish_reason == "length"  # without the rule: the loop runs to the limit
    looped = "".join(r.text for r in raw)
    assert looped.count("la femme au martyre") >= 10
    chat = list(m.stream_chat(msgs, max_tokens=120))
    assert chat[-1].finish_reason == "loop" and len(chat) < 60
    text = "".join(r.text for r in chat)
    assert looped.startswith(text) and 3 <= text.count("la femme au martyre") <= 5
    assert m.chat(msgs, max_tokens=120) == text.strip()


@pytest.mark.model
def test_chat_reply_without_a_loop_is_whole(smollm2):
    m = smollm2
    msgs = [{"role": "user", "content": "Hi! Who are you?"}]
    chat = list(m.stream_chat(msgs, max_tokens=200))
    assert chat[-1].finish_reason == "stop"
    raw = m.generate(m.tokenizer.encode_chat(msgs), max_tokens=200)
    assert "".join(r.text for r in chat) == raw
