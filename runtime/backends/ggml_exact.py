"""A forward in llama.cpp's CPU float order, bit for bit, on edgerun's imported weights.

Validation only: two engines that quantize activations to 8 bits inside their matmuls disagree on
top-1 wherever a single ulp differs (one flipped int8 rounding moves the logits by up to ~2), so the
comparison with llama.cpp on the *same quantized weights* (issue: top-1 >= 98%) needs llama.cpp's
operations in llama.cpp's order. This module runs the artifact's weights (imported exactly from
Q4_0 / Q8_0 / TQ2_0) through the kernels of ``edgerun.kernels.ggml_exact``, which mirror an x86-64
AVX2 build of llama.cpp (llama-cpp-python 0.3.36) with flash attention off and an f16 KV cache, for
one batch of tokens from position 0 (how ``evaluate.llama_cpp_scorer`` runs llama.cpp).

Graph (llama.cpp's llm_build_llama, per layer):
    h = rms_norm(x) * attn_norm; q, k, v = h @ Wq^T, h @ Wk^T, h @ Wv^T   (Q8_0/Q8_K activations)
    q, k: RoPE NORM pairs in GGUF row order; k, v stored f16; q rounded to f16 for KQ
    kq = K q (tinyBLAS f16); p = softmax(kq * scale + causal mask); p rounded to f16; o = V^T p
    x += o @ Wo^T; h = rms_norm(x) * ffn_norm; x += swiglu(h @ Wg^T, h @ Wu^T) @ Wd^T
The serving forward (``native.py``) keeps its own, faster order.
"""

from __future__ import annotations

import numpy as np
from edgerun.errors import UnsupportedError

_F16, _F32 = np.float16, np.float32


def _to_gguf_rows(x: np.ndarray, n_heads: int) -> np.ndarray:
    """(T, H*hd) in edgerun's rotate-half row order -> llama.cpp's interleaved (GGUF) order."""
    t = x.shape[0]
    hd = x.shape[1] // n_heads
    return np.ascontiguousarray(x.reshape(t, n_heads, 2, hd // 2).transpose(0, 1, 3, 2).reshape(t, n_heads, hd))


def _mode(weight) -> int:
    """llama.cpp's kernel for this weight on AVX2: repacked Q4_0 8x8 when rows % 8 == 0, else tinyBLAS."""
    from edgerun.kernels import ggml_exact as gx

    ref = weight._c
    return gx.MODE_REPACK if ref.bits == 4 and ref.n % 8 == 0 else gx.MODE_TINYBLAS


class GgmlExactForward:
    """Logits of a token batch from position 0 in llama.cpp's float order (llama architecture)."""

    def __init__(self, native_model):
        from edgerun.kernels import ggml_exact as gx

        if not gx.available():
            raise UnsupportedError("the llama.cpp-order forward needs an x86-64 CPU with AVX2/FMA")
        m = native_model
        if m.arch != "llama" or any(k.endswith(".bias") for k in m.V):
            raise UnsupportedError(f"the llama.cpp-order forward covers the llama architecture, not {m.arch}")
        self.m, self.gx = m, gx

    def _mm(self, w, x: np.ndarray) -> np.ndarray:
        return self.gx.matmul(w, x, _mode(w))

    def _attention(self, q: np.ndarray, k: np.ndarray, v: np.ndarray, pos: np.ndarray) -> np.ndarray:
        """q (T, H, hd), k/v (T, Hkv, hd) -> (T, H*hd), causal over the batch (f16 K/V, f16 q and p)."""
        a, gx = self.m.args, self.gx
        t, nh, hd = q.shape
        n = -(-t // 8) * 8  # keys padded with zeros to whole groups of 8 (masked, add exact zeros)
        k16 = np.zeros((a.n_kv_heads, n, hd), _F32)
        v16 = np.zeros((a.n_kv_heads, hd, n), _F32)  # V^T, as llama.cpp's non-flash cache stores it
        k16[:, :t] = k.astype(_F16).astype(_F32).transpose(1, 0, 2)
        v16[:, :, :t] = v.astype(_F16).astype(_F32).transpose(1, 2, 0)
        q16 = q.astype(_F16).astype(_F32)
        out = np.empty((t, nh, hd), _F32)
        group = nh // a.n_kv_heads
        n_valid = pos + 1
        for h in range(nh):
            s = gx.f16_gemm(k16[h // group], np.ascontiguousarray(q16[:, h]))  # (T, n)
            p = gx.softmax(s, n_valid, self.m.scale).astype(_F16).astype(_F32)
            out[:, h] = gx.f16_gemm(v16[h // group], p)  # (T, hd)
        return out.reshape(t, nh * hd)

    def logits(self, tokens) -> np.ndarray:
        """tokens (T,) at positions 0..T-1 -> logits (T, vocab) float32."""
        m, gx, a = self.m, self.gx, self.m.args
        tokens = np.asarray(tokens, np.int64)
        pos = np.arange(len(tokens))
        x = m.embed(tokens)  # (T, dim): dequantized rows, exact
        for i in range(a.n_layers):
            pre, W = f"blk.{i}.", m.src.layer(i)
            base = float(m.ref.rope_theta(i))
            h = gx.rmsnorm(x, m.V[pre + "attn_norm.weight"], a.norm_eps)
            q = gx.rope(_to_gguf_rows(self._mm(W["wq"], h), a.n_heads), pos, base)
            k = gx.rope(_to_gguf_rows(self._mm(W["wk"], h), a.n_kv_heads), pos, base)
            v = self._mm(W["wv"], h).reshape(len(tokens), a.n_kv_heads, a.head_dim)
            x = x + self._mm(W["wo"], self._attention(q, k, v, pos))
            h = gx.rmsnorm(x, m.V[pre + "ffn_norm.weight"], a.norm_eps)
            f = gx.swiglu(self._mm(W["wg"], h), self._mm(W["wu"], h))
            x = x + self._mm(W["wd"], f)
            m.src.release(i)
        h = gx.rmsnorm(x, m.V["output_norm.weight"], a.norm_eps)
        if m.head is None:
            raise UnsupportedError("the llama.cpp-order forward needs a resident output head")
        return self._mm(m.head, h)
