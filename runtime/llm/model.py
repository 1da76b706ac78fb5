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
from edgerun.errors import EdgerunError
from edgerun.export.artifact import Artifact
from edgerun.runtime.llm.kv_cache import SinkWindowKVCache
from edgerun.runtime.llm.repetition import repeating_period
from edgerun.runtime.llm.sampling import Sampler, SamplingParams
from edgerun.runtime.llm.tokenizer import StreamDecoder, Tokenizer
from edgerun.runtime.memory import (
    AttnLayer,
    ModelFootprint,
    kv_specs,
    limit_malloc_arenas,
    peak_rss_bytes,
    plan_memory,
    rss_bytes,
)
from edgerun.runtime.models import get_model_class


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
    finish_reason: str | None = None  # "stop" | "length" | "loop" on the last result, else None

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


# a chat reply caught in a loop: one pattern of up to 32 tokens repeated 3 times, over at least 24 tokens
LOOP_RULE = dict(times=3, max_period=32, min_tokens=24)
GLOBAL_STREAM_MIN = 16 << 20  # globals larger than this may be streamed (embedding / tied head)


def _stored_nbytes(entry: dict) -> int:
    return sum(p["nbytes"] for p in entry["parts"].values())


def footprint(artifact: Artifact, args, model, overhead: int = 0) -> ModelFootprint:
    """Measure what the model needs from its manifest: layer byte ranges, globals, KV shapes, scratch."""
    from edgerun.runtime.backends.native_weights import ROW_CHUNK_BYTES, copy_nbytes

    tensors = artifact.tensors
    layers = artifact.manifest["layers"]
    # a layer held (resident or pinned) costs its stored bytes plus the private copies the backend makes of
    # tensors it cannot run as stored; a streamed one, its buffer plus those copies while it runs
    copies = {}
    for e in tensors.values():
        if e.get("layer") is not None:
            copies[e["layer"]] = copies.get(e["layer"], 0) + copy_nbytes(e)
    convert = max((4 * int(np.prod(e["shape"])) for e in tensors.values() if copy_nbytes(e)), default=0)  # f32 temp
    glob = {n: e for n, e in tensors.items() if e.get("layer") is None}
    global_bytes = sum(_stored_nbytes(e) for e in glob.values())
    big = [e for e in glob.values() if len(e["shape"]) == 2 and _stored_nbytes(e) > GLOBAL_STREAM_MIN]
    stream = sum(_stored_nbytes(e) for e in big)
    a = args
    attn = [AttnLayer(a.n_heads, a.n_kv_heads, a.head_dim, model.window(i)) for i in range(a.n_layers)]
    width = max(a.dim, a.ffn_dim, a.n_heads * a.head_dim)
    per_token = 4 * (6 * a.dim + 4 * a.ffn_dim + 4 * a.n_heads * a.head_dim + 4 * a.n_kv_heads * a.head_dim)
    fixed = ROW_CHUNK_BYTES + 4 * width * 16 + 4 * a.vocab_size * 3  # row scratch, logits (+ sampling copies)
    fixed += convert
    return ModelFootprint(
        layer_bytes=[g["nbytes"] + copies.get(g["index"], 0) for g in layers],
        global_bytes=global_bytes,
        attn=attn,
        act_bytes_per_token=per_token,
        act_fixed=fixed,
        overhead=overhead,
        context_length=a.context_length,
        global_stream_bytes=stream,
    )


class LLM:
    """A loaded language model: tokenizer + model + generation loop, run under a :class:`MemoryPlan`.

    Without a budget (``ram``, ``kv_*`` all None) the plan maps every weight and the backend keeps a
    full-context KV cache. With one, the plan (``plan_memory``) decides how weights are held
    (mapped / streamed through prefetched layer buffers), the sink + window KV cache
    (:class:`SinkWindowKVCache`, ``kv_bits``) and the prefill chunk, so resident memory stays under
    the budget for any conversation length; a budgeted model runs on the native backend.
    Defaults nobody set (threads; under a budget: KV bits, longest window, prefetch depth) come from
    the detected device profile (:mod:`edgerun.devices.profiles`).
    """

    def __init__(self, artifact: Artifact, threads: int | None = None, backend: str | None = None, ram=None,
                 kv_window: int | None = None, kv_sinks: int | None = None, kv_bits: int | None = None,
                 prefill_chunk: int | None = None, read_cache: str = "direct", count_tokenizer: bool = True,
                 profile=None, baseline_rss: int | None = None):  # fmt: skip
        from edgerun.devices.profiles import default_threads, detect_profile
        from edgerun.runtime.backends import build_model, resolve_backend

        # the budget counts from `baseline_rss` (load() passes the RSS it found on entry, before its imports
        # and the manifest parse), so what opening the model added is measured and planned for too
        self.baseline_rss = rss_bytes() if baseline_rss is None else baseline_rss
        self.profile = profile or detect_profile()
        self.threads = threads if threads is not None else default_threads(self.profile)
        self.open_rss = max(0, rss_bytes() - self.baseline_rss)  # imports, manifest, profile (measured)
        self.artifact = artifact
        self.path = artifact.path
        self.arch = artifact.arch
        model_cls, args_cls = get_model_class(self.arch)
        self.args = args_cls.from_dict(artifact.config)
        before_tok, hwm0 = rss_bytes(), peak_rss_bytes()
        self.tokenizer = Tokenizer(artifact.tokenizer_json(), artifact.tokenizer_info(),
                                   source=str(artifact.path / "tokenizer.json"))  # fmt: skip
        self.tokenizer_rss = max(0, rss_bytes() - before_tok)  # measured (Gemma-3: ~10 MB)
        # parsing a `tokenizers` JSON peaks well above what stays (SmolLM2: +25 MiB for a moment); VmHWM moved
        # only if this load set a new process peak, which is then the load's own peak (else: a lower bound)
        hwm1 = peak_rss_bytes()
        self.load_peak_rss = max(0, (hwm1 if hwm1 > hwm0 else rss_bytes()) - self.baseline_rss)
        if not count_tokenizer:  # budget the model alone (weights, KV, scratch); the tokenizer is reported
            self.baseline_rss = rss_bytes()
        self.budgeted = any(v is not None for v in (ram, kv_window, kv_sinks, kv_bits))
        self.backend = resolve_backend(artifact, "native" if self.budgeted and backend in (None, "auto") else backend)
        if self.budgeted and self.backend != "native":
            raise EdgerunError(f"ram / kv_* settings run on the native backend, not '{self.backend}'; "
                               "drop the backend choice or the memory settings")  # fmt: skip
        ref = model_cls(self.args, _ArtifactWeights(artifact))
        overhead = (self.open_rss + self.tokenizer_rss if count_tokenizer else 0) + (4 << 20)  # + bookkeeping
        self.footprint = footprint(artifact, self.args, ref, overhead)
        self.footprint.load_peak = self.load_peak_rss if count_tokenizer else 0
        p = self.profile
        if self.budgeted:
            limit_malloc_arenas()
            self.plan = plan_memory(ram, self.footprint, kv_bits=p.kv_bits if kv_bits is None else kv_bits,
                                    kv_window=kv_window, kv_sinks=kv_sinks, prefill_chunk=prefill_chunk,
                                    max_window=p.kv_window, prefetch_buffers=p.prefetch_layers)  # fmt: skip
        else:  # everything mapped, a full-context cache: the plan only describes it
            self.plan = plan_memory(None, self.footprint, kv_window=self.args.context_length,
                                    prefill_chunk=prefill_chunk)  # fmt: skip
        self.plan.read_cache = read_cache
        if self.backend == "reference":
            ref.load_all(artifact.tensors)  # verify checksums + convert once, up front
        self.model = build_model(artifact, self.backend, ref, self.threads,
                                 plan=self.plan if self.budgeted else None, read_cache=read_cache)  # fmt: skip

    # --- low level (gpt-fast style)
    def new_cache(self):
        """A fresh KV cache for one sequence: the plan's sink + window cache, or the backend's full one."""
        if not self.budgeted:
            return self.model.new_cache()
        p = self.plan
        return SinkWindowKVCache(kv_specs(self.footprint, p.kv_window, p.kv_sinks), bits=p.kv_bits,
                                 chunk=p.prefill_chunk, native=self.backend == "native")  # fmt: skip

    def _forward(self, ids, cache, last_only: bool) -> np.ndarray:
        """Run ids through the model (in chunks of `plan.prefill_chunk` under a budget)."""
        ids = np.asarray(ids, dtype=np.int64)
        c = self.plan.prefill_chunk if self.budgeted else max(1, len(ids))
        outs = [self.model.forward(ids[i : i + c], cache, last_only=last_only) for i in range(0, len(ids), c)]
        return outs[-1] if last_only else np.concatenate(outs, axis=0)

    def prefill(self, ids: list[int], cache) -> np.ndarray:
        """Process prompt ids into `cache`; return the logits of the last position (vocab,)."""
        return self._forward(ids, cache, last_only=True)[-1]

    def decode_step(self, token: int, cache) -> np.ndarray:
        """Feed one token; return the next-token logits (vocab,)."""
        return self.model.forward(np.asarray([token]), cache, last_only=True)[-1]

    def logits(self, token_ids) -> np.ndarray:
        """Logits (T, vocab) of every position of `token_ids`, from a fresh cache (for evaluation)."""
        return self._forward(token_ids, self.new_cache(), last_only=False)

    @property
    def max_sequence(self) -> int:
        """Longest prompt + generation: the trained context, or unbounded under a sliding window."""
        return 1 << 62 if self.budgeted else self.args.context_length

    # --- generation
    def _ids(self, prompt: str | list[int]) -> list[int]:
        ids = self.tokenizer.encode(prompt) if isinstance(prompt, str) else list(prompt)
        if not ids:
            raise EdgerunError("the prompt is empty; give some text to continue")
        if len(ids) >= self.max_sequence:
            raise EdgerunError(
                f"the prompt has {len(ids)} tokens; this model's context is {self.args.context_length} "
                "(give ram=... or kv_window=... for a sliding window)"
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
        ignore_eos: bool = False,
        reuse_prefix: bool = False,
        repeat_penalty: float = 1.0,
        stop_on_loop: bool = False,
    ) -> Iterator[GenerationResult]:
        """Generate from a raw prompt (no template), yielding one `GenerationResult` per token.

        ignore_eos: end-of-text / end-of-turn tokens do not stop generation (they are decoded as text
        and generation runs to `max_tokens`, e.g. for benchmarks); `stop` strings still apply.
        reuse_prefix: keep this call's KV cache and, on the next call with `reuse_prefix`, prefill only what
        follows the tokens the two sequences share (a chat's system prompt and history are not run again;
        llama.cpp's prompt cache). Full-context caches only; `prompt_tokens` counts the tokens actually run.
        repeat_penalty: > 1 discourages the last 64 tokens (prompt included), llama.cpp's rule; 1.0 is off.
        stop_on_loop: end generation (finish_reason "loop") once the reply's last tokens are one pattern of up to
        32 tokens repeated 3 times over at least 24 tokens: a small model's degenerate loop, which greedy
        decoding never leaves (chat replies default to it; raw continuation does not)."""
        ids = self._ids(prompt)
        sampler = Sampler(SamplingParams(temperature, top_k, top_p, seed, repeat_penalty))
        sampler.prime(ids)
        cache, start = self._cache_for(ids, reuse_prefix)
        fed = list(ids[:start])  # tokens whose keys/values the cache holds, in order
        decoder = StreamDecoder(self.tokenizer)
        max_tokens = min(max_tokens, self.max_sequence - len(ids))
        try:
            t0 = time.perf_counter()
            logits = self.prefill(ids[start:], cache)
            fed += ids[start:]
            token = sampler(logits)
            t_prompt = time.perf_counter() - t0
            t_decode = 0.0
            text = ""
            generated: list[int] = []
            for n in range(1, max_tokens + 1):
                finish = None
                if token in self.tokenizer.stop_token_ids and not ignore_eos:
                    finish, piece = "stop", ""
                else:
                    piece = decoder.push(token)
                    text += piece
                    generated.append(token)
                    if stop and any(s in text for s in stop):
                        finish = "stop"
                    elif stop_on_loop and repeating_period(generated, **LOOP_RULE):
                        finish = "loop"
                    elif n == max_tokens:
                        finish = "length"
                yield GenerationResult(piece, token, len(ids) - start, n, t_prompt, t_decode, peak_rss_mb(), finish)
                if finish:
                    return
                t1 = time.perf_counter()
                logits = self.decode_step(token, cache)
                fed.append(token)
                token = sampler(logits)
                t_decode += time.perf_counter() - t1
        finally:
            # kept only where it can be reused: a cache without truncate (the budgeted sink + window ring) would
            # sit beside the next call's new one and double the KV memory
            self._kept = (fed, cache) if reuse_prefix and hasattr(cache, "truncate") else None

    def _cache_for(self, ids: list[int], reuse: bool):
        """(cache, n): the cache kept by the last `reuse_prefix` call truncated to the n tokens it shares with
        `ids` (at most len(ids) - 1, so the last prompt token is always run for its logits), or a fresh one."""
        kept, self._kept = getattr(self, "_kept", None), None
        if reuse and kept is not None and hasattr(kept[1], "truncate"):
            fed, cache = kept
            n, lim = 0, min(len(fed), len(ids) - 1)
            while n < lim and fed[n] == ids[n]:
                n += 1
            if n:
                cache.truncate(n)
                return cache, n
        kept = None  # let the old cache go before the new one is allocated
        return self.new_cache(), 0

    def generate(self, prompt: str | list[int], max_tokens: int = 128, **kw) -> str:
        """Generate from a raw prompt and return the generated text."""
        return "".join(r.text for r in self.stream(prompt, max_tokens=max_tokens, **kw))

    def stream_chat(self, messages: list[dict], max_tokens: int = 256, stop_on_loop: bool = True,
                    **kw) -> Iterator[GenerationResult]:
        """Stream a reply to `messages` rendered with the model's chat template (a reply caught in a loop ends
        there: `stream`'s stop_on_loop)."""
        return self.stream(self.tokenizer.encode_chat(messages), max_tokens=max_tokens, stop_on_loop=stop_on_loop,
                           **kw)

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


    def memory_report(self) -> dict:
        """Plan and measured memory: budget, plan total, baseline, current RSS and growth."""
        return {
            "budget": self.plan.budget,
            "plan": self.plan.describe(),
            "plan_bytes": self.plan.total,
            "baseline_rss": self.baseline_rss,
            "rss": rss_bytes(),
            "peak_rss": peak_rss_bytes(),
            "model_rss": rss_bytes() - self.baseline_rss,
            "tokenizer_rss": self.tokenizer_rss,
        }

    def close(self) -> None:
        """Release what the backend holds (the layer streamer's thread)."""
        close = getattr(self.model, "close", None)
        if close is not None:
            close()


def model_not_found(path) -> EdgerunError:
    """The one-line error for a model path that does not exist."""
    return EdgerunError(f"{path}: not found; give an artifact folder (NAME.edge), a .gguf file or a HF folder")


def resolve_model(path: str | os.PathLike | None, progress=None) -> Path:
    """Turn what the user named into an artifact folder.

    None -> the packaged default model; a folder with manifest.json -> itself; a .gguf file or a
    Hugging Face folder -> exported once into the user cache and reused.
    """
    from edgerun.runtime.store.defaults import cached_export, default_model_path

    if path is None:
        return default_model_path(progress)
    p = Path(path).expanduser()
    if not p.exists():
        raise model_not_found(p)
    if p.is_dir() and (p / "manifest.json").exists():
        return p
    if p.exists() and (p.suffix == ".gguf" or (p.is_dir() and (p / "config.json").exists())):
        return cached_export(p, progress)
    return p  # let Artifact() say precisely what is wrong


def load(path: str | os.PathLike | None = None, threads: int | None = None, progress=None, ram=None,
         kv_window: int | None = None, kv_sinks: int | None = None, kv_bits: int | None = None,
         backend: str | None = None, **options) -> LLM:
    """Load a model: an artifact folder, a .gguf, a HF folder, or None for the packaged default.

    ram ("300MB", "1.5GB", bytes) keeps the model's resident memory under that budget for any
    conversation length; kv_window / kv_sinks / kv_bits (16, 8, 4, 2) set the sink + window KV cache
    (defaults derived from the budget and the device profile). See docs/memory.md.
    backend: "auto" (default: the "native" C kernels when they load, else "reference"),
    "reference" (numpy), "native", or "onnxruntime" (the artifact's model.onnx).
    threads: the device profile's (one per physical core) when None.
    options: prefill_chunk, read_cache ("direct" | "drop" | "keep"), count_tokenizer, profile, baseline_rss (see LLM).
    The ram budget counts from the RSS on entry: imports, manifest, tokenizer, weights, KV and scratch.
    """
    options.setdefault("baseline_rss", rss_bytes())  # edgerun.load passes the RSS before importing this module
    return LLM(Artifact(resolve_model(path, progress)), threads=threads, backend=backend, ram=ram,
               kv_window=kv_window, kv_sinks=kv_sinks, kv_bits=kv_bits, **options)  # fmt: skip
