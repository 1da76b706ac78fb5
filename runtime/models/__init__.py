"""Model architectures, one file each; found by module name plus a small alias table."""

from __future__ import annotations

import importlib

from edgerun.errors import UnsupportedError

SUPPORTED = ("llama", "gemma3", "qwen2")
ALIASES = {"mistral": "llama", "smollm": "llama", "gemma3_text": "gemma3"}


def get_model_class(arch: str):
    """Return `(Model, ModelArgs)` of an architecture, or raise a one-line UnsupportedError."""
    name = ALIASES.get(arch, arch)
    if name not in SUPPORTED:
        raise UnsupportedError(f"architecture '{arch}' is not supported; supported: {', '.join(SUPPORTED)}")
    module = importlib.import_module(f"{__name__}.{name}")
    return module.Model, module.ModelArgs
