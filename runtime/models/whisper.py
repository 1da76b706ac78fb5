"""Whisper (encoder-decoder speech recognizer) in numpy, run from an edgerun artifact.

Architecture (Radford et al. 2022, openai/whisper `model.py`; weight names follow CTranslate2's WhisperSpec)::

    mel (80, 3000) ─ conv1 k3 ─ gelu ─ conv2 k3 s2 ─ gelu ─ + sinusoid pos ─ N × [LN ─ MHA ─ + ; LN ─ FFN ─ +] ─ LN
                                                                                               │ enc (T_a, d)
    tokens ─ embed + learned pos ─ N × [LN ─ causal MHA (KV cache) ─ + ; LN ─ cross MHA (cached K,V of enc) ─ + ;
                                        LN ─ FFN ─ +] ─ LN ─ @ embed.T ─ logits

Every linear layer goes through one function, `matmul(x, linear)`, so its implementation can be swapped
(`set_matmul`) — numpy with weights dequantized once today, the int8 GEMM/GEMV kernels of
`edgerun.kernels` when they are available.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, fields

import numpy as np

try:  # exact GELU (CTranslate2 and openai/whisper use the erf form)
    from scipy.special import erf as _erf
except ImportError:  # pragma: no cover - scipy is optional
    _erf = None


@dataclass
class ModelArgs:
    """Whisper hyper-parameters (openai/whisper `ModelDimensions` names)."""

    n_mels: int = 80
    n_audio_ctx: int = 1500
    n_audio_state: int = 512
    n_audio_head: int = 8
    n_audio_layer: int = 6
    n_vocab: int = 51865
    n_text_ctx: int = 448
    n_text_state: int = 512
    n_text_head: int = 8
    n_text_layer: int = 6

    @classmethod
    def from_dict(cls, d: dict) -> ModelArgs:
        """Build from a dict, ignoring unknown keys."""
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})


# --------------------------------------------------------------------------- linear layers


class Linear:
    """y = x @ W.T + b. W (out, in) is a float array or an `edgerun.quant.QuantizedTensor`
    (MatMulNBits layout: `data` codes, `scales`, optional `zero_points`) that a kernel can use as is."""

    def __init__(self, weight, scale: np.ndarray | None = None, bias: np.ndarray | None = None):
        self.weight = weight  # (out, in) float array, int8 array with per-row `scale`, or QuantizedTensor
        self.scale = None if scale is None else np.asarray(scale, dtype=np.float32).reshape(-1)  # (out,)
        self.bias = None if bias is None else np.asarray(bias, dtype=np.float32)  # (out,)
        self.cache = None  # backend-owned (e.g. dequantized transposed weight)

    @property
    def quantized(self) -> bool:
        return hasattr(self.weight, "dequantize")

    @property
    def shape(self) -> tuple[int, int]:
        return tuple(self.weight.shape)

    def dequantized(self) -> np.ndarray:
        """The float32 weight (out, in)."""
        if self.quantized:
            return self.weight.dequantize()
        w = np.asarray(self.weight, dtype=np.float32)
        if self.scale is not None:
            w = w * self.scale[:, None]
        return w

    def rows(self, idx) -> np.ndarray:
        """Float32 rows `idx` of W (the embedding lookup of a tied embedding/projection)."""
        if isinstance(self.cache, np.ndarray) and self.cache.shape[1] == self.shape[0]:
            return self.cache[:, idx].T
        if self.quantized:
            from edgerun.quant import QuantizedTensor

            q = self.weight
            zp = None if q.zero_points is None else q.zero_points[idx]
            sub = QuantizedTensor(q.format, (len(idx), q.shape[1]), q.block_size, q.bits, q.data[idx],
                                  q.scales[idx], zp)
            return sub.dequantize()
        w = np.asarray(self.weight[idx], dtype=np.float32)
        return w * self.scale[idx][:, None] if self.scale is not None else w

    def __call__(self, x: np.ndarray) -> np.ndarray:
        return _MATMUL(x, self)


def matmul_numpy(x: np.ndarray, lin: Linear) -> np.ndarray:
    """Reference backend: dequantize once (kept as (in, out) float32) and use BLAS."""
    if lin.cache is None:
        lin.cache = np.ascontiguousarray(lin.dequantized().T)  # (in, out)
    y = x @ lin.cache
    if lin.bias is not None:
        y += lin.bias
    return y


def matmul_kernels(x: np.ndarray, lin: Linear) -> np.ndarray:
    """edgerun's C kernels (`edgerun.kernels.matmul`): int8/int4 weights used as stored, no dequantized copy."""
    from edgerun.kernels import Weight, matmul

    if not isinstance(lin.cache, Weight):
        lin.cache = Weight(lin.weight if lin.quantized else lin.dequantized())
    x2 = np.ascontiguousarray(x.reshape(-1, x.shape[-1]), dtype=np.float32)  # (M, K)
    y = matmul(lin.cache, x2)
    if lin.bias is not None:
        y += lin.bias
    return y.reshape(*x.shape[:-1], y.shape[-1])


MATMUL_BACKENDS = {"numpy": matmul_numpy, "kernels": matmul_kernels}


def _default_matmul() -> Callable[[np.ndarray, Linear], np.ndarray]:
    """The int8 kernels when the C library loads (weights stay int8: ~150 MB less RSS for whisper-base), else numpy."""
    from edgerun.runtime.backends import kernels_available

    return matmul_kernels if kernels_available() else matmul_numpy


_MATMUL: Callable[[np.ndarray, Linear], np.ndarray] = _default_matmul()


def set_matmul(fn: Callable[[np.ndarray, Linear], np.ndarray] | str | None) -> None:
    """Swap the function every Whisper linear layer uses: a callable, "numpy" / "kernels", or None (default).

    Default (or EDGERUN_WHISPER_MATMUL): the int8 C kernels — weights used as stored (whisper-base
    loads in ~150 MB instead of ~440 MB with dequantized float32 copies) and as fast as numpy BLAS on
    the 2-core dev box since the tiled GEMM; "numpy" is the float32 reference."""
    global _MATMUL
    if isinstance(fn, str):
        if fn not in MATMUL_BACKENDS:
            from edgerun.errors import EdgerunError

            raise EdgerunError(f"unknown matmul backend '{fn}'; use one of {', '.join(MATMUL_BACKENDS)}")
        fn = MATMUL_BACKENDS[fn]
    _MATMUL = fn or _default_matmul()


if os.environ.get("EDGERUN_WHISPER_MATMUL"):
    set_matmul(os.environ["EDGERUN_WHISPER_MATMUL"])


# --------------------------------------------------------------------------- small ops


def _kernel_weight() -> type:
    from edgerun.kernels import Weight

    return Weight


def _c_ops() -> bool:
    """Whether the small ops (LayerNorm, GELU, attention) run in C: with the C matmul backend, not with numpy's."""
    return _MATMUL is matmul_kernels


def layer_norm(x: np.ndarray, g: np.ndarray, b: np.ndarray, eps: float = 1e-5) -> np.ndarray:
    """LayerNorm over the last axis (`edgerun.kernels.layer_norm` with the C backend)."""
    if _c_ops():
        from edgerun.kernels import layer_norm as c_layer_norm

        return c_layer_norm(np.ascontiguousarray(x, np.float32), g, b, eps)
    mu = x.mean(-1, keepdims=True)
    xc = x - mu
    var = (xc * xc).mean(-1, keepdims=True)
    return xc / np.sqrt(var + eps) * g + b


def gelu(x: np.ndarray) -> np.ndarray:
    """GELU, exact erf form (C `gelu_erf` with the C backend; scipy's erf, else the tanh approximation, in numpy).
    Overwrites x."""
    if _c_ops() and x.dtype == np.float32 and x.flags.c_contiguous:
        from edgerun.kernels import gelu_erf

        return gelu_erf(x, out=x)
    if _erf is not None:
        t = _erf(x * np.float32(0.7071067811865476))
    else:
        t = np.tanh(np.float32(0.7978845608) * (x + np.float32(0.044715) * x * x * x))
    t += 1.0
    t *= 0.5
    x *= t
    return x


def softmax(x: np.ndarray, axis: int = -1) -> np.ndarray:
    """Numerically stable softmax, in place (x is overwritten and returned)."""
    x -= x.max(axis=axis, keepdims=True)
    np.exp(x, out=x)
    x /= x.sum(axis=axis, keepdims=True)
    return x


def conv1d(x: np.ndarray, lin: Linear, k: int, stride: int) -> np.ndarray:
    """1-D convolution, padding k//2, as im2col + one matmul. x (C_in, T) -> (T_out, C_out)."""
    c_in, t = x.shape
    pad = k // 2
    xp = np.pad(x, ((0, 0), (pad, pad)))  # (C_in, T + 2 pad)
    t_out = (t + 2 * pad - k) // stride + 1
    # cols[t, c*k + j] = xp[c, t*stride + j]  (matches CT2's (out, in, k) weight flattened to (out, in*k))
    idx = np.arange(t_out)[:, None] * stride + np.arange(k)[None, :]  # (T_out, k)
    cols = xp[:, idx]  # (C_in, T_out, k)
    cols = np.ascontiguousarray(cols.transpose(1, 0, 2)).reshape(t_out, c_in * k)
    return lin(cols)  # (T_out, C_out)


def attention(q: np.ndarray, k: np.ndarray, v: np.ndarray, mask: np.ndarray | None = None) -> np.ndarray:
    """Scaled dot-product attention. q (H, Tq, D), k/v (H, Tk, D) -> (H, Tq, D)."""
    h, tq, d = q.shape
    q = q * np.float32(1.0 / np.sqrt(d))
    if tq * k.shape[1] > 1 << 18:  # long (encoder) attention: one head at a time keeps the scores small
        out = np.empty((h, tq, v.shape[-1]), np.float32)
        for i in range(h):
            s = q[i] @ k[i].T  # (Tq, Tk)
            if mask is not None:
                s += mask
            np.matmul(softmax(s), v[i], out=out[i])
        return out
    s = q @ k.transpose(0, 2, 1)  # (H, Tq, Tk)
    if mask is not None:
        s += mask
    return softmax(s) @ v


def _heads(x: np.ndarray, h: int) -> np.ndarray:
    """(T, H*D) -> (H, T, D)."""
    t, c = x.shape
    return x.reshape(t, h, c // h).transpose(1, 0, 2)


def _merge(x: np.ndarray) -> np.ndarray:
    """(H, T, D) -> (T, H*D)."""
    h, t, d = x.shape
    return np.ascontiguousarray(x.transpose(1, 0, 2)).reshape(t, h * d)


def _attend(q: np.ndarray, k: np.ndarray, v: np.ndarray, kb: np.ndarray | None, vb: np.ndarray | None, b0: int,
            h: int, step: int = 1) -> np.ndarray:
    """Non-causal attention of q (T, H*D) over keys k, v (H, S, D), then rows b0, b0 + step, .. of kb, vb
    (H, S', D) if given, each of those weighted as `step` keys -> (T, H*D). One C call (`attention_seg2`) with
    the C backend."""
    if _c_ops():
        from edgerun.kernels import attention_seg2

        return attention_seg2(q, k, v, kb, vb, b0=b0, b_step=step)
    if kb is None:
        return _merge(attention(_heads(q, h), k, v))
    na = k.shape[1]
    k = np.concatenate([k, kb[:, b0::step].astype(np.float32)], axis=1)
    v = np.concatenate([v, vb[:, b0::step].astype(np.float32)], axis=1)
    qh = _heads(q, h) * np.float32(1.0 / np.sqrt(k.shape[-1]))
    out = np.empty(qh.shape, np.float32)
    for i in range(h):  # one head at a time keeps the scores small
        sc = qh[i] @ k[i].T  # (T, S)
        sc[:, na:] += np.float32(np.log(step))
        np.matmul(softmax(sc), v[i], out=out[i])
    return _merge(out)


def _self_attend_c(q: np.ndarray, kc: np.ndarray, vc: np.ndarray, p0: int, h: int) -> np.ndarray:
    """Causal self-attention of n new tokens q (n, H*D) at p0.. over the cache kc, vc (H, n_ctx, D) (already
    holding them), in C: one-token attention or the prefill kernel. -> (n, H*D)."""
    from edgerun.kernels import attention, attention_prefill

    n, c = q.shape
    d = c // h
    q = np.ascontiguousarray(q, np.float32)
    scale = 1.0 / float(np.sqrt(d))
    if n == 1:
        return attention(q.reshape(h, d), kc, vc, p0 + 1, scale).reshape(1, c)
    return attention_prefill(q, kc, vc, p0, scale).reshape(n, c)


# --------------------------------------------------------------------------- model


class _LN:
    def __init__(self, w: Callable[[str], np.ndarray], prefix: str):
        self.g = w(prefix + ".gamma").astype(np.float32)
        self.b = w(prefix + ".beta").astype(np.float32)

    def __call__(self, x: np.ndarray) -> np.ndarray:
        return layer_norm(x, self.g, self.b)


SILENCE_FLOOR = -0.75  # normalized log-mel of the zero padding: (max - 8 + 4) / 4, -0.98 .. -0.68 on LibriVox
SILENCE_STEP = 4  # encoder layers attend to every 4th cached silence frame, weighted x4 (as exact on LibriVox)


@dataclass
class SilenceContext:
    """What the encoder and decoder see of a 30-s window beyond the audio when that part is silence.

    Whisper is trained on 30-s windows, the audio zero-padded; encoding all 1500 frames costs the same for a
    2-s utterance as for a 30-s one. The keys and values of the padding frames depend mostly on their position
    and little on the speech before them, so they are computed once from an all-silence window (log-mel at
    `floor`) and kept: an utterance of T frames is encoded on its own T frames, each encoder layer attending
    to its T keys plus the cached keys T..1499 of that layer, and the decoder cross-attends to the T encoder
    frames plus the cached ones. Measured on the LibriVox clips: the audio frames' encoder output is ~15 %
    (relative L2) off the full window's, against ~30 % when the window is simply cut after the audio, and the
    greedy transcripts equal the full window's. The encoder attends to every `SILENCE_STEP`-th cached frame
    only, each weighted as that many (the silence frames differ little from their neighbours; the same error
    as all of them), so its attention costs T x (T + (1500 - T) / 4) instead of 1500 x 1500.
    """

    floor: float
    enc_k: list[np.ndarray]  # n_audio_layer × (H, n_audio_ctx, D) float16: self-attention keys of the window
    enc_v: list[np.ndarray]
    cross_k: list[np.ndarray]  # n_text_layer × (H, n_audio_ctx, D) float16: the decoder's cross-attention K/V
    cross_v: list[np.ndarray]

    @property
    def nbytes(self) -> int:
        """Bytes held by the cached keys and values."""
        return sum(a.nbytes for a in self.enc_k + self.enc_v + self.cross_k + self.cross_v)

    def save(self, path: str) -> None:
        """Write to `path` (an uncompressed .npz), atomically."""
        arrays = {"floor": np.float32(self.floor)}
        for name in ("enc_k", "enc_v", "cross_k", "cross_v"):
            arrays |= {f"{name}_{i}": a for i, a in enumerate(getattr(self, name))}
        tmp = f"{path}.{os.getpid()}.tmp.npz"
        np.savez(tmp, **arrays)
        os.replace(tmp, path)

    @classmethod
    def load(cls, path: str, args: ModelArgs) -> SilenceContext:
        """Read what `save` wrote for a model of `args`; ValueError when it does not fit them."""
        with np.load(path) as z:
            parts = {}
            for name, n, h, d in (("enc_k", args.n_audio_layer, args.n_audio_head, args.n_audio_state),
                                  ("enc_v", args.n_audio_layer, args.n_audio_head, args.n_audio_state),
                                  ("cross_k", args.n_text_layer, args.n_text_head, args.n_text_state),
                                  ("cross_v", args.n_text_layer, args.n_text_head, args.n_text_state)):
                parts[name] = [z[f"{name}_{i}"] for i in range(n)]
                shape = (h, args.n_audio_ctx, d // h)
                if any(a.shape != shape or a.dtype != np.float16 for a in parts[name]):
                    raise ValueError(f"{path}: {name} is not {shape} float16")
            return cls(float(z["floor"]), **parts)


@dataclass
class DecoderState:
    """Per-utterance decoder caches: self-attention K/V grow per token; cross K/V are fixed."""

    self_k: list[np.ndarray]  # n_layer × (H, n_text_ctx, D)
    self_v: list[np.ndarray]
    cross_k: list[np.ndarray]  # n_layer × (H, T_a, D)
    cross_v: list[np.ndarray]
    length: int = 0
    silence: SilenceContext | None = None  # cross-attention continues over its frames T_a..1499


class Whisper:
    """Whisper encoder + decoder over a `get(name) -> array` weight source and `linear(name) -> Linear`."""

    def __init__(self, args: ModelArgs, get: Callable[[str], np.ndarray], linear: Callable[[str], Linear]):
        self.args = a = args
        self.conv1 = linear("encoder.conv1")
        self.conv2 = linear("encoder.conv2")
        self.enc_pos = get("encoder.position_encodings.encodings").astype(np.float32)  # (1500, d)
        self.enc_layers = []
        for i in range(a.n_audio_layer):
            p = f"encoder.layer_{i}"
            self.enc_layers.append(
                dict(
                    ln1=_LN(get, p + ".self_attention.layer_norm"),
                    qkv=linear(p + ".self_attention.linear_0"),
                    out=linear(p + ".self_attention.linear_1"),
                    ln2=_LN(get, p + ".ffn.layer_norm"),
                    fc1=linear(p + ".ffn.linear_0"),
                    fc2=linear(p + ".ffn.linear_1"),
                )
            )
        self.enc_ln = _LN(get, "encoder.layer_norm")
        self.embed = linear("decoder.embeddings")  # (n_vocab, d); also the output projection
        self.dec_pos = get("decoder.position_encodings.encodings").astype(np.float32)  # (448, d)
        self.dec_layers = []
        for i in range(a.n_text_layer):
            p = f"decoder.layer_{i}"
            self.dec_layers.append(
                dict(
                    ln1=_LN(get, p + ".self_attention.layer_norm"),
                    qkv=linear(p + ".self_attention.linear_0"),
                    out=linear(p + ".self_attention.linear_1"),
                    ln2=_LN(get, p + ".attention.layer_norm"),
                    q=linear(p + ".attention.linear_0"),
                    kv=linear(p + ".attention.linear_1"),
                    xout=linear(p + ".attention.linear_2"),
                    ln3=_LN(get, p + ".ffn.layer_norm"),
                    fc1=linear(p + ".ffn.linear_0"),
                    fc2=linear(p + ".ffn.linear_1"),
                )
            )
        self.dec_ln = _LN(get, "decoder.layer_norm")
        self._embed_rows: np.ndarray | None = None
        self.silence_step = SILENCE_STEP  # encoder attention: every n-th frame of a silence context
        self.cross_silence_step = 1  # decoder cross-attention: every n-th frame of a silence context

    def linears(self) -> list[Linear]:
        """Every linear layer (convs, attention, FFN, embedding)."""
        out = [self.conv1, self.conv2, self.embed]
        for L in self.enc_layers + self.dec_layers:
            out += [v for v in L.values() if isinstance(v, Linear)]
        return out

    def prepare(self) -> None:
        """Let the matmul backend set up every weight now (e.g. dequantize once) instead of on first use."""
        for lin in self.linears():
            lin(np.zeros((1, lin.shape[1]), np.float32))

    # ---------------------------------------------------------------- encoder
    def encode(self, mel: np.ndarray, silence: SilenceContext | None = None, record: list | None = None,
               frames: int | None = None) -> np.ndarray:
        """mel (n_mels, 2*T_a) -> encoder output (T_a, d). T_a may be shorter than 1500: alone (the window cut
        after the audio), or with `silence` standing in for frames T_a..1499 of a 30-s window. `frames`: keep
        only the first T_a = `frames` after the convolutions (mel frames beyond give them their right context).
        `record` (a list) receives each layer's self-attention (k, v), (H, T_a, D) each."""
        h = self.args.n_audio_head
        x = gelu(conv1d(mel.astype(np.float32), self.conv1, 3, 1))  # (T, d)
        x = gelu(conv1d(np.ascontiguousarray(x.T), self.conv2, 3, 2))  # (T_a, d)
        if frames is not None:
            x = np.ascontiguousarray(x[:frames])
        t = x.shape[0]
        if silence is not None and t > silence.enc_k[0].shape[1]:
            raise ValueError(f"{t} encoder frames exceed the {silence.enc_k[0].shape[1]} of the window")
        x = x + self.enc_pos[:t]
        for i, L in enumerate(self.enc_layers):
            qkv = L["qkv"](L["ln1"](x))  # (T_a, 3d)
            d = qkv.shape[1] // 3
            k = np.ascontiguousarray(_heads(qkv[:, d : 2 * d], h))  # (H, T_a, D)
            v = np.ascontiguousarray(_heads(qkv[:, 2 * d :], h))
            if record is not None:
                record.append((k, v))
            kb = vb = None
            if silence is not None:
                kb, vb = silence.enc_k[i], silence.enc_v[i]
            x = x + L["out"](_attend(qkv[:, :d], k, v, kb, vb, t, h, self.silence_step))
            x = x + L["fc2"](gelu(L["fc1"](L["ln2"](x))))
        return self.enc_ln(x).astype(np.float32)

    def silence_context(self, floor: float = SILENCE_FLOOR) -> SilenceContext:
        """Encode one all-silence 30-s window (log-mel `floor`) and keep its keys and values (float16) for
        `encode(..., silence=)` and `new_state(..., silence=)`: ~37 MB for Whisper base."""
        a = self.args
        rec: list = []
        enc = self.encode(np.full((a.n_mels, 2 * a.n_audio_ctx), floor, np.float32), record=rec)
        ck, cv = self._cross_kv(enc)
        f16 = lambda arrs: [np.ascontiguousarray(x, np.float16) for x in arrs]  # noqa: E731
        return SilenceContext(floor, f16(k for k, _ in rec), f16(v for _, v in rec), f16(ck), f16(cv))

    # ---------------------------------------------------------------- decoder
    def _cross_kv(self, enc: np.ndarray) -> tuple[list[np.ndarray], list[np.ndarray]]:
        h = self.args.n_text_head
        ck, cv = [], []
        kvs = [L["kv"] for L in self.dec_layers]
        if _c_ops() and all(isinstance(lin.cache, _kernel_weight()) for lin in kvs):
            # the layers' projections of the same encoder output: one C call (enc quantized once, one parallel job)
            from edgerun.kernels import matmul_multi

            outs = matmul_multi([lin.cache for lin in kvs], np.ascontiguousarray(enc, np.float32))
            for lin, o in zip(kvs, outs, strict=True):
                if lin.bias is not None:
                    o += lin.bias
        else:
            outs = [lin(enc) for lin in kvs]
        for o in outs:
            k, v = np.split(o, 2, axis=-1)  # 2 × (T_a, d)
            ck.append(np.ascontiguousarray(_heads(k, h)))
            cv.append(np.ascontiguousarray(_heads(v, h)))
        return ck, cv

    def new_state(self, enc: np.ndarray, silence: SilenceContext | None = None) -> DecoderState:
        """Precompute cross-attention K/V of one encoder output (followed by the cached silence frames of
        `silence`, if given) and empty self-attention caches."""
        a = self.args
        h, d = a.n_text_head, a.n_text_state // a.n_text_head
        ck, cv = self._cross_kv(enc)
        if silence is not None and enc.shape[0] > silence.cross_k[0].shape[1]:
            raise ValueError("the encoder output is longer than the silence context's window")
        sk = [np.zeros((h, a.n_text_ctx, d), np.float32) for _ in self.dec_layers]
        sv = [np.zeros((h, a.n_text_ctx, d), np.float32) for _ in self.dec_layers]
        return DecoderState(sk, sv, ck, cv, 0, silence)

    def _embed_tokens(self, tokens: list[int]) -> np.ndarray:
        return self.embed.rows(np.asarray(tokens, dtype=np.int64))  # (n, d)

    def decode(self, tokens: list[int], state: DecoderState, rows: list[int] | None = None) -> np.ndarray:
        """Feed `tokens` after the cached ones; returns logits (len(tokens), n_vocab), or only those of positions
        `rows` (len(rows), n_vocab): the vocabulary projection is most of a batched call's work."""
        a = self.args
        h = a.n_text_head
        n, p0 = len(tokens), state.length
        if p0 + n > a.n_text_ctx:
            raise ValueError("Whisper text context (448 tokens) exceeded")
        x = self._embed_tokens(tokens) + self.dec_pos[p0 : p0 + n]  # (n, d)
        mask = None
        if n > 1:
            mask = np.triu(np.full((n, p0 + n), -np.inf, np.float32), k=p0 + 1)  # (n, p0+n)
        for i, L in enumerate(self.dec_layers):
            y = L["ln1"](x)
            q, k, v = np.split(L["qkv"](y), 3, axis=-1)
            state.self_k[i][:, p0 : p0 + n] = _heads(k, h)
            state.self_v[i][:, p0 : p0 + n] = _heads(v, h)
            if _c_ops():
                x = x + L["out"](_self_attend_c(q, state.self_k[i], state.self_v[i], p0, h))
            else:
                kk = state.self_k[i][:, : p0 + n]  # (H, p0+n, D)
                vv = state.self_v[i][:, : p0 + n]
                x = x + L["out"](_merge(attention(_heads(q, h), kk, vv, mask)))
            y = L["ln2"](x)
            q = L["q"](y)
            sil = state.silence
            kb, vb = (None, None) if sil is None else (sil.cross_k[i], sil.cross_v[i])
            x = x + L["xout"](_attend(q, state.cross_k[i], state.cross_v[i], kb, vb, state.cross_k[i].shape[1], h,
                                      self.cross_silence_step))
            x = x + L["fc2"](gelu(L["fc1"](L["ln3"](x))))
        state.length = p0 + n
        x = self.dec_ln(x if rows is None else np.ascontiguousarray(x[rows]))
        return self.embed(x)  # (n or len(rows), n_vocab): tied output projection



# --------------------------------------------------------------------------- loading


def load_whisper(path: str, verify: bool = True) -> tuple[Whisper, dict, str]:
    """Open a Whisper artifact: returns (model, manifest, tokenizer.json text)."""
    from edgerun.errors import UnsupportedError
    from edgerun.export.artifact import Artifact
    from edgerun.quant import QuantizedTensor

    art = Artifact(path)
    if art.arch != "whisper":
        raise UnsupportedError(f"artifact '{path}' holds a {art.arch} model, not Whisper")
    args = ModelArgs.from_dict(art.config)
    tensors = art.tensors

    def get(name: str) -> np.ndarray:
        return art.part(name, "data", verify=verify)

    def linear(prefix: str) -> Linear:
        name = prefix + ".weight"
        entry = tensors.get(name)
        if entry is None:
            get(name)  # raises the one-line CorruptFileError
        bias = get(prefix + ".bias") if prefix + ".bias" in tensors else None
        if entry["format"] in ("f16", "f32"):
            return Linear(get(name).astype(np.float32), None, bias)
        q = entry["quant"]
        parts = entry["parts"]
        qt = QuantizedTensor(
            entry["format"],
            tuple(entry["shape"]),
            q["block_size"],
            q["bits"],
            art.part(name, "data", verify=verify),
            art.part(name, "scales", verify=verify),
            art.part(name, "zero_points", verify=verify) if "zero_points" in parts else None,
        )
        return Linear(qt, None, bias)

    return Whisper(args, get, linear), art.manifest, art.tokenizer_json()
