"""Read Hugging Face checkpoint folders without torch.

A folder holds `config.json`, one or more `*.safetensors` (f32 / f16 / bf16), and
`tokenizer.json` (+ `tokenizer_config.json` for the chat template and special tokens).
safetensors is a JSON header followed by raw little-endian tensors, so we read it
through a memory map; bf16 becomes f32 by a 16-bit shift (numpy has no bf16).

HF tensor names are mapped to edgerun's canonical (GGUF-style) names, and HF configs
to the architecture's `ModelArgs` keys. HF Q/K rows already use rotate-half RoPE,
edgerun's convention, so no permutation is needed. Gemma norms store `w - 1`; we add 1
(as llama.cpp's converter does).
"""

from __future__ import annotations

import json
import re
import struct
from pathlib import Path

import numpy as np

from .errors import CorruptFileError, EdgerunError, UnsupportedError
from .gguf_reader import file_sha256
from .source import SourceModel, SourceTensor, TokenizerSpec

ARCH_FROM_HF = {
    "LlamaForCausalLM": "llama",
    "MistralForCausalLM": "llama",
    "Qwen2ForCausalLM": "qwen2",
    "Gemma3ForCausalLM": "gemma3",
    "Gemma3ForConditionalGeneration": "gemma3",
}

_DTYPES = {"F32": np.float32, "F16": np.float16, "BF16": np.uint16, "F64": np.float64}

_LAYER_MAP = {
    "input_layernorm.weight": "attn_norm.weight",
    "self_attn.q_proj.weight": "attn_q.weight",
    "self_attn.k_proj.weight": "attn_k.weight",
    "self_attn.v_proj.weight": "attn_v.weight",
    "self_attn.q_proj.bias": "attn_q.bias",
    "self_attn.k_proj.bias": "attn_k.bias",
    "self_attn.v_proj.bias": "attn_v.bias",
    "self_attn.o_proj.weight": "attn_output.weight",
    "self_attn.q_norm.weight": "attn_q_norm.weight",
    "self_attn.k_norm.weight": "attn_k_norm.weight",
    "mlp.gate_proj.weight": "ffn_gate.weight",
    "mlp.up_proj.weight": "ffn_up.weight",
    "mlp.down_proj.weight": "ffn_down.weight",
    "pre_feedforward_layernorm.weight": "ffn_norm.weight",
    "post_feedforward_layernorm.weight": "post_ffw_norm.weight",
}
_GLOBAL_MAP = {
    "embed_tokens.weight": "token_embd.weight",
    "norm.weight": "output_norm.weight",
    "lm_head.weight": "output.weight",
}
_LAYER_RE = re.compile(r"^layers\.(\d+)\.(.+)$")


def canonical_name(hf_name: str, arch: str) -> str | None:
    """HF tensor name -> edgerun name (None for tensors edgerun does not use, e.g. vision towers)."""
    name = hf_name
    for prefix in ("language_model.", "model.language_model.", "model."):
        if name.startswith(prefix):
            name = name[len(prefix) :]
    if name.startswith("lm_head."):
        return _GLOBAL_MAP.get(name)
    m = _LAYER_RE.match(name)
    if m:
        layer, rest = m.groups()
        if rest == "post_attention_layernorm.weight":
            mapped = "post_attention_norm.weight" if arch == "gemma3" else "ffn_norm.weight"
        else:
            mapped = _LAYER_MAP.get(rest)
        return None if mapped is None else f"blk.{layer}.{mapped}"
    return _GLOBAL_MAP.get(name)


class SafetensorsFile:
    """Memory-mapped safetensors file: header parsed, tensors read on demand."""

    def __init__(self, path: Path):
        self.path = path
        size = path.stat().st_size
        with open(path, "rb") as f:
            raw = f.read(8)
            if len(raw) < 8:
                raise CorruptFileError(f"{path}: truncated safetensors file (no header)")
            (n,) = struct.unpack("<Q", raw)
            if n > size - 8 or n > 100_000_000:
                raise CorruptFileError(f"{path}: corrupt safetensors header length {n}; download it again")
            try:
                self.header = json.loads(f.read(n))
            except json.JSONDecodeError:
                raise CorruptFileError(f"{path}: corrupt safetensors header; download it again") from None
        self.header.pop("__metadata__", None)
        self.base = 8 + n
        for name, info in self.header.items():
            end = self.base + info["data_offsets"][1]
            if end > size:
                raise CorruptFileError(
                    f"{path}: truncated safetensors: tensor {name} ends at byte {end} but the file has {size}"
                )
        self._mm = np.memmap(path, dtype=np.uint8, mode="r")

    def read(self, name: str) -> np.ndarray:
        """Tensor as float32 (or its own float type), shape as stored."""
        info = self.header[name]
        dt = info["dtype"]
        if dt not in _DTYPES:
            raise UnsupportedError(f"{self.path}: tensor {name} has dtype {dt}; supported: F32, F16, BF16")
        a, b = info["data_offsets"]
        arr = self._mm[self.base + a : self.base + b].view(_DTYPES[dt]).reshape(info["shape"])
        if dt == "BF16":
            arr = (arr.astype(np.uint32) << 16).view(np.float32)
        return arr


def _config(cfg: dict, arch: str) -> dict:
    text = cfg.get("text_config", cfg)
    dim = int(text["hidden_size"])
    n_heads = int(text["num_attention_heads"])
    head_dim = int(text.get("head_dim") or dim // n_heads)
    out = {
        "dim": dim,
        "n_layers": int(text["num_hidden_layers"]),
        "n_heads": n_heads,
        "n_kv_heads": int(text.get("num_key_value_heads", n_heads)),
        "head_dim": head_dim,
        "ffn_dim": int(text["intermediate_size"]),
        "vocab_size": int(text["vocab_size"]),
        "norm_eps": float(text.get("rms_norm_eps", 1e-6)),
        "rope_theta": float(text.get("rope_theta", 10000.0)),
        "context_length": int(text.get("max_position_embeddings", 2048)),
        "tie_embeddings": bool(text.get("tie_word_embeddings", cfg.get("tie_word_embeddings", False))),
    }
    rs = text.get("rope_scaling")
    if rs and rs.get("rope_type", rs.get("type")) == "linear":
        out["rope_scaling"] = {"type": "linear", "factor": float(rs["factor"])}
    if arch == "gemma3":
        out["sliding_window"] = int(text.get("sliding_window", 512))
        out["sliding_window_pattern"] = int(text.get("sliding_window_pattern", 6))
        out["rope_local_theta"] = float(text.get("rope_local_base_freq", 10000.0))
        out["query_pre_attn_scalar"] = float(text.get("query_pre_attn_scalar", head_dim))
    return out


def _tokenizer(folder: Path) -> TokenizerSpec:
    tj = folder / "tokenizer.json"
    if not tj.exists():
        raise EdgerunError(f"{tj}: missing; a Hugging Face checkpoint needs its tokenizer.json")
    text = tj.read_text(encoding="utf-8")
    tcfg_path = folder / "tokenizer_config.json"
    tcfg = json.loads(tcfg_path.read_text(encoding="utf-8")) if tcfg_path.exists() else {}
    from tokenizers import Tokenizer

    tok = Tokenizer.from_str(text)

    def tid(key):
        v = tcfg.get(key)
        if isinstance(v, dict):
            v = v.get("content")
        return tok.token_to_id(v) if v else None

    template = tcfg.get("chat_template")
    jinja = folder / "chat_template.jinja"
    if template is None and jinja.exists():
        template = jinja.read_text(encoding="utf-8")
    extra = []
    gen = folder / "generation_config.json"
    if gen.exists():
        eos = json.loads(gen.read_text()).get("eos_token_id")
        extra = [int(e) for e in (eos if isinstance(eos, list) else [eos] if eos is not None else [])]
    return TokenizerSpec(
        model="hf",
        tokenizer_json=text,
        bos_token_id=tid("bos_token"),
        eos_token_id=tid("eos_token"),
        extra_eos_ids=extra,
        add_bos=bool(tcfg.get("add_bos_token", False)),
        chat_template=template,
    )


def read_hf(folder: str | Path) -> SourceModel:
    """Read a Hugging Face checkpoint folder into a `SourceModel` (tensors read lazily)."""
    folder = Path(folder)
    cfg_path = folder / "config.json"
    if not cfg_path.exists():
        raise EdgerunError(f"{folder}: not a Hugging Face checkpoint (no config.json)")
    try:
        cfg = json.loads(cfg_path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise CorruptFileError(f"{cfg_path}: not valid JSON ({e})") from None
    archs = cfg.get("architectures") or [cfg.get("model_type", "?")]
    arch = next((ARCH_FROM_HF[a] for a in archs if a in ARCH_FROM_HF), None)
    if arch is None:
        supported = ", ".join(sorted(set(ARCH_FROM_HF.values())))
        raise UnsupportedError(f"{folder}: architecture '{archs[0]}' is not supported; supported: {supported}")
    files = sorted(folder.glob("*.safetensors"))
    if not files:
        raise EdgerunError(f"{folder}: no *.safetensors weights found")
    st = [SafetensorsFile(f) for f in files]
    where: dict[str, tuple[SafetensorsFile, str]] = {}
    for f in st:
        for hf_name in f.header:
            name = canonical_name(hf_name, arch)
            if name is not None:
                where[name] = (f, hf_name)
    config = _config(cfg, arch)
    if "output.weight" not in where:
        config["tie_embeddings"] = True

    def tensors():
        for name, (f, hf_name) in where.items():
            w = np.asarray(f.read(hf_name), dtype=np.float32)
            if arch == "gemma3" and name.endswith("norm.weight"):
                w = w + 1.0
            yield SourceTensor(name, w, source_type=f.header[hf_name]["dtype"])

    return SourceModel(
        arch=arch,
        config=config,
        tokenizer=_tokenizer(folder),
        tensor_names=list(where),
        tensors=tensors,
        provenance={
            "source": str(folder.resolve()),
            "source_format": "hf-safetensors",
            "source_sha256": {f.path.name: file_sha256(f.path) for f in st},
        },
    )
