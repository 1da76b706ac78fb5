"""Reader for CTranslate2 model directories (`model.bin` + `config.json` + tokenizer/vocabulary).

The `model.bin` layout (CTranslate2 `specs/model_spec.py`, binary version 6)::

    u32 binary_version
    str spec_name            str = u16 length (incl. NUL) + utf-8 bytes + NUL
    u32 spec_revision
    u32 n_variables
      str name | u8 rank | u32 shape[rank] | u8 dtype_id | u32 n_bytes | bytes
    u32 n_aliases
      str alias | str variable_name

dtype ids: 0 float32, 1 int8, 2 int16, 3 int32, 4 float16, 5 bfloat16.
A model split in parts (`model.bin.part1`, `model.bin.part2`, ...) is read as their concatenation,
without writing the joined file.
"""

from __future__ import annotations

import glob
import json
import math
import os
import struct
from dataclasses import dataclass, field

import numpy as np
from edgerun.errors import CorruptFileError, EdgerunError, UnsupportedError

_DTYPES = {0: np.float32, 1: np.int8, 2: np.int16, 3: np.int32, 4: np.float16, 5: "bfloat16"}


class _ConcatFile:
    """Read-only file-like view over several files laid end to end."""

    def __init__(self, paths: list[str]):
        self.paths = paths
        self.sizes = [os.path.getsize(p) for p in paths]
        self.handles = [open(p, "rb") for p in paths]  # noqa: SIM115
        self.pos = 0
        self.size = sum(self.sizes)

    def read(self, n: int) -> bytes:
        out = bytearray()
        while n > 0 and self.pos < self.size:
            start = 0
            for h, s in zip(self.handles, self.sizes, strict=True):
                if self.pos < start + s:
                    h.seek(self.pos - start)
                    chunk = h.read(min(n, start + s - self.pos))
                    out += chunk
                    self.pos += len(chunk)
                    n -= len(chunk)
                    break
                start += s
        return bytes(out)

    def close(self) -> None:
        for h in self.handles:
            h.close()


@dataclass
class CT2Model:
    """A CTranslate2 model read into memory: variables (numpy), aliases, config, files."""

    spec_name: str
    revision: int
    variables: dict[str, np.ndarray]
    aliases: dict[str, str]
    config: dict = field(default_factory=dict)
    model_dir: str = ""
    source_files: list[str] = field(default_factory=list)

    def get(self, name: str) -> np.ndarray:
        """Return a variable by name, following aliases."""
        name = self.aliases.get(name, name)
        if name not in self.variables:
            raise CorruptFileError(f"CTranslate2 model has no variable '{name}'; the model.bin is incomplete")
        return self.variables[name]

    def __contains__(self, name: str) -> bool:
        return self.aliases.get(name, name) in self.variables


def model_bin_parts(model_dir: str) -> list[str]:
    """The file(s) that make up `model.bin` in a directory: the file itself or its ordered parts."""
    whole = os.path.join(model_dir, "model.bin")
    if os.path.isfile(whole):
        return [whole]
    parts = glob.glob(os.path.join(model_dir, "model.bin.part*"))

    def part_no(p: str) -> int:
        tail = p.rsplit("part", 1)[-1]
        return int(tail) if tail.isdigit() else 0

    return sorted(parts, key=part_no)


def _read_exact(f, n: int, what: str) -> bytes:
    b = f.read(n)
    if len(b) != n:
        raise CorruptFileError(f"CTranslate2 model.bin is truncated while reading {what}; re-install the model")
    return b


def _read_str(f) -> str:
    (n,) = struct.unpack("<H", _read_exact(f, 2, "a name length"))
    raw = _read_exact(f, n, "a name")
    return raw[:-1].decode("utf-8", errors="replace")


def read_ct2_bin(paths: list[str]) -> tuple[str, int, dict[str, np.ndarray], dict[str, str]]:
    """Parse a CTranslate2 `model.bin` (given as one file or ordered parts) into numpy arrays."""
    if not paths:
        raise EdgerunError("no model.bin found; point to a CTranslate2 model directory")
    f = _ConcatFile(paths)
    try:
        (version,) = struct.unpack("<I", _read_exact(f, 4, "the header"))
        if version < 5 or version > 6:
            raise UnsupportedError(
                f"CTranslate2 binary version {version} is not supported (5 or 6); re-convert the model"
            )
        spec = _read_str(f)
        (revision,) = struct.unpack("<I", _read_exact(f, 4, "the revision"))
        (n_vars,) = struct.unpack("<I", _read_exact(f, 4, "the variable count"))
        variables: dict[str, np.ndarray] = {}
        for _ in range(n_vars):
            name = _read_str(f)
            (rank,) = struct.unpack("<B", _read_exact(f, 1, name))
            shape = struct.unpack(f"<{rank}I", _read_exact(f, 4 * rank, name)) if rank else ()
            (type_id,) = struct.unpack("<B", _read_exact(f, 1, name))
            (nbytes,) = struct.unpack("<I", _read_exact(f, 4, name))
            raw = _read_exact(f, nbytes, name)
            dt = _DTYPES.get(type_id)
            if dt is None:
                raise CorruptFileError(f"{paths[0]}: CTranslate2 variable '{name}' has unknown dtype id {type_id}")
            itemsize = 2 if dt == "bfloat16" else np.dtype(dt).itemsize
            if nbytes != math.prod(shape) * itemsize:
                raise CorruptFileError(f"{paths[0]}: CTranslate2 variable '{name}' has {nbytes} bytes for shape "
                                       f"{shape}; the file is corrupt, re-install the model")  # fmt: skip
            if dt == "bfloat16":
                u16 = np.frombuffer(raw, dtype=np.uint16).astype(np.uint32) << 16
                arr = u16.view(np.float32)
            else:
                arr = np.frombuffer(raw, dtype=dt)
            if arr.size != int(np.prod(shape)):
                raise CorruptFileError(f"CTranslate2 variable '{name}' has {arr.size} values for shape {shape}")
            try:
                variables[name] = arr.reshape(shape)
            except ValueError:  # a shape numpy cannot hold (e.g. a zero next to dims of billions)
                raise CorruptFileError(f"{paths[0]}: CTranslate2 variable '{name}' has an impossible shape "
                                       f"{shape}; the file is corrupt, re-install the model") from None  # fmt: skip
        aliases: dict[str, str] = {}
        (n_alias,) = struct.unpack("<I", _read_exact(f, 4, "the alias count"))
        for _ in range(n_alias):
            a = _read_str(f)
            aliases[a] = _read_str(f)
    finally:
        f.close()
    return spec, revision, variables, aliases


def load_ct2(model_dir: str | list[str]) -> CT2Model:
    """Read a CTranslate2 model directory (or a list of directories whose files together form one model).

    The packaged Whisper base ships as two pip packages, each holding part of `model.bin`;
    pass both data directories and the parts are read in order.
    """
    dirs = [model_dir] if isinstance(model_dir, str) else list(model_dir)
    for d in dirs:
        if not os.path.isdir(d):
            raise EdgerunError(f"CTranslate2 model directory '{d}' does not exist; give the folder with model.bin")
    paths: list[str] = []
    for d in dirs:
        paths += model_bin_parts(d)
    if len(dirs) > 1:
        paths = sorted(paths, key=lambda p: p.rsplit("part", 1)[-1])
    spec, rev, variables, aliases = read_ct2_bin(paths)
    config: dict = {}
    main = dirs[0]
    for d in dirs:
        cfg = os.path.join(d, "config.json")
        if os.path.isfile(cfg):
            with open(cfg, encoding="utf-8") as fh:
                config = json.load(fh)
            main = d
    return CT2Model(spec, rev, variables, aliases, config, main, paths)
