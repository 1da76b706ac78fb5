"""The compact SentencePiece tokenizer: memory bound on Gemma-3's 262k vocabulary, and the same ids as
llama.cpp's algorithm (word cutting, bridging pieces, special partition, byte fallback).

Identity with llama.cpp itself over WikiText and hard strings is tests/test_llm_tokenizer.py
(build_tokenizer gives the compact file for Gemma-3); here a from-scratch reference of llama.cpp's
`llm_tokenizer_spm` on a small vocabulary, and the `tokenizers` BPE path (old artifacts) against
the compact one on Gemma-3.
"""

from __future__ import annotations

import heapq
import json
import subprocess
import sys
import textwrap

import numpy as np
import pytest

RSS_BOUND_MB = 40  # measured +8-11 MB (the old 515k-merge `tokenizers` file: +371 MB, +68 MB trimmed)
PEAK_BOUND_MB = 80

SP = "\u2581"


# ---------------------------------------------------------------- reference (no cutting, no cache)


def _ref_spm(text: str, vocab: dict[str, int], scores: list[float]) -> list[int]:
    """llama.cpp's bigram merging on the whole fragment at once, written as plainly as possible."""
    syms = list(text)
    alive = [True] * len(syms)
    heap = []

    def nxt(i):
        j = i + 1
        while j < len(syms) and not alive[j]:
            j += 1
        return j if j < len(syms) else -1

    def prv(i):
        j = i - 1
        while j >= 0 and not alive[j]:
            j -= 1
        return j

    def add(a, b):
        if a >= 0 and b >= 0 and syms[a] + syms[b] in vocab:
            t = vocab[syms[a] + syms[b]]
            heapq.heappush(heap, (-scores[t], a, b, len(syms[a]) + len(syms[b])))

    for i in range(len(syms) - 1):
        add(i, i + 1)
    while heap:
        _, a, b, n = heapq.heappop(heap)
        if not (alive[a] and alive[b]) or len(syms[a]) + len(syms[b]) != n:
            continue
        syms[a] += syms[b]
        alive[b] = False
        add(prv(a), a)
        add(a, nxt(a))
    out = []
    for s, ok in zip(syms, alive, strict=True):
        if ok:
            if s in vocab:
                out.append(vocab[s])
            else:
                out.extend(vocab[f"<0x{c:02X}>"] for c in s.encode())
    return out


def _ref_encode(text, tokens, scores, types, special, add_space_prefix=False):
    vocab = {t: i for i, t in enumerate(tokens)}
    specials = sorted((i for i, t in enumerate(types) if t in (2, 3, 4)), key=lambda i: (-len(tokens[i]), i))
    frags = [text] if text else []
    for sid in specials:
        if not special and types[sid] in (2, 3):
            continue
        out = []
        for f in frags:
            if isinstance(f, int):
                out.append(f)
                continue
            for j, part in enumerate(f.split(tokens[sid])):
                if j:
                    out.append(sid)
                if part:
                    out.append(part)
        frags = out
    ids, prev_special = [], True
    for f in frags:
        if isinstance(f, int):
            ids.append(f)
            prev_special = True
        else:
            f = (" " if add_space_prefix and prev_special else "") + f
            ids += _ref_spm(f.replace(" ", SP), vocab, scores)
            prev_special = False
    return ids


def _toy_vocab(seed: int):
    """A random vocabulary over a small alphabet: byte pieces, controls, user-defined, a bridging piece."""
    rng = np.random.default_rng(seed)
    alphabet = ["a", "b", "c", SP, "é", "\n"]
    tokens = ["<unk>", "<s>", "</s>", "<start>", "<start_x>"] + [f"<0x{b:02X}>" for b in range(256)]
    types = [2, 3, 3, 3, 3] + [6] * 256
    seen = set(tokens)
    for ch in alphabet[:-2]:
        tokens.append(ch)
        types.append(1)
        seen.add(ch)
    while len(tokens) < 420:
        w = "".join(rng.choice(alphabet[:5], size=int(rng.integers(2, 6))))
        if w not in seen:
            seen.add(w)
            tokens.append(w)
            types.append(1)
    for w in ("c" + SP + "a", "\n\n", "ab" + SP):  # two bridging pieces and a user-defined newline run
        if w not in seen:
            tokens.append(w)
            types.append(4 if w == "\n\n" else 1)
    perm = rng.permutation(len(tokens)).astype(float)
    scores = [-float(p) if rng.random() > 0.1 else -float(p // 4) for p in perm]  # some equal scores
    return tokens, scores, types


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("add_space_prefix", [False, True])
def test_spm_matches_reference_on_toy_vocab(seed, add_space_prefix):
    from edgerun.export.spm_format import dump_spm
    from edgerun.runtime.llm.spm_tokenizer import SpmTokenizer

    tokens, scores, types = _toy_vocab(seed)
    tok = SpmTokenizer(dump_spm(tokens, scores, types, add_space_prefix, 0))
    rng = np.random.default_rng(100 + seed)
    pool = ["a", "b", "c", " ", " ", "é", "\n", "z", "ü", "<start>", "<start_x>", "<s>", "\n\n", "c a", "ab "]
    for _ in range(150):
        text = "".join(rng.choice(pool, size=int(rng.integers(0, 40))))
        for special in (True, False):
            want = _ref_encode(text, tokens, scores, types, special, add_space_prefix)
            assert tok.encode(text, special=special) == want, (repr(text), special)
        if not add_space_prefix:  # (a prefix space is added after every special piece: no round trip)
            assert tok.decode(tok.encode(text)) == text


def test_spm_decode_bytes_and_specials():
    from edgerun.export.spm_format import dump_spm
    from edgerun.runtime.llm.spm_tokenizer import SpmTokenizer

    tokens, scores, types = _toy_vocab(0)
    tok = SpmTokenizer(dump_spm(tokens, scores, types, False, 0))
    ids = tok.encode("<s>ü€z")
    assert ids[0] == tokens.index("<s>")
    assert tok.decode(ids) == "<s>ü€z"
    assert tok.decode(ids, skip_special=True) == "ü€z"
    e = tok.encode("€")  # 3 byte pieces; a cut-off character decodes as U+FFFD per byte
    assert len(e) == 3 and tok.decode(e[:2]) == "\ufffd\ufffd"
    assert tok.token_to_id("<start_x>") == tokens.index("<start_x>") and tok.token_to_id("nope") is None


# ---------------------------------------------------------------- Gemma-3 (262k pieces)


@pytest.fixture(scope="module")
def gemma_files(gemma3_gguf, tmp_path_factory):
    from edgerun.export.gguf_reader import read_gguf
    from edgerun.export.tokenizer_builder import SpmFile, build_hf_tokenizer, build_tokenizer

    spec = read_gguf(gemma3_gguf, hash_source=False).tokenizer
    d = tmp_path_factory.mktemp("gemma-tok")
    compact = build_tokenizer(spec)
    assert isinstance(compact, SpmFile)
    (d / "compact.json").write_text(compact.to_str(), encoding="utf-8")
    (d / "hf.json").write_text(build_hf_tokenizer(spec).to_str(), encoding="utf-8")
    return d


_MEASURE = textwrap.dedent("""
    import json, sys, time
    from edgerun.runtime.memory import peak_rss_bytes, reset_peak_rss, rss_bytes
    from edgerun.runtime.llm.tokenizer import Tokenizer
    import numpy  # imported before measuring: the runtime has it loaded anyway
    reset_peak_rss()
    r0, t0 = rss_bytes(), time.perf_counter()
    with open(sys.argv[1], encoding="utf-8") as f:
        tok = Tokenizer(f.read(), {})
    dt = time.perf_counter() - t0
    ids = tok.encode("Hello, world! A first prompt to encode.")
    print(json.dumps({"rss": (rss_bytes() - r0) / 2**20, "peak": (peak_rss_bytes() - r0) / 2**20,
                      "load_s": dt, "n": len(ids)}))
""")


def _measure(path) -> dict:
    out = subprocess.run([sys.executable, "-c", _MEASURE, str(path)], capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.model
def test_gemma_tokenizer_rss_bound(gemma_files):
    m = _measure(gemma_files / "compact.json")
    print(f"\nGemma-3 compact tokenizer: RSS +{m['rss']:.1f} MB, peak +{m['peak']:.1f} MB, load {m['load_s']:.2f} s")
    assert m["n"] > 5
    assert m["rss"] < RSS_BOUND_MB
    assert m["peak"] < PEAK_BOUND_MB


@pytest.mark.model
def test_gemma_hf_path_matches_compact(gemma_files, wikitext):
    """Old artifacts hold a `tokenizers` JSON: it still loads, and (with one merge per formable piece)
    gives the compact tokenizer's ids."""
    from edgerun.runtime.llm.tokenizer import Tokenizer

    compact = Tokenizer((gemma_files / "compact.json").read_text(encoding="utf-8"), {})
    hf = Tokenizer((gemma_files / "hf.json").read_text(encoding="utf-8"), {})
    text = wikitext[:300000]
    assert compact.encode(text) == hf.encode(text)
    ids = compact.encode(text[:20000])
    assert compact.decode(ids) == hf.decode(ids) == text[:20000]
    assert compact.vocab_size == hf.vocab_size == 262144
    assert compact.token_to_id("<end_of_turn>") == hf.token_to_id("<end_of_turn>")
