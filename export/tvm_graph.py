"""The decoder as a TVM Relax program, built from our own model definition (not an ONNX import).

`build_irmodule(artifact, ref)` returns an IRModule with three Relax functions over the same weights:

```
prefill(tokens int32 (T,), k_0, v_0, ..., *weights)      -> (logits (T, vocab), k_0', v_0', ...)
prefill_last(tokens (T,), kv..., *weights)               -> (logits (1, vocab), kv'...)
decode(tokens (1,), kv..., *weights)                     -> (logits (1, vocab), kv'...)
k_i, v_i: float32 (n_kv, P, head_dim) past keys (after RoPE) / values; k_i', v_i': (n_kv, P + T, head_dim)
```

The KV cache is explicit state (the caller keeps the returned arrays and passes them back). Weights are
function parameters holding the artifact's own weights.bin parts (`param_specs`): MatMulNBits codes,
f16 scales and packed zero points are read as stored, and each matmul is one TE compute whose
reduction dequantizes its operand in place (`(code - zp) * scale`), i.e. dequantize fused into the
matmul. The GGUF block formats q4_1, q5_0 and q5_1 are read the same way from their raw blocks (f16 d / m
and the qh bits inside each block); the K-quants (q2_k ... q6_k) are given to the module as an f16 matrix the
runtime dequantizes once at load (in memory; nothing is written to disk).

Architectures: llama, qwen2 (QKV biases), gemma3 (QK-norm, sandwich norms, GeGLU, scaled embeddings,
sliding-window local layers with their own RoPE base). Hooks (`rope_theta`, `window`, `attn_scale`)
come from the numpy reference model in runtime/models, the definition every backend is tested against.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from edgerun.quant import BLOCK_TYPES

SUPPORTED_ARCHS = ("llama", "qwen2", "gemma3")
PLAIN = ("f16", "f32", "bf16")
FUSED_BLOCKS = ("q4_1", "q5_0", "q5_1")  # GGUF blocks the matmul reads as stored; other block formats: f16 at load
NEG = -3.0e38  # masked score (finite: no inf - inf in softmax)


@dataclass(frozen=True)
class ParamSpec:
    """One weight parameter of the module: a tensor part as stored, or a block tensor dequantized to f16."""

    tensor: str
    part: str  # "data" | "scales" | "zero_points" | "dequant" (GGUF blocks -> f16 (N, K) at load)
    shape: tuple
    dtype: str


def param_specs(art) -> list[ParamSpec]:
    """The module's weight parameters, in order: every tensor of the artifact (sorted), every part."""
    specs = []
    for name in sorted(art.tensors):
        e = art.tensors[name]
        if e["format"] in BLOCK_TYPES and e["format"] not in FUSED_BLOCKS:
            specs.append(ParamSpec(name, "dequant", tuple(e["shape"]), "float16"))
            continue
        for part in ("data", "scales", "zero_points"):
            if part in e["parts"]:
                p = e["parts"][part]
                dtype = "uint16" if e["format"] == "bf16" and part == "data" else p["dtype"]
                specs.append(ParamSpec(name, part, tuple(p["shape"]), dtype))
    return specs


# ----------------------------------------------------------------------------- TE pieces


def _weight_fn(e: dict, parts: dict):
    """w(n, k) -> float32 element of a (N, K) matrix read from its stored parts (dequantized in place)."""
    from tvm import tirx

    fmt = e["format"]
    if fmt in FUSED_BLOCKS:
        blk = _block_fn(e, parts)
        return lambda n, k: (blk.scale(n, k // 32) * blk.code(n, k // 32, (k % 32) // 16, k % 16)
                             - blk.offset(n, k // 32))
    if fmt in ("f32", "f16") or fmt in BLOCK_TYPES:
        d = parts["data"] if "data" in parts else parts["dequant"]
        return lambda n, k: d[n, k].astype("float32")
    if fmt == "bf16":
        d = parts["data"]
        return lambda n, k: tirx.reinterpret("float32", d[n, k].astype("uint32") << tirx.const(16, "uint32"))
    q = e["quant"]
    bits, bs = int(q["bits"]), int(q["block_size"])
    per = 8 // bits
    mask = (1 << bits) - 1
    data, scales, zps = parts["data"], parts["scales"], parts.get("zero_points")

    def code(n, k):
        b, j = k // bs, k % bs
        if per == 1:
            return data[n, b, j].astype("float32")
        byte = data[n, b, j // per].astype("int32")
        return ((byte >> ((j % per) * bits).astype("int32")) & mask).astype("float32")

    def zero(n, k):
        if zps is None:
            return tirx.const(float(1 << (bits - 1)), "float32")
        b = k // bs
        if per == 1:
            return zps[n, b].astype("float32")
        byte = zps[n, b // per].astype("int32")
        return ((byte >> ((b % per) * bits).astype("int32")) & mask).astype("float32")

    return lambda n, k: (code(n, k) - zero(n, k)) * scales[n, k // bs].astype("float32")


@dataclass
class _Blocks:
    """A block-quantized (N, K) matrix as the matmul reads it: ``w[n, elem(b, s, i)] = scale(n, b) *
    code(n, b, s, i) - offset(n, b)``, where byte i of block b holds the weights of sub-position s."""

    code: object
    scale: object
    offset: object
    elem: object
    bs: int  # weights per block
    per: int  # sub-positions per byte (codes per byte)
    bpb: int  # code bytes per block


def _f16_at(data, n, b, off: int):
    """The little-endian f16 at byte `off` of block b of row n, as float32."""
    from tvm import tirx

    u = data[n, b, off].astype("uint16") | (data[n, b, off + 1].astype("uint16") << tirx.const(8, "uint16"))
    return tirx.reinterpret("float16", u).astype("float32")


def _block_fn(e: dict, parts: dict) -> _Blocks:
    """The _Blocks view of a MatMulNBits tensor (element b*bs + i*per + s is byte i of block b at bit offset
    s*bits) or of a GGUF q4_1 / q5_0 / q5_1 tensor read from its raw blocks (quant/ggml_blocks.py layouts:
    element s*16 + i is the low (s=0) or high (s=1) nibble of qs[i], plus bit s*16+i of qh for q5)."""
    from tvm import tirx

    fmt = e["format"]
    if fmt in FUSED_BLOCKS:
        data = parts["data"]
        qs_at, qh_at = {"q4_1": (4, None), "q5_0": (6, 2), "q5_1": (8, 4)}[fmt]

        def gcode(n, b, s, i):
            q = (data[n, b, qs_at + i].astype("int32") >> (s.astype("int32") * 4)) & 15
            if qh_at is not None:
                hb = data[n, b, qh_at + s * 2 + i // 8].astype("int32")
                q = q | (((hb >> (i % 8).astype("int32")) & 1) << 4)
            return q.astype("float32")

        def goffset(n, b):
            if fmt == "q5_0":
                return _f16_at(data, n, b, 0) * np.float32(16.0)
            return -_f16_at(data, n, b, 2)

        return _Blocks(gcode, lambda n, b: _f16_at(data, n, b, 0), goffset, lambda b, s, i: b * 32 + s * 16 + i,
                       32, 2, 16)
    q = e["quant"]
    bits, bs = int(q["bits"]), int(q["block_size"])
    per, mask = 8 // bits, (1 << bits) - 1
    data, scales, zps = parts["data"], parts["scales"], parts.get("zero_points")

    def code(n, b, s, i):
        byte = data[n, b, i].astype("int32")
        return byte.astype("float32") if per == 1 else ((byte >> (s.astype("int32") * bits)) & mask).astype("float32")

    def zero(n, b):
        if zps is None:
            return tirx.const(float(1 << (bits - 1)), "float32")
        if per == 1:
            return zps[n, b].astype("float32")
        byte = zps[n, b // per].astype("int32")
        return ((byte >> ((b % per) * bits).astype("int32")) & mask).astype("float32")

    def scale(n, b):
        return scales[n, b].astype("float32")

    return _Blocks(code, scale, lambda n, b: scale(n, b) * zero(n, b), lambda b, s, i: b * bs + i * per + s,
                   bs, per, bs // per)


LANES = 8  # f32 lanes of the per-row partial sums (one AVX2 register, two NEON registers)


def qmatmul_te(x, *ws, entry: dict, names: tuple):
    """x (T, K) float32 @ W.T -> (T, N) float32, W dequantized inside the reduction.

    For the packed formats x is first permuted per block to the bytes' order, xs (T, nb, per, bs/per), and
    scale and zero point are taken out of the inner sums (they are per block):
    ``y[t, n] = sum_l sum_b scale[n, b] * part[t, n, b, l] - sum_b scale[n, b] * zp[n, b] * xsum[t, b]``
    with ``part[t, n, b, l] = sum_{s, j} xs[t, b, s, j*LANES + l] * code[n, b, s, j*LANES + l]``, so the
    innermost work is unpack, convert and one multiply-add per weight over LANES consecutive bytes."""
    from tvm import te, tirx

    n_out, k_in = entry["shape"]
    parts = dict(zip(names, ws, strict=True))
    if entry["format"] in PLAIN or (entry["format"] in BLOCK_TYPES and entry["format"] not in FUSED_BLOCKS):
        w = _weight_fn(entry, parts)
        k = te.reduce_axis((0, k_in), name="k")
        return te.compute((x.shape[0], n_out), lambda t, n: te.sum(x[t, k] * w(n, k), axis=k), name="qmm")
    blk = _block_fn(entry, parts)
    bs, per, bpb = blk.bs, blk.per, blk.bpb
    nb = -(-k_in // bs)
    lanes = LANES if bpb % LANES == 0 else bpb
    T = x.shape[0]

    def permuted(t, b, s, i):
        kk = blk.elem(b, s, i)
        return tirx.if_then_else(kk < k_in, x[t, tirx.min(kk, k_in - 1)], tirx.const(0.0, "float32"))

    xs = te.compute((T, nb, per, bpb), permuted, name="xperm")
    rs, ri = te.reduce_axis((0, per), "s"), te.reduce_axis((0, bpb), "i")
    xsum = te.compute((T, nb), lambda t, b: te.sum(xs[t, b, rs, ri], axis=[rs, ri]), name="xsum")
    ps, pj = te.reduce_axis((0, per), "ps"), te.reduce_axis((0, bpb // lanes), "pj")
    part = te.compute((T, n_out, nb, lanes), lambda t, n, b, lane: te.sum(
        xs[t, b, ps, pj * lanes + lane] * blk.code(n, b, ps, pj * lanes + lane), axis=[ps, pj]), name="qpart")
    ab = te.reduce_axis((0, nb), "ab")
    acc = te.compute((T, n_out, lanes), lambda t, n, lane: te.sum(blk.scale(n, ab) * part[t, n, ab, lane], axis=ab),
                     name="qacc")
    cb = te.reduce_axis((0, nb), "cb")
    corr = te.compute((T, n_out), lambda t, n: te.sum(blk.offset(n, cb) * xsum[t, cb], axis=cb),
                      name="qcorr")
    rl = te.reduce_axis((0, lanes), "rl")
    total = te.compute((T, n_out), lambda t, n: te.sum(acc[t, n, rl], axis=rl), name="qsum")
    return te.compute((T, n_out), lambda t, n: total[t, n] - corr[t, n], name="qmm")


def embed_te(tokens, *ws, entry: dict, names: tuple, scale: float):
    """tokens (T,) int32 -> rows (T, dim) float32 (dequantized, times `scale`)."""
    from tvm import te

    w = _weight_fn(entry, dict(zip(names, ws, strict=True)))
    dim = entry["shape"][1]
    return te.compute((tokens.shape[0], dim), lambda t, j: w(tokens[t], j) * np.float32(scale), name="embed")


def rope_te(x, past, *, n_heads: int, head_dim: int, theta: float, scale: float):
    """x (T, n_heads*hd) -> rotate-half RoPE at positions P.. (P = past length) as (n_heads, T, hd)."""
    from tvm import te, tirx

    half = head_dim // 2
    p0 = past.shape[1]

    def f(h, t, d):
        i = tirx.if_then_else(d < half, d, d - half)
        inv = tirx.power(tirx.const(theta, "float64"), (-2.0 * i.astype("float64")) / head_dim) / scale
        ang = (p0 + t).astype("float64") * inv
        c, s = tirx.cos(ang).astype("float32"), tirx.sin(ang).astype("float32")
        a = x[t, h * head_dim + d]
        other = tirx.if_then_else(d < half, -x[t, h * head_dim + d + half], x[t, h * head_dim + d - half])
        return a * c + other * s

    return te.compute((n_heads, x.shape[0], head_dim), f, name="rope")


def scores_te(q, k_all, past, *, group: int, scale: float, window: int | None):
    """q (H, T, hd), k_all (n_kv, S, hd) -> masked scaled scores (H, T, S): key s seen from query P+t when
    s <= P+t (and P+t - s < window)."""
    from tvm import te, tirx

    hd = q.shape[2]
    p0 = past.shape[1]
    d = te.reduce_axis((0, hd), name="d")
    dot = te.compute((q.shape[0], q.shape[1], k_all.shape[1]),
                     lambda h, t, s: te.sum(q[h, t, d] * k_all[h // group, s, d], axis=d), name="qk")

    def mask(h, t, s):
        ok = s <= p0 + t
        if window is not None:
            ok = tirx.all(ok, p0 + t - s < window)
        return tirx.if_then_else(ok, dot[h, t, s] * np.float32(scale), tirx.const(NEG, "float32"))

    return te.compute(dot.shape, mask, name="masked")


def attend_te(p, v_all, *, group: int):
    """probs (H, T, S), v_all (n_kv, S, hd) -> (T, H*hd)."""
    from tvm import te

    n_heads, _, S = p.shape
    hd = v_all.shape[2]
    s = te.reduce_axis((0, S), name="s")
    o = te.compute((n_heads, p.shape[1], hd), lambda h, t, d: te.sum(p[h, t, s] * v_all[h // group, s, d], axis=s),
                   name="pv")
    return te.compute((p.shape[1], n_heads * hd), lambda t, j: o[j // hd, t, j % hd], name="merge")


def heads_te(x, *, n: int, head_dim: int):
    """(T, n*hd) -> (n, T, hd)."""
    from tvm import te

    return te.compute((n, x.shape[0], head_dim), lambda h, t, d: x[t, h * head_dim + d], name="heads")


# ----------------------------------------------------------------------------- the Relax program


class _Builder:
    def __init__(self, art, ref):
        self.art, self.ref, self.a = art, ref, ref.args
        self.gemma = art.arch == "gemma3"
        self.specs = param_specs(art)

    def params(self):
        from tvm import relax

        self.w = {}
        vs = []
        for s in self.specs:
            v = relax.Var(f"{s.tensor}.{s.part}", relax.TensorType(s.shape, s.dtype))
            self.w.setdefault(s.tensor, {})[s.part] = v
            vs.append(v)
        return vs

    def vec(self, name: str):
        from tvm import relax

        v = self.w[name]["data"]
        fmt = self.art.tensors[name]["format"]
        if fmt == "f32":
            return v
        if fmt == "bf16":
            return self.bb.emit_te(lambda d: __import__("tvm").te.compute(
                d.shape, lambda i: __import__("tvm").tirx.reinterpret(
                    "float32", d[i].astype("uint32") << 16), name="bf16"), v)
        return self.bb.emit(relax.op.astype(v, "float32"))

    def matmul(self, name: str, x):
        parts = self.w[name]
        names = tuple(parts)
        return self.bb.emit_te(qmatmul_te, x, *parts.values(), entry=self.art.tensors[name], names=names,
                               primfunc_name_hint="qmm")

    def rms(self, x, name: str):
        from tvm import relax

        return self.bb.emit(relax.op.nn.rms_norm(x, self.vec(name), axes=[-1], epsilon=self.a.norm_eps))

    def layer(self, i: int, x, past_k, past_v):
        from tvm import relax

        bb, a, pre, ref = self.bb, self.a, f"blk.{i}.", self.ref
        group = a.n_heads // a.n_kv_heads
        h = self.rms(x, pre + "attn_norm.weight")
        qkv = []
        for t in "qkv":
            y = self.matmul(pre + f"attn_{t}.weight", h)
            if pre + f"attn_{t}.bias" in self.art.tensors:
                y = bb.emit(relax.op.add(y, self.vec(pre + f"attn_{t}.bias")))
            qkv.append(y)
        q, k, v = qkv
        if self.gemma:  # QK-norm over head_dim, before RoPE
            q = bb.emit(relax.op.reshape(q, (-1, a.n_heads, a.head_dim)))
            k = bb.emit(relax.op.reshape(k, (-1, a.n_kv_heads, a.head_dim)))
            q = bb.emit(relax.op.reshape(self.rms(q, pre + "attn_q_norm.weight"), (-1, a.n_heads * a.head_dim)))
            k = bb.emit(relax.op.reshape(self.rms(k, pre + "attn_k_norm.weight"), (-1, a.n_kv_heads * a.head_dim)))
        rope = dict(head_dim=a.head_dim, theta=float(ref.rope_theta(i)), scale=float(ref.rope_scale(i)))
        q = bb.emit_te(rope_te, q, past_k, n_heads=a.n_heads, **rope, primfunc_name_hint="rope")
        k = bb.emit_te(rope_te, k, past_k, n_heads=a.n_kv_heads, **rope, primfunc_name_hint="rope")
        v = bb.emit_te(heads_te, v, n=a.n_kv_heads, head_dim=a.head_dim, primfunc_name_hint="heads")
        k_all = bb.emit(relax.op.concat([past_k, k], axis=1))  # (n_kv, P+T, hd)
        v_all = bb.emit(relax.op.concat([past_v, v], axis=1))
        s = bb.emit_te(scores_te, q, k_all, past_k, group=group, scale=float(ref.attn_scale()),
                       window=ref.window(i), primfunc_name_hint="scores")
        p = bb.emit(relax.op.nn.softmax(s, axis=-1))
        o = bb.emit_te(attend_te, p, v_all, group=group, primfunc_name_hint="attend")
        o = self.matmul(pre + "attn_output.weight", o)
        if self.gemma:
            o = self.rms(o, pre + "post_attention_norm.weight")
        x = bb.emit(relax.op.add(x, o))
        h = self.rms(x, pre + "ffn_norm.weight")
        g, u = self.matmul(pre + "ffn_gate.weight", h), self.matmul(pre + "ffn_up.weight", h)
        act = relax.op.nn.gelu_tanh(g) if self.gemma else relax.op.nn.silu(g)
        o = self.matmul(pre + "ffn_down.weight", bb.emit(relax.op.multiply(bb.emit(act), u)))
        if self.gemma:
            o = self.rms(o, pre + "post_ffw_norm.weight")
        return bb.emit(relax.op.add(x, o)), k_all, v_all

    def function(self, name: str, T, last_only: bool):
        from tvm import relax, tirx

        a, bb = self.a, self.bb
        tokens = relax.Var("tokens", relax.TensorType((T,), "int32"))
        kv = []
        for i in range(a.n_layers):
            P = tirx.Var(f"P{i}", "int64")  # every layer holds the same length; one var each keeps shapes simple
            for t in "kv":
                kv.append(relax.Var(f"{t}_{i}", relax.TensorType((a.n_kv_heads, P, a.head_dim), "float32")))
        weights = self.params()
        with bb.function(name, [tokens, *kv, *weights]):
            with bb.dataflow():
                e = self.art.tensors["token_embd.weight"]
                emb = self.w["token_embd.weight"]
                x = bb.emit_te(embed_te, tokens, *emb.values(), entry=e, names=tuple(emb),
                               scale=math.sqrt(a.dim) if self.gemma else 1.0, primfunc_name_hint="embed")
                present = []
                for i in range(a.n_layers):
                    x, k, v = self.layer(i, x, kv[2 * i], kv[2 * i + 1])
                    present += [k, v]
                if last_only:
                    x = bb.emit_te(lambda y: __import__("tvm").te.compute(
                        (1, y.shape[1]), lambda _, j: y[y.shape[0] - 1, j], name="last"), x, primfunc_name_hint="last")
                x = self.rms(x, "output_norm.weight")
                tied = a.tie_embeddings or "output.weight" not in self.art.tensors
                logits = self.matmul("token_embd.weight" if tied else "output.weight", x)
                out = bb.emit_output(relax.Tuple([logits, *present]))
            bb.emit_func_output(out)

    def build(self, decode: bool):
        from tvm import relax, tirx

        self.bb = relax.BlockBuilder()
        self.function("prefill", tirx.Var("T", "int64"), last_only=False)
        self.function("prefill_last", tirx.Var("T", "int64"), last_only=True)
        if decode:
            self.function("decode", 1, last_only=False)
        return self.bb.get()


def build_irmodule(art, ref, decode: bool = True):
    """The Relax IRModule (prefill, prefill_last and, with `decode`, a T=1 decode) of artifact `art`; `ref` is
    its numpy reference model (for the per-architecture hooks). Returns (module, param_specs).

    Without `decode` the runtime runs a step with prefill_last (half the compile time, but measured 2.5x slower
    decode on the CPU: the symbolic token loop stays inside the matmul's inner loops), so every target keeps it."""
    b = _Builder(art, ref)
    return b.build(decode), b.specs
