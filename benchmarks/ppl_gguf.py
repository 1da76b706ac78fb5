"""Quality on the GGUFs as shipped: edgerun's default import (every tensor in its source quantization, native
C kernels) against llama.cpp on the same file, same run.

WikiText-2 test (packaged), ctx 512, llama.cpp's perplexity method. Prints perplexity of both, the relative
difference, top-1 agreement over every scored position and where llama.cpp's top-2 margin exceeds 0.5.

    python benchmarks/ppl_gguf.py [--chunks 20] [--threads 2] [--model smollm2|gemma3 ...]
"""

from __future__ import annotations

import argparse
import json

import numpy as np


def compare(gguf, n_chunks: int, n_ctx: int = 512, threads: int | None = None) -> dict:
    """Perplexity and top-1 agreement of edgerun (default export, native) vs llama.cpp on one GGUF."""
    import edgerun
    from edgerun.bench import wikitext2_test
    from edgerun.bench.perplexity import chunk_nll, chunks, llama_cpp_scorer

    m = edgerun.load(gguf, threads=threads)
    ids = m.tokenizer.encode(wikitext2_test())
    bos = m.tokenizer.bos_token_id if m.tokenizer.add_bos else None
    cl = chunks(ids, n_ctx, n_chunks, bos)
    peer = llama_cpp_scorer(str(gguf), n_ctx, threads=threads)
    nll = {"edgerun": 0.0, "llama.cpp": 0.0}
    n = agree = confident = agree_confident = 0
    for c in cl:
        ours, theirs = m.logits(c), peer(c)
        for name, lg in (("edgerun", ours), ("llama.cpp", theirs)):
            nll[name] += chunk_nll(lg, c)[0]
        half = slice(n_ctx // 2, n_ctx - 1)
        a, b = ours[half], theirs[half]
        top2 = np.sort(b, axis=-1)[:, -2:]
        sure = (top2[:, 1] - top2[:, 0]) > 0.5
        same = a.argmax(-1) == b.argmax(-1)
        n += len(same)
        agree += int(same.sum())
        confident += int(sure.sum())
        agree_confident += int((same & sure).sum())
    ppl = {k: float(np.exp(v / n)) for k, v in nll.items()}
    return {
        "gguf": str(gguf), "chunks": len(cl), "ppl_edgerun": ppl["edgerun"], "ppl_llama_cpp": ppl["llama.cpp"],
        "ppl_rel_diff": ppl["edgerun"] / ppl["llama.cpp"] - 1, "top1": agree / n,
        "top1_margin_gt_0_5": agree_confident / max(1, confident), "weights": m.info()["recipe"]["weights"],
        "formats": _count(m.artifact.tensors),
    }  # fmt: skip


def _count(tensors) -> dict:
    out: dict[str, int] = {}
    for e in tensors.values():
        out[e["format"]] = out.get(e["format"], 0) + 1
    return out


def main(argv=None) -> list[dict]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--chunks", type=int, default=20)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--model", action="append", choices=["smollm2", "gemma3"])
    ap.add_argument("--json")
    args = ap.parse_args(argv)
    from edgerun.runtime.store.defaults import packaged_gemma3_gguf, packaged_smollm2_gguf

    paths = {"smollm2": packaged_smollm2_gguf, "gemma3": packaged_gemma3_gguf}
    rows = []
    for name in args.model or ["smollm2", "gemma3"]:
        r = compare(paths[name](), args.chunks, threads=args.threads)
        rows.append(r)
        print(f"{name}: PPL edgerun {r['ppl_edgerun']:.4f} / llama.cpp {r['ppl_llama_cpp']:.4f} "
              f"({100 * r['ppl_rel_diff']:+.2f}%), top-1 {r['top1']:.4f}, "
              f"top-1 where margin > 0.5: {r['top1_margin_gt_0_5']:.4f}  [{r['chunks']} chunks; {r['formats']}]")
    if args.json:
        with open(args.json, "w", encoding="utf-8") as fh:
            json.dump(rows, fh, indent=1)
    return rows


if __name__ == "__main__":
    main()
