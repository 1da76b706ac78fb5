"""The embedded Python API: `load()` a model, then generate, stream, chat or score.

    import edgerun
    m = edgerun.load()                      # packaged SmolLM2, exported once to the cache
    print(m.generate("Once upon a time", max_tokens=32))
    for r in m.stream("Hello", max_tokens=8):
        print(r.text, end="", flush=True)
    m.chat([{"role": "user", "content": "Hi!"}])
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..export.artifact import Artifact
from ..export.errors import EdgerunError
from .memory import peak_rss_bytes
from .models import get_model_class
from .sampling import Sampler, SamplingParams
from .tokenizer import StreamDecoder, Tokenizer


@dataclass
class GenerationResult:
    """One streamed step: the new text piece and token, with running timings and memory."""

    text: str  # new text completed by this token ('' while a UTF-8 character is partial)
    token: int
    prompt_tokens: int
    generated_tokens: int
    prompt_seconds: float  # time to process the prompt (prefill), first token included
    decode_seconds: float  # time spent in decode steps so far
    peak_rss_mb: float
    finish_reason: str | None = None  # "stop" | "length" on the last result, else None

    @property
    def prompt_tps(self) -> float:
        return self.prompt_tokens / self.prompt_seconds if self.prompt_seconds else 0.0

    @property
    def decode_tps(self) -> float:
        n = self.generated_tokens - 1
        return n / self.decode_seconds if self.decode_seconds and n > 0 else 0.0


def peak_rss_mb() -> float:
    """Peak resident memory of this process so far (VmHWM), in MiB."""
    return peak_rss_bytes() / (1 << 20)


class _ArtifactWeights:
    """Weights for the numpy reference backend: float32 copies made on first use."""

    def __init__(self, artifact: Artifact):
        self.artifact = artifact

    def __call__(self, name: str) -> np.ndarray:
        return self.artifact.tensor(name, np.float32)

    def has(self, name: str) -> bool:
        return name in self.artifact.tensors


class LLM:
    """A loaded language model: tokenizer + model + generation loop."""

    def __init__(self, artifact: Artifact, threads: int | None = None, backend: str | None = None):
        from .backends import build_model, resolve_backend

        model_cls = self._open(artifact, threads)
        self.backend = resolve_backend(artifact, backend)
        self.model = model_cls(self.args, _ArtifactWeights(artifact))
        if self.backend == "reference":
            self.model.load_all(artifact.tensors)  # verify checksums + convert once, up front
        self.model = build_model(artifact, self.backend, self.model, threads)

    def _open(self, artifact: Artifact, threads: int | None):
        """Set what every LLM has (artifact, arch, args, tokenizer); return the architecture's Model class."""
        self.artifact = artifact
        self.path = artifact.path
        self.arch = artifact.arch
        self.threads = threads
        model_cls, args_cls = get_model_class(self.arch)
        self.args = args_cls.from_dict(artifact.config)
        self.tokenizer = Tokenizer(artifact.tokenizer_json(), artifact.manifest["tokenizer"])
        return model_cls

    # --- low level (gpt-fast style)
    def new_cache(self):
        """A fresh KV cache for one sequence."""
        return self.model.new_cache()

    def prefill(self, ids: list[int], cache) -> np.ndarray:
        """Process prompt ids into `cache`; return the logits of the last position (vocab,)."""
        return self.model.forward(np.asarray(ids), cache, last_only=True)[-1]

    def decode_step(self, token: int, cache) -> np.ndarray:
        """Feed one token; return the next-token logits (vocab,)."""
        return self.model.forward(np.asarray([token]), cache, last_only=True)[-1]

    def logits(self, token_ids) -> np.ndarray:
        """Logits (T, vocab) of every position of `token_ids`, from a fresh cache (for evaluation)."""
        return self.model.forward(np.asarray(token_ids), self.new_cache())

    # --- generation
    def _ids(self, prompt: str | list[int]) -> list[int]:
        ids = self.tokenizer.encode(prompt) if isinstance(prompt, str) else list(prompt)
        if not ids:
            raise EdgerunError("the prompt is empty; give some text to continue")
        if len(ids) >= self.args.context_length:
            raise EdgerunError(
                f"the prompt has {len(ids)} tokens; this model's context is {self.args.context_length}"
            )
        return ids

    def stream(
        self,
        prompt: str | list[int],
        max_tokens: int = 128,
        temperature: float = 0.0,
        top_k: int = 0,
        top_p: float = 1.0,
        seed: int | None = None,
        stop: list[str] | None = None,
    ) -> Iterator[GenerationResult]:
        """Generate from a raw prompt (no template), yielding one `GenerationResult` per token."""
        ids = self._ids(prompt)
        sampler = Sampler(SamplingParams(temperature, top_k, top_p, seed))
        cache = self.new_cache()
        decoder = StreamDecoder(self.tokenizer)
        max_tokens = min(max_tokens, self.args.context_length - len(ids))
        t0 = time.perf_counter()
        logits = self.prefill(ids, cache)
        token = sampler(logits)
        t_prompt = time.perf_counter() - t0
        t_decode = 0.0
        text = ""
        for n in range(1, max_tokens + 1):
            finish = None
            if token in self.tokenizer.stop_token_ids:
                finish, piece = "stop", ""
            else:
                piece = decoder.push(token)
                text += piece
                if stop and any(s in text for s in stop):
                    finish = "stop"
                elif n == max_tokens:
                    finish = "length"
            yield GenerationResult(piece, token, len(ids), n, t_prompt, t_decode, peak_rss_mb(), finish)
            if finish:
                return
            t1 = time.perf_counter()
            token = sampler(self.decode_step(token, cache))
            t_decode += time.perf_counter() - t1

    def generate(self, prompt: str | list[int], max_tokens: int = 128, **kw) -> str:
        """Generate from a raw prompt and return the generated text."""
        return "".join(r.text for r in self.stream(prompt, max_tokens=max_tokens, **kw))

    def stream_chat(self, messages: list[dict], max_tokens: int = 256, **kw) -> Iterator[GenerationResult]:
        """Stream a reply to `messages` rendered with the model's chat template."""
        return self.stream(self.tokenizer.encode_chat(messages), max_tokens=max_tokens, **kw)

    def chat(self, messages: list[dict], max_tokens: int = 256, **kw) -> str:
        """The reply to `messages` ([{"role": "user", "content": ...}, ...]) as text."""
        return "".join(r.text for r in self.stream_chat(messages, max_tokens=max_tokens, **kw)).strip()

    def info(self) -> dict:
        """What the artifact holds: arch, config, recipe, sizes, provenance."""
        m = self.artifact.manifest
        return {
            "path": str(self.path),
            "arch": self.arch,
            "config": m["config"],
            "recipe": m.get("recipe"),
            "backend": getattr(self, "backend", None),
            "weights_bytes": m["files"]["weights.bin"]["nbytes"],
            "tensors": len(m["tensors"]),
            "provenance": m.get("provenance"),
        }


def resolve_model(path: str | os.PathLike | None, progress=None) -> Path:
    """Turn what the user named into an artifact folder.

    None -> the packaged default model; a folder with manifest.json -> itself; a .gguf file or a
    Hugging Face folder -> exported once into the user cache and reused.
    """
    from .defaults import cached_export, default_model_path

    if path is None:
        return default_model_path(progress)
    p = Path(path).expanduser()
    if not p.exists():
        raise EdgerunError(f"{p}: not found; give an artifact folder (NAME.edge), a .gguf file or a HF folder")
    if p.is_dir() and (p / "manifest.json").exists():
        return p
    if p.exists() and (p.suffix == ".gguf" or (p.is_dir() and (p / "config.json").exists())):
        return cached_export(p, progress)
    return p  # let Artifact() say precisely what is wrong


def load(path: str | os.PathLike | None = None, threads: int | None = None, progress=None, ram=None,
         kv_window: int | None = None, kv_sinks: int | None = None, kv_bits: int | None = None,
         backend: str | None = None) -> LLM:
    """Load a model: an artifact folder, a .gguf, a HF folder, or None for the packaged default.

    ram ("300MB", "1.5GB", bytes) keeps the model's resident memory under that budget for any
    conversation length; kv_window / kv_sinks / kv_bits (16, 8, 4, 2) set the sink + window KV cache
    (defaults derived from the budget). See docs/memory.md.
    backend: "auto" (default: "native" C kernels for quantized artifacts, else "reference"),
    "reference" (numpy), "native", or "onnxruntime" (the artifact's model.onnx).
    """
    if ram is not None or kv_window is not None or kv_sinks is not None or kv_bits is not None:
        from .budgeted import load_budgeted

        return load_budgeted(path, ram=ram, kv_window=kv_window, kv_sinks=kv_sinks, kv_bits=kv_bits,
                             threads=threads, progress=progress)
    return LLM(Artifact(resolve_model(path, progress)), threads=threads, backend=backend)
