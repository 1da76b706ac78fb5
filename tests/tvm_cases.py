"""Kernel cases shared by the TVM tests: each kernel of export/tvm_graph.py as a PrimFunc with inputs and a
numpy reference (quant/formats.py, quant/ggml_blocks.py on gguf-py's blocks, runtime/models/base.py)."""

from __future__ import annotations

import numpy as np

N, K = 40, 96
FORMATS = {"int4": 4, "int4_asym": 4, "int8": 8, "ternary": 2}
GGML = ("Q4_1", "Q5_0", "Q5_1")


def _weights(rng):
    """(format, parts, manifest-like entry, dequantized (N, K) float32) for every fused weight format."""
    import gguf
    from edgerun.quant.formats import quantize
    from edgerun.quant.ggml_blocks import FORMAT_OF_GGML, dequantize_blocks, from_gguf_blocks

    w = rng.standard_normal((N, K)).astype(np.float32)
    for fmt, bits in FORMATS.items():
        q = quantize(w, fmt, 32)
        parts = {"data": q.data, "scales": q.scales}
        if q.zero_points is not None:
            parts["zero_points"] = q.zero_points
        yield fmt, parts, {"format": fmt, "shape": [N, K], "quant": {"bits": bits, "block_size": 32}}, \
            q.dequantize().astype(np.float32)
    for name in GGML:
        raw = gguf.quants.quantize(w, getattr(gguf.GGMLQuantizationType, name))
        q = from_gguf_blocks(raw, (N, K), name)
        fmt = FORMAT_OF_GGML[name]
        yield fmt, {"data": q.data}, {"format": fmt, "shape": [N, K]}, \
            dequantize_blocks(q.data, fmt).reshape(N, K)


def tvm_kernel_cases():
    """[(name, PrimFunc, inputs, reference output)] for the dequantize-matmuls, RoPE and attention scores."""
    from edgerun.export.tvm_graph import qmatmul_te, rope_te, scores_te
    from edgerun.runtime.models.base import apply_rope, rope_tables
    from tvm import te

    rng = np.random.default_rng(0)
    out = []
    for fmt, parts, entry, wd in _weights(rng):
        for T in (1, 3):
            x = rng.standard_normal((T, K)).astype(np.float32)
            xp = te.placeholder((T, K), "float32", name="x")
            ps = [te.placeholder(a.shape, str(a.dtype), name=n) for n, a in parts.items()]
            y = qmatmul_te(xp, *ps, entry=entry, names=tuple(parts))
            out.append((f"qmm_{fmt}_t{T}", te.create_prim_func([xp, *ps, y]), [x, *parts.values()], x @ wd.T))
    heads, hd, P, T = 3, 16, 5, 2
    x = rng.standard_normal((T, heads * hd)).astype(np.float32)
    past = np.zeros((1, P, hd), np.float32)
    xp, pp = te.placeholder(x.shape, "float32", name="x"), te.placeholder(past.shape, "float32", name="past")
    r = rope_te(xp, pp, n_heads=heads, head_dim=hd, theta=10000.0, scale=1.0)
    cos, sin = rope_tables(np.arange(P, P + T), hd, 10000.0)
    ref = apply_rope(x.reshape(T, heads, hd).transpose(1, 0, 2), cos, sin)
    out.append(("rope", te.create_prim_func([xp, pp, r]), [x, past], ref))
    q = rng.standard_normal((4, T, hd)).astype(np.float32)
    k = rng.standard_normal((2, P + T, hd)).astype(np.float32)
    qp, kp = te.placeholder(q.shape, "float32", name="q"), te.placeholder(k.shape, "float32", name="k")
    s = scores_te(qp, kp, pp, group=2, scale=0.25, window=3)
    ref = np.einsum("htd,hsd->hts", q, np.repeat(k, 2, axis=0)) * 0.25
    qpos, kpos = np.arange(P, P + T)[:, None], np.arange(P + T)[None, :]
    ref = np.where((kpos <= qpos) & (qpos - kpos < 3), ref, -3.0e38).astype(np.float32)
    out.append(("scores", te.create_prim_func([qp, kp, pp, s]), [q, k, past], ref))
    return out
