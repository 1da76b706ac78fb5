"""`build_onnx(artifact_dir)`: write `model.onnx` beside `weights.bin`, reading the weights in place.

One copy of the weights serves every backend: each initializer is a TensorProto with
``data_location = EXTERNAL`` pointing at its part's byte range in ``weights.bin``. Quantized
matrices (MatMulNBits layout, see quant/formats.py) run as ``com.microsoft::MatMulNBits`` on a
float16 activation (its scales are float16, and the op wants scales of A's dtype), so each one is
``Cast(f16) -> MatMulNBits -> Cast(f32)``; plain f16/f32 matrices are ``MatMul`` on a transposed
float32 cast (folded by onnxruntime at session start: a float32 copy in memory, the fallback).

```
inputs : input_ids int64 [1, T], position_ids int64 [1, T] (= P..P+T-1),
         past_key_i / past_value_i float32 [1, n_kv, P, head_dim] per layer
outputs: logits float32 [1, T, vocab], present_key_i / present_value_i [1, n_kv, P+T, head_dim]
layer  : x + o(attn(rope(q), rope(k), v)) of rmsnorm(x), then + down(silu(gate) * up) of rmsnorm(x)
         (gemma3: QK-norm, sandwich norms, GeGLU, scaled embeddings, sliding-window local layers)
```

Embeddings: ``Gather`` on the plain table, or for a quantized table a ``Gather`` of the rows' codes,
scales and zero points, unpacked and dequantized in-graph (``(code - zp) * scale``).
GGUF block formats (q4_1 ... q6_k, kept verbatim): MatMulNBits cannot express them exactly, so the graph
dequantizes the raw blocks with standard ops (export/onnx_blocks.py) into an exact float32 weight for a
plain ``MatMul``; onnxruntime folds that once at session creation (docs/design.md, "ONNX for GGUF block
formats", has the measurements behind this choice). Attention is
standard ops: RoPE cos/sin from position_ids, causal (+ window) mask from positions, GQA by
broadcasting each KV head over its group of query heads in MatMul.
"""

from __future__ import annotations

import os
import zlib
from pathlib import Path

import numpy as np
from edgerun.errors import EdgerunError
from edgerun.export.artifact import MANIFEST, WEIGHTS, Artifact, read_manifest, write_manifest
from edgerun.export.onnx_blocks import BlockDequant
from edgerun.quant import BLOCK_TYPES

ONNX_FILE = "model.onnx"
SUPPORTED_ARCHS = ("llama", "qwen2", "gemma3")
PLAIN = ("f16", "f32", "bf16")
OPSET = 18
_DT = {"uint8": 2, "int8": 3, "float16": 10, "float32": 1, "int64": 7}


def update_manifest(artifact_dir: str | os.PathLike, fn) -> dict:
    """Apply `fn(manifest) -> None` to manifest.json and replace the file atomically (checksum renewed)."""
    manifest = read_manifest(Path(artifact_dir) / MANIFEST)
    fn(manifest)
    write_manifest(artifact_dir, manifest)
    return manifest


class _G:
    """A small graph builder: unique names, nodes, external and inline initializers."""

    def __init__(self, art: Artifact):
        self.art, self.nodes, self.inits, self.n = art, [], [], 0
        self.ext: dict[tuple, str] = {}

    def name(self, base: str) -> str:
        self.n += 1
        return f"{base}_{self.n}"

    def op(self, op: str, inputs: list, base: str | None = None, n_out: int = 1, domain: str = "", **attrs):
        from onnx import helper

        outs = [self.name(base or op.lower()) for _ in range(n_out)]
        self.nodes.append(helper.make_node(op, list(inputs), outs, domain=domain or None, **attrs))
        return outs[0] if n_out == 1 else outs

    def const(self, arr: np.ndarray, base: str = "c") -> str:
        from onnx import numpy_helper

        name = self.name(base)
        self.inits.append(numpy_helper.from_array(np.asarray(arr), name))
        return name

    def external(self, tensor: str, part: str = "data", shape=None) -> str:
        """An initializer reading `tensor`'s `part` from weights.bin (optionally viewed with `shape`)."""
        from onnx import TensorProto

        info = self.art.tensors[tensor]["parts"][part]
        shape = tuple(info["shape"] if shape is None else shape)
        key = (tensor, part, shape)
        if key in self.ext:
            return self.ext[key]
        t = TensorProto()
        t.name = self.name(tensor.replace(".", "_") + "_" + part)
        t.data_type = _DT[info["dtype"]]
        t.dims.extend(shape)
        t.data_location = TensorProto.EXTERNAL
        for k, v in (("location", WEIGHTS), ("offset", str(info["offset"])), ("length", str(info["nbytes"]))):
            e = t.external_data.add()
            e.key, e.value = k, v
        self.inits.append(t)
        self.ext[key] = t.name
        return t.name


class _Builder:
    def __init__(self, art: Artifact, ref):
        self.art, self.ref, self.a = art, ref, ref.args
        self.g = _G(art)
        self.blocks = BlockDequant(self.g)
        self.gemma = art.arch == "gemma3"

    # --- pieces
    def vec(self, name: str) -> str:
        e = self.art.tensors[name]
        w = self.g.external(name)
        return w if e["format"] == "f32" else self.g.op("Cast", [w], to=1)

    def matmul(self, name: str, x: str) -> str:
        """x (..., K) float32 @ W(name).T -> (..., N) float32."""
        g, e = self.g, self.art.tensors[name]
        n, k = e["shape"]
        if e["format"] in BLOCK_TYPES:  # exact float32 weight from the raw ggml blocks, folded at session start
            w = self.blocks.dequant(g.external(name), e["format"], 2)  # [N, nb, QK]
            w = g.op("Reshape", [w, g.const(np.array([n, k], np.int64))])
            # Gemm with transB: no transposed copy of W to fold (x [1, T, K] -> [T, K] -> [T, N] -> [1, T, N])
            y = g.op("Gemm", [g.op("Reshape", [x, g.const(np.array([-1, k], np.int64))]), w], transB=1)
            return g.op("Reshape", [y, g.const(np.array([1, -1, n], np.int64))])
        if e["format"] in PLAIN:
            w = g.external(name)
            if e["format"] != "f32":
                w = g.op("Cast", [w], to=1)
            return g.op("MatMul", [x, g.op("Transpose", [w], perm=[1, 0])])
        q = e["quant"]
        ins = [g.op("Cast", [x], to=10), g.external(name, "data"), g.external(name, "scales")]
        if "zero_points" in e["parts"]:
            ins.append(g.external(name, "zero_points"))
        y = g.op("MatMulNBits", ins, domain="com.microsoft", K=k, N=n, bits=int(q["bits"]),
                 block_size=int(q["block_size"]), accuracy_level=4)
        return g.op("Cast", [y], to=1)

    def rmsnorm(self, x: str, name: str) -> str:
        g = self.g
        ms = g.op("ReduceMean", [g.op("Mul", [x, x]), g.const(np.array([-1], np.int64))], keepdims=1)
        inv = g.op("Reciprocal", [g.op("Sqrt", [g.op("Add", [ms, self.eps])])])
        return g.op("Mul", [g.op("Mul", [x, inv]), self.vec(name)])

    def embed(self, ids: str) -> str:
        """input_ids [1, T] -> x [1, T, dim] float32."""
        g, name = self.g, "token_embd.weight"
        e = self.art.tensors[name]
        dim = e["shape"][1]
        if e["format"] in PLAIN:
            x = g.op("Gather", [g.external(name), ids], axis=0)
            return x if e["format"] == "f32" else g.op("Cast", [x], to=1)
        if e["format"] in BLOCK_TYPES:  # the rows' raw blocks, dequantized per call
            rows = g.op("Gather", [g.external(name), ids], axis=0)  # [1, T, nb, type_size] uint8
            w = self.blocks.dequant(rows, e["format"], 3)  # [1, T, nb, QK]
            return g.op("Reshape", [w, g.const(np.array([1, -1, dim], np.int64))])
        q, parts = e["quant"], e["parts"]
        bits, bs = int(q["bits"]), int(q["block_size"])
        n, nb, blob = parts["data"]["shape"]
        per = 8 // bits
        codes = g.op("Gather", [g.external(name, "data"), ids], axis=0)  # [1, T, nb, blob] uint8
        codes = self._unpack(codes, bits, per)  # [1, T, nb, blob*per] uint8
        sc = g.op("Cast", [g.op("Gather", [g.external(name, "scales"), ids], axis=0)], to=1)  # [1, T, nb]
        if "zero_points" in parts:
            zp = g.op("Gather", [g.external(name, "zero_points"), ids], axis=0)  # [1, T, nzb]
            zp = self._unpack(zp, bits, per)  # [1, T, nzb*per]
            zp = g.op("Slice", [zp, g.const(np.array([0], np.int64)), g.const(np.array([nb], np.int64)),
                                g.const(np.array([-1], np.int64))])
            zp = g.op("Unsqueeze", [g.op("Cast", [zp], to=1), g.const(np.array([-1], np.int64))])
        else:
            zp = g.const(np.array(2 ** (bits - 1), np.float32))
        w = g.op("Sub", [g.op("Cast", [codes], to=1), zp])
        w = g.op("Mul", [w, g.op("Unsqueeze", [sc, g.const(np.array([-1], np.int64))])])  # [1, T, nb, bs]
        w = g.op("Reshape", [w, g.const(np.array([1, -1, nb * bs], np.int64))])
        if nb * bs != dim:
            w = g.op("Slice", [w, g.const(np.array([0], np.int64)), g.const(np.array([dim], np.int64)),
                               g.const(np.array([-1], np.int64))])
        return w

    def _unpack(self, packed: str, bits: int, per: int) -> str:
        """uint8 [..., B] -> codes uint8 [..., B*per], low bits first."""
        g = self.g
        if per == 1:
            return packed
        shifts = g.const((np.arange(per) * bits).astype(np.uint8))
        c = g.op("BitShift", [g.op("Unsqueeze", [packed, g.const(np.array([-1], np.int64))]), shifts],
                 direction="RIGHT")
        c = g.op("BitwiseAnd", [c, g.const(np.array((1 << bits) - 1, np.uint8))])
        shape = g.op("Shape", [packed])
        lead = g.op("Slice", [shape, g.const(np.array([0], np.int64)), g.const(np.array([-1], np.int64))])
        return g.op("Reshape", [c, g.op("Concat", [lead, g.const(np.array([-1], np.int64))], axis=0)])

    def rope(self, x: str, cos: str, sin: str) -> str:
        """x [1, H, T, hd]; cos/sin [1, 1, T, hd/2] -> rotate-half RoPE."""
        g, half = self.g, self.a.head_dim // 2
        x1, x2 = g.op("Split", [x, g.const(np.array([half, half], np.int64))], n_out=2, axis=-1)
        a = g.op("Sub", [g.op("Mul", [x1, cos]), g.op("Mul", [x2, sin])])
        b = g.op("Add", [g.op("Mul", [x2, cos]), g.op("Mul", [x1, sin])])
        return g.op("Concat", [a, b], axis=-1)

    def heads(self, x: str, n: int) -> str:
        """[1, T, n*hd] -> [1, n, T, hd]."""
        g = self.g
        x = g.op("Reshape", [x, g.const(np.array([1, -1, n, self.a.head_dim], np.int64))])
        return g.op("Transpose", [x], perm=[0, 2, 1, 3])

    def layer(self, i: int, x: str, qpos: str, kpos: str, past_k: str, past_v: str):
        g, a, pre = self.g, self.a, f"blk.{i}."
        grp = a.n_heads // a.n_kv_heads
        h = self.rmsnorm(x, pre + "attn_norm.weight")
        qkv = []
        for t in "qkv":
            y = self.matmul(pre + f"attn_{t}.weight", h)
            if pre + f"attn_{t}.bias" in self.art.tensors:
                y = g.op("Add", [y, self.vec(pre + f"attn_{t}.bias")])
            qkv.append(y)
        q, k, v = self.heads(qkv[0], a.n_heads), self.heads(qkv[1], a.n_kv_heads), self.heads(qkv[2], a.n_kv_heads)
        if self.gemma:
            q = self.rmsnorm(q, pre + "attn_q_norm.weight")
            k = self.rmsnorm(k, pre + "attn_k_norm.weight")
        cos, sin = self.tables(self.ref.rope_theta(i), self.ref.rope_scale(i), qpos)
        q, k = self.rope(q, cos, sin), self.rope(k, cos, sin)
        k_all = g.op("Concat", [past_k, k], base=f"present_key_{i}", axis=2)  # [1, n_kv, S, hd]
        v_all = g.op("Concat", [past_v, v], base=f"present_value_{i}", axis=2)
        # GQA: q [1, n_kv, grp, T, hd] against k [1, n_kv, 1, S, hd] (MatMul broadcasts the group axis)
        qg = g.op("Reshape", [q, g.const(np.array([1, a.n_kv_heads, grp, -1, a.head_dim], np.int64))])
        kg = g.op("Unsqueeze", [k_all, g.const(np.array([2], np.int64))])
        vg = g.op("Unsqueeze", [v_all, g.const(np.array([2], np.int64))])
        s = g.op("MatMul", [qg, g.op("Transpose", [kg], perm=[0, 1, 2, 4, 3])])  # [1, n_kv, grp, T, S]
        s = g.op("Mul", [s, g.const(np.array(self.ref.attn_scale(), np.float32))])
        s = g.op("Where", [self.mask(i, qpos, kpos), s, g.const(np.array(-np.inf, np.float32))])
        o = g.op("MatMul", [g.op("Softmax", [s], axis=-1), vg])  # [1, n_kv, grp, T, hd]
        o = g.op("Reshape", [o, g.const(np.array([1, a.n_heads, -1, a.head_dim], np.int64))])
        o = g.op("Reshape", [g.op("Transpose", [o], perm=[0, 2, 1, 3]),
                             g.const(np.array([1, -1, a.n_heads * a.head_dim], np.int64))])
        o = self.matmul(pre + "attn_output.weight", o)
        if self.gemma:
            o = self.rmsnorm(o, pre + "post_attention_norm.weight")
        x = g.op("Add", [x, o])
        h = self.rmsnorm(x, pre + "ffn_norm.weight")
        gt, up = self.matmul(pre + "ffn_gate.weight", h), self.matmul(pre + "ffn_up.weight", h)
        act = self.gelu_tanh(gt) if self.gemma else g.op("Mul", [gt, g.op("Sigmoid", [gt])])
        o = self.matmul(pre + "ffn_down.weight", g.op("Mul", [act, up]))
        if self.gemma:
            o = self.rmsnorm(o, pre + "post_ffw_norm.weight")
        return g.op("Add", [x, o]), k_all, v_all

    def gelu_tanh(self, x: str) -> str:
        g = self.g
        c = lambda v: g.const(np.array(v, np.float32))  # noqa: E731
        x3 = g.op("Mul", [g.op("Mul", [x, x]), x])
        inner = g.op("Mul", [g.op("Add", [x, g.op("Mul", [x3, c(0.044715)])]), c(np.sqrt(2.0 / np.pi))])
        return g.op("Mul", [g.op("Mul", [x, c(0.5)]), g.op("Add", [g.op("Tanh", [inner]), c(1.0)])])

    def tables(self, theta: float, scale: float, qpos: str):
        """cos/sin [1, 1, T, hd/2] for (theta, scale), cached per pair."""
        key = (float(theta), float(scale))
        if key not in self._tables:
            g, hd = self.g, self.a.head_dim
            inv = (theta ** (-np.arange(0, hd, 2, dtype=np.float64) / hd) / scale).astype(np.float32)
            ang = g.op("Mul", [g.op("Unsqueeze", [qpos, g.const(np.array([-1], np.int64))]), g.const(inv)])
            ang = g.op("Unsqueeze", [ang, g.const(np.array([1], np.int64))])  # [1, 1, T, hd/2]
            self._tables[key] = (g.op("Cos", [ang]), g.op("Sin", [ang]))
        return self._tables[key]

    def mask(self, i: int, qpos: str, kpos: str) -> str:
        """bool [T, S]: key j visible from query p when j <= p (and p - j < window)."""
        w = self.ref.window(i)
        if w not in self._masks:
            g = self.g
            qp = g.op("Unsqueeze", [qpos, g.const(np.array([-1], np.int64))])  # [1, T, 1]
            m = g.op("LessOrEqual", [kpos, qp])  # [1, T, S]
            if w is not None:
                m = g.op("And", [m, g.op("Less", [g.op("Sub", [qp, kpos]), g.const(np.array(w, np.float32))])])
            self._masks[w] = g.op("Unsqueeze", [m, g.const(np.array([1, 2], np.int64))])  # [1, 1, 1, T, S]
        return self._masks[w]

    def build(self):
        from onnx import TensorProto, helper

        g, a = self.g, self.a
        self._tables, self._masks = {}, {}
        self.eps = g.const(np.array(a.norm_eps, np.float32))
        ins = [helper.make_tensor_value_info("input_ids", TensorProto.INT64, [1, "T"]),
               helper.make_tensor_value_info("position_ids", TensorProto.INT64, [1, "T"])]
        outs = [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, "T", a.vocab_size])]
        kv = [1, a.n_kv_heads, "P", a.head_dim]
        kv_out = [1, a.n_kv_heads, "S", a.head_dim]
        for i in range(a.n_layers):
            for t in ("key", "value"):
                ins.append(helper.make_tensor_value_info(f"past_{t}_{i}", TensorProto.FLOAT, kv))
                outs.append(helper.make_tensor_value_info(f"present_{t}_{i}", TensorProto.FLOAT, kv_out))
        qpos = g.op("Cast", ["position_ids"], to=1)  # [1, T] float32
        past_len = g.op("Gather", [g.op("Shape", ["past_key_0"]), g.const(np.array(2, np.int64))], axis=0)
        T = g.op("Gather", [g.op("Shape", ["input_ids"]), g.const(np.array(1, np.int64))], axis=0)
        S = g.op("Add", [past_len, T])
        kpos = g.op("Cast", [g.op("Range", [g.const(np.array(0, np.int64)), S, g.const(np.array(1, np.int64))])],
                    to=1)  # [S]
        x = self.embed("input_ids")
        if self.gemma:
            x = g.op("Mul", [x, g.const(np.array(np.sqrt(a.dim), np.float32))])
        for i in range(a.n_layers):
            x, k, v = self.layer(i, x, qpos, kpos, f"past_key_{i}", f"past_value_{i}")
            g.nodes.append(helper.make_node("Identity", [k], [f"present_key_{i}"]))
            g.nodes.append(helper.make_node("Identity", [v], [f"present_value_{i}"]))
        x = self.rmsnorm(x, "output_norm.weight")
        head = "output.weight" if "output.weight" in self.art.tensors and not a.tie_embeddings else "token_embd.weight"
        logits = self.matmul(head, x)
        g.nodes.append(helper.make_node("Identity", [logits], ["logits"]))
        graph = helper.make_graph(g.nodes, f"edgerun_{self.art.arch}", ins, outs, initializer=g.inits)
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET),
                                                        helper.make_opsetid("com.microsoft", 1)],
                                  producer_name="edgerun")
        model.ir_version = 10
        return model


def build_onnx(artifact_dir: str | os.PathLike) -> Path:
    """Write `model.onnx` (weights as external data in weights.bin) into the artifact; returns its path.

    Adds "onnx" to manifest["targets"] and records the file's crc32 in manifest["files"].
    """
    import onnx
    from edgerun.runtime.models import get_model_class

    art = Artifact(artifact_dir)
    if art.arch not in SUPPORTED_ARCHS:
        raise EdgerunError(f"ONNX export supports {', '.join(SUPPORTED_ARCHS)}, not {art.arch!r}; "
                           "use backend='native' for this model")
    model_cls, args_cls = get_model_class(art.arch)
    ref = model_cls(args_cls.from_dict(art.config), None)
    model = _Builder(art, ref).build()
    out = art.path / ONNX_FILE
    tmp = art.path / f".{ONNX_FILE}.tmp"
    data = model.SerializeToString()
    tmp.write_bytes(data)
    try:
        onnx.checker.check_model(str(tmp))
    except Exception:
        tmp.unlink(missing_ok=True)
        raise
    os.replace(tmp, out)

    def add(m: dict) -> None:
        if "onnx" not in m.setdefault("targets", []):
            m["targets"].append("onnx")
        m["files"][ONNX_FILE] = {"crc32": zlib.crc32(data), "nbytes": len(data)}

    update_manifest(art.path, add)
    return out
