"""Llama architecture (SmolLM2, Llama 2/3, TinyLlama, ...): pre-norm RMSNorm, SwiGLU, RoPE, GQA.

Everything is the shared transformer in `base.py`; only the args are named here.
"""

from __future__ import annotations

from dataclasses import dataclass

from edgerun.runtime.models.base import ModelArgs as BaseArgs
from edgerun.runtime.models.base import Transformer


@dataclass
class ModelArgs(BaseArgs):
    """Llama hyper-parameters (the shared set)."""


class Model(Transformer):
    """Llama decoder: x + attn(norm(x)), then + swiglu(norm(x))."""

    args_class = ModelArgs
