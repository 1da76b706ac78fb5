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
    "load": ("edgerun.runtime.llm.model", "load"),
    "LLM": ("edgerun.runtime.llm.model", "LLM"),
    "ASR": ("edgerun.runtime.audio.asr", "ASR"),
    "TTS": ("edgerun.runtime.audio.tts", "TTS"),
    "Assistant": ("edgerun.runtime.audio.assistant", "Assistant"),
    "device_report": ("edgerun.devices.profiles", "device_report"),
    "export": ("edgerun.export", None),  # the package is callable: export(src, out, ...)
    "EdgerunError": ("edgerun.errors", "EdgerunError"),
    "default_model_path": ("edgerun.runtime.store.defaults", "default_model_path"),
}

__all__ = ["__version__", *_LAZY]


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        module_name, attr = _LAZY[name]
        module = importlib.import_module(module_name)
        value = module if attr is None else getattr(module, attr)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'edgerun' has no attribute {name!r}")
