"""BitNet b1.58 checkpoints import as ternary without loss: packed uint8 + weight_scale (transformers'
`BitLinear` layout, both scale conventions) and bf16 weights already {-s, 0, +s}; tiny random
llama-architecture checkpoints written here (no BitNet checkpoint ships offline)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from tiny_models import DIMS, from_bf16_bits, to_bf16_bits, write_safetensors

LINEAR = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
          "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj")
N_LAYERS = 2
GGUF_OF = {"self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v",
           "self_attn.o_proj": "attn_output", "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up",
           "mlp.down_proj": "ffn_down"}


def _shapes():
    d, h, kv, hd, ff = (DIMS[k] for k in ("dim", "n_heads", "n_kv_heads", "head_dim", "ffn_dim"))
    return {"self_attn.q_proj": (h * hd, d), "self_attn.k_proj": (kv * hd, d), "self_attn.v_proj": (kv * hd, d),
            "self_attn.o_proj": (d, h * hd), "mlp.gate_proj": (ff, d), "mlp.up_proj": (ff, d),
            "mlp.down_proj": (d, ff)}


def _bf16(x) -> np.ndarray:
    return from_bf16_bits(to_bf16_bits(np.asarray(x, np.float32)))


def make_bitnet(out: Path, form: str, tok_src: Path, seed: int = 0) -> tuple[Path, dict[str, np.ndarray]]:
    """A tiny llama checkpoint whose linear weights are ternary. Returns (folder, expected values by
    edgerun name). form: "packed" (uint8 + weight_scale, w = t / ws, ws powers of two), "packed_mul"
    (autobitlinear: w = t * ws, ws any bf16), "packed_round" (w = t / ws, ws any bf16: the f16 scale
    rounds), "bf16" (weights stored as {-s, 0, +s} in bf16, no quantization_config)."""
    rng = np.random.default_rng(seed)
    cfg = json.loads((tok_src / "config.json").read_text())
    vocab, d = cfg["vocab_size"], DIMS["dim"]
    tensors: dict[str, tuple[str, np.ndarray]] = {
        "model.embed_tokens.weight": ("BF16", to_bf16_bits(rng.standard_normal((vocab, d)) * 0.5)),
        "model.norm.weight": ("BF16", to_bf16_bits(1 + 0.1 * rng.standard_normal(d))),
    }
    expected = {}
    for i in range(N_LAYERS):
        p = f"model.layers.{i}."
        tensors[p + "input_layernorm.weight"] = ("BF16", to_bf16_bits(1 + 0.1 * rng.standard_normal(d)))
        tensors[p + "post_attention_layernorm.weight"] = ("BF16", to_bf16_bits(1 + 0.1 * rng.standard_normal(d)))
        for lin, (n, k) in _shapes().items():
            t = rng.integers(-1, 2, size=(n, k)).astype(np.int8)  # {-1, 0, 1}
            name = f"blk.{i}.{GGUF_OF[lin]}.weight"
            if form == "bf16":
                s = _bf16(rng.uniform(0.02, 0.2))[()]
                tensors[p + lin + ".weight"] = ("BF16", to_bf16_bits(t * s))
                expected[name] = t.astype(np.float32) * s
                continue
            if form == "packed":
                ws = np.float32(2.0 ** rng.integers(2, 6))  # 1/ws exact in f16
            else:
                ws = _bf16(rng.uniform(4, 40) if form == "packed_round" else rng.uniform(0.02, 0.2))[()]
            tensors[p + lin + ".weight"] = ("U8", _pack(t))
            tensors[p + lin + ".weight_scale"] = ("BF16", to_bf16_bits(np.array([ws])))
            scale = np.float32(1) / ws if form != "packed_mul" else ws
            expected[name] = t.astype(np.float32) * scale
    folder = out / f"bitnet-{form}"
    folder.mkdir(parents=True, exist_ok=True)
    write_safetensors(folder / "model.safetensors", tensors)
    cfg["architectures"] = ["LlamaForCausalLM"]
    cfg["num_hidden_layers"] = N_LAYERS
    if form != "bf16":
        cfg["quantization_config"] = {"quant_method": "bitnet", "quantization_mode": "offline",
                                      "linear_class": "autobitlinear" if form == "packed_mul" else "bitlinear"}
    (folder / "config.json").write_text(json.dumps(cfg))
    for f in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(tok_src / f, folder / f)
    return folder, expected


def _pack(t):
    from edgerun.export.hf_reader import pack_bitnet

    return pack_bitnet(t)


@pytest.fixture(scope="module")
def tok_src(tmp_path_factory, smollm2_gguf):
    """A tiny llama HF folder (SmolLM2's tokenizer) to take config and tokenizer files from."""
    from tiny_models import make_tiny

    d = tmp_path_factory.mktemp("bitnet-src")
    hf, _ = make_tiny("llama", d, smollm2_gguf)
    return hf


def test_unpack_matches_transformers_layout():
    """transformers' documented example: unpack_weights of two packed rows -> 8 rows."""
    from edgerun.export.hf_reader import pack_bitnet, unpack_bitnet

    packed = np.array([[0b10100001, 0b00011000], [0b10010000, 0b00001010]], np.uint8)
    want = np.array([[0, -1], [-1, 1], [-1, 1], [-1, 1], [1, 0], [0, -1], [1, -1], [1, -1]])
    np.testing.assert_array_equal(unpack_bitnet(packed), want)
    np.testing.assert_array_equal(pack_bitnet(want), packed)


@pytest.mark.parametrize("form", ["packed", "packed_mul", "bf16", "packed_round"])
def test_bitnet_checkpoint_exports_exactly_ternary(form, tok_src, tmp_path):
    import edgerun
    from edgerun.export.artifact import Artifact
    from edgerun.export.exporter import export

    folder, expected = make_bitnet(tmp_path, form, tok_src)
    art_path = export(folder, tmp_path / f"{form}.edge", weights="auto", onnx=False)
    art = Artifact(art_path)
    assert len(expected) == 7 * N_LAYERS
    for name, want in expected.items():
        entry = art.tensors[name]
        assert entry["format"] == "ternary", name
        got = art.tensor(name)
        if form == "packed_round":  # codes exact; 1/ws rounded to f16 once per tensor
            np.testing.assert_array_equal(np.sign(got), np.sign(want))
            np.testing.assert_allclose(got, want, rtol=2.0**-11, atol=0)
        else:
            np.testing.assert_array_equal(got, want)  # every value equal to the checkpoint's
    assert art.tensors["token_embd.weight"]["format"] == "f16"  # not ternary-valued: kept

    ref = edgerun.load(art_path, backend="reference")
    nat = edgerun.load(art_path)
    assert nat.backend == "native"
    ids = ref.tokenizer.encode("Ternary weights from a BitNet checkpoint, run by the native kernels.")
    lr, ln = ref.logits(ids), nat.logits(ids)
    rel = np.linalg.norm(ln - lr) / np.linalg.norm(lr)
    assert rel < 0.05, rel  # the kernels quantize activations to 8 bits, like llama.cpp
    assert (lr.argmax(-1) == ln.argmax(-1)).mean() >= 0.9


def test_bitnet_online_master_weights(tok_src, tmp_path):
    """quantization_mode "online": bf16 master weights are quantized as BitNet does at run time."""
    from edgerun.export.artifact import Artifact
    from edgerun.export.exporter import export
    from edgerun.export.hf_reader import bitnet_online_quant

    folder, _ = make_bitnet(tmp_path, "bf16", tok_src)
    st = folder / "model.safetensors"
    rng = np.random.default_rng(3)
    w = _bf16(rng.standard_normal((DIMS["ffn_dim"], DIMS["dim"])) * 0.05)
    from edgerun.export.hf_reader import SafetensorsFile

    f = SafetensorsFile(st)
    tensors = {n: (f.header[n]["dtype"], to_bf16_bits(f.read(n))) for n in f.header}
    del f
    tensors["model.layers.0.mlp.up_proj.weight"] = ("BF16", to_bf16_bits(w))
    write_safetensors(st, tensors)
    cfg = json.loads((folder / "config.json").read_text())
    cfg["quantization_config"] = {"quant_method": "bitnet", "quantization_mode": "online",
                                  "linear_class": "autobitlinear"}
    (folder / "config.json").write_text(json.dumps(cfg))
    art = Artifact(export(folder, tmp_path / "online.edge", weights="auto", onnx=False))
    t, d = bitnet_online_quant(w)
    got = art.tensor("blk.0.ffn_up.weight")
    assert art.tensors["blk.0.ffn_up.weight"]["format"] == "ternary"
    np.testing.assert_array_equal(np.sign(got), t)
    np.testing.assert_allclose(got, t * d, rtol=2.0**-11)
    assert art.tensors["token_embd.weight"]["format"] == "f16"


def test_bitnet_architecture_is_refused_clearly(tok_src, tmp_path):
    from edgerun.errors import UnsupportedError
    from edgerun.export.hf_reader import read_hf

    folder, _ = make_bitnet(tmp_path, "packed", tok_src)
    cfg = json.loads((folder / "config.json").read_text())
    cfg["architectures"] = ["BitNetForCausalLM"]
    (folder / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(UnsupportedError, match="sub_norm"):
        read_hf(folder)
