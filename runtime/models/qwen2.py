"""Qwen2 architecture: llama with biases on the Q/K/V projections."""

from __future__ import annotations

from dataclasses import dataclass

from edgerun.runtime.models.base import ModelArgs as BaseArgs
from edgerun.runtime.models.base import Transformer


@dataclass
class ModelArgs(BaseArgs):
    """Qwen2 hyper-parameters (the shared set; rope_theta is usually 1e6)."""


class Model(Transformer):
    """Qwen2 decoder: llama's block with `attn_{q,k,v}.bias` added after the projections."""

    args_class = ModelArgs

    def qkv(self, layer: int, h):
        a, p = self.args, f"blk.{layer}."
        T = h.shape[0]
        q = h @ self.w(p + "attn_q.weight").T + self.w(p + "attn_q.bias")
        k = h @ self.w(p + "attn_k.weight").T + self.w(p + "attn_k.bias")
        v = h @ self.w(p + "attn_v.weight").T + self.w(p + "attn_v.bias")
        q = q.reshape(T, a.n_heads, a.head_dim).transpose(1, 0, 2)
        k = k.reshape(T, a.n_kv_heads, a.head_dim).transpose(1, 0, 2)
        v = v.reshape(T, a.n_kv_heads, a.head_dim).transpose(1, 0, 2)
        return q, k, v
