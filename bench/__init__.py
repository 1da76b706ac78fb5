"""Measurements, in one place: speed against llama.cpp (`speed`), memory under a budget (`memory`),
perplexity and greedy agreement (`perplexity`), kernel GB/s (`kernels`), speech WER and latency (`speech`).

`edgerun bench` and the scripts in `benchmarks/` call these; the runtime never imports them.
The evaluation text ships with the package: :func:`wikitext2_test`.
"""

from __future__ import annotations

import hashlib
from functools import lru_cache
from pathlib import Path

from edgerun.errors import CorruptFileError

WIKITEXT2_TEST = Path(__file__).resolve().parent / "data" / "wikitext-2-test.raw"
WIKITEXT2_SHA256 = "4f3e427e4aff23acff917a8a51aeae21bf12832256e26914c8fc250dcef4103c"


@lru_cache(maxsize=1)
def wikitext2_test() -> str:
    """The WikiText-2 (raw) test split, the text llama.cpp's `perplexity` uses (CC BY-SA 3.0), sha256-checked."""
    data = WIKITEXT2_TEST.read_bytes()
    if hashlib.sha256(data).hexdigest() != WIKITEXT2_SHA256:
        raise CorruptFileError(f"{WIKITEXT2_TEST}: checksum mismatch; reinstall edgerun")
    return data.decode("utf-8")
