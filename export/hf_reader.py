"""Read Hugging Face checkpoint folders without torch.

A folder holds `config.json`, one or more `*.safetensors` (f32 / f16 / bf16), and
`tokenizer.json` (+ `tokenizer_config.json` for the chat template and special tokens).
safetensors is a JSON header followed by raw little-endian tensors, so we read it
through a memory map; bf16 becomes f32 by a 16-bit shift (numpy has no bf16).

HF tensor names are mapped to edgerun's canonical (GGUF-style) names, and HF configs
to the architecture's `ModelArgs` keys. HF Q/K rows already use rotate-half RoPE,
edgerun's convention, so no permutation is needed. Gemma norms store `w - 1`; we add 1
(as llama.cpp's converter does).

BitNet b1.58 weights (config `quantization_config.quant_method == "bitnet"`, or a
`*.weight_scale` companion) are read as ternary: packed uint8 weights are unpacked the way
transformers' `integrations/bitnet.py` packs them, and the value of each weight is
`t / weight_scale` (`linear_class` "bitlinear", transformers' default) or `t * weight_scale`
("autobitlinear"). Such tensors come out with `source_type` "TERNARY" and the recipe keeps them
ternary without loss (export/recipe.py `exact_ternary`). bf16 master weights with
`quantization_mode` "online" are quantized here as BitNet does at run time (absmean per tensor).
"""

from __future__ import annotations

import json
import re
import struct
from pathlib import Path

import numpy as np
from edgerun.errors import CorruptFileError, EdgerunError, UnsupportedError
from edgerun.export.gguf_reader import file_sha256
from edgerun.export.source import SourceModel, SourceTensor, TokenizerSpec, check_tensors

ARCH_FROM_HF = {
    "LlamaForCausalLM": "llama",
    "MistralForCausalLM": "llama",
    "Qwen2ForCausalLM": "qwen2",
    "Gemma3ForCausalLM": "gemma3",
    "Gemma3ForConditionalGeneration": "gemma3",
}

_DTYPES = {"F32": np.float32, "F16": np.float16, "BF16": np.uint16, "F64": np.float64, "U8": np.uint8,
           "I8": np.int8}
BITNET_VALUES_PER_BYTE = 4  # transformers integrations/bitnet.py VALUES_PER_ITEM

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


_ITEMSIZE = {"F32": 4, "F16": 2, "BF16": 2, "F64": 8, "U8": 1, "I8": 1, "I16": 2, "U16": 2, "I32": 4, "U32": 4,
             "I64": 8, "U64": 8, "BOOL": 1, "F8_E4M3": 1, "F8_E5M2": 1}  # safetensors dtypes


def _check_entry(path: Path, name: str, info, data_size: int) -> None:
    """One header entry: a known dtype, an int shape, [begin, end] offsets inside the data whose length
    is shape x itemsize. One-line CorruptFileError otherwise."""

    def ints(v, n=None):
        return isinstance(v, list) and (n is None or len(v) == n) and all(type(x) is int and x >= 0 for x in v)

    if not (isinstance(info, dict) and info.get("dtype") in _ITEMSIZE and ints(info.get("shape"))
            and ints(info.get("data_offsets"), 2)):  # fmt: skip
        raise CorruptFileError(f"{path}: safetensors header entry for {name!r} is malformed; download it again")
    a, b = info["data_offsets"]
    if b > data_size:
        raise CorruptFileError(f"{path}: truncated safetensors: tensor {name} ends at byte {8 + b} past the end")
    if b < a or b - a != _ITEMSIZE[info["dtype"]] * int(np.prod(info["shape"], dtype=np.int64)):
        raise CorruptFileError(f"{path}: tensor {name}: offsets {a}..{b} do not hold shape {info['shape']} of "
                               f"{info['dtype']}; the file is corrupt")  # fmt: skip


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
                self.header = json.loads(f.read(n).decode("utf-8"))
            except (ValueError, RecursionError):  # JSONDecodeError, UnicodeDecodeError
                raise CorruptFileError(f"{path}: corrupt safetensors header; download it again") from None
        if not isinstance(self.header, dict):
            raise CorruptFileError(f"{path}: corrupt safetensors header (not a JSON object); download it again")
        self.header.pop("__metadata__", None)
        self.base = 8 + n
        for name, info in self.header.items():
            _check_entry(path, name, info, size - self.base)
        self._mm = np.memmap(path, dtype=np.uint8, mode="r")

    def read(self, name: str) -> np.ndarray:
        """Tensor as float32 (or its own float type), shape as stored."""
        info = self.header[name]
        dt = info["dtype"]
        if dt not in _DTYPES:
            raise UnsupportedError(f"{self.path}: tensor {name} has dtype {dt}; supported: F32, F16, BF16, U8, I8")
        a, b = info["data_offsets"]
        arr = self._mm[self.base + a : self.base + b].view(_DTYPES[dt]).reshape(info["shape"])
        if dt == "BF16":
            arr = (arr.astype(np.uint32) << 16).view(np.float32)
        return arr


def unpack_bitnet(packed: np.ndarray) -> np.ndarray:
    """transformers' `unpack_weights`: uint8 (R, K) -> int8 (4R, K) in {-1, 0, 1}.

    Packing runs along the output rows: row i*R + r of the weight is bits 2i..2i+1 of packed row r,
    stored as t + 1 (codes 0/1/2)."""
    p = np.asarray(packed, np.uint8)
    codes = np.concatenate([(p >> (2 * i)) & 3 for i in range(BITNET_VALUES_PER_BYTE)], axis=0)  # (4R, K)
    if codes.max(initial=0) > 2:
        raise CorruptFileError("BitNet packed weight holds code 3 (only 0/1/2 = -1/0/+1 exist)")
    return codes.astype(np.int8) - 1


def pack_bitnet(t: np.ndarray) -> np.ndarray:
    """Inverse of `unpack_bitnet` (transformers' `pack_weights` for row counts divisible by 4)."""
    t = np.asarray(t)
    n = t.shape[0]
    if n % BITNET_VALUES_PER_BYTE:
        raise ValueError("rows must be a multiple of 4")
    r = n // BITNET_VALUES_PER_BYTE
    u = (t + 1).astype(np.uint8)
    out = np.zeros((r, *t.shape[1:]), np.uint8)
    for i in range(BITNET_VALUES_PER_BYTE):
        out |= u[i * r : (i + 1) * r] << (2 * i)
    return out


def bitnet_online_quant(w: np.ndarray) -> tuple[np.ndarray, np.float32]:
    """BitNet's run-time weight quantization (`WeightQuant`): s = 1/max(mean|w|, 1e-5),
    t = clip(round(w * s), -1, 1); returns (t int8, 1/s), the weight being t * (1/s)."""
    w = np.asarray(w, np.float32)
    s = np.float32(1.0) / np.maximum(np.abs(w).mean(dtype=np.float32), np.float32(1e-5))
    t = np.clip(np.rint(w * s), -1, 1).astype(np.int8)
    return t, np.float32(1.0) / s


_LINEAR_SUFFIXES = tuple(f"{n}.weight" for n in ("attn_q", "attn_k", "attn_v", "attn_output", "ffn_gate",
                                                  "ffn_up", "ffn_down"))


class _BitNet:
    """How a checkpoint stores BitNet linear weights (from `quantization_config`)."""

    def __init__(self, cfg: dict):
        qc = cfg.get("quantization_config") or {}
        self.configured = qc.get("quant_method") == "bitnet"
        self.divide = qc.get("linear_class", "bitlinear") == "bitlinear"  # w = t / weight_scale
        self.online = self.configured and qc.get("quantization_mode") == "online"
        self.skip = set(qc.get("modules_to_not_convert") or []) | {"lm_head"}

    def ternary(self, hf_name: str, name: str, w: np.ndarray, scale: np.ndarray | None) -> np.ndarray | None:
        """The weight's float values if it is a BitNet ternary weight, else None. (N, K) float32

        `name`: edgerun's name; in "online" mode only decoder linear layers (BitLinear) are quantized."""
        if scale is None:
            linear = name.startswith("blk.") and name.endswith(_LINEAR_SUFFIXES)
            if self.online and linear and not any(k in hf_name for k in self.skip):
                t, d = bitnet_online_quant(w)
                return t.astype(np.float32) * d
            return None
        t = unpack_bitnet(w) if w.dtype == np.uint8 else np.asarray(w, np.float32)
        if not np.isin(t, (-1, 0, 1)).all():
            raise CorruptFileError(f"{hf_name}: BitNet weight with a weight_scale holds values outside -1/0/+1")
        sc = np.asarray(scale, np.float32)
        sc = sc.reshape(-1, 1) if sc.size == t.shape[0] and sc.size > 1 else sc.reshape(())
        d = (np.float32(1.0) / sc) if self.divide else sc
        return t.astype(np.float32) * d.astype(np.float32)


def _config(cfg: dict, arch: str, path: Path | str = "config.json") -> dict:
    text = cfg.get("text_config", cfg)
    if not isinstance(text, dict):
        raise CorruptFileError(f"{path}: text_config is not an object")

    def get(key, default=None, kind=int):
        v = text.get(key, default)
        ok = isinstance(v, (int, float)) and not isinstance(v, bool) and v == v and abs(v) < 1e30
        if not ok or (kind is int and (v != int(v) or not 0 < v < 1 << 31)):
            what = "missing" if v is None else f"{v!r}, not a valid {kind.__name__}"
            raise CorruptFileError(f"{path}: {key} is {what}; fix config.json or download it again")
        return kind(v)

    dim = get("hidden_size")
    n_heads = get("num_attention_heads")
    head_dim = get("head_dim", None) if text.get("head_dim") else dim // n_heads
    out = {
        "dim": dim,
        "n_layers": get("num_hidden_layers"),
        "n_heads": n_heads,
        "n_kv_heads": get("num_key_value_heads", n_heads),
        "head_dim": head_dim,
        "ffn_dim": get("intermediate_size"),
        "vocab_size": get("vocab_size"),
        "norm_eps": get("rms_norm_eps", 1e-6, float),
        "rope_theta": get("rope_theta", 10000.0, float),
        "context_length": get("max_position_embeddings", 2048),
        "tie_embeddings": bool(text.get("tie_word_embeddings", cfg.get("tie_word_embeddings", False))),
    }
    if head_dim <= 0 or head_dim % 2 or n_heads % out["n_kv_heads"]:
        raise CorruptFileError(f"{path}: inconsistent heads ({n_heads} heads, {out['n_kv_heads']} kv heads, "
                               f"head size {head_dim})")  # fmt: skip
    rs = text.get("rope_scaling")
    if isinstance(rs, dict) and rs.get("rope_type", rs.get("type")) == "linear":
        v = rs.get("factor")
        if not isinstance(v, (int, float)) or isinstance(v, bool) or not 0 < v < 1e6:
            raise CorruptFileError(f"{path}: rope_scaling.factor is {v!r}, not a positive number")
        out["rope_scaling"] = {"type": "linear", "factor": float(v)}
    if arch == "gemma3":
        out["sliding_window"] = get("sliding_window", 512)
        out["sliding_window_pattern"] = get("sliding_window_pattern", 6)
        out["rope_local_theta"] = get("rope_local_base_freq", 10000.0, float)
        out["query_pre_attn_scalar"] = get("query_pre_attn_scalar", head_dim, float)
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
        cfg = json.loads(cfg_path.read_bytes().decode("utf-8"))
    except (ValueError, RecursionError) as e:  # JSONDecodeError, UnicodeDecodeError
        raise CorruptFileError(f"{cfg_path}: not valid JSON ({str(e)[:120]})") from None
    if not isinstance(cfg, dict):
        raise CorruptFileError(f"{cfg_path}: not a JSON object")
    archs = cfg.get("architectures") or [cfg.get("model_type", "?")]
    if not isinstance(archs, list) or not all(isinstance(a, str) for a in archs):
        raise CorruptFileError(f"{cfg_path}: 'architectures' is not a list of names")
    arch = next((ARCH_FROM_HF[a] for a in archs if a in ARCH_FROM_HF), None)
    if arch is None and "BitNetForCausalLM" in archs:
        raise UnsupportedError(
            f"{folder}: the BitNet architecture (attn_sub_norm/ffn_sub_norm, squared-ReLU FFN) does not run "
            "in edgerun yet; BitNet ternary weights are imported from llama-architecture checkpoints"
        )
    if arch is None:
        supported = ", ".join(sorted(set(ARCH_FROM_HF.values())))
        raise UnsupportedError(f"{folder}: architecture '{archs[0]}' is not supported; supported: {supported}")
    files = sorted(folder.glob("*.safetensors"))
    if not files:
        raise EdgerunError(f"{folder}: no *.safetensors weights found")
    st = [SafetensorsFile(f) for f in files]
    where: dict[str, tuple[SafetensorsFile, str]] = {}
    owner: dict[str, SafetensorsFile] = {}
    for f in st:
        for hf_name in f.header:
            owner[hf_name] = f
            name = canonical_name(hf_name, arch)
            if name is not None:
                where[name] = (f, hf_name)
    bitnet = _BitNet(cfg)
    config = _config(cfg, arch, cfg_path)
    if "output.weight" not in where:
        config["tie_embeddings"] = True
    shapes = {}
    for name, (f, hf_name) in where.items():
        shape = tuple(f.header[hf_name]["shape"])
        if hf_name + "_scale" in owner and f.header[hf_name]["dtype"] == "U8" and len(shape) == 2:
            shape = (shape[0] * BITNET_VALUES_PER_BYTE, shape[1])  # packed BitNet rows
        shapes[name] = shape
    check_tensors(arch, config, shapes, folder)

    def tensors():
        for name, (f, hf_name) in where.items():
            raw = f.read(hf_name)
            scale_name = hf_name + "_scale" if hf_name.endswith(".weight") else None
            scale = owner[scale_name].read(scale_name) if scale_name in owner else None
            tern = bitnet.ternary(hf_name, name, raw, scale) if raw.ndim == 2 else None
            if tern is not None:
                yield SourceTensor(name, tern, source_type="TERNARY")
                continue
            if raw.dtype in (np.uint8, np.int8):
                raise UnsupportedError(f"{f.path}: integer tensor {hf_name} has no weight_scale; only BitNet "
                                       "packed ternary weights (weight + weight_scale) are read")
            w = np.asarray(raw, dtype=np.float32)
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
