"""Any changed byte in an artifact is caught with a one-line error or provably harmless.

Every byte of a real (tiny) artifact's manifest.json is flipped in turn: the open must fail with a
CorruptFileError, or the manifest it reads must be exactly the one written (whitespace, `e` -> `E`).
Flips in weights.bin / tokenizer.json must fail their checksums unless the byte lies outside every
tensor part (alignment padding, never read).
"""

from __future__ import annotations

import json
import random
import shutil
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent / "fuzz"))


@pytest.fixture(scope="module")
def art(tmp_path_factory):
    import targets
    from edgerun.export.exporter import export

    d = tmp_path_factory.mktemp("integrity")
    (d / "tiny.gguf").write_bytes(targets.tiny_gguf_bytes())
    return export(d / "tiny.gguf", d / "tiny.edge", weights="int4", onnx=False)


def _copy(art, tmp_path) -> Path:
    d = tmp_path / "flip.edge"
    shutil.rmtree(d, ignore_errors=True)
    shutil.copytree(art, d)
    return d


@pytest.mark.parametrize("stride", [pytest.param(1, marks=pytest.mark.slow), 7])
def test_every_manifest_byte_flip_is_caught_or_harmless(art, tmp_path, stride):
    """stride 7 (default run): every 7th byte, bit i % 8; stride 1 (-m slow): every byte of the ~12 kB file."""
    from edgerun.errors import CorruptFileError, EdgerunError
    from edgerun.export.artifact import Artifact, canonical_manifest

    raw = (art / "manifest.json").read_bytes()
    want = canonical_manifest(json.loads(raw))
    d = _copy(art, tmp_path)
    caught = harmless = 0
    positions = range(0, len(raw), stride)
    for i in positions:
        flipped = bytearray(raw)
        flipped[i] ^= 1 << (i % 8)
        (d / "manifest.json").write_bytes(bytes(flipped))
        try:
            a = Artifact(d)
        except CorruptFileError as e:
            assert "\n" not in str(e)
            caught += 1
            continue
        except EdgerunError as e:  # e.g. a version digit changed: "re-export" (still one line)
            assert "\n" not in str(e)
            caught += 1
            continue
        assert canonical_manifest(a.manifest) == want, f"byte {i} changed the manifest silently"
        harmless += 1
    assert caught + harmless == len(positions) and caught > 0.9 * len(positions), (caught, harmless)


def test_weight_and_tokenizer_flips_fail_their_checksums(art, tmp_path):
    from edgerun.errors import CorruptFileError
    from edgerun.export.artifact import Artifact

    rng = random.Random(0)
    m = Artifact(art).manifest
    spans = [(p["offset"], p["offset"] + p["nbytes"]) for e in m["tensors"].values() for p in e["parts"].values()]
    d = _copy(art, tmp_path)
    w = (art / "weights.bin").read_bytes()
    caught = padding = 0
    for i in rng.sample(range(len(w)), 300):
        b = bytearray(w)
        b[i] ^= 1 << rng.randrange(8)
        (d / "weights.bin").write_bytes(bytes(b))
        inside = any(lo <= i < hi for lo, hi in spans)
        if inside:
            with pytest.raises(CorruptFileError, match="checksum mismatch"):
                Artifact(d).verify()
            caught += 1
        else:
            Artifact(d).verify()  # padding: never read
            padding += 1
    assert caught > 0
    (d / "weights.bin").write_bytes(w)
    t = (art / "tokenizer.json").read_bytes()
    for i in rng.sample(range(len(t)), 50):
        b = bytearray(t)
        b[i] ^= 1 << rng.randrange(8)
        (d / "tokenizer.json").write_bytes(bytes(b))
        with pytest.raises(CorruptFileError, match="checksum mismatch"):
            Artifact(d).tokenizer_json()


def test_missing_scales_part_is_one_line(art, tmp_path):
    """A quantized tensor whose scales part is gone (manifest re-signed, so no checksum catches it) is refused at
    open with one line naming the tensor and the part (found by tests/fuzz: it used to end in an AttributeError)."""
    import targets
    from edgerun.errors import CorruptFileError
    from edgerun.export.artifact import Artifact

    d = _copy(art, tmp_path)
    m = json.loads((d / "manifest.json").read_text())
    name = next(n for n, e in m["tensors"].items() if "scales" in e["parts"])
    m["tensors"][name]["parts"]["zeros_renamed"] = m["tensors"][name]["parts"].pop("scales")
    targets._resign(d, m)
    with pytest.raises(CorruptFileError, match=r"has no 'scales' part") as e:
        Artifact(d)
    assert name in str(e.value) and "\n" not in str(e.value)


def test_missing_tokenizer_section_is_one_line(art, tmp_path):
    """A re-signed manifest without its tokenizer section: loading says so in one line (found by tests/fuzz: it
    used to end in a KeyError)."""
    import targets
    from edgerun.errors import CorruptFileError
    from edgerun.runtime.llm.model import load

    d = _copy(art, tmp_path)
    m = json.loads((d / "manifest.json").read_text())
    del m["tokenizer"]
    targets._resign(d, m)
    with pytest.raises(CorruptFileError, match="no tokenizer section") as e:
        load(str(d))
    assert "\n" not in str(e.value)
