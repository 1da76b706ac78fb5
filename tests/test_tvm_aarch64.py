"""The TVM kernels of the tvm-aarch64 target, run under qemu-aarch64 and checked against numpy.

The dequantize-matmuls (int4, int4_asym, int8, ternary; decode T=1 and a 3-token prefill; N not a multiple of
the row task, K of several blocks), RoPE and attention scores of export/tvm_graph.py are scheduled as for the
artifact (export/tvm_schedule.py) and compiled by TVM's LLVM backend for the tvm-aarch64 target (ARMv8.2-A +
dotprod), saved as an aarch64 object file, linked statically with the C driver tests/tvm_harness.c (which
calls each kernel through its TVM-FFI ABI with the few runtime calls provided) and run under qemu-aarch64.
Reference: quant/formats.py dequantization and runtime/models/base.py ops in numpy.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

tvm = pytest.importorskip("tvm", reason="apache-tvm not installed (pip install 'edgerun[tvm]')")

HARNESS = Path(__file__).with_name("tvm_harness.c")
CROSS_CC, QEMU = "aarch64-linux-gnu-gcc", "qemu-aarch64"
N, K = 40, 96
FORMATS = {"int4": 4, "int4_asym": 4, "int8": 8, "ternary": 2}
_CODE = {"float32": (2, 32), "float16": (2, 16), "uint8": (1, 8), "int32": (0, 32)}


def _kernels():
    """(name, PrimFunc, inputs (list of arrays), reference output) for every kernel checked."""
    from edgerun.export.tvm_graph import qmatmul_te, rope_te, scores_te
    from edgerun.quant.formats import quantize
    from edgerun.runtime.models.base import apply_rope, rope_tables
    from tvm import te

    rng = np.random.default_rng(0)
    out = []
    w = rng.standard_normal((N, K)).astype(np.float32)
    for fmt, bits in FORMATS.items():
        q = quantize(w, fmt, 32)
        parts = {"data": q.data, "scales": q.scales}
        if q.zero_points is not None:
            parts["zero_points"] = q.zero_points
        entry = {"format": fmt, "shape": [N, K], "quant": {"bits": bits, "block_size": 32}}
        wd = q.dequantize().astype(np.float32)
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


@pytest.fixture(scope="module")
def aarch64_kernels(tmp_path_factory):
    missing = [t for t in (CROSS_CC, QEMU) if shutil.which(t) is None]
    if missing:
        pytest.skip(f"{' and '.join(missing)} not installed (apt-get install gcc-aarch64-linux-gnu qemu-user)")
    from edgerun.export.tvm_build import target_spec
    from edgerun.export.tvm_schedule import _cpu_schedule

    d = tmp_path_factory.mktemp("tvm-a64")
    target = tvm.target.Target(target_spec("tvm-aarch64"))
    kernels = _kernels()
    mod = tvm.IRModule({n: _cpu_schedule(f, target).with_attr("global_symbol", n) for n, f, _, _ in kernels})
    lib = tvm.compile(mod, target=target)
    lib.mod.write_to_file(str(d / "kernels.o"))
    names = [n for n, *_ in kernels]
    (d / "tvm_funcs.h").write_text(
        "".join(f"extern int __tvm_ffi_{n}(void *, const TVMFFIAny *, int32_t, TVMFFIAny *);\n" for n in names)
        + "static const struct { const char *name; PackedFn fn; } FUNCS[] = {\n"
        + "".join(f'  {{"{n}", __tvm_ffi_{n}}},\n' for n in names) + "};\n")
    exe = d / "tvm_harness"
    r = subprocess.run([CROSS_CC, "-O2", "-std=c11", "-static", f"-I{d}", str(HARNESS), str(d / "kernels.o"),
                        "-o", str(exe), "-lm"], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "ARM aarch64" in subprocess.run(["file", str(exe)], capture_output=True, text=True).stdout
    return d, exe, kernels


def test_tvm_aarch64_kernels_under_qemu(aarch64_kernels):
    d, exe, kernels = aarch64_kernels
    for name, _, inputs, ref in kernels:
        arrays = [*inputs, np.zeros(ref.shape, np.float32)]
        specs = []
        for i, a in enumerate(arrays):
            path = d / f"{name}_{i}.bin"
            np.ascontiguousarray(a).tofile(path)
            code, bits = _CODE[str(a.dtype)]
            specs.append(f"{path}:{code}:{bits}:{','.join(str(s) for s in a.shape)}")
        r = subprocess.run([QEMU, "-cpu", "max", str(exe), name, *specs], capture_output=True, text=True,
                           timeout=120)
        assert r.returncode == 0 and f"ok {name}" in r.stdout, r.stdout + r.stderr
        got = np.fromfile(d / f"{name}_{len(inputs)}.bin", np.float32).reshape(ref.shape)
        np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-4 * float(np.abs(ref).max()), err_msg=name)
