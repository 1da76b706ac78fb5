"""The CLI end to end, and bad input: one-line errors, non-zero exit, no traceback, nothing lost."""

from __future__ import annotations

import shutil
import subprocess
import sys

import pytest
from tiny_models import make_tiny


def edgerun(*args, timeout=600):
    """Run the real console entry point in a subprocess."""
    return subprocess.run(
        [sys.executable, "-c", "from edgerun.cli import main; main()", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def assert_one_line_error(r, *needles):
    assert r.returncode != 0
    assert "Traceback" not in r.stderr
    lines = [line for line in r.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, r.stderr
    for n in needles:
        assert n in lines[0], lines[0]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory, smollm2_gguf):
    """(artifact folder, gguf path) of a tiny llama model."""
    d = tmp_path_factory.mktemp("cli")
    hf, gguf_path = make_tiny("llama", d, smollm2_gguf)
    r = edgerun("export", gguf_path, "-o", d / "tiny.edge")
    assert r.returncode == 0, r.stderr
    assert "wrote" in r.stdout
    return d / "tiny.edge", gguf_path


def test_run_streams_only_generated_text(tiny):
    art, _ = tiny
    r = edgerun("run", art, "Hello", "--max-tokens", "8", "--seed", "1", "--temperature", "0.7")
    assert r.returncode == 0, r.stderr
    again = edgerun("run", art, "Hello", "--max-tokens", "8", "--seed", "1", "--temperature", "0.7")
    assert r.stdout == again.stdout  # seeded sampling is reproducible
    from edgerun.runtime.llm.model import load

    expected = load(art).generate("Hello", max_tokens=8, temperature=0.7, seed=1)
    assert r.stdout == expected + "\n"  # the generated text alone, without the prompt


def test_info_json(tiny):
    import json

    art, gguf_path = tiny
    r = edgerun("info", art, "--json")
    assert r.returncode == 0, r.stderr
    info = json.loads(r.stdout)
    assert info["arch"] == "llama" and info["config"]["n_layers"] == 2
    assert info["provenance"]["source_format"] == "gguf"
    assert len(info["provenance"]["source_sha256"]) == 64
    assert sum(info["formats"].values()) == info["tensors"] and info["formats"]["f32"] >= 2 * 2 + 1  # norms
    r = edgerun("info", art)
    assert r.returncode == 0 and "formats" in r.stdout, r.stderr


def test_chat_reads_stdin(tiny):
    art, _ = tiny
    r = subprocess.run(
        [sys.executable, "-c", "from edgerun.cli import main; main()", "chat", str(art), "-n", "4"],
        input="hi\n\n",
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 0, r.stderr


def test_chat_on_a_base_model_says_so(tmp_path, smollm2_gguf):
    """A model without a chat template (a base model): chat refuses in one line; raw prompts still run."""
    _, gguf_path = make_tiny("llama", tmp_path, smollm2_gguf, chat_template=False)
    art = tmp_path / "base.edge"
    assert edgerun("export", gguf_path, "-o", art).returncode == 0
    r = subprocess.run([sys.executable, "-c", "from edgerun.cli import main; main()", "chat", str(art)],
                       input="hi\n\n", capture_output=True, text=True, timeout=300)  # fmt: skip
    assert_one_line_error(r, "no chat template")
    assert edgerun("run", art, "Hello", "-n", "2").returncode == 0


def test_flipped_byte_in_weights_is_named(tiny, tmp_path):
    art, _ = tiny
    bad = tmp_path / "bad.edge"
    shutil.copytree(art, bad)
    import json

    layer1 = json.loads((bad / "manifest.json").read_text())["layers"][1]
    at = layer1["offset"] + 100
    with open(bad / "weights.bin", "r+b") as f:
        f.seek(at)
        b = f.read(1)
        f.seek(at)
        f.write(bytes([b[0] ^ 0x01]))
    r = edgerun("run", bad, "Hello", "-n", "2")
    assert_one_line_error(r, "weights.bin", "checksum mismatch", "blk.1.")


def test_truncated_weights(tiny, tmp_path):
    art, _ = tiny
    bad = tmp_path / "short.edge"
    shutil.copytree(art, bad)
    with open(bad / "weights.bin", "r+b") as f:
        f.truncate(1000)
    assert_one_line_error(edgerun("info", bad), "weights.bin", "truncated")


@pytest.mark.parametrize("missing", ["manifest.json", "weights.bin", "tokenizer.json"])
def test_missing_artifact_file(tiny, tmp_path, missing):
    art, _ = tiny
    bad = tmp_path / "missing.edge"
    shutil.copytree(art, bad)
    (bad / missing).unlink()
    assert_one_line_error(edgerun("run", bad, "Hello", "-n", "2"), missing, "missing")


def test_missing_model_path(tmp_path):
    assert_one_line_error(edgerun("run", tmp_path / "nope.gguf", "Hello"), "nope.gguf", "not found")


def test_lone_model_argument_is_not_taken_for_a_prompt(tiny, tmp_path):
    """`edgerun run X.gguf` (no prompt) says so in one line, and a missing X.gguf is "not found": neither is
    continued as a prompt by the default model."""
    art, gguf_path = tiny
    assert_one_line_error(edgerun("run", tmp_path / "nope.gguf"), "nope.gguf", "not found")
    assert_one_line_error(edgerun("run", gguf_path), "give a prompt after the model")
    assert_one_line_error(edgerun("run", art), "give a prompt after the model")
    assert_one_line_error(edgerun("run"), "give a prompt")


def test_truncated_gguf(tiny, tmp_path):
    _, gguf_path = tiny
    bad = tmp_path / "trunc.gguf"
    bad.write_bytes(gguf_path.read_bytes()[: gguf_path.stat().st_size // 2])
    out = tmp_path / "out.edge"
    assert_one_line_error(edgerun("export", bad, "-o", out), "trunc.gguf", "truncated")
    assert not out.exists() and not list(tmp_path.glob(".out.edge*"))  # nothing half-written


def test_not_a_gguf(tmp_path):
    bad = tmp_path / "text.gguf"
    bad.write_text("hello, not a model")
    assert_one_line_error(edgerun("export", bad, "-o", tmp_path / "o.edge"), "text.gguf", "not a GGUF")


def test_unknown_architecture(tmp_path):
    import gguf
    import numpy as np

    path = tmp_path / "mamba.gguf"
    w = gguf.GGUFWriter(str(path), "mamba")
    w.add_block_count(1)
    w.add_tensor("token_embd.weight", np.zeros((4, 8), np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    assert_one_line_error(edgerun("export", path, "-o", tmp_path / "m.edge"), "mamba", "supported: gemma3, llama")


def test_failed_export_keeps_previous_artifact(tiny, tmp_path):
    art, gguf_path = tiny
    keep = tmp_path / "keep.edge"
    shutil.copytree(art, keep)
    bad = tmp_path / "trunc.gguf"
    bad.write_bytes(gguf_path.read_bytes()[:4096])
    assert edgerun("export", bad, "-o", keep).returncode != 0
    assert edgerun("info", keep).returncode == 0  # the old artifact is intact
