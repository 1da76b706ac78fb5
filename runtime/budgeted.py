"""A language model held inside a RAM budget: the glue between the memory plan and the native backend.

``load_budgeted(path, ram="300MB", kv_window=..., kv_sinks=..., kv_bits=...)`` (what
``edgerun.load(..., ram=...)`` calls) measures the model (:func:`footprint`), plans it
(:func:`edgerun.runtime.memory.plan_memory`), and runs it on the C kernels
(:class:`edgerun.runtime.backends.native.NativeModel`) with

- weights as the plan says: every layer mapped ("resident"), or decoder layers read into a fixed
  set of prefetched buffers with some pinned ("streamed"); the big embedding / tied head of a plan
  with ``stream_globals`` read through the file map in row chunks dropped from RSS after each;
- the KV cache :class:`SinkWindowKVCache` sized by the plan (sinks + window, kv_bits);
- prefill in chunks of ``plan.prefill_chunk`` tokens, so activations never grow with the prompt.
"""

from __future__ import annotations

import numpy as np

from ..export.artifact import Artifact
from .api import LLM, resolve_model
from .backends.native import NativeModel
from .backends.native_weights import ROW_CHUNK_BYTES
from .kv_cache import SinkWindowKVCache
from .memory import AttnLayer, ModelFootprint, kv_specs, plan_memory, rss_bytes

GLOBAL_STREAM_MIN = 16 << 20  # globals larger than this may be streamed (embedding / tied head)


def _stored_nbytes(entry: dict) -> int:
    return sum(p["nbytes"] for p in entry["parts"].values())


def footprint(artifact: Artifact, args, model, overhead: int = 0, chunk: int = 64) -> ModelFootprint:
    """Measure what the model needs from its manifest: layer byte ranges, globals, KV shapes, scratch."""
    tensors = artifact.tensors
    layers = artifact.manifest["layers"]
    glob = {n: e for n, e in tensors.items() if e.get("layer") is None}
    global_bytes = sum(_stored_nbytes(e) for e in glob.values())
    big = [e for e in glob.values() if len(e["shape"]) == 2 and _stored_nbytes(e) > GLOBAL_STREAM_MIN]
    stream = sum(_stored_nbytes(e) for e in big)
    a = args
    attn = [AttnLayer(a.n_heads, a.n_kv_heads, a.head_dim, model.window(i)) for i in range(a.n_layers)]
    width = max(a.dim, a.ffn_dim, a.n_heads * a.head_dim)
    per_token = 4 * (6 * a.dim + 4 * a.ffn_dim + 4 * a.n_heads * a.head_dim + 4 * a.n_kv_heads * a.head_dim)
    fixed = ROW_CHUNK_BYTES + 4 * width * 16 + 4 * a.vocab_size * 3  # row scratch, logits (+ sampling copies)
    return ModelFootprint(
        layer_bytes=[g["nbytes"] for g in layers],
        global_bytes=global_bytes,
        attn=attn,
        act_bytes_per_token=per_token,
        act_fixed=fixed,
        overhead=overhead,
        context_length=a.context_length,
        global_stream_bytes=stream,
    )


class BudgetLLM(LLM):
    """An :class:`LLM` whose weights, KV cache and scratch live inside `plan.budget` (see module doc)."""

    def __init__(self, artifact: Artifact, threads: int | None = None, ram=None, kv_window=None, kv_sinks=None,
                 kv_bits=None, prefill_chunk: int = 64, read_cache: str = "direct",
                 count_tokenizer: bool = True):  # fmt: skip
        self.baseline_rss = rss_bytes()
        model_cls = self._open(artifact, threads)
        ref = model_cls(self.args, None)  # the hooks (RoPE bases, windows, scale); holds no weights
        self.tokenizer_rss = max(0, rss_bytes() - self.baseline_rss)  # measured (Gemma-3: ~10 MB)
        if not count_tokenizer:  # budget the model alone (weights, KV, scratch); the tokenizer is reported
            self.baseline_rss = rss_bytes()
        overhead = (self.tokenizer_rss if count_tokenizer else 0) + (4 << 20)  # + bookkeeping
        self.footprint = footprint(artifact, self.args, ref, overhead, prefill_chunk)
        self.plan = plan_memory(ram, self.footprint, kv_bits=16 if kv_bits is None else kv_bits,
                                kv_window=kv_window, kv_sinks=kv_sinks, prefill_chunk=prefill_chunk)  # fmt: skip
        self.plan.read_cache = read_cache
        self.backend = "native"
        self.model = NativeModel(artifact, ref, threads=threads, plan=self.plan, read_cache=read_cache)

    def new_cache(self) -> SinkWindowKVCache:
        """A preallocated sink + window cache sized by the plan."""
        p = self.plan
        return SinkWindowKVCache(kv_specs(self.footprint, p.kv_window, p.kv_sinks), bits=p.kv_bits,
                                 chunk=p.prefill_chunk)  # fmt: skip

    def forward_chunked(self, ids, cache, last_only: bool = True):
        """Run ids through the model in chunks of `plan.prefill_chunk`; logits of the last (or every) position."""
        ids = np.asarray(ids, dtype=np.int64)
        c = self.plan.prefill_chunk
        outs = []
        for i in range(0, len(ids), c):
            lg = self.model.forward(ids[i : i + c], cache, last_only=last_only)
            outs.append(lg)
        return outs[-1] if last_only else np.concatenate(outs, axis=0)

    def prefill(self, ids: list[int], cache) -> np.ndarray:
        """Process prompt ids into `cache` chunk by chunk; return the last position's logits (vocab,)."""
        return self.forward_chunked(ids, cache, last_only=True)[-1]

    def logits(self, token_ids) -> np.ndarray:
        """Logits (T, vocab) of every position (fresh cache, chunked)."""
        return self.forward_chunked(token_ids, self.new_cache(), last_only=False)

    def _ids(self, prompt):
        ids = self.tokenizer.encode(prompt) if isinstance(prompt, str) else list(prompt)
        if not ids:
            from ..export.errors import EdgerunError

            raise EdgerunError("the prompt is empty; give some text to continue")
        return ids  # no context limit: the window slides

    def stream(self, prompt, max_tokens: int = 128, **kw):
        """As :meth:`LLM.stream`, but any length: the sink + window cache never fills up."""
        ctx = self.args.context_length
        self.args.context_length = 1 << 62  # the base loop caps max_tokens by the context; the window slides
        try:
            yield from super().stream(prompt, max_tokens=max_tokens, **kw)
        finally:
            self.args.context_length = ctx

    def memory_report(self) -> dict:
        """Plan and measured memory: budget, plan total, baseline, current RSS and growth."""
        from .memory import peak_rss_bytes

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
        """Release the streamer thread."""
        self.model.close()


def load_budgeted(path=None, ram=None, kv_window=None, kv_sinks=None, kv_bits=None, threads=None, progress=None,
                  **kw) -> BudgetLLM:  # fmt: skip
    """Load a model inside a RAM budget (what ``edgerun.load(path, ram=...)`` does)."""
    return BudgetLLM(Artifact(resolve_model(path, progress)), threads=threads, ram=ram, kv_window=kv_window,
                     kv_sinks=kv_sinks, kv_bits=kv_bits, **kw)  # fmt: skip
