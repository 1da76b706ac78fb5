"""Token ids equal llama.cpp's on the same GGUF vocabulary (BPE for SmolLM2, SentencePiece for Gemma-3)."""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.model

HARD = [
    "",
    " ",
    "  leading spaces",
    "trailing spaces   ",
    "Hello, world!",
    "emoji 😀🎉👍🏽 and ZWJ 👨‍👩‍👧",
    "CJK: 日本語のテキスト, 中文, 한국어",
    "digits 1234567890 3.14159 1e-10 -42",
    "code: def f(x):\n    return x**2  # square\n\tindent",
    "newlines\n\n\nand\r\nCRLF",
    "<|im_start|>user\nHi<|im_end|>\n",
    "<start_of_turn>user\nHi<end_of_turn>\n",
    "<s></s><bos><eos><unk>",
    "ümlauts, accents: café naïve façade, Ελληνικά, русский",
    "URLs https://example.com/a?b=c&d=e#f and emails a.b@c.de",
    "'s 't 're 've 'm 'll 'd  I'M YOU'RE",
    "\u00a0non-breaking\u2009thin\u200bzero-width",
    "a" * 300,
]


@pytest.fixture(scope="module", params=["smollm2", "gemma3"])
def pair(request, llama_cpp, smollm2_gguf, gemma3_gguf):
    from edgerun.export.gguf_reader import read_gguf
    from edgerun.export.tokenizer_builder import build_tokenizer
    from edgerun.runtime.llm.tokenizer import Tokenizer

    path = smollm2_gguf if request.param == "smollm2" else gemma3_gguf
    src = read_gguf(path, hash_source=False)
    info = {"bos_token_id": src.tokenizer.bos_token_id, "add_bos": src.tokenizer.add_bos}
    ours = Tokenizer(build_tokenizer(src.tokenizer).to_str(), info)
    peer = llama_cpp.Llama(str(path), vocab_only=True, verbose=False)
    return ours, peer


def _peer_ids(peer, text: str, special: bool = True) -> list[int]:
    return peer.tokenize(text.encode("utf-8"), add_bos=False, special=special)


@pytest.mark.parametrize("special", [True, False])
def test_hard_strings_match_llama_cpp(pair, special):
    ours, peer = pair
    for text in HARD:
        assert ours.encode(text, add_bos=False, special=special) == _peer_ids(peer, text, special), repr(text)


def test_whole_wikitext_matches_llama_cpp(pair, wikitext):
    ours, peer = pair
    a = ours.encode(wikitext, add_bos=False)
    b = _peer_ids(peer, wikitext)
    assert len(a) == len(b)
    assert a == b


def test_decode_round_trip(pair, wikitext):
    ours, _ = pair
    text = wikitext[:20000]
    assert ours.decode(ours.encode(text, add_bos=False)) == text
