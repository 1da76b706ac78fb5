"""Tiny random-weight models per architecture, written both as a Hugging Face checkpoint
(bf16 safetensors) and as an F32 GGUF holding exactly the same numbers, so edgerun's HF path
can be checked against llama.cpp. The tokenizer is SmolLM2's (a real byte-level BPE)."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import numpy as np
from edgerun.export.hf_reader import _LAYER_MAP

DIMS = dict(dim=64, n_heads=4, n_kv_heads=2, head_dim=16, ffn_dim=128)
N_LAYERS = {"llama": 2, "qwen2": 2, "gemma3": 6}
HF_ARCH = {"llama": "LlamaForCausalLM", "qwen2": "Qwen2ForCausalLM", "gemma3": "Gemma3ForCausalLM"}


def to_bf16_bits(x: np.ndarray) -> np.ndarray:
    """float32 -> bf16 bit patterns (uint16), round to nearest even."""
    u = x.astype(np.float32).view(np.uint32)
    return ((u + 0x7FFF + ((u >> 16) & 1)) >> 16).astype(np.uint16)


def from_bf16_bits(b: np.ndarray) -> np.ndarray:
    return (b.astype(np.uint32) << 16).view(np.float32)


def write_safetensors(path: Path, tensors: dict[str, np.ndarray | tuple[str, np.ndarray]]) -> None:
    """Write safetensors: name -> uint16 bf16 bit patterns (stored as BF16), or (safetensors dtype, array)."""
    header, offset, blobs = {}, 0, []
    for name, item in tensors.items():
        dt, arr = item if isinstance(item, tuple) else ("BF16", item)
        raw = np.ascontiguousarray(arr).tobytes()
        header[name] = {"dtype": dt, "shape": list(arr.shape), "data_offsets": [offset, offset + len(raw)]}
        blobs.append(raw)
        offset += len(raw)
    h = json.dumps(header).encode()
    h += b" " * (-len(h) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(h)))
        f.write(h)
        for b in blobs:
            f.write(b)


def _hf_weights(arch: str, vocab: int, rng) -> dict[str, np.ndarray]:
    d, h, kv, hd, ff = (DIMS[k] for k in ("dim", "n_heads", "n_kv_heads", "head_dim", "ffn_dim"))

    def mat(n, k, s=0.08):
        return (rng.standard_normal((n, k)) * s).astype(np.float32)

    def vec(n, base):
        return (base + 0.1 * rng.standard_normal(n)).astype(np.float32)

    norm_base = 0.0 if arch == "gemma3" else 1.0  # gemma stores w - 1
    w = {"model.embed_tokens.weight": mat(vocab, d, 0.5), "model.norm.weight": vec(d, norm_base)}
    for i in range(N_LAYERS[arch]):
        p = f"model.layers.{i}."
        w[p + "input_layernorm.weight"] = vec(d, norm_base)
        w[p + "post_attention_layernorm.weight"] = vec(d, norm_base)
        w[p + "self_attn.q_proj.weight"] = mat(h * hd, d)
        w[p + "self_attn.k_proj.weight"] = mat(kv * hd, d)
        w[p + "self_attn.v_proj.weight"] = mat(kv * hd, d)
        w[p + "self_attn.o_proj.weight"] = mat(d, h * hd)
        w[p + "mlp.gate_proj.weight"] = mat(ff, d)
        w[p + "mlp.up_proj.weight"] = mat(ff, d)
        w[p + "mlp.down_proj.weight"] = mat(d, ff)
        if arch == "qwen2":
            for n, size in (("q", h * hd), ("k", kv * hd), ("v", kv * hd)):
                w[p + f"self_attn.{n}_proj.bias"] = vec(size, 0.0)
        if arch == "gemma3":
            w[p + "pre_feedforward_layernorm.weight"] = vec(d, 0.0)
            w[p + "post_feedforward_layernorm.weight"] = vec(d, 0.0)
            w[p + "self_attn.q_norm.weight"] = vec(hd, 0.0)
            w[p + "self_attn.k_norm.weight"] = vec(hd, 0.0)
    return {k: from_bf16_bits(to_bf16_bits(v)) for k, v in w.items()}  # exactly representable in bf16


def _hf_config(arch: str, vocab: int) -> dict:
    cfg = {
        "architectures": [HF_ARCH[arch]],
        "hidden_size": DIMS["dim"],
        "num_hidden_layers": N_LAYERS[arch],
        "num_attention_heads": DIMS["n_heads"],
        "num_key_value_heads": DIMS["n_kv_heads"],
        "head_dim": DIMS["head_dim"],
        "intermediate_size": DIMS["ffn_dim"],
        "vocab_size": vocab,
        "rms_norm_eps": 1e-6,
        "rope_theta": 10000.0,
        "max_position_embeddings": 2048,
        "tie_word_embeddings": True,
        "torch_dtype": "bfloat16",
    }
    if arch == "gemma3":
        cfg.update(sliding_window=8, rope_local_base_freq=10000.0, rope_theta=1000000.0,
                   query_pre_attn_scalar=DIMS["head_dim"], sliding_window_pattern=6)
    return cfg


GGUF_NAMES = _LAYER_MAP  # HF layer tensor names -> GGUF names, as the reader maps them


def _permute(w: np.ndarray, n_heads: int) -> np.ndarray:
    """convert_hf_to_gguf.py's llama Q/K row permutation (rotate-half -> interleaved pairs)."""
    return w.reshape(n_heads, 2, w.shape[0] // n_heads // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def _write_gguf(path: Path, arch: str, weights: dict[str, np.ndarray], tok_gguf: Path,
                chat_template: bool = True) -> None:
    import gguf

    reader = gguf.GGUFReader(str(tok_gguf))
    writer = gguf.GGUFWriter(str(path), arch)
    for field in reader.fields.values():
        if field.name.startswith("tokenizer.") and (chat_template or field.name != "tokenizer.chat_template"):
            vtype = field.types[0]
            sub = field.types[-1] if vtype == gguf.GGUFValueType.ARRAY else None
            writer.add_key_value(field.name, field.contents(), vtype, sub_type=sub)
    d = DIMS
    writer.add_context_length(2048)
    writer.add_embedding_length(d["dim"])
    writer.add_block_count(N_LAYERS[arch])
    writer.add_feed_forward_length(d["ffn_dim"])
    writer.add_head_count(d["n_heads"])
    writer.add_head_count_kv(d["n_kv_heads"])
    writer.add_key_length(d["head_dim"])
    writer.add_value_length(d["head_dim"])
    writer.add_layer_norm_rms_eps(1e-6)
    writer.add_rope_freq_base(1000000.0 if arch == "gemma3" else 10000.0)
    if arch == "gemma3":
        writer.add_sliding_window(8)
    for hf, arr in weights.items():
        name = hf.removeprefix("model.")
        if name == "embed_tokens.weight":
            gname = "token_embd.weight"
        elif name == "norm.weight":
            gname = "output_norm.weight"
        else:
            _, i, rest = name.split(".", 2)
            if rest == "post_attention_layernorm.weight":
                rest = "post_attention_norm.weight" if arch == "gemma3" else "ffn_norm.weight"
            else:
                rest = GGUF_NAMES[rest]
            gname = f"blk.{i}.{rest}"
        a = arr.copy()
        if arch == "gemma3" and gname.endswith("norm.weight"):
            a = a + 1.0
        if arch == "llama" and gname.endswith(("attn_q.weight", "attn_k.weight")):
            a = _permute(a, d["n_heads"] if "attn_q" in gname else d["n_kv_heads"])
        writer.add_tensor(gname, a.astype(np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def make_tiny(arch: str, out_dir: Path, tok_gguf: Path, seed: int = 0, chat_template: bool = True) -> tuple[Path, Path]:
    """Write `out_dir/hf-<arch>/` (HF checkpoint, bf16) and `out_dir/<arch>.gguf` (same weights, F32);
    `chat_template=False` leaves the GGUF without one (a base model)."""
    from edgerun.export.gguf_reader import read_gguf
    from edgerun.export.tokenizer_builder import build_tokenizer

    src = read_gguf(tok_gguf, hash_source=False)
    tok = build_tokenizer(src.tokenizer)
    vocab = len(src.tokenizer.tokens)
    rng = np.random.default_rng(seed)
    weights = _hf_weights(arch, vocab, rng)
    hf = out_dir / f"hf-{arch}"
    hf.mkdir(parents=True, exist_ok=True)
    write_safetensors(hf / "model.safetensors", {k: to_bf16_bits(v) for k, v in weights.items()})
    (hf / "config.json").write_text(json.dumps(_hf_config(arch, vocab)))
    (hf / "tokenizer.json").write_text(tok.to_str())
    (hf / "tokenizer_config.json").write_text(
        json.dumps({"bos_token": "<|im_start|>", "eos_token": "<|im_end|>", "add_bos_token": False,
                    "chat_template": src.tokenizer.chat_template})
    )
    gguf_path = out_dir / f"{arch}.gguf"
    _write_gguf(gguf_path, arch, weights, tok_gguf, chat_template)
    return hf, gguf_path
