"""The language model: loading under a memory plan and the generation loop (`model`), tokenizers,
sampling, the KV caches, and the layer streamer."""
