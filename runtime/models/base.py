"""Shared pieces of the decoder-only transformer: args, numpy reference ops, KV cache, forward.

This is the numpy **reference** forward (float32). Architecture files (`llama.py`,
`gemma3.py`, `qwen2.py`) stay thin: they set their args and override the few steps
that differ. Faster backends are tested against this one.

Conventions: activations are (T, dim) float32 for a block of T tokens; weights are
(out_features, in_features) as in the artifact; RoPE is NEOX / rotate-half for every
architecture (the GGUF reader converts llama's interleaved rows).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field

import numpy as np

# ----------------------------------------------------------------------------- args


@dataclass
class ModelArgs:
    """Hyper-parameters shared by decoder-only transformers; `from_dict` ignores unknown keys."""

    dim: int
    n_layers: int
    n_heads: int
    n_kv_heads: int
    head_dim: int
    ffn_dim: int
    vocab_size: int
    norm_eps: float = 1e-5
    rope_theta: float = 10000.0
    context_length: int = 2048
    tie_embeddings: bool = False
    rope_scaling: dict | None = None

    @classmethod
    def from_dict(cls, d: dict):
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})


# ----------------------------------------------------------------------------- reference ops


def rms_norm(x: np.ndarray, w: np.ndarray, eps: float) -> np.ndarray:
    """x: (..., d), w: (d,) -> x / rms(x) * w."""
    return x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + eps) * w


def silu(x: np.ndarray) -> np.ndarray:
    return x / (1.0 + np.exp(-x))


def gelu_tanh(x: np.ndarray) -> np.ndarray:
    """GELU, tanh approximation (Gemma's `gelu_pytorch_tanh`)."""
    return 0.5 * x * (1.0 + np.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x * x * x)))


def rope_tables(positions: np.ndarray, head_dim: int, theta: float, scale: float = 1.0):
    """cos/sin tables (T, head_dim/2) for NEOX RoPE at `positions` (linear scaling divides positions)."""
    inv_freq = theta ** (-np.arange(0, head_dim, 2, dtype=np.float64) / head_dim)  # (hd/2,)
    ang = (positions.astype(np.float64) / scale)[:, None] * inv_freq[None, :]  # (T, hd/2)
    return np.cos(ang).astype(np.float32), np.sin(ang).astype(np.float32)


def apply_rope(x: np.ndarray, cos: np.ndarray, sin: np.ndarray) -> np.ndarray:
    """Rotate-half RoPE. x: (n_heads, T, head_dim); cos/sin: (T, head_dim/2)."""
    half = x.shape[-1] // 2
    x1, x2 = x[..., :half], x[..., half:]
    return np.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)


def softmax(x: np.ndarray, axis: int = -1) -> np.ndarray:
    m = np.max(x, axis=axis, keepdims=True)
    e = np.exp(x - m)
    return e / np.sum(e, axis=axis, keepdims=True)


def attention(
    q: np.ndarray,
    k: np.ndarray,
    v: np.ndarray,
    q_pos: np.ndarray,
    k_pos: np.ndarray,
    scale: float,
    window: int | None = None,
) -> np.ndarray:
    """Causal grouped-query attention, optionally limited to a sliding window.

    q: (n_heads, T, hd); k, v: (n_kv_heads, S, hd); q_pos: (T,), k_pos: (S,) absolute positions.
    A query at p sees keys at j with j <= p and p - j < window. Returns (n_heads, T, hd).
    """
    n_heads, T, hd = q.shape
    n_kv = k.shape[0]
    group = n_heads // n_kv
    qg = q.reshape(n_kv, group, T, hd)  # (n_kv, group, T, hd)
    scores = np.einsum("kgtd,ksd->kgts", qg, k) * scale  # (n_kv, group, T, S)
    allowed = k_pos[None, :] <= q_pos[:, None]  # (T, S)
    if window is not None:
        allowed &= (q_pos[:, None] - k_pos[None, :]) < window
    scores = np.where(allowed, scores, -np.inf)
    probs = softmax(scores, axis=-1)
    out = np.einsum("kgts,ksd->kgtd", probs, v)  # (n_kv, group, T, hd)
    return out.reshape(n_heads, T, hd)


# ----------------------------------------------------------------------------- KV cache


@dataclass
class KVCache:
    """Full (unbounded) per-layer key/value store for one sequence; grows in chunks.

    Keys are stored after RoPE at their absolute positions. k[i], v[i]: (n_kv_heads, capacity, hd).
    """

    n_layers: int
    n_kv_heads: int
    head_dim: int
    length: int = 0
    chunk: int = 256
    k: list = field(default_factory=list)
    v: list = field(default_factory=list)

    def __post_init__(self):
        shape = (self.n_kv_heads, 0, self.head_dim)
        self.k = [np.zeros(shape, np.float32) for _ in range(self.n_layers)]
        self.v = [np.zeros(shape, np.float32) for _ in range(self.n_layers)]

    def update(self, layer: int, k: np.ndarray, v: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Append k, v (n_kv, T, hd) at positions length..length+T-1 of `layer`.

        Returns all cached keys, values (n_kv, S, hd) and their positions (S,). Call `advance(T)`
        once every layer has been updated.
        """
        T = k.shape[1]
        need = self.length + T
        if self.k[layer].shape[1] < need:
            cap = max(need, self.k[layer].shape[1] + self.chunk)
            for store in (self.k, self.v):
                old = store[layer]
                new = np.zeros((self.n_kv_heads, cap, self.head_dim), np.float32)
                new[:, : self.length] = old[:, : self.length]
                store[layer] = new
        self.k[layer][:, self.length : need] = k
        self.v[layer][:, self.length : need] = v
        return self.k[layer][:, :need], self.v[layer][:, :need], np.arange(need)

    def advance(self, n: int) -> None:
        self.length += n

    def truncate(self, n: int) -> None:
        """Keep the first n positions (the next tokens overwrite the rest): prompt-prefix reuse."""
        self.length = min(self.length, n)

    def reset(self) -> None:
        self.length = 0


# ----------------------------------------------------------------------------- model


class Transformer:
    """Decoder-only transformer, numpy float32 reference. Subclasses set `args_class`."""

    args_class = ModelArgs

    def __init__(self, args: ModelArgs, weights):
        """`weights(name) -> np.ndarray float32` gives a tensor by its artifact name."""
        self.args = args
        self.weights = weights
        self._w: dict[str, np.ndarray] = {}

    # --- weights
    def w(self, name: str) -> np.ndarray:
        if name not in self._w:
            self._w[name] = self.weights(name)
        return self._w[name]

    def has(self, name: str) -> bool:
        return self.weights.has(name) if hasattr(self.weights, "has") else True

    def load_all(self, names) -> None:
        for n in names:
            self.w(n)

    # --- per-architecture hooks
    def embed(self, tokens: np.ndarray) -> np.ndarray:
        return self.w("token_embd.weight")[tokens]  # (T, dim)

    def rope_theta(self, layer: int) -> float:
        return self.args.rope_theta

    def rope_scale(self, layer: int) -> float:
        s = self.args.rope_scaling
        return float(s["factor"]) if s and s.get("type") == "linear" else 1.0

    def window(self, layer: int) -> int | None:
        return None

    def attn_scale(self) -> float:
        return 1.0 / math.sqrt(self.args.head_dim)

    def qkv(self, layer: int, h: np.ndarray):
        """Project normed activations h: (T, dim) -> q (n_heads, T, hd), k, v (n_kv, T, hd)."""
        a, p = self.args, f"blk.{layer}."
        T = h.shape[0]
        q = h @ self.w(p + "attn_q.weight").T
        k = h @ self.w(p + "attn_k.weight").T
        v = h @ self.w(p + "attn_v.weight").T
        q = q.reshape(T, a.n_heads, a.head_dim).transpose(1, 0, 2)
        k = k.reshape(T, a.n_kv_heads, a.head_dim).transpose(1, 0, 2)
        v = v.reshape(T, a.n_kv_heads, a.head_dim).transpose(1, 0, 2)
        return q, k, v

    def attention_block(self, layer: int, h: np.ndarray, cache: KVCache, pos: np.ndarray) -> np.ndarray:
        """Self-attention of normed activations h: (T, dim) -> (T, dim)."""
        a = self.args
        q, k, v = self.qkv(layer, h)
        theta, rs = self.rope_theta(layer), self.rope_scale(layer)
        if hasattr(cache, "attend"):  # sink + window cache (runtime/kv_cache.py) rotates q/k itself
            rope = lambda x, p: apply_rope(x, *rope_tables(p, a.head_dim, theta, rs))  # noqa: E731
            o = cache.attend(layer, q, k, v, rope, pos, self.attn_scale())  # (n_heads, T, hd)
        else:
            cos, sin = rope_tables(pos, a.head_dim, theta, rs)
            q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
            k_all, v_all, k_pos = cache.update(layer, k, v)
            o = attention(q, k_all, v_all, pos, k_pos, self.attn_scale(), self.window(layer))  # (n_heads, T, hd)
        o = o.transpose(1, 0, 2).reshape(h.shape[0], a.n_heads * a.head_dim)
        return o @ self.w(f"blk.{layer}.attn_output.weight").T

    def ffn(self, layer: int, h: np.ndarray) -> np.ndarray:
        """SwiGLU feed-forward: down(silu(gate(h)) * up(h))."""
        p = f"blk.{layer}."
        g = h @ self.w(p + "ffn_gate.weight").T
        u = h @ self.w(p + "ffn_up.weight").T
        return (silu(g) * u) @ self.w(p + "ffn_down.weight").T

    def block(self, layer: int, x: np.ndarray, cache: KVCache, pos: np.ndarray) -> np.ndarray:
        """Pre-norm residual block (llama)."""
        p, eps = f"blk.{layer}.", self.args.norm_eps
        x = x + self.attention_block(layer, rms_norm(x, self.w(p + "attn_norm.weight"), eps), cache, pos)
        return x + self.ffn(layer, rms_norm(x, self.w(p + "ffn_norm.weight"), eps))

    def output_weight(self) -> np.ndarray:
        return self.w("token_embd.weight" if self.args.tie_embeddings else "output.weight")

    def head(self, x: np.ndarray) -> np.ndarray:
        """Final norm + output projection: (T, dim) -> logits (T, vocab)."""
        x = rms_norm(x, self.w("output_norm.weight"), self.args.norm_eps)
        return x @ self.output_weight().T

    # --- forward
    def new_cache(self) -> KVCache:
        return KVCache(self.args.n_layers, self.args.n_kv_heads, self.args.head_dim)

    def forward(self, tokens, cache: KVCache, last_only: bool = False) -> np.ndarray:
        """Run tokens (T,) at positions cache.length.. ; returns logits (T, vocab) or (1, vocab)."""
        tokens = np.asarray(tokens, dtype=np.int64)
        pos = np.arange(cache.length, cache.length + len(tokens))
        x = self.embed(tokens).astype(np.float32)
        for layer in range(self.args.n_layers):
            x = self.block(layer, x, cache, pos)
        cache.advance(len(tokens))
        if last_only:
            x = x[-1:]
        return self.head(x)
