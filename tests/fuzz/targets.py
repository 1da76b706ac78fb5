"""Fuzz targets: each takes the bytes of one input file and runs the reader the way a user's command would.

A target may raise `EdgerunError` (the one-line error the CLI prints); anything else is a crash.
Seeds are made here from small real-format files (gguf-py's writer, the artifact writer, soundfile),
so no binary seed needs to be stored; inputs that crashed once are kept in `regressions/<target>/`.

Targets:
- gguf:        a whole .gguf file -> read_gguf + build_tokenizer + every tensor dequantized
- artifact:    byte 0 picks the file (manifest raw / manifest re-signed / tokenizer re-signed / weights
               re-signed); the rest replaces it in a tiny real artifact -> Artifact + verify + Tokenizer.
               "Re-signed" renews the checksums so the fuzzer also reaches the structure checks behind them.
- safetensors: byte 0 picks model.safetensors or config.json of a tiny HF checkpoint -> read_hf + tensors
- ct2:         a whole CTranslate2 model.bin -> read_ct2_bin
- audio:       a WAV/FLAC file -> read_audio
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import struct
import tempfile
import zlib
from pathlib import Path

import numpy as np

WORK = Path(tempfile.mkdtemp(prefix="edgerun-fuzz-"))

# a tiny byte-level BPE vocabulary: the 256 byte symbols, a few merges, two control tokens
_BYTES = None


def _byte_symbols() -> list[str]:
    global _BYTES
    if _BYTES is None:
        from tokenizers.pre_tokenizers import ByteLevel

        _BYTES = sorted(ByteLevel.alphabet())
    return _BYTES


def tiny_vocab() -> tuple[list[str], list[str], list[int]]:
    """(tokens, merges, token types) of a small byte-level BPE (the shape of SmolLM2's)."""
    toks = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", *_byte_symbols()]
    merges = ["Ġ t", "h e", "Ġt he", "i n", "a n", "Ġ a"]
    for m in merges:
        toks.append(m.replace(" ", ""))
    types = [3, 3, 3] + [1] * (len(toks) - 3)
    return toks, merges, types


DIM, HEADS, KV, HD, FFN, LAYERS = 32, 2, 1, 16, 64, 2


def tiny_weights(vocab: int, seed: int = 0) -> dict[str, np.ndarray]:
    """GGUF-named float32 weights of a 2-layer llama (dim 32)."""
    rng = np.random.default_rng(seed)
    w = {"token_embd.weight": rng.standard_normal((vocab, DIM)).astype(np.float32),
         "output_norm.weight": np.ones(DIM, np.float32)}  # fmt: skip
    for i in range(LAYERS):
        p = f"blk.{i}."
        w[p + "attn_norm.weight"] = np.ones(DIM, np.float32)
        w[p + "ffn_norm.weight"] = np.ones(DIM, np.float32)
        w[p + "attn_q.weight"] = rng.standard_normal((HEADS * HD, DIM)).astype(np.float32) * 0.1
        w[p + "attn_k.weight"] = rng.standard_normal((KV * HD, DIM)).astype(np.float32) * 0.1
        w[p + "attn_v.weight"] = rng.standard_normal((KV * HD, DIM)).astype(np.float32) * 0.1
        w[p + "attn_output.weight"] = rng.standard_normal((DIM, HEADS * HD)).astype(np.float32) * 0.1
        w[p + "ffn_gate.weight"] = rng.standard_normal((FFN, DIM)).astype(np.float32) * 0.1
        w[p + "ffn_up.weight"] = rng.standard_normal((FFN, DIM)).astype(np.float32) * 0.1
        w[p + "ffn_down.weight"] = rng.standard_normal((DIM, FFN)).astype(np.float32) * 0.1
    return w


def tiny_gguf_bytes(quantized: bool = True) -> bytes:
    """A complete tiny llama GGUF (~60 kB): metadata, a byte-level BPE vocabulary, F32 + Q8_0/Q4_0 tensors."""
    import gguf

    path = WORK / "seed.gguf"
    toks, merges, types = tiny_vocab()
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_context_length(256)
    w.add_embedding_length(DIM)
    w.add_block_count(LAYERS)
    w.add_feed_forward_length(FFN)
    w.add_head_count(HEADS)
    w.add_head_count_kv(KV)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_rope_freq_base(10000.0)
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("smollm")
    w.add_token_list(toks)
    w.add_token_types(types)
    w.add_token_merges(merges)
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    for name, a in tiny_weights(len(toks)).items():
        if quantized and name.endswith(("ffn_up.weight", "attn_v.weight")):
            qt = gguf.GGMLQuantizationType.Q8_0 if "ffn" in name else gguf.GGMLQuantizationType.Q4_0
            w.add_tensor(name, gguf.quants.quantize(a, qt), raw_dtype=qt)
        else:
            w.add_tensor(name, a)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path.read_bytes()


def _write(name: str, data: bytes) -> Path:
    p = WORK / name
    p.write_bytes(data)
    return p


# ----------------------------------------------------------------------------- gguf


def gguf_target(data: bytes) -> None:
    """read_gguf + the tokenizer build + every tensor, as `edgerun export` does."""
    from edgerun.export.gguf_reader import read_gguf
    from edgerun.export.tokenizer_builder import build_tokenizer

    src = read_gguf(_write("in.gguf", data), hash_source=False)
    build_tokenizer(src.tokenizer)
    for t in src.tensors():
        assert t.data.dtype == np.float32


# ----------------------------------------------------------------------------- artifact

_ART = WORK / "base.edge"
_FILES = ("manifest.json", "manifest.json", "tokenizer.json", "weights.bin")


def _base_artifact() -> Path:
    if not (_ART / "manifest.json").exists():
        from edgerun.export.exporter import export

        export(_write("art.gguf", tiny_gguf_bytes()), _ART, weights="int4", onnx=False)
        # the seeds (and any crash input kept from them) name no path of this machine
        m = json.loads((_ART / "manifest.json").read_text())
        m["provenance"]["source"] = "art.gguf"
        _resign(_ART, m)
    return _ART


def artifact_seeds() -> list[bytes]:
    """One seed per mode: the real file behind its mode byte."""
    base = _base_artifact()
    return [bytes([i]) + (base / f).read_bytes() for i, f in enumerate(_FILES)]


def _resign(folder: Path, manifest: dict) -> None:
    from edgerun.export.artifact import write_manifest

    manifest["files"]["tokenizer.json"]["crc32"] = zlib.crc32((folder / "tokenizer.json").read_bytes())
    write_manifest(folder, manifest)


def artifact_target(data: bytes) -> None:
    """Open a tiny real artifact with one file replaced by `data[1:]` (`data[0]` picks which, see module doc)."""
    from edgerun.export.artifact import Artifact
    from edgerun.runtime.llm.tokenizer import Tokenizer

    if not data:
        return
    base = _base_artifact()
    mode, body = data[0] % 4, data[1:]
    d = WORK / "fuzz.edge"
    shutil.rmtree(d, ignore_errors=True)
    shutil.copytree(base, d)
    (d / _FILES[mode]).write_bytes(body)
    if mode == 1:  # a manifest edited and re-signed: only the structure checks stand in the way
        try:
            m = json.loads(body.decode("utf-8"))
        except (ValueError, RecursionError):
            return
        if not isinstance(m, dict) or not isinstance(m.get("files"), dict) or not isinstance(
            m["files"].get("tokenizer.json"), dict
        ):
            m = {"not": "a manifest"} if not isinstance(m, dict) else m
            from edgerun.export.artifact import write_manifest

            write_manifest(d, m)
        else:
            _resign(d, m)
    elif mode in (2, 3):  # tokenizer / weights changed and their checksums renewed
        m = json.loads((base / "manifest.json").read_text())
        if mode == 3:
            m["files"]["weights.bin"]["nbytes"] = len(body)
            for e in m["tensors"].values():
                for info in e["parts"].values():
                    raw = body[info["offset"] : info["offset"] + info["nbytes"]]
                    info["crc32"] = zlib.crc32(raw)
        _resign(d, m)
    art = Artifact(d)
    art.verify()
    for name in art.tensors:
        art.tensor(name)
    Tokenizer(art.tokenizer_json(), art.tokenizer_info(), source=str(d / "tokenizer.json")).encode("Hello")


# ----------------------------------------------------------------------------- safetensors / HF


def _tiny_hf(folder: Path) -> None:
    from edgerun.export.source import TokenizerSpec
    from edgerun.export.tokenizer_builder import build_tokenizer

    folder.mkdir(parents=True, exist_ok=True)
    toks, merges, types = tiny_vocab()
    tok = build_tokenizer(TokenizerSpec(model="gpt2", pre="smollm", tokens=toks, merges=merges, token_types=types))
    (folder / "tokenizer.json").write_text(tok.to_str())
    hf_names = {"token_embd.weight": "model.embed_tokens.weight", "output_norm.weight": "model.norm.weight"}
    from edgerun.export.hf_reader import _LAYER_MAP

    inv = {v: k for k, v in _LAYER_MAP.items()}
    header, blobs, off = {}, [], 0
    for name, a in tiny_weights(len(toks)).items():
        if name.startswith("blk."):
            _, i, rest = name.split(".", 2)
            hf = f"model.layers.{i}." + ("post_attention_layernorm.weight" if rest == "ffn_norm.weight" else inv[rest])
        else:
            hf = hf_names[name]
        raw = a.astype(np.float16).tobytes()
        header[hf] = {"dtype": "F16", "shape": list(a.shape), "data_offsets": [off, off + len(raw)]}
        blobs.append(raw)
        off += len(raw)
    h = json.dumps(header).encode()
    (folder / "model.safetensors").write_bytes(struct.pack("<Q", len(h)) + h + b"".join(blobs))
    cfg = {"architectures": ["LlamaForCausalLM"], "hidden_size": DIM, "num_hidden_layers": LAYERS,
           "num_attention_heads": HEADS, "num_key_value_heads": KV, "head_dim": HD, "intermediate_size": FFN,
           "vocab_size": len(toks), "rms_norm_eps": 1e-5, "max_position_embeddings": 256,
           "tie_word_embeddings": True}  # fmt: skip
    (folder / "config.json").write_text(json.dumps(cfg))
    (folder / "tokenizer_config.json").write_text(json.dumps({"bos_token": "<|im_start|>", "eos_token": "<|im_end|>"}))


_HF_BASE = WORK / "hf-base"
_HF_FILES = ("model.safetensors", "config.json")


def safetensors_seeds() -> list[bytes]:
    if not (_HF_BASE / "config.json").exists():
        _tiny_hf(_HF_BASE)
    return [bytes([i]) + (_HF_BASE / f).read_bytes() for i, f in enumerate(_HF_FILES)]


def safetensors_target(data: bytes) -> None:
    """read_hf on a tiny real checkpoint with model.safetensors or config.json replaced (data[0] picks)."""
    from edgerun.export.hf_reader import read_hf

    if not data:
        return
    if not (_HF_BASE / "config.json").exists():
        _tiny_hf(_HF_BASE)
    d = WORK / "hf"
    shutil.rmtree(d, ignore_errors=True)
    shutil.copytree(_HF_BASE, d)
    (d / _HF_FILES[data[0] % 2]).write_bytes(data[1:])
    src = read_hf(d)
    for t in src.tensors():
        assert t.data.dtype == np.float32


# ----------------------------------------------------------------------------- CTranslate2


def ct2_seed() -> bytes:
    """A small CTranslate2 model.bin (version 6): a few variables of each dtype and an alias."""

    def s(text: str) -> bytes:
        b = text.encode() + b"\0"
        return struct.pack("<H", len(b)) + b

    out = struct.pack("<I", 6) + s("WhisperSpec") + struct.pack("<I", 3)
    vars_ = [("encoder/conv1/weight", np.ones((4, 2, 3), np.float16), 4), ("encoder/scale", np.ones(3, np.float32), 0),
             ("decoder/ids", np.arange(5, dtype=np.int32), 3), ("decoder/q", np.ones((2, 2), np.int8), 1)]  # fmt: skip
    out += struct.pack("<I", len(vars_))
    for name, a, tid in vars_:
        raw = a.tobytes()
        out += s(name) + struct.pack("<B", a.ndim) + struct.pack(f"<{a.ndim}I", *a.shape)
        out += struct.pack("<B", tid) + struct.pack("<I", len(raw)) + raw
    return out + struct.pack("<I", 1) + s("decoder/alias") + s("encoder/scale")


def ct2_target(data: bytes) -> None:
    """read_ct2_bin on a model.bin."""
    from edgerun.export.ct2 import read_ct2_bin

    read_ct2_bin([str(_write("model.bin", data))])


# ----------------------------------------------------------------------------- audio


def audio_seeds() -> list[bytes]:
    import soundfile as sf

    t = np.arange(1600) / 16000
    x = (0.3 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)
    out = []
    for fmt, sub in (("WAV", "PCM_16"), ("FLAC", "PCM_16"), ("WAV", "FLOAT")):
        b = io.BytesIO()
        sf.write(b, np.stack([x, x], 1) if fmt == "FLAC" else x, 16000, format=fmt, subtype=sub)
        out.append(b.getvalue())
    return out


def audio_target(data: bytes) -> None:
    """read_audio on a file, then the mono conversion every caller does."""
    from edgerun.runtime.audio.wavio import read_audio, to_mono

    x, sr = read_audio(str(_write("in.audio", data)))
    to_mono(x)


TARGETS = {
    "gguf": (gguf_target, lambda: [tiny_gguf_bytes(), tiny_gguf_bytes(quantized=False)]),
    "artifact": (artifact_target, artifact_seeds),
    "safetensors": (safetensors_target, safetensors_seeds),
    "ct2": (ct2_target, lambda: [ct2_seed()]),
    "audio": (audio_target, audio_seeds),
}


def regression_dir(target: str) -> Path:
    """Inputs that once crashed `target` (kept as regression cases)."""
    return Path(__file__).parent / "regressions" / target


def digest(data: bytes) -> str:
    return hashlib.sha1(data).hexdigest()[:16]


def cleanup() -> None:
    shutil.rmtree(WORK, ignore_errors=True)


os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
