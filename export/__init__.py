"""edgerun.export — sources (GGUF, HF safetensors, CT2 Whisper) to artifacts.

The package itself is callable, so ``edgerun.export(src, out, weights=...)`` is
:func:`edgerun.export.exporter.export` whether or not a submodule was imported first
(importing ``edgerun.export.x`` binds the package to the name ``edgerun.export``).
"""

import sys
import types


class _CallableModule(types.ModuleType):
    def __call__(self, *args, **kwargs):
        from edgerun.export.exporter import export

        return export(*args, **kwargs)


sys.modules[__name__].__class__ = _CallableModule
