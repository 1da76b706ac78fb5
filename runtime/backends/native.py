"""The native backend: the decoder forward on edgerun's own C kernels, weights straight from the mmap.

Every matrix becomes a :class:`edgerun.kernels.Weight` over read-only views of ``weights.bin``
(quantized parts or f16/f32 data, no copies); vectors (norms, biases) are small float32 copies.

```
decode step (T = 1), per layer, all buffers preallocated, pointers cached:
  x ─ rmsnorm ─► h ─ matmul q,k,v ─► [qk-norm] ─ rope q,k ─► k,v into the cache at pos
    ─ attention(q, cache[:, start:pos+1]) ─ matmul o ─► [post-norm] ─ x += ..
  x ─ rmsnorm ─► h ─ matmul gate,up ─ silu/gelu_mul ─ matmul down ─► [post-norm] ─ x += ..
prefill (T > 1): the same matmuls as GEMMs (M = T; q/k/v and gate/up each one er_matmul_multi call), RoPE in
numpy, causal attention in one kernel call.
```

Decode runs each layer as one C call (``er_decode_layer``, kernels/src/decode.c: the steps above, q/k/v and
gate/up each from one activation quantization), all layers in one call per token (``er_decode_layers``) when
every layer is resident and the cache is the full one, the embedding row read in C (``er_weight_row``); the ring
cache splits it around its own store/attention (``er_decode_attn_in`` / ``er_decode_attn_out``).
``_decode_ops`` is the same step op by op (the reference the fused path is tested against, bit for bit);
``fused_decode = False`` selects it.

The numpy reference (``runtime/models``) defines the math; this file follows its hooks
(``rope_theta``, ``rope_scale``, ``window``, ``attn_scale``) so llama, qwen2 and gemma3 run here.

Two caches: :class:`NativeKVCache` (full context, float16 unless asked for float32; the default) and the RAM-budgeted
:class:`edgerun.runtime.llm.kv_cache.SinkWindowKVCache` (sinks + window ring; float layouts attend in
one kernel call over [sinks | ring]; KIVI int8/4/2 layouts decode a whole layer in one C call,
``er_decode_layer_kivi``, attention read straight from the quantized groups, kernels/src/kv_attention.c).
Weights come from :class:`WeightSource`: the file map, or the layer streamer under a memory plan.
"""

from __future__ import annotations

import math

import numpy as np
from edgerun.export.artifact import Artifact
from edgerun.quant import MATMULNBITS_FORMATS
from edgerun.runtime.backends.native_weights import WeightSource
from edgerun.runtime.llm.kv_cache import SinkWindowKVCache
from edgerun.runtime.models.base import apply_rope, rope_tables


def _ptr(a: np.ndarray) -> int:
    return a.__array_interface__["data"][0]


class NativeKVCache:
    """Full KV cache for one sequence: per layer k, v (n_kv_heads, capacity, head_dim), float16 (the default, as
    llama.cpp's) or float32.

    Keys are stored after RoPE. Capacity doubles when full (pointers are re-read after growth).
    """

    def __init__(self, n_layers: int, n_kv_heads: int, head_dim: int, capacity: int = 256, limit: int = 1 << 20,
                 dtype=np.float16):
        self.n_layers, self.n_kv_heads, self.head_dim = n_layers, n_kv_heads, head_dim
        self.dtype = np.dtype(dtype)
        if self.dtype not in (np.float16, np.float32):
            raise ValueError(f"a full KV cache holds float16 or float32, not {self.dtype}")
        self.limit = limit
        self.length = 0
        self._alloc(min(capacity, limit))

    @property
    def f16(self) -> bool:
        """Whether k, v are float16 (the C calls' kv_f16 flag)."""
        return self.dtype == np.float16

    @property
    def nbytes(self) -> int:
        """Bytes held by the cache's arrays now (they grow by doubling up to `limit` positions)."""
        return sum(a.nbytes for a in self.k) * 2

    def _alloc(self, cap: int) -> None:
        old = getattr(self, "k", None)
        shape = (self.n_kv_heads, cap, self.head_dim)
        k = [np.zeros(shape, self.dtype) for _ in range(self.n_layers)]
        v = [np.zeros(shape, self.dtype) for _ in range(self.n_layers)]
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

    def truncate(self, n: int) -> None:
        """Keep the first n positions (the next tokens overwrite the rest): prompt-prefix reuse."""
        self.length = min(self.length, n)

    def reset(self) -> None:
        self.length = 0


class NativeModel:
    """Forward of a decoder-only model on the C kernels; same interface as the reference Transformer.

    `ref` is the reference model object (its hooks give RoPE bases, windows, scales); it holds no weights.
    `plan` (a :class:`edgerun.runtime.memory.MemoryPlan`) streams layers and globals as it says;
    None keeps every weight mapped. `read_cache` is the streamer's page-cache policy.
    """

    def __init__(self, artifact: Artifact, ref, threads: int | None = None, plan=None, read_cache: str = "drop"):
        from edgerun import kernels
        from edgerun.kernels._lib import lib

        self.k = kernels
        self.lib = lib
        if threads is not None:
            kernels.set_num_threads(threads)
        self.artifact = artifact
        self.ref = ref
        self.args = a = ref.args
        self.arch = artifact.arch
        self.gemma = self.arch == "gemma3"
        self.src = WeightSource(artifact, a.n_layers, plan, read_cache)
        self.V = self.src.vectors  # norms, biases: float32
        tied = a.tie_embeddings or "output.weight" not in artifact.tensors
        self.head_name = "token_embd.weight" if tied else "output.weight"
        self.head = None if self.src.stream_globals else self.src.global_weight(self.head_name)
        self._build_decode()
        self._rope_tabs: dict = {}  # RoPE cos/sin of the current forward, per (theta, scale, positions)

    # --- hooks shared with the reference
    def window(self, layer: int):
        return self.ref.window(layer)

    def new_cache(self, dtype=np.float16) -> NativeKVCache:
        """A full-context cache, float16 (as llama.cpp's) or float32."""
        a = self.args
        return NativeKVCache(a.n_layers, a.n_kv_heads, a.head_dim, limit=a.context_length, dtype=dtype)

    def embed(self, tokens: np.ndarray) -> np.ndarray:
        x = self.src.embed_rows("token_embd.weight", tokens)  # (T, dim)
        if self.gemma:
            x = x * np.float32(math.sqrt(self.args.dim))
        return np.ascontiguousarray(x, np.float32)

    def close(self) -> None:
        """Stop layer streaming (if any)."""
        self.src.close()

    # --- decode (T = 1): preallocated buffers and cached addresses
    def _build_decode(self) -> None:
        a, lib = self.args, self.lib
        qd, kvd = a.n_heads * a.head_dim, a.n_kv_heads * a.head_dim
        b = self.buf = {
            "x": np.zeros(a.dim, np.float32), "h": np.zeros(a.dim, np.float32),
            "q": np.zeros(qd, np.float32), "k": np.zeros(kvd, np.float32), "v": np.zeros(kvd, np.float32),
            "att": np.zeros(qd, np.float32), "o": np.zeros(a.dim, np.float32),
            "g": np.zeros(a.ffn_dim, np.float32), "u": np.zeros(a.ffn_dim, np.float32),
            "logits": np.zeros(a.vocab_size, np.float32),
        }  # fmt: skip
        self.p = {n: _ptr(arr) for n, arr in b.items()}
        self.layers = []
        hd = a.head_dim
        for i in range(a.n_layers):
            pre = f"blk.{i}."
            theta, rs = float(self.ref.rope_theta(i)), float(self.ref.rope_scale(i))
            L = {
                "attn_norm": _ptr(self.V[pre + "attn_norm.weight"]), "ffn_norm": _ptr(self.V[pre + "ffn_norm.weight"]),
                "theta": theta, "fscale": 1.0 / rs, "window": self.ref.window(i),
                "bias": [self.V.get(pre + f"attn_{t}.bias") for t in "qkv"],
                # RoPE by delta positions in place on (rows, hd) float32 (sink keys of the ring cache)
                "rotate": lambda x, d, t=theta, f=1.0 / rs: lib.er_rope_neox(_ptr(x), x.shape[0], hd, d, t, f),
                # numpy RoPE at absolute positions (the cache's own attention: prefill, KIVI layouts); the tables
                # are made once per forward and base, not once per layer
                "rope": lambda x, p, t=theta, r=rs: apply_rope(x, *self._rope_at(p, t, r)),
                # the tables alone (the native ring cache rotates in C, er_rope_rows)
                "tabs": lambda p, t=theta, r=rs: self._rope_at(p, t, r),
            }  # fmt: skip
            if self.gemma:
                for n in ("attn_q_norm", "attn_k_norm", "post_attention_norm", "post_ffw_norm"):
                    L[n] = _ptr(self.V[pre + n + ".weight"])
            self.layers.append(L)
        self.out_norm = _ptr(self.V["output_norm.weight"])
        self.scale = float(self.ref.attn_scale())
        self._build_fused()

    def _rope_at(self, pos: np.ndarray, theta: float, scale: float):
        """cos/sin tables of positions `pos` (cached: every layer of a forward rotates the same positions, and
        Gemma-3 has two bases)."""
        key = (theta, scale, pos.tobytes())
        tabs = self._rope_tabs.get(key)
        if tabs is None:
            if len(self._rope_tabs) >= 8:  # decode steps of the ring cache never reset it: keep it small
                self._rope_tabs.clear()
            tabs = self._rope_tabs[key] = rope_tables(pos, self.args.head_dim, theta, scale)
        return tabs

    def _build_fused(self) -> None:
        """The C structs of the fused decode: sizes + scratch pointers (er_decode_cfg), per layer vectors."""
        import ctypes

        from edgerun.kernels._lib import ErDecodeCfg

        a, p = self.args, self.p
        self.fused_decode = True
        scratch = (p[n] for n in ("x", "h", "q", "k", "v", "att", "o", "g", "u"))
        self._cfg = ErDecodeCfg(a.dim, a.n_heads, a.n_kv_heads, a.head_dim, a.ffn_dim, a.norm_eps, self.scale, 0.0,
                                1 if self.gemma else 0, 0, *scratch)  # kv_f16: set per step from the cache
        self._cfg_ref = ctypes.byref(self._cfg)
        self._clayers: dict[tuple[int, int], tuple] = {}  # (layer, id(weights dict)) -> (dict, ErLayer, byref)
        # the embedding row of a decode step read by er_weight_row (no numpy on the step's path): the resident
        # embedding (the head's Weight when tied), the Gemma sqrt(dim) factor folded in; None: numpy (embed)
        self._embw = None
        fmt = self.src.tensors["token_embd.weight"]["format"]
        if not self.src.stream_globals and fmt in ("f32", "f16", *MATMULNBITS_FORMATS):
            tied_head = self.head_name == "token_embd.weight" and self.head is not None
            self._embw = self.head if tied_head else self.src.global_weight("token_embd.weight")  # map views
        self._emb_mul = float(np.float32(math.sqrt(a.dim))) if self.gemma else 1.0
        self._stack = None  # (layer pointer array, k pointers, v pointers, capacity) of er_decode_layers

    def _layer_stack(self, cache: NativeKVCache):
        """Arguments of er_decode_layers (every layer resident, full cache): built once per cache allocation."""
        import ctypes

        st = self._stack
        if st is not None and st[3] == cache.capacity and st[4] is cache.k_ptr:
            return st
        n = self.args.n_layers
        Ws = [self.src.layer(i) for i in range(n)]  # resident (no streamer): the same dicts every token
        if any(W.get("transient") for W in Ws):
            return None
        refs = [self._clayer(i, W) for i, W in enumerate(Ws)]
        arr = (ctypes.c_void_p * n)(*[ctypes.addressof(r._obj) for r in refs])
        ks = (ctypes.c_void_p * n)(*cache.k_ptr)
        vs = (ctypes.c_void_p * n)(*cache.v_ptr)
        self._stack = (arr, ks, vs, cache.capacity, cache.k_ptr, refs)
        return self._stack

    def _clayer(self, i: int, W: dict):
        """byref(er_layer) of layer i with the weights of W (src.layer(i)); built once per weights dict."""
        hit = self._clayers.get((i, id(W)))
        if hit is not None and hit[0] is W:
            return hit[2]
        import ctypes

        from edgerun.kernels._lib import ErLayer

        pre, L = f"blk.{i}.", self.layers[i]
        vec = self.V.get
        c = ErLayer()
        for j, name in enumerate(("wq", "wk", "wv", "wo", "wg", "wu", "wd")):
            c.w[j] = ctypes.addressof(W[name]._c)
        c.attn_norm, c.ffn_norm = L["attn_norm"], L["ffn_norm"]
        for j, b in enumerate(L["bias"]):
            c.bias[j] = None if b is None else _ptr(b)
        for field, name in (("q_norm", "attn_q_norm"), ("k_norm", "attn_k_norm"),
                            ("post_attn_norm", "post_attention_norm"), ("post_ffw_norm", "post_ffw_norm")):
            v = vec(pre + name + ".weight") if self.gemma else None
            setattr(c, field, None if v is None else _ptr(v))
        c.rope_theta, c.rope_freq_scale = L["theta"], L["fscale"]
        c.window = 0 if L["window"] is None else int(L["window"])
        if W.get("transient"):  # a streamed layer's private copies (native_weights.copy_nbytes): not cached,
            c.keep = W  # alive as long as the caller holds the byref
            return ctypes.byref(c)
        self._clayers[(i, id(W))] = hit = (W, c, ctypes.byref(c))
        return hit[2]

    def _decode(self, token: int, cache) -> np.ndarray:
        """One token through every layer, one C call per layer; returns logits (vocab,) (a fresh array)."""
        if not self.fused_decode:
            return self._decode_ops(token, cache)
        a, lib, b, p = self.args, self.lib, self.buf, self.p
        nh, nkv, hd = a.n_heads, a.n_kv_heads, a.head_dim
        pos = cache.length
        ring = isinstance(cache, SinkWindowKVCache)
        if not ring:
            cache.reserve(pos + 1)
        if self._embw is None or lib.er_weight_row(self._embw._ref, token, self._emb_mul, p["x"]):
            b["x"][:] = self.embed(np.array([token]))[0]
        cfg = self._cfg_ref
        st = None if ring or self.src.streamer is not None else self._layer_stack(cache)
        self._cfg.kv_f16 = 0 if ring else int(cache.f16)
        if st is not None:  # every layer in one C call
            r = lib.er_decode_layers(cfg, st[0], st[1], st[2], a.n_layers, cache.capacity, pos)
            if r:
                raise ValueError(f"fused decode failed (code {r})")
        for i in range(0 if st is None else a.n_layers, a.n_layers):
            L = self._clayer(i, self.src.layer(i))
            if not ring:
                r = lib.er_decode_layer(cfg, L, cache.k_ptr[i], cache.v_ptr[i], cache.capacity, pos)
            elif cache.layers[i].quant and cache.native:  # KIVI layouts in C: the whole layer in one call
                r = lib.er_decode_layer_kivi(cfg, L, cache.kivi(i), pos)
                cache.seen[i] = pos + 1
            elif cache.layers[i].quant:  # KIVI layouts, numpy cache: the cache's attention (rotates q/k itself)
                r = lib.er_decode_attn_in(cfg, L, -1)
                att = cache.attend(i, b["q"].reshape(nh, 1, hd), b["k"].reshape(nkv, 1, hd),
                                   b["v"].reshape(nkv, 1, hd), self.layers[i]["rope"], pos, self.scale)  # fmt: skip
                b["att"][:] = att.reshape(-1)
                r = r or lib.er_decode_attn_out(cfg, L)
            else:
                r = lib.er_decode_attn_in(cfg, L, pos)
                self._attend_ring(i, self.layers[i], cache, pos)
                r = r or lib.er_decode_attn_out(cfg, L)
            if r:
                raise ValueError(f"fused decode of layer {i} failed (code {r})")
            self.src.release(i)
            L = None  # a streamed layer's private copies go before the next layer's are made
        cache.advance(1)
        lib.er_rmsnorm(p["x"], self.out_norm, p["h"], 1, a.dim, a.norm_eps)
        if self.head is not None:  # straight into the fresh array the step returns (no copy of the vocab)
            out = np.empty(a.vocab_size, np.float32)
            lib.er_matmul(self.head._ref, p["h"], out.ctypes.data, 1)
            return out
        self.src.streamed_matmul(self.head_name, b["h"][None], b["logits"][None])
        return b["logits"].copy()

    def _decode_ops(self, token: int, cache) -> np.ndarray:
        """The same step op by op (~16 C calls per layer): the reference of the fused path."""
        a, lib, b, p = self.args, self.lib, self.buf, self.p
        mm, norm, rope = lib.er_matmul, lib.er_rmsnorm, lib.er_rope_neox
        eps, hd, nh, nkv, dim = a.norm_eps, a.head_dim, a.n_heads, a.n_kv_heads, a.dim
        pos = cache.length
        ring = isinstance(cache, SinkWindowKVCache)
        if not ring:
            cache.reserve(pos + 1)
        b["x"][:] = self.embed(np.array([token]))[0]
        x, o = b["x"], b["o"]
        px, ph, pq, pk, pv, patt, po, pg, pu = (p[n] for n in ("x", "h", "q", "k", "v", "att", "o", "g", "u"))
        ffn_mul = lib.er_gelu_mul if self.gemma else lib.er_silu_mul
        for i, L in enumerate(self.layers):
            wq, wk, wv, wo, wg, wu, wd = self.src.layer(i)["refs"]
            norm(px, L["attn_norm"], ph, 1, dim, eps)
            mm(wq, ph, pq, 1)
            mm(wk, ph, pk, 1)
            mm(wv, ph, pv, 1)
            if L["bias"][0] is not None:
                b["q"] += L["bias"][0]
                b["k"] += L["bias"][1]
                b["v"] += L["bias"][2]
            if self.gemma:
                norm(pq, L["attn_q_norm"], pq, nh, hd, eps)
                norm(pk, L["attn_k_norm"], pk, nkv, hd, eps)
            if ring and cache.layers[i].quant:  # KIVI layouts: the cache's attention (rotates q/k itself)
                att = cache.attend(i, b["q"].reshape(nh, 1, hd), b["k"].reshape(nkv, 1, hd),
                                   b["v"].reshape(nkv, 1, hd), L["rope"], pos, self.scale)  # fmt: skip
                b["att"][:] = att.reshape(-1)
            else:
                rope(pq, nh, hd, pos, L["theta"], L["fscale"])
                rope(pk, nkv, hd, pos, L["theta"], L["fscale"])
                if ring:
                    self._attend_ring(i, L, cache, pos)
                else:
                    self._attend_full(i, L, cache, pos)
            mm(wo, patt, po, 1)
            if self.gemma:
                norm(po, L["post_attention_norm"], po, 1, dim, eps)
            x += o
            norm(px, L["ffn_norm"], ph, 1, dim, eps)
            mm(wg, ph, pg, 1)
            mm(wu, ph, pu, 1)
            ffn_mul(pg, pu, pg, a.ffn_dim)
            mm(wd, pg, po, 1)
            self.src.release(i)
            if self.gemma:
                norm(po, L["post_ffw_norm"], po, 1, dim, eps)
            x += o
        cache.advance(1)
        norm(px, self.out_norm, ph, 1, dim, eps)
        if self.head is not None:
            mm(self.head._ref, ph, p["logits"], 1)
        else:
            self.src.streamed_matmul(self.head_name, b["h"][None], b["logits"][None])
        return b["logits"].copy()

    def _attend_full(self, i: int, L: dict, cache: NativeKVCache, pos: int) -> None:
        """Store k/v at pos in the full cache; attention over [start, pos] (start from the layer's window)."""
        a, b, p = self.args, self.buf, self.p
        hd, nkv = a.head_dim, a.n_kv_heads
        cache.k[i][:, pos] = b["k"].reshape(nkv, hd)
        cache.v[i][:, pos] = b["v"].reshape(nkv, hd)
        w = L["window"]
        start = 0 if w is None else max(0, pos + 1 - w)
        off = start * hd * cache.dtype.itemsize
        self.lib.er_attention(p["q"], cache.k_ptr[i] + off, cache.v_ptr[i] + off, p["att"], a.n_heads, nkv, hd,
                              pos + 1 - start, cache.capacity, int(cache.f16), self.scale, 0.0)  # fmt: skip

    def _attend_ring(self, i: int, L: dict, cache: SinkWindowKVCache, pos: int) -> None:
        """Store k/v at pos in the sink + window ring; one kernel call over [sinks | ring]."""
        a, b, p = self.args, self.buf, self.p
        lay = cache.layers[i]
        nkv, hd = a.n_kv_heads, a.head_dim
        n = lay.store_decode(b["k"].reshape(nkv, hd), b["v"].reshape(nkv, hd), pos, L["rotate"])
        f16 = 1 if lay.kv_k.dtype == np.float16 else 0
        self.lib.er_attention(p["q"], _ptr(lay.kv_k), _ptr(lay.kv_v), p["att"], a.n_heads, nkv, hd, n,
                              lay.S + lay.W, f16, self.scale, 0.0)  # fmt: skip
        cache.seen[i] = pos + 1

    # --- prefill (T > 1): GEMMs on the kernels, RoPE/attention in numpy
    def _mm(self, w, x: np.ndarray) -> np.ndarray:
        return self.k.matmul(w, x)

    def _norm(self, x: np.ndarray, name: str) -> np.ndarray:
        return self.k.rmsnorm(np.ascontiguousarray(x), self.V[name], self.args.norm_eps)

    def _block(self, i: int, x: np.ndarray, cache, pos: np.ndarray) -> np.ndarray:
        a, pre, T = self.args, f"blk.{i}.", x.shape[0]
        W = self.src.layer(i)
        h = self._norm(x, pre + "attn_norm.weight")
        q, k, v = self.k.matmul_multi([W["wq"], W["wk"], W["wv"]], h)  # x quantized once, one parallel job
        if pre + "attn_q.bias" in self.V:
            q, k, v = (m + self.V[pre + f"attn_{t}.bias"] for m, t in zip((q, k, v), "qkv", strict=True))
        if isinstance(cache, SinkWindowKVCache) and cache.native:  # rows as the projections give them, RoPE in C
            q, k, v = (m.reshape(T, n, a.head_dim) for m, n in zip((q, k, v), (a.n_heads, a.n_kv_heads, a.n_kv_heads),
                                                                    strict=True))  # fmt: skip
            if self.gemma:
                q = self._norm(q, pre + "attn_q_norm.weight")
                k = self._norm(k, pre + "attn_k_norm.weight")
            o = cache.attend_rows(i, q, k, v, self.layers[i]["tabs"], pos, self.scale)  # (T, n_heads, hd)
            return self._block_out(i, W, x, o.reshape(T, a.n_heads * a.head_dim))
        if not isinstance(cache, SinkWindowKVCache):  # full cache: RoPE in C on the rows, one attention call
            q, k, v = (m.reshape(T, n, a.head_dim) for m, n in zip((q, k, v), (a.n_heads, a.n_kv_heads, a.n_kv_heads),
                                                                    strict=True))  # fmt: skip
            if self.gemma:
                q = self._norm(q, pre + "attn_q_norm.weight")
                k = self._norm(k, pre + "attn_k_norm.weight")
            cos, sin = self._rope_at(pos, self.ref.rope_theta(i), self.ref.rope_scale(i))
            self.k.rope_rows(q, cos, sin)
            self.k.rope_rows(k, cos, sin)
            n0, n1 = int(pos[0]), int(pos[-1]) + 1
            cache.k[i][:, n0:n1] = k.transpose(1, 0, 2)
            cache.v[i][:, n0:n1] = v.transpose(1, 0, 2)
            o = self.k.attention_prefill(q, cache.k[i], cache.v[i], n0, self.scale, window=self.window(i))
            return self._block_out(i, W, x, o.reshape(T, a.n_heads * a.head_dim))
        q = q.reshape(T, a.n_heads, a.head_dim).transpose(1, 0, 2)  # (n_heads, T, hd)
        k = k.reshape(T, a.n_kv_heads, a.head_dim).transpose(1, 0, 2)  # (n_kv, T, hd)
        v = v.reshape(T, a.n_kv_heads, a.head_dim).transpose(1, 0, 2)
        if self.gemma:
            q = self._norm(q, pre + "attn_q_norm.weight")
            k = self._norm(k, pre + "attn_k_norm.weight")
        o = cache.attend(i, q, k, v, self.layers[i]["rope"], pos, self.scale)  # numpy cache (kv_bits 32)
        o = np.ascontiguousarray(o.transpose(1, 0, 2).reshape(T, a.n_heads * a.head_dim))
        return self._block_out(i, W, x, o)

    def _block_out(self, i: int, W: dict, x: np.ndarray, o: np.ndarray) -> np.ndarray:
        """The rest of block i after attention: o (T, n_heads * hd) through the output projection, the residual,
        the FFN."""
        pre = f"blk.{i}."
        o = self._mm(W["wo"], o)
        if self.gemma:
            o = self._norm(o, pre + "post_attention_norm.weight")
        x = x + o
        h = self._norm(x, pre + "ffn_norm.weight")
        g, u = self.k.matmul_multi([W["wg"], W["wu"]], h)
        f = self.k.gelu_mul(g, u) if self.gemma else self.k.silu_mul(g, u)
        o = self._mm(W["wd"], f)
        self.src.release(i)
        if self.gemma:
            o = self._norm(o, pre + "post_ffw_norm.weight")
        return x + o

    def forward(self, tokens, cache, last_only: bool = False) -> np.ndarray:
        """Run tokens (T,) at positions cache.length..; returns logits (T, vocab) or (1, vocab)."""
        tokens = np.asarray(tokens, dtype=np.int64)
        if len(tokens) == 1 and last_only:
            return self._decode(int(tokens[0]), cache)[None, :]
        pos = np.arange(cache.length, cache.length + len(tokens))
        if not isinstance(cache, SinkWindowKVCache):
            cache.reserve(int(pos[-1]) + 1)
        x = self.embed(tokens)  # (T, dim)
        self._rope_tabs = {}
        for i in range(self.args.n_layers):
            x = self._block(i, x, cache, pos)
        cache.advance(len(tokens))
        if last_only:
            x = x[-1:]
        h = np.ascontiguousarray(self._norm(x, "output_norm.weight"))
        if self.head is not None:
            return self.k.matmul(self.head, h)
        return self.src.streamed_matmul(self.head_name, h, np.empty((h.shape[0], self.args.vocab_size), np.float32))
