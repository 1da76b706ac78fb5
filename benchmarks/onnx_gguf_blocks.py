"""ONNX for GGUF block formats: the options measured on the packaged GGUFs (docs/design.md has the table).

Variants, each an onnxruntime session on an artifact of the packaged GGUF:
  * folded     weights="auto" artifact (blocks verbatim), model.onnx dequantizes the raw blocks with standard
               ops (export/onnx_blocks.py); onnxruntime constant-folds them once at session creation
  * unfolded   the same model.onnx with onnxruntime's ConstantFolding disabled: dequantized on every call
  * int8copy   a derived copy: the GGUF exported with weights="int8" (every block-format matrix requantized
               to MatMulNBits int8/32 from its exact values): the weights.bin ONNX would need beside the
               verbatim one

Per variant: bytes on disk, session creation time, RSS after creation and peak RSS (each in a fresh process),
decode tok/s, max |logit| difference against the numpy reference on the auto artifact (exact weights)
and against the native backend, and greedy 16-token agreement with native on 6 prompts.

    python benchmarks/onnx_gguf_blocks.py [--models smollm2 gemma3] [--threads 2] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

PROMPTS = ["Once upon a time, in a small village, there lived ", "def fibonacci(n):",
           "The capital of France is Paris. The capital of Germany is", "Water boils at a temperature of",
           "The capital of France is", "Hello, my name is"]


def _rss_mb() -> tuple[float, float]:
    """(current, peak) RSS of this process in MB."""
    vals = {}
    for line in open("/proc/self/status"):
        if line.startswith(("VmRSS", "VmHWM")):
            k, v = line.split(":")
            vals[k] = int(v.split()[0]) / 1024
    return vals["VmRSS"], vals["VmHWM"]


def session_child(art: str, variant: str, threads: int) -> dict:
    """In a fresh process: build the session, measure RSS, decode speed; print JSON."""
    import edgerun
    import numpy as np


    if variant == "unfolded":  # same graph, no constant folding: the dequantization runs on every call
        import onnxruntime as ort

        orig = ort.InferenceSession

        def no_fold(path, so, providers):
            return orig(path, so, providers=providers, disabled_optimizers=["ConstantFolding"])

        ort.InferenceSession = no_fold
    r0 = _rss_mb()[0]
    t = time.perf_counter()
    m = edgerun.load(art, backend="onnxruntime", threads=threads)
    create = time.perf_counter() - t
    rss, peak = _rss_mb()
    ids = m.tokenizer.encode(PROMPTS[0])
    c = m.new_cache()
    m.prefill(ids, c)
    tok, n = int(ids[-1]), 16
    t = time.perf_counter()
    for _ in range(n):
        tok = int(np.argmax(m.decode_step(tok, c)))
    tps = n / (time.perf_counter() - t)
    return {"create_s": round(create, 2), "rss_before_mb": round(r0), "rss_mb": round(rss), "peak_mb": round(peak),
            "decode_tps": round(tps, 2)}


def _child(art: Path, variant: str, threads: int) -> dict:
    out = subprocess.run([sys.executable, __file__, "--child", str(art), variant, str(threads)],
                         capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def _same_greedy(a, b, ids, n: int) -> tuple[bool, bool]:
    """(identical, parted only at a near-tie of b: < 2% of its largest logit) as tests/test_backend_onnxruntime."""
    import numpy as np
    from edgerun.bench import perplexity as ev

    ga, gb = ev.greedy(a, ids, n), ev.greedy(b, ids, n)
    if ga == gb:
        return True, True
    i = next(j for j in range(n) if ga[j] != gb[j])
    lb = b.logits(ids + gb[:i])[-1]
    return False, bool(lb[gb[i]] - lb[ga[i]] < 0.02 * np.abs(lb).max())


def measure(name: str, src: Path, threads: int) -> dict:
    import edgerun
    import numpy as np
    from edgerun.export.onnx_graph import ONNX_FILE, build_onnx
    from edgerun.runtime.store.defaults import cached_export

    auto = cached_export(src, name=name)
    int8 = cached_export(src, name=name, weights="int8")
    for a in (auto, int8):
        if not (a / ONNX_FILE).exists():
            build_onnx(a)
    nat = edgerun.load(auto, backend="native", threads=threads)
    ref = edgerun.load(auto, backend="reference")
    ids = ref.tokenizer.encode(PROMPTS[2])
    lref, lnat = ref.logits(ids), nat.logits(ids)
    del ref
    res = {"gguf_bytes": src.stat().st_size, "native_vs_reference_max_abs": float(np.abs(lnat - lref).max())}
    for variant, art in (("folded", auto), ("unfolded", auto), ("int8copy", int8)):
        row = {"weights_bin_bytes": (art / "weights.bin").stat().st_size,
               "onnx_bytes": (art / ONNX_FILE).stat().st_size, **_child(art, variant, threads)}
        if variant != "unfolded":  # same graph and numbers as folded
            ort = edgerun.load(art, backend="onnxruntime", threads=threads)
            lo = ort.logits(ids)
            row["max_abs_vs_reference"] = float(np.abs(lo - lref).max())
            row["max_abs_vs_native"] = float(np.abs(lo - lnat).max())
            row["top1_vs_native"] = float((lo.argmax(-1) == lnat.argmax(-1)).mean())
            g = [_same_greedy(ort, nat, nat.tokenizer.encode(p), 16) for p in PROMPTS]
            row["greedy_identical"] = f"{sum(a for a, _ in g)}/{len(g)}"
            row["greedy_identical_or_near_tie"] = f"{sum(b for _, b in g)}/{len(g)}"
            del ort
        res[variant] = row
        print(name, variant, row, flush=True)
    return res


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        print(json.dumps(session_child(sys.argv[2], sys.argv[3], int(sys.argv[4]))))
        return
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="+", default=["smollm2", "gemma3"])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json")
    args = ap.parse_args()
    from edgerun.runtime.store.defaults import packaged_gemma3_gguf, packaged_smollm2_gguf

    srcs = {"smollm2": packaged_smollm2_gguf, "gemma3": packaged_gemma3_gguf}
    out = {m: measure(m, srcs[m](), args.threads) for m in args.models}
    print(json.dumps(out, indent=1))
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
