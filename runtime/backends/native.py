"""The native backend: the decoder forward on edgerun's own C kernels, weights straight from the mmap.

Every matrix becomes a :class:`edgerun.kernels.Weight` over read-only views of ``weights.bin``
(quantized parts or f16/f32 data, no copies); vectors (norms, biases) are small float32 copies.

```
decode step (T = 1), per layer, all buffers preallocated, pointers cached:
  x ─ rmsnorm ─► h ─ matmul q,k,v ─► [qk-norm] ─ rope q,k ─► k,v into the cache at pos
    ─ attention(q, cache[:, start:pos+1]) ─ matmul o ─► [post-norm] ─ x += ..
  x ─ rmsnorm ─► h ─ matmul gate,up ─ silu/gelu_mul ─ matmul down ─► [post-norm] ─ x += ..
prefill (T > 1): the same matmuls as GEMMs (M = T), RoPE and causal attention in numpy.
```

The numpy reference (``runtime/models``) defines the math; this file follows its hooks
(``rope_theta``, ``rope_scale``, ``window``, ``attn_scale``) so llama, qwen2 and gemma3 run here.
"""

from __future__ import annotations

import math

import numpy as np

from ...export.artifact import Artifact
from ...quant.parts import dequantize_rows, quantized_from_parts
from ..models.base import apply_rope, attention, rope_tables

PLAIN = ("f16", "f32")


def _ptr(a: np.ndarray) -> int:
    return a.__array_interface__["data"][0]


class NativeKVCache:
    """Full KV cache for one sequence: per layer k, v (n_kv_heads, capacity, head_dim) float32.

    Keys are stored after RoPE. Capacity doubles when full (pointers are re-read after growth).
    """

    def __init__(self, n_layers: int, n_kv_heads: int, head_dim: int, capacity: int = 256, limit: int = 1 << 20):
        self.n_layers, self.n_kv_heads, self.head_dim = n_layers, n_kv_heads, head_dim
        self.limit = limit
        self.length = 0
        self._alloc(min(capacity, limit))

    def _alloc(self, cap: int) -> None:
        old = getattr(self, "k", None)
        shape = (self.n_kv_heads, cap, self.head_dim)
        k = [np.zeros(shape, np.float32) for _ in range(self.n_layers)]
        v = [np.zeros(shape, np.float32) for _ in range(self.n_layers)]
        if old is not None:
            for i in range(self.n_layers):
                k[i][:, : self.length] = self.k[i][:, : self.length]
                v[i][:, : self.length] = self.v[i][:, : self.length]
        self.k, self.v, self.capacity = k, v, cap
        self.k_ptr = [_ptr(a) for a in k]
        self.v_ptr = [_ptr(a) for a in v]

    def reserve(self, n: int) -> None:
        """Make room for positions up to `n` (exclusive)."""
        if n > self.capacity:
            cap = self.capacity
            while cap < n:
                cap *= 2
            self._alloc(max(n, min(cap, self.limit)))

    def advance(self, n: int) -> None:
        self.length += n

    def reset(self) -> None:
        self.length = 0


class NativeModel:
    """Forward of a decoder-only model on the C kernels; same interface as the reference Transformer.

    `ref` is the reference model object (its hooks give RoPE bases, windows, scales); it holds no weights.
    """

    def __init__(self, artifact: Artifact, ref, threads: int | None = None):
        from ... import kernels
        from ...kernels._lib import lib

        self.k = kernels
        self.lib = lib
        if threads is not None:
            kernels.set_num_threads(threads)
        self.artifact = artifact
        self.ref = ref
        self.args = a = ref.args
        self.arch = artifact.arch
        self.gemma = self.arch == "gemma3"
        self.W: dict[str, object] = {}  # matrices: kernels.Weight
        self.V: dict[str, np.ndarray] = {}  # vectors: float32
        for name, entry in artifact.tensors.items():
            parts = {p: artifact.part(name, p) for p in entry["parts"]}  # verifies checksums once
            if len(entry["shape"]) == 1:
                self.V[name] = np.ascontiguousarray(parts["data"], dtype=np.float32)
                continue
            if entry["format"] in PLAIN:
                self.W[name] = kernels.Weight(parts["data"])
            else:
                self.W[name] = kernels.Weight(quantized_from_parts(entry, parts))
        self._embd_entry = artifact.tensors["token_embd.weight"]
        self._embd_parts = {p: artifact.part("token_embd.weight", p) for p in self._embd_entry["parts"]}
        self.head_name = "token_embd.weight" if a.tie_embeddings or "output.weight" not in self.W else "output.weight"
        self._build_decode()

    # --- hooks shared with the reference
    def window(self, layer: int):
        return self.ref.window(layer)

    def new_cache(self) -> NativeKVCache:
        a = self.args
        return NativeKVCache(a.n_layers, a.n_kv_heads, a.head_dim, limit=a.context_length)

    def embed(self, tokens: np.ndarray) -> np.ndarray:
        x = dequantize_rows(self._embd_entry, self._embd_parts, tokens)  # (T, dim)
        if self.gemma:
            x = x * np.float32(math.sqrt(self.args.dim))
        return np.ascontiguousarray(x, np.float32)

    # --- decode (T = 1): preallocated buffers and cached addresses
    def _build_decode(self) -> None:
        a = self.args
        qd, kvd = a.n_heads * a.head_dim, a.n_kv_heads * a.head_dim
        b = self.buf = {
            "x": np.zeros(a.dim, np.float32), "h": np.zeros(a.dim, np.float32),
            "q": np.zeros(qd, np.float32), "k": np.zeros(kvd, np.float32), "v": np.zeros(kvd, np.float32),
            "att": np.zeros(qd, np.float32), "o": np.zeros(a.dim, np.float32),
            "g": np.zeros(a.ffn_dim, np.float32), "u": np.zeros(a.ffn_dim, np.float32),
            "logits": np.zeros(a.vocab_size, np.float32),
        }
        self.p = {n: _ptr(arr) for n, arr in b.items()}
        self.layers = []
        for i in range(a.n_layers):
            pre = f"blk.{i}."
            L = {
                "wq": self.W[pre + "attn_q.weight"]._ref, "wk": self.W[pre + "attn_k.weight"]._ref,
                "wv": self.W[pre + "attn_v.weight"]._ref, "wo": self.W[pre + "attn_output.weight"]._ref,
                "wg": self.W[pre + "ffn_gate.weight"]._ref, "wu": self.W[pre + "ffn_up.weight"]._ref,
                "wd": self.W[pre + "ffn_down.weight"]._ref,
                "attn_norm": _ptr(self.V[pre + "attn_norm.weight"]), "ffn_norm": _ptr(self.V[pre + "ffn_norm.weight"]),
                "theta": float(self.ref.rope_theta(i)), "fscale": 1.0 / float(self.ref.rope_scale(i)),
                "window": self.ref.window(i),
                "bias": [self.V.get(pre + f"attn_{t}.bias") for t in "qkv"],
            }
            if self.gemma:
                for n in ("attn_q_norm", "attn_k_norm", "post_attention_norm", "post_ffw_norm"):
                    L[n] = _ptr(self.V[pre + n + ".weight"])
            self.layers.append(L)
        self.out_norm = _ptr(self.V["output_norm.weight"])
        self.head_ref = self.W[self.head_name]._ref
        self.scale = float(self.ref.attn_scale())

    def _decode(self, token: int, cache: NativeKVCache) -> np.ndarray:
        """One token through every layer with the C kernels; returns logits (vocab,) (a fresh array)."""
        a, lib, b, p = self.args, self.lib, self.buf, self.p
        mm, norm, rope, attn = lib.er_matmul, lib.er_rmsnorm, lib.er_rope_neox, lib.er_attention
        eps, hd, nh, nkv, dim = a.norm_eps, a.head_dim, a.n_heads, a.n_kv_heads, a.dim
        pos = cache.length
        cache.reserve(pos + 1)
        b["x"][:] = self.embed(np.array([token]))[0]
        x, o = b["x"], b["o"]
        px, ph, pq, pk, pv, patt, po, pg, pu = (p[n] for n in ("x", "h", "q", "k", "v", "att", "o", "g", "u"))
        k3, v3 = b["k"].reshape(nkv, hd), b["v"].reshape(nkv, hd)
        ffn_mul = lib.er_gelu_mul if self.gemma else lib.er_silu_mul
        for i, L in enumerate(self.layers):
            norm(px, L["attn_norm"], ph, 1, dim, eps)
            mm(L["wq"], ph, pq, 1)
            mm(L["wk"], ph, pk, 1)
            mm(L["wv"], ph, pv, 1)
            if L["bias"][0] is not None:
                b["q"] += L["bias"][0]
                b["k"] += L["bias"][1]
                b["v"] += L["bias"][2]
            if self.gemma:
                norm(pq, L["attn_q_norm"], pq, nh, hd, eps)
                norm(pk, L["attn_k_norm"], pk, nkv, hd, eps)
            rope(pq, nh, hd, pos, L["theta"], L["fscale"])
            rope(pk, nkv, hd, pos, L["theta"], L["fscale"])
            ck, cv = cache.k[i], cache.v[i]
            ck[:, pos] = k3
            cv[:, pos] = v3
            w = L["window"]
            start = 0 if w is None else max(0, pos + 1 - w)
            off = start * hd * 4
            attn(pq, cache.k_ptr[i] + off, cache.v_ptr[i] + off, patt, nh, nkv, hd, pos + 1 - start,
                 cache.capacity, 0, self.scale, 0.0)
            mm(L["wo"], patt, po, 1)
            if self.gemma:
                norm(po, L["post_attention_norm"], po, 1, dim, eps)
            x += o
            norm(px, L["ffn_norm"], ph, 1, dim, eps)
            mm(L["wg"], ph, pg, 1)
            mm(L["wu"], ph, pu, 1)
            ffn_mul(pg, pu, pg, a.ffn_dim)
            mm(L["wd"], pg, po, 1)
            if self.gemma:
                norm(po, L["post_ffw_norm"], po, 1, dim, eps)
            x += o
        cache.advance(1)
        norm(px, self.out_norm, ph, 1, dim, eps)
        mm(self.head_ref, ph, p["logits"], 1)
        return b["logits"].copy()

    # --- prefill (T > 1): GEMMs on the kernels, RoPE/attention in numpy
    def _mm(self, name: str, x: np.ndarray) -> np.ndarray:
        return self.k.matmul(self.W[name], x)

    def _norm(self, x: np.ndarray, name: str) -> np.ndarray:
        return self.k.rmsnorm(np.ascontiguousarray(x), self.V[name], self.args.norm_eps)

    def _block(self, i: int, x: np.ndarray, cache: NativeKVCache, pos: np.ndarray) -> np.ndarray:
        a, pre, T = self.args, f"blk.{i}.", x.shape[0]
        h = self._norm(x, pre + "attn_norm.weight")
        q, k, v = (self._mm(pre + f"attn_{t}.weight", h) for t in "qkv")
        if pre + "attn_q.bias" in self.V:
            q, k, v = (m + self.V[pre + f"attn_{t}.bias"] for m, t in zip((q, k, v), "qkv", strict=True))
        q = q.reshape(T, a.n_heads, a.head_dim).transpose(1, 0, 2)  # (n_heads, T, hd)
        k = k.reshape(T, a.n_kv_heads, a.head_dim).transpose(1, 0, 2)  # (n_kv, T, hd)
        v = v.reshape(T, a.n_kv_heads, a.head_dim).transpose(1, 0, 2)
        if self.gemma:
            q = self._norm(q, pre + "attn_q_norm.weight")
            k = self._norm(k, pre + "attn_k_norm.weight")
        cos, sin = rope_tables(pos, a.head_dim, self.ref.rope_theta(i), self.ref.rope_scale(i))
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        n0, n1 = int(pos[0]), int(pos[-1]) + 1
        cache.k[i][:, n0:n1] = k
        cache.v[i][:, n0:n1] = v
        o = attention(q, cache.k[i][:, :n1], cache.v[i][:, :n1], pos, np.arange(n1), self.scale, self.window(i))
        o = np.ascontiguousarray(o.transpose(1, 0, 2).reshape(T, a.n_heads * a.head_dim))
        o = self._mm(pre + "attn_output.weight", o)
        if self.gemma:
            o = self._norm(o, pre + "post_attention_norm.weight")
        x = x + o
        h = self._norm(x, pre + "ffn_norm.weight")
        g, u = self._mm(pre + "ffn_gate.weight", h), self._mm(pre + "ffn_up.weight", h)
        f = self.k.gelu_mul(g, u) if self.gemma else self.k.silu_mul(g, u)
        o = self._mm(pre + "ffn_down.weight", f)
        if self.gemma:
            o = self._norm(o, pre + "post_ffw_norm.weight")
        return x + o

    def forward(self, tokens, cache: NativeKVCache, last_only: bool = False) -> np.ndarray:
        """Run tokens (T,) at positions cache.length..; returns logits (T, vocab) or (1, vocab)."""
        tokens = np.asarray(tokens, dtype=np.int64)
        if len(tokens) == 1 and last_only:
            return self._decode(int(tokens[0]), cache)[None, :]
        pos = np.arange(cache.length, cache.length + len(tokens))
        cache.reserve(int(pos[-1]) + 1)
        x = self.embed(tokens)  # (T, dim)
        for i in range(self.args.n_layers):
            x = self._block(i, x, cache, pos)
        cache.advance(len(tokens))
        if last_only:
            x = x[-1:]
        h = self._norm(x, "output_norm.weight")
        return self.k.matmul(self.W[self.head_name], np.ascontiguousarray(h))
