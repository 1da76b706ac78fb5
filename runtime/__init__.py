"""The runtime: `llm/` (load, generate, KV caches, layer streaming), `audio/` (ASR, TTS, VAD, the voice
assistant), `backends/` (numpy reference, native C kernels, onnxruntime), `models/` (architectures as numpy
references), `store/` (packaged models, the export cache) and `memory.py` (budgets, RSS, the memory plan)."""
