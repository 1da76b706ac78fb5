"""Shared fixtures: packaged real models, their artifacts, and the llama.cpp peer."""

from __future__ import annotations

import importlib.util

import pytest


@pytest.fixture(scope="session")
def wikitext() -> str:
    """The WikiText-2 raw test split, shipped with the package (edgerun/bench/data)."""
    from edgerun.bench import wikitext2_test

    return wikitext2_test()


@pytest.fixture(scope="session")
def smollm2_gguf():
    from edgerun.runtime.store.defaults import packaged_smollm2_gguf

    return packaged_smollm2_gguf()


@pytest.fixture(scope="session")
def gemma3_gguf():
    from edgerun.runtime.store.defaults import packaged_gemma3_gguf

    return packaged_gemma3_gguf()


@pytest.fixture(scope="session")
def llama_cpp():
    """The llama-cpp-python module (the llama.cpp peer); installed by scripts/setup.sh."""
    if importlib.util.find_spec("llama_cpp") is None:
        pytest.skip("llama-cpp-python is not installed (scripts/setup.sh installs it)")
    import llama_cpp

    return llama_cpp


# parametrized cases that cover the same path as a faster sibling in the default run; they run with -m slow
SLOW_CASES = {
    "test_greedy_continuations_match_llama_cpp[gemma3]",  # Gemma-3 vs llama.cpp: top-1/perplexity stays default
    "test_llama_cpp_order_forward_top1_with_llama_cpp[Q8_0]",  # the bit-exact forward: Q4_0 stays default
    "test_llama_cpp_order_forward_top1_with_llama_cpp[TQ2_0]",
}


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config, items):
    """Mark the cases of SLOW_CASES slow (before `-m 'not slow'` deselects)."""
    for item in items:
        if item.name in SLOW_CASES:
            item.add_marker(pytest.mark.slow)
