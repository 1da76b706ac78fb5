"""SmolLM2-135M WikiText-2 perplexity: f16, edgerun INT4, the Q4_0 import, and llama.cpp on Q4_0 / f32.

Perplexity as llama.cpp's `perplexity` tool measures it (bench/perplexity.py): ctx 512, BOS in each
chunk's first slot, the second half of each chunk scored. Every row scores the same token chunks
(tokenized once with the f16 artifact's tokenizer, which equals llama.cpp's).

Rows (all from the packaged SmolLM2 Q4_1 GGUF, as in tests/conftest.py and tests/test_quant_export_llama_cpp.py):
  * edgerun f16         export --weights f16 (the packaged Q4_1 weights dequantized, stored f16)
  * edgerun int4        export --weights int4 (edgerun's own symmetric INT4, block 32; embeddings int8)
  * edgerun Q4_0 import the GGUF rewritten as Q4_0 by gguf's quantizer, exported --weights auto
                        (Q4_0 blocks copied bit-exactly into edgerun INT4)
  * llama.cpp Q4_0      that same Q4_0 GGUF
  * llama.cpp f32       the GGUF rewritten as F32 (the Q4_1 weights dequantized)

    python benchmarks/ppl_int4.py [--chunks 10] [--threads 1] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path


def _gguf(src: Path, qtype: str, name: str) -> Path:
    """`src` rewritten as `qtype` in the edgerun cache (same file names as the tests use)."""
    from edgerun.export.gguf_writer import retype_gguf
    from edgerun.runtime.store.defaults import _source_key, cache_dir

    out = cache_dir() / f"{name}-{qtype.lower()}-{_source_key(src)}.gguf"
    if not out.exists():
        retype_gguf(src, out, qtype)
    return out


def main(argv=None) -> list[dict]:
    """Run every row; print a markdown table; return the rows."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--chunks", type=int, default=10, help="chunks of 512 tokens (default 10)")
    ap.add_argument("--ctx", type=int, default=512)
    ap.add_argument("--threads", type=int, default=1, help="threads for edgerun and llama.cpp (default 1)")
    ap.add_argument("--wikitext", default=None, help="text file (default: the packaged WikiText-2 test split)")
    ap.add_argument("--json", help="also write the rows here")
    args = ap.parse_args(argv)

    import edgerun
    from edgerun.bench import perplexity as ev
    from edgerun.runtime.store.defaults import cached_export, packaged_smollm2_gguf

    src = packaged_smollm2_gguf()
    q4_0 = _gguf(src, "Q4_0", "smollm2")
    f32 = _gguf(src, "F32", "smollm2")
    from edgerun.bench import wikitext2_test

    text = Path(args.wikitext).read_text(encoding="utf-8") if args.wikitext else wikitext2_test()
    # enough text for the chunks asked (SmolLM2: ~4.3 characters per token on WikiText)
    text = text[: 6000 * (args.chunks + 1) * args.ctx // 512]

    f16 = edgerun.load(cached_export(src, name="smollm2", weights="f16"), threads=args.threads)
    tok = f16.tokenizer
    ids = tok.encode(text, add_bos=tok.add_bos)
    chunk_list = ev.chunks(ids, args.ctx, args.chunks, tok.bos_token_id if tok.add_bos else None)

    rows: list[dict] = []

    def run(name: str, weights: str, score, backend: str) -> None:
        t0 = time.perf_counter()
        r = ev.perplexity(score, chunk_list)
        dt = time.perf_counter() - t0
        rows.append(dict(model=name, weights=weights, backend=backend, ppl=r.ppl, n_scored=r.n_scored,
                         seconds=dt))
        print(f"{name:<22} {weights:<34} PPL {r.ppl:8.4f}  ({dt:.0f} s)", flush=True)

    def edge(path):
        m = edgerun.load(path, threads=args.threads)
        return m, m.logits

    run("edgerun f16", "Q4_1 -> f16", f16.logits, f16.backend)
    del f16
    m, score = edge(cached_export(src, name="smollm2", weights="int4"))
    run("edgerun int4", "Q4_1 -> int4 (block 32, embd int8)", score, m.backend)
    del m, score
    m, score = edge(cached_export(q4_0, name="smollm2-q4_0", weights="auto"))
    run("edgerun Q4_0 import", "Q4_0 blocks copied exactly", score, m.backend)
    del m, score
    run("llama.cpp Q4_0", "Q4_0 GGUF", ev.llama_cpp_scorer(q4_0, args.ctx, threads=args.threads), "llama.cpp")
    run("llama.cpp f32", "F32 GGUF (Q4_1 dequantized)",
        ev.llama_cpp_scorer(f32, args.ctx, threads=args.threads), "llama.cpp")

    n = rows[0]["n_scored"]
    print(f"\nSmolLM2-135M, WikiText-2 test, {len(chunk_list)} chunks of {args.ctx} ({n} scored tokens), "
          f"threads {args.threads}\n")
    print("| model | weights | backend | PPL | seconds |")
    print("|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['model']} | {r['weights']} | {r['backend']} | {r['ppl']:.4f} | {r['seconds']:.0f} |")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))
    return rows


if __name__ == "__main__":
    main()
