"""The compact SentencePiece tokenizer file an artifact stores for GGUF `llama`-model vocabularies.

A JSON document (kept in the artifact's tokenizer file, so its checksum and loading path stay the
same as for a `tokenizers` JSON), its arrays zlib-compressed and base64-encoded:

    {"edgerun-spm": 1, "n": N, "add_space_prefix": bool, "unk_token_id": int | null,
     "bridging": [pieces holding U+2581 after another character],
     "pieces": UTF-8 bytes of all pieces back to back, "offsets": uint32 (N+1,),
     "scores": float32 (N,), "types": uint8 (N,) llama.cpp token types}

runtime/llm/spm_tokenizer.py reads it; numpy only, so loading it never imports `tokenizers`.
"""

from __future__ import annotations

import base64
import json
import re
import zlib

import numpy as np

KIND = "edgerun-spm"
VERSION = 1
SPACE = "\u2581"


def pack(a: np.ndarray) -> str:
    """Array bytes -> zlib -> base64 text."""
    return base64.b64encode(zlib.compress(np.ascontiguousarray(a).tobytes(), 6)).decode("ascii")


def unpack(s: str, dtype) -> np.ndarray:
    """Inverse of `pack` (read-only array)."""
    return np.frombuffer(zlib.decompress(base64.b64decode(s)), dtype=dtype)


def is_spm_file(text: str) -> bool:
    """Whether a tokenizer file's text is this format (not a `tokenizers` JSON)."""
    return text[:100].lstrip().startswith(f'{{"{KIND}"')


def dump_spm(tokens: list[str], scores: list[float], types: list[int], add_space_prefix: bool,
             unk_token_id: int | None) -> str:
    """The file text of a SentencePiece vocabulary (`types`: llama.cpp's, after forcing
    end-of-generation pieces to control)."""
    raw = [t.encode("utf-8") for t in tokens]
    offsets = np.zeros(len(raw) + 1, np.uint32)
    offsets[1:] = np.cumsum([len(b) for b in raw])
    bridging = sorted({t for t in tokens if re.search(f"[^{SPACE}]{SPACE}", t)}, key=len, reverse=True)
    doc = {
        KIND: VERSION,
        "n": len(tokens),
        "add_space_prefix": bool(add_space_prefix),
        "unk_token_id": unk_token_id,
        "bridging": bridging,
        "pieces": pack(np.frombuffer(b"".join(raw), np.uint8)),
        "offsets": pack(offsets),
        "scores": pack(np.asarray(scores, np.float32)),
        "types": pack(np.asarray(types, np.uint8)),
    }
    return json.dumps(doc)
