"""Measurements for the constant RAM budget: KV-bits perplexity, streaming perplexity, budget sweeps.

- :func:`kv_perplexity` — wikitext-2 perplexity with the KV cache at 16/8/4/2 bits (llama.cpp's method).
- :func:`llama_cpp_kv_perplexity` — the same chunks through llama.cpp with f16 / q8_0 / q4_0 KV.
- :func:`streaming_perplexity` — a text much longer than the window, with and without attention sinks.
- :func:`measure_budget` — one run under a budget in a fresh process: decode tok/s, peak RSS, reads.
- :func:`bench_ram` — sweep budgets, write a PNG of decode tok/s and peak RSS against the budget,
  with llama.cpp's figures for the same model as reference lines.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

GGML_TYPES = {"f32": 0, "f16": 1, "q4_0": 2, "q4_1": 3, "q5_0": 6, "q5_1": 7, "q8_0": 8}


def _text(path: str | None) -> str:
    if path is None:
        from edgerun.bench import wikitext2_test

        return wikitext2_test()
    with open(path, encoding="utf-8") as f:
        return f.read()


def _tokens_and_chunks(model, text_path, n_ctx, n_chunks):
    from edgerun.bench.perplexity import chunks

    tok = model.tokenizer
    ids = tok.encode(_text(text_path))
    bos = tok.bos_token_id if getattr(tok, "bos_token_id", None) is not None else None
    return ids, chunks(ids, n_ctx, n_chunks, bos)


def kv_perplexity(path=None, bits=(16, 8, 4, 2), n_ctx: int = 512, n_chunks: int = 8, text_path: str | None = None,
                  prefill_chunk: int = 32) -> dict:  # fmt: skip
    """Perplexity (llama.cpp's method: n_ctx chunks, second half scored) for each KV width in `bits`.

    The window covers n_ctx, so only the KV quantization differs between rows. Blocks of
    `prefill_chunk` tokens read every earlier token back from the (quantized) cache, close to decode.
    Returns {"rows": [{"kv": "f16", "ppl": ..}, ...], "n_scored": .., "n_ctx": .., "n_chunks": ..}.
    """
    from edgerun.bench.perplexity import perplexity
    from edgerun.runtime.llm.model import load

    rows, n_scored, chunk_list = [], 0, None
    for b in bits:
        m = load(path, ram=None, kv_bits=b, kv_window=n_ctx, prefill_chunk=prefill_chunk)
        if chunk_list is None:
            _, chunk_list = _tokens_and_chunks(m, text_path, n_ctx, n_chunks)
        t0 = time.perf_counter()
        r = perplexity(lambda c, m=m: m.logits(c), chunk_list)  # blocks of prefill_chunk through a fresh cache
        rows.append({"kv": "f16" if b == 16 else ("f32" if b == 32 else f"int{b}"), "bits": b, "ppl": r.ppl,
                     "seconds": time.perf_counter() - t0})  # fmt: skip
        n_scored = r.n_scored
        m.close()
    return {"rows": rows, "n_scored": n_scored, "n_ctx": n_ctx, "n_chunks": len(chunk_list)}


def llama_cpp_kv_perplexity(
    gguf_path, path=None, types=("f16", "q8_0", "q4_0"), n_ctx: int = 512, n_chunks: int = 8,
    text_path: str | None = None, threads: int | None = None,
) -> dict:  # fmt: skip
    """llama.cpp (llama-cpp-python) perplexity on the same token chunks with K/V cache types `types`.

    Quantized V needs flash attention, so every row runs with flash_attn=True."""
    from edgerun.bench.perplexity import llama_cpp_scorer, perplexity
    from edgerun.runtime.llm.model import load

    m = load(path, ram=None)  # for the tokenizer and chunking only (same ids as edgerun's rows)
    _, chunk_list = _tokens_and_chunks(m, text_path, n_ctx, n_chunks)
    m.close()
    rows = []
    for t in types:
        score = llama_cpp_scorer(str(gguf_path), n_ctx, threads=threads, type_k=GGML_TYPES[t], type_v=GGML_TYPES[t],
                                 flash_attn=True)  # fmt: skip
        t0 = time.perf_counter()
        r = perplexity(score, chunk_list)
        rows.append({"kv": f"llama.cpp {t}", "ppl": r.ppl, "seconds": time.perf_counter() - t0})
        del score
    return {"rows": rows, "n_ctx": n_ctx, "n_chunks": len(chunk_list)}


def streaming_perplexity(path=None, window: int = 256, sinks=(4, 0), n_tokens: int = 4096, segment: int = 512,
                         kv_bits: int = 16, text_path: str | None = None, block: int = 32) -> dict:  # fmt: skip
    """Perplexity over `n_tokens` of one long text (>> window), per `segment`, for each sink count.

    sinks=0 is StreamingLLM's "window attention" baseline. Blocks of `block` tokens are exactly
    token-by-token decoding (each query sees its own sinks + window). Returns
    {"segments": [[start, end], ...], "rows": [{"sinks": s, "ppl": total, "seg_ppl": [...]}, ...]}.
    """
    from edgerun.bench.perplexity import log_softmax
    from edgerun.runtime.llm.model import load

    rows, segs = [], None
    for s in sinks:
        m = load(path, ram=None, kv_bits=kv_bits, kv_window=window, kv_sinks=s, prefill_chunk=block)
        ids = m.tokenizer.encode(_text(text_path))[:n_tokens]
        if m.tokenizer.bos_token_id is not None:
            ids = [m.tokenizer.bos_token_id] + ids[: n_tokens - 1]
        cache = m.new_cache()
        nll = np.zeros(len(ids) - 1)
        t0 = time.perf_counter()
        for i in range(0, len(ids) - 1, block):
            blk = ids[i : min(i + block, len(ids) - 1)]
            lg = m.model.forward(np.asarray(blk), cache)  # (T, vocab)
            lp = log_softmax(lg)
            tgt = np.asarray(ids[i + 1 : i + 1 + len(blk)])
            nll[i : i + len(blk)] = -lp[np.arange(len(blk)), tgt]
        segs = [[a, min(a + segment, len(nll))] for a in range(0, len(nll), segment)]
        rows.append({"sinks": s, "window": window, "ppl": float(np.exp(nll.mean())),
                     "seg_ppl": [float(np.exp(nll[a:b].mean())) for a, b in segs],
                     "seconds": time.perf_counter() - t0})  # fmt: skip
        m.close()
    return {"segments": segs, "rows": rows, "n_tokens": n_tokens, "window": window, "kv_bits": kv_bits}


# ----------------------------------------------------------------------------- budget sweep

_WORKER = r"""
import json, sys, time
import numpy as np
from edgerun.runtime.llm.model import load
from edgerun.runtime.memory import PeakRSS, rss_bytes
a = json.loads(sys.argv[1])
base = rss_bytes()
with PeakRSS() as p:
    m = load(a["path"], ram=a["ram"], kv_bits=a["kv_bits"], read_cache=a["read_cache"],
                      count_tokenizer=a["count_tokenizer"], threads=a["threads"])
    if not a["count_tokenizer"]:
        base = m.baseline_rss
    ids = m.tokenizer.encode(a["prompt"])
    c = m.new_cache()
    t0 = time.perf_counter()
    lg = m.prefill(ids, c)
    t1 = time.perf_counter()
    st = m.model.src.streamer.stats if m.model.src.streamer else None
    r0, b0 = (st.read_s, st.bytes_read) if st else (0.0, 0)
    times = []
    for _ in range(a["n_tokens"]):
        s = time.perf_counter()
        lg = m.decode_step(int(lg.argmax()), c)
        times.append(time.perf_counter() - s)
    t2 = time.perf_counter()
out = {"ram": a["ram"], "budget": m.plan.budget, "plan": m.plan.describe(), "weights": m.plan.weights,
       "kv_window": m.plan.kv_window, "peak_rss": p.peak, "model_peak_rss": p.peak - base,
       "prefill_tps": len(ids) / (t1 - t0), "decode_tps": a["n_tokens"] / (t2 - t1),
       "decode_ms_median": 1e3 * float(np.median(times)),
       "bytes_read_per_token": (st.bytes_read - b0) / a["n_tokens"] if st else 0,
       "read_s_per_token": (st.read_s - r0) / a["n_tokens"] if st else 0.0,
       "wait_s_per_token": st.wait_s / (a["n_tokens"] + 1) if st else 0.0,
       "tokenizer_rss": m.tokenizer_rss}
print("RESULT " + json.dumps(out))
"""


def measure_budget(
    path, ram, n_tokens: int = 16, kv_bits: int = 16, prompt: str | None = None, read_cache: str = "direct",
    count_tokenizer: bool = True, threads: int | None = None,
) -> dict:  # fmt: skip
    """Run one budget in a fresh process (so nothing else's memory counts); returns speeds, RSS and reads."""
    prompt = prompt or _text(None)[:400]
    arg = {"path": str(path), "ram": ram, "n_tokens": n_tokens, "kv_bits": kv_bits, "prompt": prompt,
           "read_cache": read_cache, "count_tokenizer": count_tokenizer, "threads": threads}  # fmt: skip
    env = dict(os.environ, OPENBLAS_NUM_THREADS=str(threads)) if threads else None
    out = subprocess.run([sys.executable, "-c", _WORKER, json.dumps(arg)], capture_output=True, text=True, env=env)
    for line in out.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[7:])
    msg = (out.stderr.strip().splitlines() or ["failed"])[-1]
    return {"ram": ram, "error": msg}


_LLAMA_WORKER = r"""
import json, sys, time
from llama_cpp import Llama
from edgerun.runtime.memory import PeakRSS
a = json.loads(sys.argv[1])
with PeakRSS() as p:
    llm = Llama(model_path=a["gguf"], n_ctx=512, n_threads=a["threads"], verbose=False)
    ids = llm.tokenize(a["prompt"].encode())[:400]
    llm.eval(ids)
    t = time.perf_counter()
    tok = ids[-1]
    for _ in range(a["n_tokens"]):
        llm.eval([tok])
        tok = int(llm.scores[llm.n_tokens - 1].argmax())
    dt = time.perf_counter() - t
print("RESULT " + json.dumps({"decode_tps": a["n_tokens"] / dt, "peak_rss": p.peak}))
"""


def llama_cpp_reference(gguf_path, n_tokens: int = 64, prompt: str | None = None, threads: int | None = None) -> dict:
    """llama.cpp's decode tok/s and peak RSS on `gguf_path` in a fresh process ({} when unavailable)."""
    arg = {"gguf": str(gguf_path), "n_tokens": n_tokens, "prompt": prompt or _text(None)[:400],
           "threads": threads or os.cpu_count()}  # fmt: skip
    out = subprocess.run([sys.executable, "-c", _LLAMA_WORKER, json.dumps(arg)], capture_output=True, text=True)
    for line in out.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[7:])
    return {}


def _source_gguf(path) -> str | None:
    from edgerun.export.artifact import Artifact

    src = (Artifact(path).manifest.get("provenance") or {}).get("source")
    return src if src and str(src).endswith(".gguf") and os.path.exists(src) else None


def bench_ram(model=None, ram=None, out: str | os.PathLike = "bench_ram.png", n_tokens: int = 16,
              kv_bits: int = 16, llama_cpp: bool = True, read_cache: str = "direct", threads: int | None = None,
              progress=None) -> dict:  # fmt: skip
    """Sweep RAM budgets for `model` and write a PNG of decode tok/s and peak RSS against the budget.

    ram: a list of budgets (strings or bytes) or None for a default sweep from the model's minimum
    to "everything resident". Each budget runs in a fresh process. llama.cpp's decode speed and peak
    RSS on the model's source GGUF are drawn as reference lines. Returns {"rows", "llama_cpp", "png"}.
    """
    from edgerun.runtime.llm.model import LLM, resolve_model
    from edgerun.runtime.memory import fmt_bytes, parse_budget

    path = resolve_model(model)
    if ram is None or (isinstance(ram, (list, tuple)) and not ram):
        from edgerun.export.artifact import Artifact

        probe = LLM(Artifact(path), ram=None)
        fp, lo = probe.footprint, None
        from edgerun.runtime.memory import plan_memory

        try:
            plan_memory(1, fp)
        except Exception as e:  # noqa: BLE001 - the message carries the minimum
            lo = parse_budget(str(e).rsplit("at least ", 1)[-1].replace(" ", ""))
        hi = int(
            1.15 * (fp.global_bytes + sum(fp.layer_bytes) + fp.overhead + fp.act_fixed + 64 * fp.act_bytes_per_token)
            + 60e6
        )
        probe.close()
        budgets = [int(x) for x in np.geomspace(lo * 1.02, hi, 6)]
    else:
        budgets = [parse_budget(r) for r in (ram if isinstance(ram, (list, tuple)) else [ram])]
    rows = []
    for b in budgets:
        r = measure_budget(path, b, n_tokens=n_tokens, kv_bits=kv_bits, read_cache=read_cache, threads=threads)
        rows.append(r)
        if progress:
            progress(
                f"{fmt_bytes(b)}: "
                + (r.get("error") or f"{r['decode_tps']:.2f} tok/s, peak {fmt_bytes(r['model_peak_rss'])}")
            )
    ref = {}
    if llama_cpp:
        gguf = _source_gguf(path)
        try:
            import llama_cpp as _  # noqa: F401
        except ImportError:
            gguf = None
        if gguf:
            ref = llama_cpp_reference(gguf, n_tokens=max(32, n_tokens), threads=threads)
    png = plot_sweep(rows, ref, out, title=Path(path).name)
    return {"rows": rows, "llama_cpp": ref, "png": str(png)}


def plot_sweep(rows: list[dict], ref: dict, out, title: str = "") -> Path:
    """Two panels against the budget (MB): decode tok/s, and peak RSS with the budget diagonal."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ok = [r for r in rows if "error" not in r]
    x = [r["budget"] / 1e6 for r in ok]
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(11, 4.2))
    a1.plot(x, [r["decode_tps"] for r in ok], "o-", label="edgerun decode")
    if ref.get("decode_tps"):
        a1.axhline(ref["decode_tps"], color="C3", ls="--", label=f"llama.cpp ({ref['decode_tps']:.0f} tok/s)")
        a1.set_yscale("log")
    a1.set_xlabel("RAM budget (MB)")
    a1.set_ylabel("decode tokens/s")
    a1.legend()
    a1.grid(alpha=0.3)
    a2.plot(x, [r["model_peak_rss"] / 1e6 for r in ok], "o-", label="edgerun peak RSS (model)")
    a2.plot(x, x, ":", color="gray", label="budget")
    if ref.get("peak_rss"):
        a2.axhline(
            ref["peak_rss"] / 1e6, color="C3", ls="--", label=f"llama.cpp peak RSS ({ref['peak_rss'] / 1e6:.0f} MB)"
        )
    a2.set_xlabel("RAM budget (MB)")
    a2.set_ylabel("MB")
    a2.legend()
    a2.grid(alpha=0.3)
    fig.suptitle(f"edgerun under a RAM budget — {title}")
    fig.tight_layout()
    out = Path(out)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def soak(path=None, n_tokens: int = 20000, ram=None, kv_window: int = 512, kv_bits: int = 16, every: int = 1000,
         seed: int = 0, threads: int | None = None) -> dict:  # fmt: skip
    """Generate `n_tokens` (sampled, EOS ignored) under `ram` with a `kv_window` cache; per `every` tokens
    report RSS (current and peak, MB), decode tok/s, and tok/s per CPU second of this process (`cpu_tps`: what
    a busy machine moves less; `cpu_tps_best`: the best of the segment's 8 blocks, which the moments other work
    shares the caches and memory bus do not reach). The conversation never ends: the window slides."""
    from edgerun.runtime.llm.model import load
    from edgerun.runtime.memory import peak_rss_bytes, rss_bytes

    m = load(path, ram=ram, kv_window=kv_window, kv_bits=kv_bits, threads=threads)
    rng = np.random.default_rng(seed)
    cache = m.new_cache()
    lg = m.prefill(m.tokenizer.encode("Once upon a time"), cache)
    block = max(1, every // 8)
    seg, t0, c0 = [], time.perf_counter(), time.process_time()
    cb, best = c0, 0.0
    for i in range(1, n_tokens + 1):
        z = (lg - lg.max()) / 0.9
        p = np.exp(z)
        tok = int(rng.choice(len(p), p=p / p.sum()))
        lg = m.decode_step(tok, cache)
        if i % block == 0:
            c = time.process_time()
            best, cb = max(best, block / max(c - cb, 1e-9)), c
        if i % every == 0:
            t1, c1 = time.perf_counter(), time.process_time()
            seg.append({"tokens": i, "tps": every / (t1 - t0), "cpu_tps": every / max(c1 - c0, 1e-9),
                        "cpu_tps_best": best, "rss_mb": rss_bytes() / 1e6, "window": m.plan.kv_window,
                        "peak_mb": peak_rss_bytes() / 1e6})  # fmt: skip
            t0, c0, best = t1, c1, 0.0
    m.close()
    return {"plan": m.plan.describe(), "segments": seg, "baseline_mb": m.baseline_rss / 1e6}
