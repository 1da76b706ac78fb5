"""The NEON kernels (kernels/src/*neon*) against the scalar variant on aarch64, without ARM hardware.

Cross-compiles every kernels/src .c file (as setup.py builds them, -O3 -std=c11, no -march) with the C
driver kernels/tests/isa_check.c for aarch64 and runs it under qemu-user on two CPUs:

* ``max``: NEON with the ARMv8.2 dot product (the sdot kernels),
* ``cortex-a57``: NEON without dotprod (the run-time fallback; an sdot reaching it would SIGILL).

The driver compares, through the public API (er_set_isa), every quantized (int8, int4 sym/asym, ternary;
block sizes 32..512; the GGUF block formats q4_1, q5_0, q5_1, q2_K..q6_K read verbatim, and matmul_multi over
them), f32/f16 matmul (GEMV and GEMM, 1 and 3 threads) and decode op with its scalar variant; tolerances are in
its header. The same driver built natively checks AVX2 against scalar.
Needs the apt packages gcc-aarch64-linux-gnu and qemu-user (scripts/setup.sh installs them).
"""

import platform
import re
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "kernels" / "src"
DRIVER = ROOT / "kernels" / "tests" / "isa_check.c"
FLAGS = ["-O3", "-std=c11", "-fno-math-errno", "-pthread", "-Wall", f"-I{SRC}"]
CROSS_CC = "aarch64-linux-gnu-gcc"
QEMU = "qemu-aarch64"


def _build(cc: str, out: Path, extra: list[str]) -> str:
    """Compile the kernel sources + driver with ``cc``; returns the compiler's warnings."""
    sources = sorted(str(p) for p in SRC.glob("*.c")) + [str(DRIVER)]
    r = subprocess.run([cc, *FLAGS, *extra, *sources, "-o", str(out), "-lm", "-lpthread"],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, f"{cc} failed:\n{r.stderr[-4000:]}"
    return r.stderr


@pytest.fixture(scope="module")
def aarch64_driver(tmp_path_factory):
    missing = [t for t in (CROSS_CC, QEMU) if shutil.which(t) is None]
    if missing:
        pytest.skip(f"{' and '.join(missing)} not installed (apt-get install gcc-aarch64-linux-gnu qemu-user)")
    exe = tmp_path_factory.mktemp("aarch64") / "isa_check"
    warnings = _build(CROSS_CC, exe, ["-static"])
    return exe, warnings


def test_neon_sources_compile_without_warnings(aarch64_driver):
    _, warnings = aarch64_driver
    ours = [ln for ln in warnings.splitlines() if "neon" in ln or "cpu.c" in ln or "isa_check" in ln]
    assert not ours, "\n".join(ours)


@pytest.mark.parametrize("cpu,path", [("max", "dotprod: sdot path"), ("cortex-a57", "no dotprod: emulated-sdot")])
def test_neon_matches_scalar_under_qemu(aarch64_driver, cpu, path):
    exe, _ = aarch64_driver
    r = subprocess.run([QEMU, "-cpu", cpu, str(exe)], capture_output=True, text=True, timeout=600)
    out = r.stdout + r.stderr
    assert r.returncode == 0, out[-6000:]
    summary = out.strip().splitlines()[-1]
    m = re.search(r"(\d+) cases, (\d+) failed", summary)
    assert path in summary and m and m.group(2) == "0", summary
    assert int(m.group(1)) > 700, summary  # every case ran


def test_native_vector_variant_matches_scalar(tmp_path):
    if platform.machine() not in ("x86_64", "AMD64") or shutil.which("gcc") is None:
        pytest.skip("the native check compares AVX2 with scalar on x86-64 (gcc needed)")
    exe = tmp_path / "isa_check"
    _build("gcc", exe, [])
    r = subprocess.run([str(exe)], capture_output=True, text=True, timeout=600)
    if r.returncode == 2:
        pytest.skip(r.stdout.strip())
    assert r.returncode == 0, (r.stdout + r.stderr)[-6000:]
