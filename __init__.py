"""edgerun — on-device edge AI runtime.

Public API (imported lazily, PEP 562, so `import edgerun` stays cheap)::

    import edgerun
    m = edgerun.load("smollm2.edge")          # or a .gguf / HF folder, exported on the fly
    print(m.generate("The capital of France is", max_tokens=16))
    asr = edgerun.ASR()                       # Whisper base INT8: asr.transcribe(samples, 16000).text
    tts = edgerun.TTS()                       # Piper voice: tts.generate("Hello.") -> float32 samples
    edgerun.Assistant(m, asr, tts).run_files("question.wav", "reply.wav")
"""

from __future__ import annotations

__version__ = "0.1.0"

_LAZY = {
    "LLM": ("edgerun.runtime.llm.model", "LLM"),
    "ASR": ("edgerun.runtime.audio.asr", "ASR"),
    "TTS": ("edgerun.runtime.audio.tts", "TTS"),
    "Assistant": ("edgerun.runtime.audio.assistant", "Assistant"),
    "device_report": ("edgerun.devices.profiles", "device_report"),
    "export": ("edgerun.export", None),  # the package is callable: export(src, out, ...)
    "EdgerunError": ("edgerun.errors", "EdgerunError"),
    "default_model_path": ("edgerun.runtime.store.defaults", "default_model_path"),
}

__all__ = ["__version__", "load", *_LAZY]


def load(path=None, **options):
    """Load a model (see :func:`edgerun.runtime.llm.model.load`). The RSS is read before the runtime is
    imported, so a ram budget also covers what the first load's imports add to the process."""
    from edgerun.runtime.memory import rss_bytes

    options.setdefault("baseline_rss", rss_bytes())
    from edgerun.runtime.llm.model import load as _load

    return _load(path, **options)


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        module_name, attr = _LAZY[name]
        module = importlib.import_module(module_name)
        value = module if attr is None else getattr(module, attr)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'edgerun' has no attribute {name!r}")
