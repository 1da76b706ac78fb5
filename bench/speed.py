"""Speed benchmarks: edgerun vs llama.cpp on the same weights, and kernel GB/s vs memory bandwidth.

Not timed tests: these print what the machine does now (a shared machine is noisy; medians of a
few repeats, both engines in the same process, same thread count, one after the other).

    bench_model("smol-int4.edge", vs_llama_cpp="smol-q4_0.gguf", threads=2)
    bench_kernels_report(threads=2)

Also :func:`random_llama_gguf`: a random-weight llama GGUF with SmolLM2's tokenizer (dims that
are multiples of 256, so llama.cpp's TQ2_0 covers every matrix) for the ternary comparisons.
"""

from __future__ import annotations

import os
import statistics
import time
from pathlib import Path

import numpy as np

PROMPT = (
    "The history of computing is a story of machines that got smaller, cheaper and faster while the "
    "problems they solved grew. Early computers filled rooms and were programmed with cables; later "
    "machines read punched cards, then magnetic tape, and finally programs typed at a terminal. "
)


def _median_time(fn, repeats: int) -> float:
    return statistics.median(_timed(fn) for _ in range(repeats))


def _timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def bench_edgerun(model, n_prompt: int = 128, n_decode: int = 64, threads: int | None = None,
                  repeats: int = 3, backend: str | None = None, ignore_eos: bool = True) -> dict:
    """Prompt-processing and decode tok/s of an edgerun model (path or loaded LLM).

    ignore_eos: decode all `n_decode` greedy tokens (default); False stops at an end-of-text token
    and reports the tokens actually decoded."""
    from edgerun.runtime.llm.model import load

    llm = load(model, threads=threads, backend=backend) if isinstance(model, (str, os.PathLike)) else model
    ids = (llm.tokenizer.encode(PROMPT * 8))[:n_prompt]

    def prefill():
        llm.prefill(ids, llm.new_cache())

    def decode():
        c = llm.new_cache()
        logits = llm.prefill(ids[:8], c)
        t0 = time.perf_counter()
        decode.n = 0
        for _ in range(n_decode):
            token = int(np.argmax(logits))
            if not ignore_eos and token in llm.tokenizer.stop_token_ids:
                break
            logits = llm.decode_step(token, c)
            decode.n += 1
        decode.t = time.perf_counter() - t0

    prefill()  # warm up (page-in, thread pool)
    t_pp = _median_time(prefill, repeats)
    ts = []
    for _ in range(repeats):
        decode()
        ts.append(decode.t)
    t_tg = statistics.median(ts)
    n = decode.n
    return {"engine": f"edgerun ({llm.backend})", "prompt_tps": len(ids) / t_pp, "decode_tps": n / t_tg if n else 0.0,
            "n_prompt": len(ids), "n_decode": n, "ids": ids}


def bench_llama_cpp(gguf: str | os.PathLike, ids: list[int], n_decode: int = 64, threads: int | None = None,
                    repeats: int = 3) -> dict:
    """The same measurement with llama.cpp (llama-cpp-python) on a GGUF, same prompt ids."""
    from llama_cpp import Llama

    llm = Llama(model_path=str(gguf), n_ctx=max(512, len(ids) + n_decode + 16), n_batch=512,
                n_threads=threads or os.cpu_count(), n_threads_batch=threads or os.cpu_count(), verbose=False)

    def prefill():
        llm.reset()
        llm.eval(ids)

    def decode():
        llm.reset()
        llm.eval(ids[:8])
        t0 = time.perf_counter()
        for _ in range(n_decode):
            llm.eval([int(np.argmax(llm.scores[llm.n_tokens - 1]))])
        decode.t = time.perf_counter() - t0

    prefill()
    t_pp = _median_time(prefill, repeats)
    ts = []
    for _ in range(repeats):
        decode()
        ts.append(decode.t)
    return {"engine": "llama.cpp", "prompt_tps": len(ids) / t_pp, "decode_tps": n_decode / statistics.median(ts),
            "n_prompt": len(ids), "n_decode": n_decode}


def decode_weight_bytes(artifact) -> int:
    """Bytes of weights one decode step reads: every matrix of the decoder layers and the output head (the token
    embedding when the head is tied to it; an untied embedding only gives one row, not counted), all parts
    (codes, scales, zero points) as stored in the artifact (a path or an :class:`~edgerun.export.artifact.Artifact`).
    A GGUF's blocks are kept verbatim, so llama.cpp reads the same bytes from the same file."""
    from edgerun.export.artifact import Artifact

    art = artifact if isinstance(artifact, Artifact) else Artifact(artifact)
    tensors = art.tensors
    head = "output.weight" if "output.weight" in tensors else "token_embd.weight"
    total = 0
    for name, t in tensors.items():
        if len(t["shape"]) != 2 or (name.startswith("token_embd.") and head != "token_embd.weight"):
            continue
        if t.get("layer") is None and name != head:
            continue
        total += sum(int(p["nbytes"]) for p in t["parts"].values())
    return total


def _artifact_path(model) -> Path | None:
    if isinstance(model, (str, os.PathLike)):
        p = Path(model)
        return p if (p / "manifest.json").exists() else None
    return getattr(model, "path", None)


def bench_model(model, vs_llama_cpp: str | os.PathLike | None = None, threads: int | None = None,
                n_prompt: int = 128, n_decode: int = 64, repeats: int = 3, backend: str | None = None,
                ignore_eos: bool = True, bandwidth: bool = True) -> dict:
    """edgerun (and llama.cpp on `vs_llama_cpp`) prompt/decode tok/s in one run; ratios edgerun / llama.cpp.

    With `bandwidth` (and an artifact to count bytes from): decode GB/s of each engine = the weight bytes one
    token reads (:func:`decode_weight_bytes`, the same for llama.cpp on the same GGUF) x its decode tok/s, next to
    this machine's streaming-read bandwidth measured in the same run with the same thread count
    (``out["bandwidth"]``: ``weight_bytes``, ``read_gbs``, and per engine ``decode_gbs`` and ``fraction``)."""
    from edgerun import kernels

    threads = threads or os.cpu_count()
    kernels.set_num_threads(threads)
    er = bench_edgerun(model, n_prompt, n_decode, threads, repeats, backend, ignore_eos)
    ids = er.pop("ids")
    out = {"model": str(model), "threads": threads, "edgerun": er}
    if vs_llama_cpp:
        lc = bench_llama_cpp(vs_llama_cpp, ids, er["n_decode"], threads, repeats)
        out["llama_cpp"] = {**lc, "gguf": str(vs_llama_cpp)}
        out["ratio"] = {"prompt": er["prompt_tps"] / lc["prompt_tps"], "decode": er["decode_tps"] / lc["decode_tps"]}
    art = _artifact_path(model) if bandwidth else None
    if art is not None:
        from edgerun.bench.kernels import memory_bandwidth

        kernels.set_num_threads(threads)
        nbytes = decode_weight_bytes(art)
        read = memory_bandwidth()["read_gbs"]
        bw = {"weight_bytes": nbytes, "read_gbs": read}
        for key in ("edgerun", "llama_cpp"):
            if key in out:
                gbs = nbytes * out[key]["decode_tps"] / 1e9
                bw[key] = {"decode_gbs": gbs, "fraction": gbs / read}
        out["bandwidth"] = bw
    return out


def format_bench(r: dict) -> str:
    """A small text table of :func:`bench_model`'s result."""
    lines = [f"{'engine':<24} {'prompt tok/s':>12} {'decode tok/s':>12}   (threads {r['threads']})"]
    for key in ("edgerun", "llama_cpp"):
        if key in r:
            e = r[key]
            lines.append(f"{e['engine']:<24} {e['prompt_tps']:>12.1f} {e['decode_tps']:>12.1f}")
    if "ratio" in r:
        lines.append(f"{'ratio edgerun/llama.cpp':<24} {r['ratio']['prompt']:>11.2f}x {r['ratio']['decode']:>11.2f}x")
    bw = r.get("bandwidth")
    if bw:
        lines.append(f"decode reads {bw['weight_bytes'] / 1e6:.1f} MB of weights per token; measured read bandwidth "
                     f"{bw['read_gbs']:.1f} GB/s ({r['threads']} threads)")
        for key in ("edgerun", "llama_cpp"):
            if key in bw:
                lines.append(f"{r[key]['engine']:<24} decode {bw[key]['decode_gbs']:6.1f} GB/s = "
                             f"{100 * bw[key]['fraction']:5.1f}% of read bandwidth")
    return "\n".join(lines)


# ----------------------------------------------------------------------------- decode at a context length

KV_NAMES = {32: "f32", 16: "f16", 8: "int8", 4: "int4", 2: "int2"}
GGML_KV = {"f16": 1, "q8_0": 8, "q4_0": 2}  # llama.cpp cache types (ggml_type) for type_k / type_v


def context_ids(tokenizer, n: int) -> list[int]:
    """`n` token ids of WikiText-2 (the packaged test split), the long prompt of the context benchmarks."""
    from edgerun.bench import wikitext2_test

    text = wikitext2_test()
    ids = tokenizer.encode(text[: 6 * n + 1000])
    if len(ids) < n:
        ids = tokenizer.encode(text)
    return ids[:n]


def bench_edgerun_context(model, context: int, kv_bits: int | None = 16, n_decode: int = 32, threads: int | None = None,
                          repeats: int = 3, sinks: int = 4, ids: list[int] | None = None, kv_window: int | None = None,
                          ram=None) -> dict:  # fmt: skip
    """Prefill of `context` tokens, then decode tok/s there (medians of `repeats` runs of `n_decode` steps).

    kv_bits 16/8/4/2: the sink + window cache, window covering the whole run (nothing evicted, as llama.cpp's
    cache) unless `kv_window` is given (then `sinks` + that window: the prompt slides through it); `ram`: a budget
    (``load(ram=...)``: the plan picks the window, how weights are held, the prefill chunk). None bits and no ram:
    the backend's full cache (float16). `model` may be a loaded LLM (its own settings then). Decode feeds the text's
    next tokens (speed does not depend on them). Returns {"engine", "kv", "setting", "context", "prefill_tps",
    "decode_tps", "cache_bytes", "ids"}.
    """
    from edgerun.runtime.llm.model import load

    total = context + n_decode * (repeats + 1) + 8
    if isinstance(model, (str, os.PathLike)):
        llm = load(model, threads=threads, **context_load_options(total, kv_bits, kv_window, ram, sinks))
    else:
        llm = model
    ids = ids if ids is not None else context_ids(llm.tokenizer, total)
    cache = llm.new_cache()
    t0 = time.perf_counter()
    llm.prefill(ids[:context], cache)
    t_pp = time.perf_counter() - t0
    ts, p = [], context
    for r in range(repeats + 1):  # the first run warms up
        t0 = time.perf_counter()
        for _ in range(n_decode):
            llm.decode_step(ids[p], cache)
            p += 1
        if r:
            ts.append(time.perf_counter() - t0)
    nbytes = getattr(cache, "nbytes", None)
    setting = context_setting(llm, total)
    full = "f16" if getattr(cache, "dtype", None) == np.float16 else "f32"  # the backend's full cache
    kv = KV_NAMES.get(llm.plan.kv_bits, "f32") if llm.budgeted else full
    if isinstance(model, (str, os.PathLike)):
        llm.close()
    return {"engine": "edgerun", "kv": kv, "setting": setting, "context": context, "prefill_tps": context / t_pp,
            "decode_tps": n_decode / statistics.median(ts), "cache_bytes": nbytes, "ids": ids}  # fmt: skip


def context_load_options(total: int, kv_bits: int | None, kv_window: int | None = None, ram=None,
                         sinks: int = 4) -> dict:  # fmt: skip
    """`load()` keywords of one context-benchmark row: the full float cache (no bits, window or ram), a window
    covering the whole run (`kv_bits` alone), a sliding window of `kv_window` with `sinks`, or a RAM budget."""
    if ram is not None:
        return {"ram": ram, "kv_bits": kv_bits, "kv_window": kv_window}
    if kv_bits is None and kv_window is None:
        return {}
    return {"kv_bits": 16 if kv_bits is None else kv_bits, "kv_window": kv_window or total, "kv_sinks": sinks}


def context_setting(llm, total: int) -> str:
    """How a context row's cache is set up, in a few words: 'full' (no window), 'window N' (+ sinks, when the
    prompt slides through it), 'ram X: window N, weights resident|streamed, chunk C'."""
    if not llm.budgeted:
        return "full"
    p = llm.plan
    w = "no eviction" if p.kv_window >= total else f"{p.kv_sinks} sinks + window {p.kv_window}"
    if p.budget is None:
        return w
    from edgerun.runtime.memory import fmt_bytes

    return f"ram {fmt_bytes(p.budget)}: {w}, weights {p.weights}, chunk {p.prefill_chunk}"


def bench_llama_cpp_context(gguf, ids: list[int], context: int, kv_type: str = "f16", n_decode: int = 32,
                            threads: int | None = None, repeats: int = 3, flash_attn: bool = True) -> dict:  # fmt: skip
    """The same with llama.cpp on `gguf`: cache type `kv_type` (f16, q8_0, q4_0) for K and V, flash attention
    on (`flash_attn`; llama.cpp's quantized V cache needs it)."""
    from llama_cpp import Llama

    th = threads or os.cpu_count()
    llm = Llama(model_path=str(gguf), n_ctx=len(ids) + 16, n_batch=512, n_ubatch=512, n_threads=th,
                n_threads_batch=th, type_k=GGML_KV[kv_type], type_v=GGML_KV[kv_type], flash_attn=flash_attn,
                verbose=False)  # fmt: skip
    llm.reset()
    t0 = time.perf_counter()
    llm.eval(ids[:context])
    t_pp = time.perf_counter() - t0
    ts, p = [], context
    for r in range(repeats + 1):
        t0 = time.perf_counter()
        for _ in range(n_decode):
            llm.eval([ids[p]])
            p += 1
        if r:
            ts.append(time.perf_counter() - t0)
    del llm
    return {"engine": "llama.cpp" + (" FA" if flash_attn else ""), "kv": kv_type, "setting": "full",
            "context": context, "prefill_tps": context / t_pp,
            "decode_tps": n_decode / statistics.median(ts)}  # fmt: skip


def bench_context(model, contexts=(2048,), kv_bits=(16, 8, 4, 2), vs_llama_cpp=None, llama_kv=("f16", "q8_0", "q4_0"),
                  n_decode: int = 32, threads: int | None = None, repeats: int = 3, progress=None,
                  kv_windows=(), ram=(), full_cache: bool = False, llama_no_fa: bool = True) -> dict:  # fmt: skip
    """Decode (and the long prefill) at each context length: edgerun per KV width, llama.cpp per cache type.

    Rows per context: with `full_cache` the backend's full float cache (no window); per KV width a window
    covering the whole run, then one row per sliding window in `kv_windows` (4 sinks + that window) and per RAM
    budget in `ram` (``load(ram=..., kv_bits=...)``); llama.cpp with flash attention per cache type, and with
    `llama_no_fa` its f16 cache without flash attention too (a peer measured at its best: on this CPU the plain
    path prefills faster at long context). One run, same token ids for every row; ratios are computed within it.
    Returns {"rows": [...], "threads"}.
    """
    from edgerun import kernels
    from edgerun.runtime.llm.model import load

    threads = threads or os.cpu_count()
    kernels.set_num_threads(threads)
    rows = []
    for ctx in contexts:
        ids = None
        total = ctx + n_decode * (repeats + 1) + 8
        setups = [(None, None, None)] if full_cache else []
        for b in kv_bits:
            setups += [(b, None, None)] + [(b, w, None) for w in kv_windows] + [(b, None, r) for r in ram]
        for b, w, r in setups:
            llm = load(model, threads=threads, **context_load_options(total, b, w, r))
            row = bench_edgerun_context(llm, ctx, b, n_decode, threads, repeats, ids=ids)
            llm.close()
            ids = row.pop("ids")
            rows.append(row)
            if progress:
                progress(format_context_row(row))
        if vs_llama_cpp:
            peers = [(t, True) for t in llama_kv] + ([("f16", False)] if llama_no_fa and "f16" in llama_kv else [])
            for t, fa in peers:
                row = bench_llama_cpp_context(vs_llama_cpp, ids, ctx, t, n_decode, threads, repeats, flash_attn=fa)
                rows.append(row)
                if progress:
                    progress(format_context_row(row))
    return {"model": str(model), "threads": threads, "n_decode": n_decode, "rows": rows}


def format_context_row(r: dict) -> str:
    """One line: engine, KV type, context, prefill and decode tok/s (the cache's bytes), then the cache setting."""
    mb = f"  cache {r['cache_bytes'] / 1e6:8.1f} MB" if r.get("cache_bytes") else ""
    st = f"  [{r['setting']}]" if r.get("setting") and r["setting"] != "no eviction" else ""
    return (f"{r['engine']:<14} {r['kv']:<6} ctx {r['context']:>6}  prefill {r['prefill_tps']:8.1f} tok/s"
            f"  decode {r['decode_tps']:7.1f} tok/s{mb}{st}")  # fmt: skip


def bench_kernels_report(threads: int | None = None, quick: bool = False) -> dict:
    """Kernel GB/s (bench/kernels.py) next to this machine's measured memory bandwidth."""
    from edgerun.bench import kernels as kb

    bw = kb.memory_bandwidth()
    rows = kb.bench_kernels(threads=threads, quick=quick)
    return {"bandwidth": bw, "kernels": rows}


# ----------------------------------------------------------------------------- random llama GGUF


def random_llama_gguf(path: str | os.PathLike, tokenizer_gguf: str | os.PathLike, dim: int = 1024,
                      n_layers: int = 8, n_heads: int = 16, n_kv_heads: int = 4, ffn_dim: int = 2816,
                      seed: int = 0, context_length: int = 2048) -> Path:
    """Write a random-weight llama GGUF (F32) with the tokenizer metadata of `tokenizer_gguf`.

    Weights ~ N(0, 1/sqrt(in)) (embeddings N(0, 1)), norms 1, so activations stay O(1) and the
    logits are not flat. Dims that are multiples of 256 let TQ2_0 cover every matrix.
    """
    import gguf
    from edgerun.export.gguf_reader import open_gguf

    path = Path(path)
    src = open_gguf(tokenizer_gguf)
    vocab = len(src.fields["tokenizer.ggml.tokens"].contents())
    rng = np.random.default_rng(seed)
    tmp = path.with_name(path.name + ".part")
    w = gguf.GGUFWriter(str(tmp), "llama")
    w.add_name("edgerun random llama")
    w.add_context_length(context_length)
    w.add_embedding_length(dim)
    w.add_block_count(n_layers)
    w.add_feed_forward_length(ffn_dim)
    w.add_head_count(n_heads)
    w.add_head_count_kv(n_kv_heads)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_rope_freq_base(10000.0)
    w.add_rope_dimension_count(dim // n_heads)
    w.add_vocab_size(vocab)
    for field in src.fields.values():
        if not field.name.startswith("tokenizer."):
            continue
        vtype = field.types[0]
        sub = field.types[-1] if vtype == gguf.GGUFValueType.ARRAY else None
        w.add_key_value(field.name, field.contents(), vtype, sub_type=sub)

    def mat(n, k, std=None):
        return (rng.standard_normal((n, k), dtype=np.float32) * (std or 1 / np.sqrt(k))).astype(np.float32)

    hd = dim // n_heads
    w.add_tensor("token_embd.weight", mat(vocab, dim, 1.0))
    w.add_tensor("output_norm.weight", np.ones(dim, np.float32))
    w.add_tensor("output.weight", mat(vocab, dim))
    for i in range(n_layers):
        p = f"blk.{i}."
        w.add_tensor(p + "attn_norm.weight", np.ones(dim, np.float32))
        w.add_tensor(p + "attn_q.weight", mat(n_heads * hd, dim))
        w.add_tensor(p + "attn_k.weight", mat(n_kv_heads * hd, dim))
        w.add_tensor(p + "attn_v.weight", mat(n_kv_heads * hd, dim))
        w.add_tensor(p + "attn_output.weight", mat(dim, n_heads * hd, 0.5 / np.sqrt(n_heads * hd)))
        w.add_tensor(p + "ffn_norm.weight", np.ones(dim, np.float32))
        w.add_tensor(p + "ffn_gate.weight", mat(ffn_dim, dim))
        w.add_tensor(p + "ffn_up.weight", mat(ffn_dim, dim))
        w.add_tensor(p + "ffn_down.weight", mat(dim, ffn_dim, 0.5 / np.sqrt(ffn_dim)))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    tmp.rename(path)
    return path
