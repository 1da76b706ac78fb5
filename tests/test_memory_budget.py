"""load(path, ram=...) on the packaged models: plan, correctness against the reference, measured RSS ceilings.

RSS is measured in a fresh subprocess so other tests' memory does not count.
"""

import json
import re
import subprocess
import sys

import numpy as np
import pytest

pytestmark = pytest.mark.model


def _smollm2():
    from edgerun.runtime.store.defaults import default_model_path

    return default_model_path()


def _gemma3():
    from edgerun.runtime.store.defaults import cached_export, packaged_gemma3_gguf

    return cached_export(packaged_gemma3_gguf())


def _float_export(which: str):
    """An f16 export, for comparisons of two cache paths: with int8-quantized activations (the GGUF block
    kernels) a forward is chaotic — one float-order difference flips an int8 rounding and moves logits by ~2 —
    so two caches are compared on float weights, where the kernels use float activations."""
    from edgerun.runtime.store.defaults import cached_export, packaged_gemma3_gguf, packaged_smollm2_gguf

    src = packaged_smollm2_gguf() if which == "smollm2" else packaged_gemma3_gguf()
    return cached_export(src, name=which, weights="f16")


MEASURE = r"""
import json, os, sys, time
import numpy as np
from edgerun.runtime.llm.model import load
from edgerun.runtime.memory import PeakRSS, rss_bytes
path, ram, prompt_len, decode, count_tok = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), sys.argv[5]
from edgerun.bench import wikitext2_test
text = wikitext2_test()[:20000]
m = load(path, ram=ram, count_tokenizer=count_tok == "1")
with PeakRSS() as p:
    p.start = m.baseline_rss
    ids = m.tokenizer.encode(text)[:prompt_len]
    c = m.new_cache()
    t0 = time.perf_counter()
    lg = m.prefill(ids, c)
    t1 = time.perf_counter()
    for _ in range(decode):
        lg = m.decode_step(int(lg.argmax()), c)
    t2 = time.perf_counter()
size = sum(os.path.getsize(os.path.join(path, f)) for f in os.listdir(path))
print(json.dumps({"plan": m.plan.describe(), "weights": m.plan.weights, "budget": m.plan.budget,
                  "model_peak": p.peak - m.baseline_rss, "artifact": size, "tokenizer": m.tokenizer_rss,
                  "decode_tps": decode / (t2 - t1), "prefill_s": t1 - t0}))
"""


def measure(path, ram, prompt_len=96, decode=8, count_tokenizer=True) -> dict:
    """Run prompt + decode under `ram` in a fresh process; returns plan and the model's peak RSS."""
    out = subprocess.run([sys.executable, "-c", MEASURE, str(path), str(ram), str(prompt_len), str(decode),
                          "1" if count_tokenizer else "0"], capture_output=True, text=True)  # fmt: skip
    assert out.returncode == 0, out.stderr[-2000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_too_small_budget_fails_at_once_with_minimum():
    # In a fresh process, as a user runs it: the budget counts what loading adds to the process
    # (tokenizer included), which a long-lived test process partly has already.
    code = (
        "import sys, time\nfrom edgerun.errors import EdgerunError\n"
        "from edgerun.runtime.llm.model import load\n"
        "t0 = time.perf_counter()\n"
        "try:\n    load(sys.argv[1], ram='30MB')\nexcept EdgerunError as e:\n"
        "    print(time.perf_counter() - t0); print(e)\n"
    )
    out = subprocess.run([sys.executable, "-c", code, str(_smollm2())], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-2000:]
    lines = out.stdout.strip().splitlines()
    assert len(lines) == 2, out.stdout  # it raised, with a one-line message
    assert re.search(r"minimum working set .* use ram of at least", lines[1])
    assert float(lines[0]) < 30  # no weights were read


def test_budgeted_logits_match_reference():
    from edgerun.export.artifact import Artifact
    from edgerun.runtime.llm.model import LLM, load

    path = _float_export("smollm2")
    ids = list(range(100, 140))
    ref = LLM(Artifact(path)).logits(ids)  # full cache, every weight mapped
    m = load(path, ram="120MB", kv_bits=32, kv_window=64)  # streamed layers, window covers all
    assert m.plan.weights == "streamed"
    got = m.logits(ids)
    m.close()
    np.testing.assert_allclose(got, ref, atol=2e-3 * np.abs(ref).max())
    assert (got.argmax(-1) == ref.argmax(-1)).mean() > 0.95


def test_smollm2_streamed_under_120mb():
    r = measure(_smollm2(), "120MB")
    assert r["weights"] == "streamed"
    assert r["model_peak"] <= r["budget"], r  # tokenizer included


def test_gemma3_under_40_percent_of_artifact():
    path = _gemma3()
    import os

    size = sum(os.path.getsize(os.path.join(path, f)) for f in os.listdir(path))
    budget = int(0.4 * size)
    # Everything the load adds counts: tokenizer (262k pieces), weights, KV cache, activations, scratch.
    r = measure(path, budget, count_tokenizer=True)
    assert r["weights"] == "streamed"
    assert r["model_peak"] <= budget, r


def test_gemma3_local_and_global_layers_match_reference():
    """Gemma-3: local layers keep their own 512 window inside the ring, global layers the budget window."""
    from edgerun.bench import wikitext2_test
    from edgerun.export.artifact import Artifact
    from edgerun.runtime.llm.model import LLM, load

    path = _float_export("gemma3")
    text = wikitext2_test()[:6000]
    m = load(path, ram=None, kv_bits=32, kv_window=1024, prefill_chunk=64)
    ids = m.tokenizer.encode(text)[:540]  # past the 512-token local window
    assert m.plan.layer_windows[0] == 512 and m.plan.layer_windows[5] == 1024 and m.plan.layer_sinks[0] == 0
    got = m.logits(ids)[-40:]
    m.close()
    ref = LLM(Artifact(path)).logits(ids)[-40:]  # the reference: full cache, masks by position
    np.testing.assert_allclose(got, ref, atol=2e-3 * np.abs(ref).max())


def _mapped_pages(path: str) -> list[int]:
    """File offsets (page-aligned) of `path`'s pages mapped into this process (the pagemap's present bit)."""
    import struct

    out = []
    for line in open("/proc/self/maps"):
        f = line.split()
        if len(f) < 6 or f[5] != path:
            continue
        a, b = (int(x, 16) for x in f[0].split("-"))
        off = int(f[2], 16)
        with open("/proc/self/pagemap", "rb") as pm:
            pm.seek(a // 4096 * 8)
            data = pm.read((b - a) // 4096 * 8)
        out += [off + i * 4096 for i in range(len(data) // 8) if struct.unpack_from("<Q", data, i * 8)[0] >> 63]
    return out


def test_streamed_layers_are_never_mapped():
    """A streamed plan reads layers into its own buffers: after a reply, no page of a layer's bytes in weights.bin
    is mapped into the process, only the globals (and what the kernel maps around their last page). Norm vectors
    read through the map used to map the page, or with large page-cache folios 2 MB, around each of them: 33 MB
    over a 120 MB budget."""
    import edgerun

    path = _smollm2()
    llm = edgerun.load(path, ram="120MB")
    assert llm.plan.weights == "streamed"
    llm.generate("The capital of France is", max_tokens=4, temperature=0.0)
    weights = str(llm.artifact.weights_path)
    layers = llm.artifact.manifest["layers"]
    first_layer = min(e["offset"] for e in layers)
    pages = _mapped_pages(weights)
    assert pages, "the globals are read through the map"
    # the kernel maps around a fault (fault-around, or a whole 2 MB folio) when reading the globals' last rows
    in_layers = [p for p in pages if p >= first_layer + (2 << 20)]
    assert not in_layers, f"{len(in_layers)} pages of streamed layers mapped (first at byte {in_layers[0]})"
    llm.close()
