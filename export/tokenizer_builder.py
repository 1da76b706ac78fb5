"""Build a Hugging Face `tokenizers` tokenizer from a GGUF vocabulary.

Two GGUF tokenizer models are covered, matching llama.cpp's `llama-vocab.cpp`:

- `gpt2`: byte-level BPE with explicit merges; the pre-tokenizer regex is chosen by
  `tokenizer.ggml.pre` (smollm, llama-bpe, qwen2, default gpt2).
- `llama`: SentencePiece-style BPE driven by piece scores (Gemma, Llama-2). llama.cpp
  merges the adjacent pair whose concatenation is the highest-scoring piece; a BPE
  whose merge ranks follow the merged piece's score does the same. Byte pieces
  (`<0x0A>`) are the byte fallback; spaces become U+2581.

Control tokens become special added tokens (matched only when special parsing is on);
user-defined tokens (e.g. Gemma's runs of newlines) are always matched on the raw
text, as llama.cpp's `tokenizer_st_partition` does.
"""

from __future__ import annotations

from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers

from .errors import UnsupportedError
from .source import TokenizerSpec

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


def spm_merges(tokens: list[str], scores: list[float], types: list[int]) -> list[tuple[str, str]]:
    """Merges equivalent to SentencePiece-BPE scoring: every split of a normal piece into two
    pieces that exist, ranked by the merged piece's score (highest first), ties by piece id."""
    vocab = {t: i for i, t in enumerate(tokens)}
    ranked = []
    for piece, pid in vocab.items():
        if types and types[pid] not in (NORMAL, USER_DEFINED) or len(piece) < 2:
            continue
        for k in range(1, len(piece)):
            left, right = piece[:k], piece[k:]
            lid, rid = vocab.get(left), vocab.get(right)
            if lid is not None and rid is not None:
                ranked.append((-scores[pid], pid, lid, left, right))
    ranked.sort()
    return [(left, right) for _, _, _, left, right in ranked]


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


def build_tokenizer(spec: TokenizerSpec) -> Tokenizer:
    """Return a `tokenizers.Tokenizer` whose ids equal llama.cpp's for the same GGUF vocabulary."""
    if spec.tokenizer_json is not None:
        return Tokenizer.from_str(spec.tokenizer_json)
    if spec.model == "gpt2":
        return _build_gpt2(spec)
    if spec.model == "llama":
        return _build_spm(spec)
    raise UnsupportedError(f"GGUF tokenizer model '{spec.model}' is not supported; supported: gpt2, llama")
