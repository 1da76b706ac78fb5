"""The in-memory picture of a source model that every reader produces.

Readers (GGUF, Hugging Face safetensors, ...) all return a `SourceModel`, so the
artifact writer and the quantizers never need to know where a model came from.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import numpy as np


@dataclass
class SourceTensor:
    """One tensor of a source model, dequantized to float (numpy order: (out, in))."""

    name: str
    data: np.ndarray
    source_type: str = "F32"  # the type it had in the source file (Q4_1, BF16, ...)


@dataclass
class TokenizerSpec:
    """Everything needed to build a tokenizer: either a ready `tokenizer.json` or GGUF vocab pieces."""

    model: str = "gpt2"  # gguf tokenizer model: gpt2 (byte-level BPE) | llama (SentencePiece) | hf
    pre: str = "default"  # gguf pre-tokenizer name (smollm, llama-bpe, qwen2, ...)
    tokens: list[str] = field(default_factory=list)
    scores: list[float] | None = None
    token_types: list[int] | None = None
    merges: list[str] | None = None
    bos_token_id: int | None = None
    eos_token_id: int | None = None
    extra_eos_ids: list[int] = field(default_factory=list)
    unk_token_id: int | None = None
    add_bos: bool = False
    add_space_prefix: bool = False
    chat_template: str | None = None
    tokenizer_json: str | None = None  # a Hugging Face tokenizer.json, used as is when present


@dataclass
class SourceModel:
    """A model as read from its source: config, tokenizer and a lazy tensor stream."""

    arch: str
    config: dict
    tokenizer: TokenizerSpec
    tensor_names: list[str]
    tensors: Callable[[], Iterator[SourceTensor]]
    provenance: dict = field(default_factory=dict)
