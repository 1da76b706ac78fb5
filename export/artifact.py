"""The edgerun artifact: a `NAME.edge/` folder (format version 2).

```
NAME.edge/
  manifest.json   format version, arch + config, quant recipe, tensor table, layer groups,
                  tokenizer info + chat template, provenance, targets, file checksums,
                  and its own checksum (`manifest_sha256`)
  weights.bin     every tensor part once, 64-byte aligned; each decoder layer's tensors
                  contiguous and page-aligned (one layer = one byte range, for streaming)
  tokenizer.json  Hugging Face `tokenizers` file
```

Tensor table entries (`manifest["tensors"][name]`)::

    {"format": "f16" | "f32" | <quant format>, "shape": [out, in], "layer": 3 | null,
     "quant": {...format parameters, e.g. bits/block_size...} | absent,
     "parts": {"data": {"dtype": "float16", "shape": [...], "offset": 4096, "nbytes": 663552,
                        "crc32": 123456789},
               "scales": {...}, "zero_points": {...}}}

A plain tensor has one part (`data`); a quantized tensor has the parts its format
defines (MatMulNBits layout: `data`, `scales`, optional `zero_points`), each of which
an ONNX graph can reference as external data in `weights.bin`.

Integrity: `manifest_sha256` is the sha256 of the manifest without that key, as sorted, compact,
ASCII JSON (`canonical_manifest`). It is checked before anything in the manifest is used, then the
structure is validated (types, dtypes, part sizes, every byte range inside weights.bin). So a changed
byte anywhere in manifest.json either fails with a one-line `CorruptFileError` or is provably
harmless (the parsed manifest is exactly the one written: whitespace, or `1e5` -> `1E5`). Each
tensor part and tokenizer.json carry a crc32, checked before use; bytes of weights.bin outside every
part (alignment padding) are never read.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import shutil
import tempfile
import zlib
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from edgerun.errors import CorruptFileError, EdgerunError

FORMAT_NAME = "edgerun.artifact"
FORMAT_VERSION = 2  # 2: the manifest carries its own sha256 (manifest_sha256)
CHECKSUM_KEY = "manifest_sha256"
ALIGN = 64
PAGE = 4096
MANIFEST = "manifest.json"
WEIGHTS = "weights.bin"
TOKENIZER = "tokenizer.json"

_LAYER_RE = re.compile(r"^blk\.(\d+)\.")


def layer_of(name: str) -> int | None:
    """Decoder layer index of a tensor name (`blk.7.attn_q.weight` -> 7), None for global tensors."""
    m = _LAYER_RE.match(name)
    return int(m.group(1)) if m else None


def canonical_manifest(manifest: dict) -> bytes:
    """The bytes `manifest_sha256` covers: the manifest without that key, as sorted compact ASCII JSON."""
    body = {k: v for k, v in manifest.items() if k != CHECKSUM_KEY}
    return json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode("ascii")


def manifest_text(manifest: dict) -> str:
    """manifest.json text: the manifest (indented, readable) with its checksum added."""
    digest = hashlib.sha256(canonical_manifest(manifest)).hexdigest()
    body = {k: v for k, v in manifest.items() if k != CHECKSUM_KEY}
    return json.dumps({**body, CHECKSUM_KEY: digest}, indent=1)


def write_manifest(folder: str | os.PathLike, manifest: dict) -> None:
    """Write `folder/manifest.json` (checksum added) atomically: a temporary file, then a rename."""
    path = Path(folder) / MANIFEST
    fd, tmp = tempfile.mkstemp(prefix=".manifest.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(manifest_text(manifest))
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def read_manifest(path: str | os.PathLike) -> dict:
    """Parse and checksum-verify manifest.json; raises a one-line CorruptFileError / EdgerunError.

    Nothing in the manifest is trusted before its checksum matches (an older format version without a
    checksum gets the re-export message)."""
    path = Path(path)
    try:
        manifest = json.loads(path.read_bytes().decode("utf-8"))
    except (ValueError, RecursionError) as e:  # JSONDecodeError, UnicodeDecodeError, over-long ints
        first = str(e).splitlines()[0][:120] if str(e) else type(e).__name__
        raise CorruptFileError(f"{path}: not valid JSON ({first}); export the model again") from None
    if not isinstance(manifest, dict):
        raise CorruptFileError(f"{path}: not an edgerun manifest (a JSON {type(manifest).__name__}); export again")
    stored = manifest.get(CHECKSUM_KEY)
    if stored is None:
        version = manifest.get("version")
        if manifest.get("format") == FORMAT_NAME and type(version) is int and version < FORMAT_VERSION:
            raise EdgerunError(
                f"{path}: artifact format version {version}, this edgerun reads version {FORMAT_VERSION}; "
                "re-export the model with this edgerun"
            )
        raise CorruptFileError(f"{path}: no {CHECKSUM_KEY}; not an edgerun manifest or damaged, export again")
    if not isinstance(stored, str) or hashlib.sha256(canonical_manifest(manifest)).hexdigest() != stored:
        raise CorruptFileError(f"{path}: checksum mismatch; the manifest is corrupt or was edited, export again")
    if manifest.get("format") != FORMAT_NAME:
        raise CorruptFileError(f"{path}: not an edgerun manifest")
    if manifest.get("version") != FORMAT_VERSION:
        raise EdgerunError(
            f"{path}: artifact format version {manifest.get('version')}, this edgerun reads version "
            f"{FORMAT_VERSION}; re-export the model with this edgerun"
        )
    return manifest


_PART_DTYPES = ("float32", "float16", "uint8", "int8", "uint16", "int16", "uint32", "int32", "int64", "float64")


def _is_int(v, lo: int = 0) -> bool:
    return type(v) is int and v >= lo


def validate_manifest(m: dict, path: Path, weights_size: int) -> None:
    """Check the manifest's structure: types, dtypes, part sizes = shape x itemsize, every part and layer
    byte range inside weights.bin, each layer's tensors inside its layer group. One-line CorruptFileError."""

    from edgerun.quant.parts import missing_part

    def bad(what: str):
        raise CorruptFileError(f"{path}: {what}; the artifact is damaged, export again")

    for key, typ in (("arch", str), ("config", dict), ("tensors", dict), ("layers", list), ("files", dict)):
        if not isinstance(m.get(key), typ):
            bad(f"'{key}' is missing or not a {typ.__name__}")
    if "tokenizer" in m and not isinstance(m["tokenizer"], dict):
        bad("'tokenizer' is not an object")
    files = m["files"]
    if not isinstance(files.get(WEIGHTS), dict) or not _is_int(files[WEIGHTS].get("nbytes")):
        bad(f"files.{WEIGHTS}.nbytes is missing")
    if not isinstance(files.get(TOKENIZER), dict) or not _is_int(files[TOKENIZER].get("crc32")):
        bad(f"files.{TOKENIZER}.crc32 is missing")
    groups = {}
    for g in m["layers"]:
        if not (isinstance(g, dict) and _is_int(g.get("index")) and _is_int(g.get("offset"))
                and _is_int(g.get("nbytes")) and g["offset"] + g["nbytes"] <= weights_size):  # fmt: skip
            bad(f"layer group {str(g)[:80]} is malformed or outside weights.bin")
        groups[g["index"]] = (g["offset"], g["offset"] + g["nbytes"])
    for name, e in m["tensors"].items():
        if not (isinstance(e, dict) and isinstance(e.get("format"), str) and isinstance(e.get("shape"), list)
                and all(_is_int(d) for d in e["shape"]) and isinstance(e.get("parts"), dict)
                and e["parts"]):  # fmt: skip
            bad(f"tensor {name!r} entry is malformed")
        if e["format"] in ("f16", "f32", "bf16") and (not isinstance(e["parts"].get("data"), dict)
                                                       or e["parts"]["data"].get("shape") != e["shape"]):  # fmt: skip
            bad(f"tensor {name!r}: shape {e['shape']} differs from its data part")
        missing = missing_part(e["format"], e["parts"])
        if missing:
            bad(f"tensor {name!r} ({e['format']}) has no {missing!r} part")
        layer = e.get("layer")
        if layer is not None and layer not in groups:
            bad(f"tensor {name!r} names layer {layer!r}, which has no layer group")
        if "quant" in e and not isinstance(e["quant"], dict):
            bad(f"tensor {name!r} quant parameters are malformed")
        for part, info in e["parts"].items():
            if not (isinstance(info, dict) and info.get("dtype") in _PART_DTYPES and isinstance(info.get("shape"), list)
                    and all(_is_int(d) for d in info["shape"]) and _is_int(info.get("offset"))
                    and _is_int(info.get("nbytes")) and _is_int(info.get("crc32"))):  # fmt: skip
                bad(f"tensor {name!r} part {part!r} is malformed")
            if math.prod(info["shape"]) * np.dtype(info["dtype"]).itemsize != info["nbytes"]:
                bad(f"tensor {name!r} part {part!r}: shape {info['shape']} x {info['dtype']} != {info['nbytes']} bytes")
            lo, hi = info["offset"], info["offset"] + info["nbytes"]
            if hi > weights_size:
                bad(f"tensor {name!r} part {part!r} ends at byte {hi}, past the end of weights.bin ({weights_size})")
            if layer is not None and not groups[layer][0] <= lo <= hi <= groups[layer][1]:
                bad(f"tensor {name!r} part {part!r} lies outside layer {layer}'s byte range")


def _align(n: int, a: int) -> int:
    return (n + a - 1) // a * a


@dataclass
class TensorParts:
    """A tensor to write: its format name, logical shape, parts (name -> array), format params."""

    name: str
    format: str
    shape: tuple[int, ...]
    parts: dict[str, np.ndarray]
    quant: dict | None = None


class ArtifactWriter:
    """Writes an artifact into a temporary folder next to the target, then moves it into place.

    Tensors must be added grouped by layer (global tensors before or after the layers);
    each new layer starts on a page boundary so a layer is one contiguous byte range.
    Nothing at the target path changes until `finish()` succeeds.
    """

    def __init__(self, out_dir: str | os.PathLike):
        self.out_dir = Path(out_dir)
        self.out_dir.parent.mkdir(parents=True, exist_ok=True)
        self.tmp_dir = Path(tempfile.mkdtemp(prefix=f".{self.out_dir.name}.", dir=self.out_dir.parent))
        self._f = open(self.tmp_dir / WEIGHTS, "wb")
        self._pos = 0
        self.tensors: dict[str, dict] = {}
        self.layers: dict[int, dict] = {}
        self._current_layer: int | None = None

    def _pad_to(self, boundary: int) -> None:
        target = _align(self._pos, boundary)
        if target > self._pos:
            self._f.write(b"\0" * (target - self._pos))
            self._pos = target

    def add(self, t: TensorParts) -> None:
        """Append one tensor (all its parts) to weights.bin and record it in the table."""
        if t.name in self.tensors:
            raise ValueError(f"tensor {t.name} written twice")
        layer = layer_of(t.name)
        if layer != self._current_layer:
            if layer is not None and layer in self.layers:
                raise ValueError(f"tensors of layer {layer} are not contiguous ({t.name})")
            self._pad_to(PAGE)
            self._current_layer = layer
            if layer is not None:
                self.layers[layer] = {"index": layer, "offset": self._pos, "nbytes": 0}
        parts = {}
        for part_name, arr in t.parts.items():
            arr = np.ascontiguousarray(arr)
            self._pad_to(ALIGN)
            raw = arr.tobytes()
            parts[part_name] = {
                "dtype": arr.dtype.name,
                "shape": list(arr.shape),
                "offset": self._pos,
                "nbytes": len(raw),
                "crc32": zlib.crc32(raw),
            }
            self._f.write(raw)
            self._pos += len(raw)
        if layer is not None:
            g = self.layers[layer]
            g["nbytes"] = self._pos - g["offset"]
        entry = {"format": t.format, "shape": list(t.shape), "layer": layer, "parts": parts}
        if t.quant:
            entry["quant"] = t.quant
        self.tensors[t.name] = entry

    def finish(self, manifest: dict, tokenizer_json: str, extra_files: dict[str, bytes] | None = None) -> Path:
        """Write manifest + tokenizer, then atomically replace `out_dir` with the new artifact."""
        self._pad_to(ALIGN)
        self._f.close()
        (self.tmp_dir / TOKENIZER).write_text(tokenizer_json, encoding="utf-8")
        for name, data in (extra_files or {}).items():
            (self.tmp_dir / name).write_bytes(data)
        full = {
            **manifest,
            "format": FORMAT_NAME,
            "version": FORMAT_VERSION,
            "tensors": self.tensors,
            "layers": [self.layers[i] for i in sorted(self.layers)],
            "files": {
                WEIGHTS: {"nbytes": self._pos},
                TOKENIZER: {"crc32": zlib.crc32(tokenizer_json.encode("utf-8"))},
            },
        }
        (self.tmp_dir / MANIFEST).write_text(manifest_text(full), encoding="utf-8")
        if self.out_dir.exists():
            old = self.out_dir.with_name(self.out_dir.name + ".old")
            shutil.rmtree(old, ignore_errors=True)
            self.out_dir.rename(old)
            self.tmp_dir.rename(self.out_dir)
            shutil.rmtree(old, ignore_errors=True)
        else:
            self.tmp_dir.rename(self.out_dir)
        return self.out_dir

    def abort(self) -> None:
        """Remove the temporary folder; the target path is untouched."""
        try:
            self._f.close()
        finally:
            shutil.rmtree(self.tmp_dir, ignore_errors=True)


def write_artifact(
    out_dir: str | os.PathLike, manifest: dict, tensors: Iterable[TensorParts], tokenizer_json: str
) -> Path:
    """Write a whole artifact from a tensor stream; on any error nothing is left behind."""
    w = ArtifactWriter(out_dir)
    try:
        for t in tensors:
            w.add(t)
        return w.finish(manifest, tokenizer_json)
    except BaseException:
        w.abort()
        raise


class Artifact:
    """A read-only view of an artifact folder: manifest, memory-mapped weights, checksums.

    Checksums are verified lazily, once per tensor, on first access (`tensor()` / `part()`),
    or all at once with `verify()`.
    """

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        if not self.path.exists():
            raise EdgerunError(f"{self.path}: no such artifact; create one with `edgerun export SOURCE -o {path}`")
        if not self.path.is_dir():
            raise EdgerunError(f"{self.path}: not an artifact folder (expected NAME.edge/ with manifest.json)")
        mpath = self.path / MANIFEST
        if not mpath.exists():
            raise CorruptFileError(f"{mpath}: missing; the artifact is incomplete, export it again")
        self.manifest = read_manifest(mpath)
        wpath = self.path / WEIGHTS
        if not wpath.exists():
            raise CorruptFileError(f"{wpath}: missing; the artifact is incomplete, export it again")
        size = wpath.stat().st_size
        validate_manifest(self.manifest, mpath, size)
        expected = self.manifest["files"][WEIGHTS]["nbytes"]
        if size != expected:
            raise CorruptFileError(
                f"{wpath}: {size} bytes, the manifest says {expected}; the file is truncated or replaced, "
                "export again"
            )
        self.weights_path = wpath
        self._mmap = np.memmap(wpath, dtype=np.uint8, mode="r") if size else np.zeros(0, np.uint8)
        self._verified: set[str] = set()

    @property
    def arch(self) -> str:
        return self.manifest["arch"]

    @property
    def config(self) -> dict:
        return self.manifest["config"]

    @property
    def tensors(self) -> dict[str, dict]:
        return self.manifest["tensors"]

    def tokenizer_json(self) -> str:
        """The tokenizer.json text, checksum-verified."""
        p = self.path / TOKENIZER
        if not p.exists():
            raise CorruptFileError(f"{p}: missing; the artifact is incomplete, export it again")
        raw = p.read_bytes()
        if zlib.crc32(raw) != self.manifest["files"][TOKENIZER]["crc32"]:
            raise CorruptFileError(f"{p}: checksum mismatch; the file is corrupt, export again")
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            raise CorruptFileError(f"{p}: not UTF-8 text; export again") from None

    def tokenizer_info(self) -> dict:
        """The manifest's tokenizer section (bos/eos ids, stop ids, chat template); one-line CorruptFileError when an
        artifact that needs it has none."""
        info = self.manifest.get("tokenizer")
        if not isinstance(info, dict):
            raise CorruptFileError(f"{self.path / MANIFEST}: no tokenizer section; the artifact is damaged, "
                                   "export again")  # fmt: skip
        return info

    def part(self, name: str, part: str = "data", verify: bool = True) -> np.ndarray:
        """A read-only array view of one part of a tensor, straight from the memory map."""
        try:
            info = self.tensors[name]["parts"][part]
        except KeyError:
            raise CorruptFileError(f"{self.path / MANIFEST}: tensor {name!r} part {part!r} is missing") from None
        raw = self._mmap[info["offset"] : info["offset"] + info["nbytes"]]
        key = f"{name}:{part}"
        if verify and key not in self._verified:
            if zlib.crc32(raw) != info["crc32"]:
                raise CorruptFileError(
                    f"{self.weights_path}: checksum mismatch in tensor {name} ({part}) at byte "
                    f"{info['offset']}; the file is corrupt, export again"
                )
            self._verified.add(key)
        return raw.view(np.dtype(info["dtype"])).reshape(info["shape"])

    def tensor(self, name: str, dtype=np.float32) -> np.ndarray:
        """A plain (f16/f32) tensor as a new array of `dtype`; quantized tensors are dequantized."""
        entry = self.tensors.get(name)
        if entry is None:
            raise CorruptFileError(f"{self.path / MANIFEST}: tensor {name!r} is missing")
        if entry["format"] in ("f16", "f32", "bf16"):
            return np.asarray(self.part(name), dtype=dtype)
        from edgerun.quant import dequantize_parts

        parts = {p: self.part(name, p) for p in entry["parts"]}
        try:
            return dequantize_parts(entry, parts).astype(dtype, copy=False)
        except ValueError as e:  # parts that do not fit the logical shape / block layout
            raise CorruptFileError(f"{self.path / MANIFEST}: tensor {name!r} parts do not fit its shape "
                                   f"{entry['shape']} ({str(e)[:80]}); export again") from None  # fmt: skip

    def verify(self) -> None:
        """Check every tensor part's checksum (raises CorruptFileError naming the tensor)."""
        for name, entry in self.tensors.items():
            for part in entry["parts"]:
                self.part(name, part)
