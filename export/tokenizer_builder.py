"""Build a Hugging Face `tokenizers` tokenizer from a GGUF vocabulary.

Two GGUF tokenizer models are covered, matching llama.cpp's `llama-vocab.cpp`:

- `gpt2`: byte-level BPE with explicit merges; the pre-tokenizer regex is chosen by
  `tokenizer.ggml.pre` (smollm, llama-bpe, qwen2, default gpt2).
- `llama`: SentencePiece vocabularies driven by piece scores (Gemma, Llama-2). llama.cpp
  merges the adjacent pair whose concatenation is the highest-scoring piece. Artifacts store
  these as the compact file of export/spm_format.py, which runtime/llm/spm_tokenizer.py runs with
  llama.cpp's own algorithm (~10 MB resident for Gemma-3's 262k pieces). `build_hf_tokenizer`
  still gives an equivalent `tokenizers` BPE (one merge per piece the algorithm can form,
  ranked by score); byte pieces (`<0x0A>`) are the byte fallback; spaces become U+2581.

Control tokens become special added tokens (matched only when special parsing is on);
user-defined tokens (e.g. Gemma's runs of newlines) are always matched on the raw
text, as llama.cpp's `tokenizer_st_partition` does.
"""

from __future__ import annotations

import heapq

from edgerun.errors import CorruptFileError, EdgerunError, UnsupportedError
from edgerun.export.source import TokenizerSpec
from edgerun.export.spm_format import dump_spm
from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers

# llama.cpp token types (llama_token_type / gguf TokenType)
NORMAL, UNKNOWN, CONTROL, USER_DEFINED, UNUSED, BYTE = 1, 2, 3, 4, 5, 6

GPT2_REGEX = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)"
LLAMA3_REGEX = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)
QWEN2_REGEX = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)


# End-of-generation tokens llama.cpp recognises by text; it also forces them to control type.
EOG_TEXTS = (
    "<|eot_id|>",
    "<|im_end|>",
    "<|end|>",
    "<end_of_turn>",
    "<|endoftext|>",
    "<|eom_id|>",
    "<EOT>",
    "_<EOT>",
    "<|end_of_text|>",
    "</s>",
    "<end_of_utterance>",
)


def _split(regex: str) -> pre_tokenizers.PreTokenizer:
    return pre_tokenizers.Split(Regex(regex), behavior="isolated", invert=False)


def _byte_level_pre(pre: str) -> pre_tokenizers.PreTokenizer:
    """The pre-tokenizer llama.cpp uses for a given `tokenizer.ggml.pre` name."""
    byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    if pre in ("smollm", "starcoder", "refact", "codeshell", "command-r", "exaone", "minerva"):
        return pre_tokenizers.Sequence(
            [pre_tokenizers.Digits(individual_digits=True), _split(GPT2_REGEX), byte_level]
        )
    if pre in ("llama-bpe", "llama3", "falcon3", "pixtral"):
        return pre_tokenizers.Sequence([_split(LLAMA3_REGEX), byte_level])
    if pre in ("qwen2", "deepseek-r1-qwen", "stablelm2", "hunyuan", "megrez"):
        return pre_tokenizers.Sequence([_split(QWEN2_REGEX), byte_level])
    if pre in ("default", "gpt-2", "gpt2", "phi-2", "jina-es", "jina-de", "roberta-bpe"):
        return pre_tokenizers.Sequence([_split(GPT2_REGEX), byte_level])
    raise UnsupportedError(
        f"GGUF pre-tokenizer '{pre}' is not supported; supported: smollm, llama-bpe, qwen2, gpt2"
    )


def _add_special_tokens(tok: Tokenizer, spec: TokenizerSpec) -> None:
    types = spec.token_types or []
    added = []
    for i, t in enumerate(types):
        if t in (CONTROL, UNKNOWN) or spec.tokens[i] in EOG_TEXTS:
            added.append(AddedToken(spec.tokens[i], special=True, normalized=False))
        elif t == USER_DEFINED:
            added.append(AddedToken(spec.tokens[i], special=False, normalized=False))
    # add_tokens keeps the ids already in the vocabulary; special flag is kept per token.
    tok.add_tokens(added)


def _build_gpt2(spec: TokenizerSpec) -> Tokenizer:
    vocab = {t: i for i, t in enumerate(spec.tokens)}
    merges = [tuple(m.split(" ", 1)) for m in (spec.merges or [])]
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges, fuse_unk=False, byte_fallback=False))
    tok.pre_tokenizer = _byte_level_pre(spec.pre)
    tok.decoder = decoders.ByteLevel()
    _add_special_tokens(tok, spec)
    return tok


def _spm_last_merge(text: str, vocab: dict[str, int], scores: list[float]) -> tuple[str, str] | None:
    """Run llama.cpp's SentencePiece bigram merging (`llm_tokenizer_spm`) on `text` alone; return the
    (left, right) pair of its final merge when the whole text ends as one symbol, else None.

    Symbols start as characters; the valid adjacent pair whose concatenation is the highest-scoring
    vocabulary piece merges first (ties: leftmost), until no adjacent pair forms a piece.
    """
    n = len(text)
    size = [1] * n  # characters held by the symbol starting at i (0 once absorbed to its left)
    prev, nxt = list(range(-1, n - 1)), list(range(1, n + 1))
    heap: list[tuple[float, int, int, int]] = []

    def push(left: int, right: int) -> None:
        if left >= 0 and right < n:
            tid = vocab.get(text[left : right + size[right]])
            if tid is not None:
                heapq.heappush(heap, (-scores[tid], left, right, size[left] + size[right]))

    for i in range(n - 1):
        push(i, i + 1)
    last = None
    while heap:
        _, left, right, both = heapq.heappop(heap)
        if size[left] == 0 or size[right] == 0 or size[left] + size[right] != both:
            continue  # stale: one side has merged since this pair was queued
        last = (text[left:right], text[right : right + size[right]])
        size[left], size[right] = both, 0
        nxt[left] = nxt[right]
        if nxt[right] < n:
            prev[nxt[right]] = left
        push(prev[left], left)
        push(left, nxt[left])
    return last if size[0] == n else None


def spm_merges(tokens: list[str], scores: list[float], types: list[int]) -> list[tuple[str, str]]:
    """BPE merges equivalent to llama.cpp's SentencePiece bigram tokenizer, one per piece it can form.

    Whenever the bigram algorithm forms a piece inside any text, every merge inside that piece's
    span happened before any merge across it, in the same order as for the piece's text alone
    (each was the best valid pair of the span at its time). So a piece is only ever formed by one
    split: the last merge of its own text run alone. Listing that split (and only for pieces the
    run forms whole) gives the same ids as listing every split, with about half the merges
    (Gemma-3: 236k instead of 515k), which halves the tokenizer's size and load memory.
    Ranks follow the piece's score (highest first), ties by piece id.
    """
    vocab = {t: i for i, t in enumerate(tokens)}
    ranked = []
    for pid, piece in enumerate(tokens):
        if types and types[pid] not in (NORMAL, USER_DEFINED) or len(piece) < 2:
            continue
        split = _spm_last_merge(piece, vocab, scores)
        # a part that is not a piece is a character llama.cpp keeps but `tokenizers` byte-falls-back
        if split is not None and split[0] in vocab and split[1] in vocab:
            ranked.append((-scores[pid], pid, split))
    ranked.sort()
    return [split for _, _, split in ranked]


def _build_spm(spec: TokenizerSpec) -> Tokenizer:
    if spec.scores is None:
        raise UnsupportedError("SentencePiece GGUF vocabulary has no scores (tokenizer.ggml.scores)")
    vocab = {t: i for i, t in enumerate(spec.tokens)}
    types = spec.token_types or [NORMAL] * len(spec.tokens)
    unk = spec.tokens[spec.unk_token_id] if spec.unk_token_id is not None else None
    bpe = models.BPE(
        vocab=vocab,
        merges=spm_merges(spec.tokens, spec.scores, types),
        unk_token=unk,
        fuse_unk=True,
        byte_fallback=True,
    )
    tok = Tokenizer(bpe)
    norms = [normalizers.Replace(" ", "\u2581")]
    if spec.add_space_prefix:
        norms.insert(0, normalizers.Prepend("\u2581"))
    tok.normalizer = normalizers.Sequence(norms)
    decs = [decoders.Replace("\u2581", " "), decoders.ByteFallback(), decoders.Fuse()]
    if spec.add_space_prefix:
        decs.append(decoders.Strip(content=" ", left=1, right=0))
    tok.decoder = decoders.Sequence(decs)
    _add_special_tokens(tok, spec)
    return tok


class SpmFile:
    """The compact SentencePiece tokenizer file (runtime/llm/spm_tokenizer.py) of a GGUF vocabulary, with
    the two look-ups the exporter needs; `to_str()` is the artifact's tokenizer file text."""

    def __init__(self, spec: TokenizerSpec):
        if spec.scores is None:
            raise UnsupportedError("SentencePiece GGUF vocabulary has no scores (tokenizer.ggml.scores)")
        types = list(spec.token_types or [NORMAL] * len(spec.tokens))
        for i, t in enumerate(spec.tokens):  # llama.cpp forces end-of-generation pieces to control
            if t in EOG_TEXTS and types[i] != CONTROL:
                types[i] = CONTROL
        self.tokens = spec.tokens
        self._ids = {t: i for i, t in enumerate(spec.tokens)}
        self._text = dump_spm(spec.tokens, spec.scores, types, spec.add_space_prefix, spec.unk_token_id)

    def to_str(self) -> str:
        return self._text

    def token_to_id(self, text: str) -> int | None:
        return self._ids.get(text)

    def id_to_token(self, i: int) -> str | None:
        return self.tokens[i] if 0 <= i < len(self.tokens) else None


def build_hf_tokenizer(spec: TokenizerSpec) -> Tokenizer:
    """A `tokenizers.Tokenizer` whose ids equal llama.cpp's for the same GGUF vocabulary (SentencePiece
    vocabularies as a BPE with one merge per formable piece, see `spm_merges`)."""
    if spec.tokenizer_json is not None:
        return Tokenizer.from_str(spec.tokenizer_json)
    if spec.model == "gpt2":
        return _build_gpt2(spec)
    if spec.model == "llama":
        return _build_spm(spec)
    raise UnsupportedError(f"GGUF tokenizer model '{spec.model}' is not supported; supported: gpt2, llama")


def build_tokenizer(spec: TokenizerSpec) -> Tokenizer | SpmFile:
    """The tokenizer an artifact stores: SentencePiece vocabularies (GGUF `llama` model: Gemma,
    Llama-2) as the compact `SpmFile` (runtime/llm/spm_tokenizer.py runs llama.cpp's algorithm on it in
    ~10 MB instead of ~90-370 MB for a 262k-piece `tokenizers` BPE); everything else as a
    `tokenizers.Tokenizer`. Both have `to_str()` and `token_to_id()`; ids equal llama.cpp's.
    A vocabulary `tokenizers` rejects (it raises a bare Exception) is a one-line CorruptFileError."""
    try:
        if spec.tokenizer_json is None and spec.model == "llama":
            return SpmFile(spec)
        return build_hf_tokenizer(spec)
    except EdgerunError:
        raise
    except Exception as e:  # tokenizers: "Error while initializing BPE: Token ... out of vocabulary", bad JSON
        first = (str(e).splitlines() or [type(e).__name__])[0][:120]
        raise CorruptFileError(f"{spec.source or 'the source model'}: its tokenizer cannot be built ({first}); "
                               "the file is corrupt, download it again") from None  # fmt: skip
