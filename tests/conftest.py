"""Shared fixtures: packaged real models, their artifacts, and the llama.cpp peer."""

from __future__ import annotations

import importlib.util

import pytest

WIKITEXT = "/work/shared/data/wikitext-2-test.raw"


def _shared_data(name: str):
    from pathlib import Path

    here = Path(__file__).resolve().parent.parent
    for base in (here.parent / "shared" / "data", Path("/work/shared/data")):
        if (base / name).exists():
            return base / name
    pytest.skip(f"{name} not found beside the repository (../shared/data)")


@pytest.fixture(scope="session")
def wikitext() -> str:
    """The WikiText-2 raw test split (../shared/data/wikitext-2-test.raw)."""
    return _shared_data("wikitext-2-test.raw").read_text(encoding="utf-8")


@pytest.fixture(scope="session")
def smollm2_gguf():
    from edgerun.runtime.defaults import packaged_smollm2_gguf

    return packaged_smollm2_gguf()


@pytest.fixture(scope="session")
def gemma3_gguf():
    from edgerun.runtime.defaults import packaged_gemma3_gguf

    return packaged_gemma3_gguf()


@pytest.fixture(scope="session")
def llama_cpp():
    """The llama-cpp-python module (the llama.cpp peer); installed by scripts/setup.sh."""
    if importlib.util.find_spec("llama_cpp") is None:
        pytest.skip("llama-cpp-python is not installed (scripts/setup.sh installs it)")
    import llama_cpp

    return llama_cpp
