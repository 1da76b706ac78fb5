"""What the artifact cache (``~/.cache/edgerun`` or ``$EDGERUN_CACHE``) holds, and pruning it.

Every cached export is named ``NAME[-OPTIONS]-KEY.edge`` where KEY hashes its source's path, size and
mtime with the artifact format, exporter revision and edgerun version (``defaults._source_key``). An
entry is *stale* when its source is gone or no longer hashes to KEY (the source changed, or a newer
exporter would write a different artifact): ``edgerun`` never reads it again, so pruning frees it.
Anything else in the folder (files other tools put there, artifacts without provenance) is left alone.
"""

from __future__ import annotations

import json
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

from edgerun.runtime.store.defaults import _source_key, cache_dir


@dataclass
class CacheEntry:
    """One item of the cache folder: its size and whether edgerun still uses it."""

    path: Path
    nbytes: int
    status: str  # "current", "stale: <why>", or "not managed"

    @property
    def stale(self) -> bool:
        return self.status.startswith("stale")


def _size(p: Path) -> int:
    if p.is_file():
        return p.stat().st_size
    return sum(f.stat().st_size for f in p.rglob("*") if f.is_file())


def _status(p: Path) -> str:
    manifest = p / "manifest.json"
    if p.suffix != ".edge" or not manifest.is_file():
        return "not managed"
    try:
        source = json.loads(manifest.read_text())["provenance"]["source"]
    except (ValueError, KeyError, TypeError):
        return "not managed"
    key = p.stem.rsplit("-", 1)[-1]
    src = Path(source)
    if not (re.fullmatch(r"[0-9a-f]{10}", key) and src.is_absolute()):
        return "not managed"  # not made by cached_export (e.g. the speech models' own caches)
    if not src.exists():
        return f"stale: source {src} is gone"
    if _source_key(src) != key:
        return "stale: made by an older exporter or from a changed source"
    return "current"


def entries(folder: Path | None = None) -> list[CacheEntry]:
    """Everything in the cache folder, largest first."""
    folder = folder or cache_dir()
    out = [CacheEntry(p, _size(p), _status(p)) for p in folder.iterdir()]
    return sorted(out, key=lambda e: -e.nbytes)


def prune(folder: Path | None = None, dry_run: bool = False) -> list[CacheEntry]:
    """Delete the stale artifacts (all of them, or none with dry_run); returns those entries."""
    stale = [e for e in entries(folder) if e.stale]
    if not dry_run:
        for e in stale:
            shutil.rmtree(e.path)
    return stale
