"""The TVM kernels of the tvm-aarch64 target, run under qemu-aarch64 and checked against numpy.

The kernels of tests/tvm_cases.py (the dequantize-matmuls of every fused weight format: int4, int4_asym, int8,
ternary and the GGUF q4_1 / q5_0 / q5_1 blocks, decode T=1 and a 3-token prefill, N not a multiple of the row
task, K of several blocks; RoPE; attention scores) are scheduled as for the artifact (export/tvm_schedule.py),
compiled by TVM's LLVM backend for the tvm-aarch64 target (ARMv8.2-A + dotprod), saved as an aarch64 object
file, linked statically with the C driver tests/tvm_harness.c (which calls each kernel through its TVM-FFI
ABI, with the few runtime calls provided) and run under qemu-aarch64. References: quant/formats.py and
quant/ggml_blocks.py dequantization (GGUF blocks made by gguf-py), runtime/models/base.py ops.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from tvm_cases import tvm_kernel_cases

tvm = pytest.importorskip("tvm", reason="apache-tvm not installed (pip install 'edgerun[tvm]')")

HARNESS = Path(__file__).with_name("tvm_harness.c")
CROSS_CC, QEMU = "aarch64-linux-gnu-gcc", "qemu-aarch64"
_CODE = {"float32": (2, 32), "float16": (2, 16), "uint8": (1, 8), "int32": (0, 32)}


@pytest.fixture(scope="module")
def aarch64_kernels(tmp_path_factory):
    missing = [t for t in (CROSS_CC, QEMU) if shutil.which(t) is None]
    if missing:
        pytest.skip(f"{' and '.join(missing)} not installed (apt-get install gcc-aarch64-linux-gnu qemu-user)")
    from edgerun.export.tvm_build import target_spec
    from edgerun.export.tvm_schedule import _cpu_schedule

    d = tmp_path_factory.mktemp("tvm-a64")
    target = tvm.target.Target(target_spec("tvm-aarch64"))
    kernels = tvm_kernel_cases()
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
