"""A compact SentencePiece tokenizer that runs llama.cpp's own algorithm (`llm_tokenizer_spm`).

Why not `tokenizers`: a 262k-piece vocabulary (Gemma-3) held as a Rust BPE costs ~90 MB of
resident memory after loading (two hash maps of 262k strings, the merges, allocator slack) and
~370 MB at the peak of parsing its JSON. Here the vocabulary stays in a few flat arrays:

    blob     all pieces' UTF-8 bytes back to back      (~2.3 MB for Gemma-3)
    offsets  uint32 (n+1,): piece i = blob[offsets[i]:offsets[i+1]]
    scores   float32 (n,), types uint8 (n,) (llama.cpp token types, end-of-generation forced control)
    table    int32 (2^k,): open-addressing hash table, crc32(piece) -> id+1 (0 = empty)

so loading costs ~10 MB. Encoding follows llama.cpp step by step:

1. `tokenizer_st_partition`: special pieces (control/unknown only when `special`, user-defined
   always) cut the raw text, longest piece first; each raw fragment is tokenized by itself.
2. A space is prepended to a fragment at the start or after a special piece when the vocabulary
   says `add_space_prefix`; spaces become U+2581.
3. Bigram merging: symbols start as UTF-8 characters; the adjacent pair whose concatenation is the
   highest-scoring piece merges first (ties: leftmost) until no pair is a piece; characters that
   are not pieces become byte pieces (`<0xE6>`).

Speed: no piece of the vocabulary spans a boundary before a U+2581 that follows another character
(except the few `bridging` pieces listed in the file, whose occurrences keep the boundary), so no
merge can cross it: the text is cut into such words, each merged alone and cached (as `tokenizers`
caches words). Decoding matches the `tokenizers` pipeline the HF path used (U+2581 -> space,
byte pieces joined into UTF-8 with U+FFFD for invalid bytes, one leading space stripped when a
prefix space was added).
"""

from __future__ import annotations

import heapq
import json
import re
import zlib
from array import array

import numpy as np
from edgerun.export.spm_format import KIND, SPACE, VERSION, unpack

# llama.cpp token types (gguf TokenType)
NORMAL, UNKNOWN, CONTROL, USER_DEFINED, UNUSED, BYTE = 1, 2, 3, 4, 5, 6
CACHE_WORDS = 20000  # words kept in the encode cache before it is cleared
_WORDS = re.compile(f"{SPACE}*[^{SPACE}]+|{SPACE}+")
_BYTE_PIECE = re.compile(r"<0x([0-9A-Fa-f]{2})>")


def _crc_table() -> np.ndarray:
    t = np.arange(256, dtype=np.uint32)
    for _ in range(8):
        t = np.where(t & 1, (t >> 1) ^ np.uint32(0xEDB88320), t >> 1).astype(np.uint32)
    return t


def crc32_pieces(blob: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    """zlib.crc32 of every piece blob[offsets[i]:offsets[i+1]], vectorized over pieces. (n,) uint32"""
    table = _crc_table()
    lens = np.diff(offsets.astype(np.int64))
    order = np.argsort(-lens, kind="stable")  # longest first: the pieces still going form a prefix
    starts = offsets[:-1].astype(np.int64)[order]
    lens_sorted = lens[order]
    crc = np.full(len(lens), 0xFFFFFFFF, np.uint32)
    for j in range(int(lens.max(initial=0))):
        live = int(np.count_nonzero(lens_sorted > j))
        c = crc[:live]
        crc[:live] = table[(c ^ blob[starts[:live] + j]) & 0xFF] ^ (c >> 8)
    out = np.empty_like(crc)
    out[order] = crc ^ np.uint32(0xFFFFFFFF)
    return out


def _hash_table(blob: np.ndarray, offsets: np.ndarray) -> tuple[np.ndarray, int]:
    """Linear-probing table of crc32(piece) -> id+1 (0 = empty) and its mask; returns (table, mask).

    Built in one pass: pieces sorted by home slot take slot max(home, previous slot + 1), so every
    slot between a piece's home and its place is taken (a probe reaches it before an empty slot).
    The table runs past `mask` instead of wrapping. For equal pieces the highest id sits first, so a
    lookup returns it (llama.cpp's map keeps the last id of a repeated piece)."""
    n = len(offsets) - 1
    size = 1 << max(4, int(2 * n - 1).bit_length())  # load factor <= 1/2
    home = crc32_pieces(blob, offsets).astype(np.int64) & (size - 1)
    ids = np.arange(n, dtype=np.int64)
    order = np.lexsort((-ids, home))  # by home slot, then highest id first
    rank = np.arange(n, dtype=np.int64)
    place = rank + np.maximum.accumulate(home[order] - rank) if n else rank
    table = np.zeros(int(place.max(initial=size - 1)) + 2, np.int32)  # >= 1 empty slot at the end
    table[place] = order + 1
    return table, size - 1


class SpmTokenizer:
    """encode/decode with a compact SentencePiece vocabulary, token ids identical to llama.cpp."""

    def __init__(self, text: str):
        doc = json.loads(text)
        if doc.get(KIND) != VERSION:
            raise ValueError(f"not an {KIND} version {VERSION} tokenizer file")
        self.n = int(doc["n"])
        self.add_space_prefix = bool(doc["add_space_prefix"])
        self.unk_token_id = doc.get("unk_token_id")
        blob = unpack(doc["pieces"], np.uint8)
        offsets = unpack(doc["offsets"], np.uint32)
        self.types = unpack(doc["types"], np.uint8).copy()
        table, self._mask = _hash_table(blob, offsets)
        self.blob = blob.tobytes()
        # array.array: scalar indexing gives Python ints/floats fast on the hot path
        self._table = array("i", table.tobytes())
        self._offsets = array("I", offsets.tobytes())
        self._scores = array("f", unpack(doc["scores"], np.float32).tobytes())
        self._bridging = list(doc.get("bridging") or [])
        self._cache: dict[str, list[int]] = {}
        self._byte_ids = [self._lookup(f"<0x{b:02X}>".encode()) for b in range(256)]
        self._init_specials()

    # ---- vocabulary ------------------------------------------------------------------------
    def _lookup(self, key: bytes) -> int:
        """Id of the piece whose UTF-8 bytes are `key`, or -1."""
        table, offsets, blob, mask = self._table, self._offsets, self.blob, self._mask
        i = zlib.crc32(key) & mask
        n = len(key)
        while True:
            t = table[i]
            if t == 0:
                return -1
            o = offsets[t - 1]
            if offsets[t] - o == n and blob.startswith(key, o):
                return t - 1
            i += 1

    def piece(self, i: int) -> str:
        """Text of piece `i`."""
        return self.blob[self._offsets[i] : self._offsets[i + 1]].decode("utf-8")

    def token_to_id(self, text: str) -> int | None:
        """Id of the piece `text`, or None."""
        i = self._lookup(text.encode("utf-8"))
        return None if i < 0 else i

    def vocab_size(self) -> int:
        return self.n

    def _init_specials(self) -> None:
        """llama.cpp's `cache_special_tokens` (control, user-defined, unknown; longest first) and a
        regex that finds, at each position, the longest special piece starting there."""
        ids = np.flatnonzero(np.isin(self.types, (CONTROL, USER_DEFINED, UNKNOWN))).tolist()
        texts = {i: self.piece(i) for i in ids}
        ids = [i for i in ids if texts[i]]
        ids.sort(key=lambda i: (-len(texts[i].encode()), i))
        self._special_order = ids
        self._special_text = texts
        by_text: dict[str, list[int]] = {}
        for i in ids:
            by_text.setdefault(texts[i], []).append(i)
        self._special_by_text = by_text
        # every special piece that is a proper prefix of another (found at the same position)
        # every special piece that is a proper prefix of another (found at the same position)
        self._special_prefixes = {
            t: [t[:k] for k in range(1, len(t)) if t[:k] in by_text] for t in by_text
        }
        # candidates by their first two characters (longest first); one-character pieces apart
        self._buckets: dict[str, list[str]] = {}
        self._singles = {t for t in by_text if len(t) == 1}
        for t in by_text:
            if len(t) > 1:
                self._buckets.setdefault(t[:2], []).append(t)
        self._bucket_re: dict[str, re.Pattern] = {}
        keys = [*self._buckets, *sorted(self._singles)]
        self._special_re = re.compile("(?=(" + "|".join(map(re.escape, keys)) + "))", re.DOTALL) if keys else None

    def _longest_special(self, key: str, text: str, pos: int) -> str | None:
        """The longest special piece of bucket `key` at text[pos:], if any."""
        bucket = self._buckets[key]
        if len(bucket) <= 64:
            for t in bucket:
                if text.startswith(t, pos):
                    return t
            return None
        rx = self._bucket_re.get(key)
        if rx is None:  # a large bucket (Gemma-3's 6k `<unusedN>`): one trie regex, compiled on first use
            rx = self._bucket_re[key] = re.compile(_trie_regex(bucket), re.DOTALL)
        m = rx.match(text, pos)
        return m.group(0) if m else None

    def _specials_in(self, text: str) -> set[str]:
        """The special pieces that occur anywhere in `text`."""
        found: set[str] = set()
        for m in self._special_re.finditer(text):
            key, pos = m.group(1), m.start()
            t = self._longest_special(key, text, pos) if len(key) == 2 else None
            if t is None:
                t = text[pos] if text[pos] in self._singles else None
            if t is not None and t not in found:
                found.add(t)
                found.update(self._special_prefixes[t])
        return found

    # ---- encode ----------------------------------------------------------------------------
    def _partition(self, text: str, special: bool) -> list:
        """llama.cpp's `tokenizer_st_partition`: raw text fragments (str) and special ids (int)."""
        if self._special_re is None or not text:
            return [text] if text else []
        present = self._specials_in(text)
        frags: list = [text]
        if not present:
            return frags
        for tid in self._special_order:
            tok = self._special_text[tid]
            if tok not in present or (not special and self.types[tid] in (CONTROL, UNKNOWN)):
                continue
            if self._special_by_text[tok][0] != tid:
                continue  # a repeated special text: the first (as llama.cpp's order) takes the matches
            out: list = []
            for f in frags:
                if isinstance(f, int) or tok not in f:
                    out.append(f)
                    continue
                for j, part in enumerate(f.split(tok)):
                    if j:
                        out.append(tid)
                    if part:
                        out.append(part)
            frags = out
        return frags

    def encode(self, text: str, special: bool = True) -> list[int]:
        """Token ids of `text` (no BOS), as llama.cpp's `llama_tokenize(..., add_special=false, special)`."""
        out: list[int] = []
        prev_special = True
        for frag in self._partition(text, special):
            if isinstance(frag, int):
                out.append(frag)
                prev_special = True
                continue
            if self.add_space_prefix and prev_special:
                frag = " " + frag
            self._encode_raw(frag.replace(" ", SPACE), out)
            prev_special = False
        return out

    def _words(self, s: str) -> list[str]:
        """`s` cut before every U+2581 that follows another character, except inside bridging pieces."""
        words = _WORDS.findall(s)
        if len(words) < 2 or not self._bridging:
            return words
        keep: set[int] = set()  # cut positions that a bridging piece spans
        for b in self._bridging:
            i = s.find(b)
            while i >= 0:
                keep.update(range(i + 1, i + len(b)))
                i = s.find(b, i + 1)
        if not keep:
            return words
        out, pos = [words[0]], len(words[0])
        for w in words[1:]:
            if pos in keep:
                out[-1] += w
            else:
                out.append(w)
            pos += len(w)
        return out

    def _encode_raw(self, s: str, out: list[int]) -> None:
        cache = self._cache
        for w in self._words(s):
            ids = cache.get(w)
            if ids is None:
                ids = self._merge(w.encode("utf-8"))
                if len(cache) >= CACHE_WORDS:
                    cache.clear()
                cache[w] = ids
            out.extend(ids)

    def _merge(self, bs: bytes) -> list[int]:
        """llama.cpp's `llm_tokenizer_spm_session::tokenize` on one word's UTF-8 bytes."""
        starts = [i for i, b in enumerate(bs) if b & 0xC0 != 0x80]
        n = len(starts)
        if n == 0:
            return []
        lookup, scores = self._lookup, self._scores
        size = [b - a for a, b in zip(starts, [*starts[1:], len(bs)], strict=True)]  # bytes; 0 once merged away
        nxt = list(range(1, n + 1))
        prv = list(range(-1, n - 1))
        ids = [-2] * n  # piece id of a merged symbol (-2: not looked up yet)
        heap: list = []
        for i in range(n - 1):
            a = starts[i]
            t = lookup(bs[a : a + size[i] + size[i + 1]])
            if t >= 0:
                heap.append((-scores[t], i, i + 1, size[i] + size[i + 1], t))
        heapq.heapify(heap)
        pop, push = heapq.heappop, heapq.heappush
        while heap:
            _, left, right, both, t = pop(heap)
            if size[left] == 0 or size[right] == 0 or size[left] + size[right] != both:
                continue  # stale: one side merged since the pair was queued
            size[left], size[right] = both, 0
            ids[left] = t
            r = nxt[left] = nxt[right]
            if r < n:
                prv[r] = left
                a = starts[left]
                t = lookup(bs[a : a + both + size[r]])
                if t >= 0:
                    push(heap, (-scores[t], left, r, both + size[r], t))
            p = prv[left]
            if p >= 0:
                a = starts[p]
                t = lookup(bs[a : a + size[p] + both])
                if t >= 0:
                    push(heap, (-scores[t], p, left, size[p] + both, t))
        out = []
        i = 0
        while i < n:
            t = ids[i]
            if t == -2:
                a = starts[i]
                t = lookup(bs[a : a + size[i]])
            if t >= 0:
                out.append(t)
            else:  # a character that is no piece: its bytes as byte pieces (llama.cpp `resegment`)
                a = starts[i]
                out.extend(self._byte_id(c) for c in bs[a : a + size[i]])
            i = nxt[i]
        return out

    def _byte_id(self, c: int) -> int:
        t = self._byte_ids[c]
        if t < 0:
            t = self.unk_token_id if self.unk_token_id is not None else 0
        return t

    # ---- decode ----------------------------------------------------------------------------
    def is_special(self, i: int) -> bool:
        """Control or unknown piece (skipped by `decode(skip_special=True)`)."""
        return int(self.types[i]) in (CONTROL, UNKNOWN)

    def decode(self, ids, skip_special: bool = False) -> str:
        """Text of `ids`: U+2581 -> space, byte pieces joined as UTF-8 (U+FFFD per byte if invalid)."""
        parts: list[str] = []
        pending = bytearray()
        for i in ids:
            i = int(i)
            if not 0 <= i < self.n or (skip_special and self.is_special(i)):
                continue
            p = self.piece(i)
            m = _BYTE_PIECE.fullmatch(p)
            if m:
                pending.append(int(m.group(1), 16))
                continue
            if pending:
                parts.append(_bytes_text(pending))
                pending.clear()
            parts.append(p.replace(SPACE, " "))
        if pending:
            parts.append(_bytes_text(pending))
        text = "".join(parts)
        if self.add_space_prefix and text.startswith(" "):
            text = text[1:]
        return text


def _bytes_text(b: bytearray) -> str:
    try:
        return b.decode("utf-8")
    except UnicodeDecodeError:
        return "\ufffd" * len(b)


def _trie_regex(words: list[str]) -> str:
    """A regex matching the longest of `words` at a position (a prefix trie; longer paths tried first)."""
    trie: dict = {}
    for w in words:
        node = trie
        for ch in w:
            node = node.setdefault(ch, {})
        node[""] = {}

    def emit(node: dict) -> str:
        alts = [re.escape(ch) + emit(child) for ch, child in node.items() if ch]
        if "" in node:
            alts.append("")
        if len(alts) == 1:
            return alts[0]
        return "(?:" + "|".join(alts) + ")"

    return emit(trie)
