"""The TVM backend (export/tvm_graph.py compiled by apache-tvm, runtime/backends/tvm.py) against the numpy
reference and the native backend.

Tolerance: the TVM module computes in float32 on the artifact's own quantized weights (dequantized inside
each matmul), as the reference does, so logits agree to float rounding (measured 5e-7 relative on tiny
llama int4/int8, 3e-6 on SmolLM2's GGUF q4_1 blocks); we allow 1e-4 relative. Against the native backend
(q8 activations, ~1% from the reference) greedy continuations must be equal except at a near-tie of the
native logits (rule of tests/test_backend_onnxruntime.py).
"""

from __future__ import annotations

import shutil
import subprocess

import edgerun
import numpy as np
import pytest
from backend_checks import rel, same_greedy
from tiny_models import make_tiny

tvm = pytest.importorskip("tvm", reason="apache-tvm not installed (pip install 'edgerun[tvm]')")

PROMPTS = ["Once upon a time, in a small village, there lived ", "The capital of France is", "def fibonacci(n):"]




def _check_against_reference(art, window_prompt: bool = False):
    from edgerun.export.tvm_build import compile_tvm

    compile_tvm(art, ["tvm-llvm"])
    ref = edgerun.load(art, backend="reference")
    tv = edgerun.load(art, backend="tvm", threads=2)
    assert tv.backend == "tvm"
    ids = ref.tokenizer.encode(PROMPTS[0] * 3)
    assert len(ids) > 16
    lr, lt = ref.logits(ids), tv.logits(ids)
    assert rel(lt, lr) < 1e-4
    # prefill_last + decode steps through the explicit KV state agree with the full prefill
    c = tv.new_cache()
    np.testing.assert_allclose(tv.prefill(ids[:10], c), lr[9], atol=1e-4 * np.abs(lr).max())
    steps = np.stack([tv.decode_step(t, c) for t in ids[10:20]])
    np.testing.assert_allclose(steps, lr[10:20], atol=1e-4 * np.abs(lr).max())
    assert c.length == 20 and c.kv[0].shape[1] == 20
    return ref, tv


@pytest.fixture(scope="module")
def tiny_llama(tmp_path_factory, smollm2_gguf):
    from edgerun.export.exporter import export

    d = tmp_path_factory.mktemp("tvm")
    hf, _ = make_tiny("llama", d, smollm2_gguf)
    return {"int4": export(hf, d / "int4.edge", weights="int4")}


def test_tvm_kernels_match_numpy():
    """Every dequantize-matmul format (int4, int4_asym, int8, ternary, GGUF q4_1 / q5_0 / q5_1), RoPE and
    attention scores, scheduled and compiled for the host as in the artifact, against numpy."""
    from edgerun.export.tvm_build import target_spec
    from edgerun.export.tvm_schedule import _cpu_schedule
    from tvm_cases import tvm_kernel_cases

    target = tvm.target.Target(target_spec("tvm-llvm"))
    cases = tvm_kernel_cases()
    mod = tvm.IRModule({n: _cpu_schedule(f, target).with_attr("global_symbol", n) for n, f, _, _ in cases})
    lib = tvm.compile(mod, target=target).jit()
    dev = tvm.cpu()
    for name, _, inputs, ref in cases:
        out = tvm.runtime.tensor(np.zeros(ref.shape, np.float32), dev)
        lib[name](*[tvm.runtime.tensor(a, dev) for a in inputs], out)
        np.testing.assert_allclose(out.numpy(), ref, rtol=1e-4, atol=1e-4 * float(np.abs(ref).max()), err_msg=name)


def test_tvm_llama_matches_reference_and_native(tiny_llama):
    art = tiny_llama["int4"]
    ref, tv = _check_against_reference(art)
    m = ref.artifact.manifest
    assert "tvm-llvm" in m["targets"] and "tvm/llvm.so" in m["files"]
    nat = edgerun.load(art, backend="native")
    for p in PROMPTS:
        same_greedy(tv, nat, ref.tokenizer.encode(p), 12)


@pytest.mark.parametrize("arch,weights", [("qwen2", "int8"), ("gemma3", "int4")])
def test_tvm_other_archs(tmp_path, smollm2_gguf, arch, weights):
    """qwen2 (QKV biases; int8 weights) and gemma3 (QK-norm, sandwich norms, GeGLU, 6 layers with window 8 <
    prompt)."""
    from edgerun.export.exporter import export

    hf, _ = make_tiny(arch, tmp_path, smollm2_gguf)
    _check_against_reference(export(hf, tmp_path / f"{arch}.edge", weights=weights))


def test_missing_target_and_corrupt_library(tiny_llama, tmp_path):
    art = shutil.copytree(tiny_llama["int4"], tmp_path / "copy.edge")
    from edgerun.export.onnx_graph import update_manifest

    def drop(m):
        m["targets"] = [t for t in m["targets"] if not t.startswith("tvm")]
        m.pop("tvm", None)

    update_manifest(art, drop)
    with pytest.raises(edgerun.EdgerunError, match="edgerun compile .* --target tvm-llvm"):
        edgerun.load(art, backend="tvm")
    art2 = shutil.copytree(tiny_llama["int4"], tmp_path / "bad.edge")
    lib = art2 / "tvm" / "llvm.so"
    raw = bytearray(lib.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    lib.write_bytes(bytes(raw))
    with pytest.raises(edgerun.errors.CorruptFileError, match="llvm.so"):
        edgerun.load(art2, backend="tvm")


def test_cli_compile_info_run(tiny_llama, tmp_path):
    from edgerun.cli import app
    from typer.testing import CliRunner

    art = shutil.copytree(tiny_llama["int4"], tmp_path / "cli.edge")
    r = CliRunner().invoke(app, ["info", str(art), "--json"])
    assert r.exit_code == 0, r.output
    r = CliRunner().invoke(app, ["run", str(art), "Hello", "-n", "6", "--backend", "tvm"])
    assert r.exit_code == 0, r.output
    nat = CliRunner().invoke(app, ["run", str(art), "Hello", "-n", "6"])
    assert nat.exit_code == 0
    r = CliRunner().invoke(app, ["compile", str(art), "--target", "tvm-nope"])
    assert r.exit_code != 0 and "unknown TVM target" in r.output


@pytest.mark.slow
def test_smollm2_all_targets(tmp_path_factory, smollm2_gguf):
    """The packaged SmolLM2 (int4) compiled for every target: host runs, its greedy tokens equal the reference's
    and the native ones up to near-ties; the aarch64 library (and the Jetson sm_87 one) is an aarch64 ELF, the
    sm_90 one an x86-64 ELF; the CUDA libraries are generated by nvcc (no GPU here, nothing runs them)."""
    from edgerun.export.exporter import export
    from edgerun.export.tvm_build import TVM_TARGETS, compile_tvm

    art = export(smollm2_gguf, tmp_path_factory.mktemp("smol") / "smollm2-int4.edge", weights="int4")
    targets = list(TVM_TARGETS) if shutil.which("nvcc") else ["tvm-llvm", "tvm-aarch64"]
    compile_tvm(art, targets)
    tv = edgerun.load(art, backend="tvm", threads=2)
    nat = edgerun.load(art, backend="native", threads=2)
    ref = edgerun.load(art, backend="reference")
    for p in PROMPTS:  # float32 like the reference: the same greedy tokens; native (q8 activations) up to near-ties
        ids = nat.tokenizer.encode(p)
        assert same_greedy(tv, ref, ids, 16), p
        same_greedy(tv, nat, ids, 16)
    assert set(targets) <= set(tv.artifact.manifest["targets"])
    kinds = {"aarch64.so": "ARM aarch64", "cuda-sm87.so": "ARM aarch64", "cuda-sm90.so": "x86-64"}
    for lib in sorted((art / "tvm").glob("*.so")):
        out = subprocess.run(["file", str(lib)], capture_output=True, text=True).stdout
        assert "ELF 64-bit" in out and kinds.get(lib.name, "x86-64") in out, out
    assert len(list((art / "tvm").glob("*.so"))) == len(targets)
