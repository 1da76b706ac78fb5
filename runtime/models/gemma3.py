"""Gemma-3 architecture (text part; e.g. gemma-3-270m).

Differences from llama (llama.cpp `llm_build_gemma3_iswa`, HF `Gemma3ForCausalLM`):
- embeddings scaled by sqrt(dim);
- sandwich norms: post-attention and post-FFN RMSNorm before each residual add;
- QK-norm: RMSNorm over head_dim on q and k before RoPE;
- GeGLU FFN (gelu-tanh gate);
- interleaved local/global attention: 5 of every 6 layers use a 512-token sliding
  window and RoPE base 10k, every 6th layer is global with RoPE base 1M;
- query scaled by query_pre_attn_scalar^-0.5.
Norm weights in GGUF already include Gemma's "+1" (the HF reader adds it).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from edgerun.runtime.models.base import ModelArgs as BaseArgs
from edgerun.runtime.models.base import Transformer, gelu_tanh, rms_norm


@dataclass
class ModelArgs(BaseArgs):
    """Gemma-3 hyper-parameters."""

    sliding_window: int = 512
    sliding_window_pattern: int = 6
    rope_local_theta: float = 10000.0
    query_pre_attn_scalar: float = 256.0


class Model(Transformer):
    """Gemma-3 decoder with local (sliding-window) and global attention layers."""

    args_class = ModelArgs

    def is_local(self, layer: int) -> bool:
        return (layer + 1) % self.args.sliding_window_pattern != 0

    def embed(self, tokens):
        return self.w("token_embd.weight")[tokens] * np.float32(math.sqrt(self.args.dim))

    def rope_theta(self, layer: int) -> float:
        return self.args.rope_local_theta if self.is_local(layer) else self.args.rope_theta

    def rope_scale(self, layer: int) -> float:
        return 1.0 if self.is_local(layer) else super().rope_scale(layer)

    def window(self, layer: int):
        return self.args.sliding_window if self.is_local(layer) else None

    def attn_scale(self) -> float:
        return 1.0 / math.sqrt(self.args.query_pre_attn_scalar)

    def qkv(self, layer: int, h):
        q, k, v = super().qkv(layer, h)  # q (n_heads, T, hd), k/v (n_kv, T, hd)
        p, eps = f"blk.{layer}.", self.args.norm_eps
        q = rms_norm(q, self.w(p + "attn_q_norm.weight"), eps)
        k = rms_norm(k, self.w(p + "attn_k_norm.weight"), eps)
        return q, k, v

    def ffn(self, layer: int, h):
        p = f"blk.{layer}."
        g = h @ self.w(p + "ffn_gate.weight").T
        u = h @ self.w(p + "ffn_up.weight").T
        return (gelu_tanh(g) * u) @ self.w(p + "ffn_down.weight").T

    def block(self, layer: int, x, cache, pos):
        p, eps = f"blk.{layer}.", self.args.norm_eps
        h = self.attention_block(layer, rms_norm(x, self.w(p + "attn_norm.weight"), eps), cache, pos)
        x = x + rms_norm(h, self.w(p + "post_attention_norm.weight"), eps)
        h = self.ffn(layer, rms_norm(x, self.w(p + "ffn_norm.weight"), eps))
        return x + rms_norm(h, self.w(p + "post_ffw_norm.weight"), eps)
