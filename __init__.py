"""edgerun — on-device edge AI runtime.

Public API (imported lazily, PEP 562, so `import edgerun` stays cheap)::

    import edgerun
    m = edgerun.load("smollm2.edge")          # or a .gguf / HF folder, exported on the fly
    print(m.generate("The capital of France is", max_tokens=16))
"""

from __future__ import annotations

__version__ = "0.1.0"

_LAZY = {
    "load": ("edgerun.runtime.api", "load"),
    "export": ("edgerun.export.exporter", "export"),
    "EdgerunError": ("edgerun.export.errors", "EdgerunError"),
    "default_model_path": ("edgerun.runtime.defaults", "default_model_path"),
}

__all__ = ["__version__", *_LAZY]


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        module_name, attr = _LAZY[name]
        value = getattr(importlib.import_module(module_name), attr)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'edgerun' has no attribute {name!r}")
