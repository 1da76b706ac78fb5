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
    source: str = ""  # the file the vocabulary came from (named in errors)


@dataclass
class SourceModel:
    """A model as read from its source: config, tokenizer and a lazy tensor stream."""

    arch: str
    config: dict
    tokenizer: TokenizerSpec
    tensor_names: list[str]
    tensors: Callable[[], Iterator[SourceTensor]]
    provenance: dict = field(default_factory=dict)


def expected_shapes(arch: str, c: dict) -> dict[str, tuple[int, ...]]:
    """numpy shape (out, in) of every tensor an architecture needs, from its config (GGUF-style names)."""
    d, q, kv = c["dim"], c["n_heads"] * c["head_dim"], c["n_kv_heads"] * c["head_dim"]
    out = {"token_embd.weight": (c["vocab_size"], d), "output_norm.weight": (d,)}
    for i in range(c["n_layers"]):
        p = f"blk.{i}."
        out.update({p + "attn_norm.weight": (d,), p + "ffn_norm.weight": (d,), p + "attn_q.weight": (q, d),
                    p + "attn_k.weight": (kv, d), p + "attn_v.weight": (kv, d), p + "attn_output.weight": (d, q),
                    p + "ffn_gate.weight": (c["ffn_dim"], d), p + "ffn_up.weight": (c["ffn_dim"], d),
                    p + "ffn_down.weight": (d, c["ffn_dim"])})  # fmt: skip
        if arch == "qwen2":
            out.update({p + "attn_q.bias": (q,), p + "attn_k.bias": (kv,), p + "attn_v.bias": (kv,)})
        if arch == "gemma3":
            out.update({p + "attn_q_norm.weight": (c["head_dim"],), p + "attn_k_norm.weight": (c["head_dim"],),
                        p + "post_attention_norm.weight": (d,), p + "post_ffw_norm.weight": (d,)})  # fmt: skip
    return out


def check_tensors(arch: str, config: dict, shapes: dict[str, tuple[int, ...]], path) -> None:
    """Every tensor the architecture needs is present with the shape its config implies (and `output.weight`,
    when present, is (vocab, dim)); raises a one-line CorruptFileError naming the first that is not."""
    from edgerun.errors import CorruptFileError

    want = expected_shapes(arch, config)
    if not config.get("tie_embeddings", False):
        want["output.weight"] = (config["vocab_size"], config["dim"])
    for name, shape in want.items():
        got = shapes.get(name)
        if got is None:
            raise CorruptFileError(f"{path}: tensor {name} is missing; the file is incomplete or corrupt")
        if tuple(got) != shape:
            raise CorruptFileError(f"{path}: tensor {name} has shape {list(got)}, the config implies {list(shape)}; "
                                   "the file is corrupt")  # fmt: skip
