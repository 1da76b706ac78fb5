"""The RAM budget: parse it, measure resident memory, and plan a model's memory inside it.

- :func:`parse_budget` — "300MB", "1.5GB", "512MiB", "2G", 300_000_000 -> bytes.
- :func:`rss_bytes`, :func:`peak_rss_bytes`, :func:`reset_peak_rss`, :class:`PeakRSS` — measured, not assumed.
- :func:`plan_memory` -> :class:`MemoryPlan` — weights dense / quantized-resident / streamed with
  k layer buffers (+ pinned layers), KV window W and sinks S, prefill chunk; raises
  :class:`EdgerunError` naming the minimum when the budget cannot hold the minimum working set.

What the budget covers: the resident memory the model adds to the process (weights held,
layer buffers, KV cache, activations and scratch, tokenizer and bookkeeping), i.e. peak RSS
minus the RSS the process had before `load()`. Units: kB/MB/GB are powers of 1000,
KiB/MiB/GiB and bare K/M/G are powers of 1024.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field

from edgerun.errors import EdgerunError

_UNITS = {
    "": 1, "b": 1,
    "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12,
    "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40,
    "kib": 1 << 10, "mib": 1 << 20, "gib": 1 << 30, "tib": 1 << 40,
}  # fmt: skip
_BUDGET_RE = re.compile(r"^\s*([0-9]*\.?[0-9]+(?:[eE][+-]?[0-9]+)?)\s*([a-zA-Z]*)\s*$")


def parse_budget(value: str | int | float | None) -> int | None:
    """Parse a RAM budget into bytes: "300MB" (10^6), "512MiB"/"512M" (2^20), "1.5GB", or an int of bytes.

    None stays None (no budget). Raises EdgerunError with the accepted forms on anything else.
    """
    if value is None:
        return None
    if isinstance(value, bool):
        raise EdgerunError(f"ram={value!r} is not a size: give bytes or a string like '300MB', '1.5GB', '512MiB'")
    if isinstance(value, (int, float)):
        n = int(value)
    else:
        m = _BUDGET_RE.match(str(value))
        unit = m.group(2).lower() if m else None
        if not m or unit not in _UNITS:
            raise EdgerunError(
                f"ram={value!r} is not a size: use a number with kB/MB/GB (powers of 1000) or KiB/MiB/GiB, "
                "e.g. '300MB', '1.5GB', '512MiB'"
            )
        n = int(float(m.group(1)) * _UNITS[unit])
    if n <= 0:
        raise EdgerunError(f"ram={value!r} must be positive, e.g. '300MB'")
    return n


def fmt_bytes(n: float, up: bool = False) -> str:
    """Human-readable size in decimal units (the ones --ram uses): 123.4 MB; `up` rounds up (for minimums)."""
    import math

    for unit, f in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if abs(n) >= f:
            v = math.ceil(n / f * 10) / 10 if up else n / f
            return f"{v:.1f} {unit}"
    return f"{int(n)} B"


# ----------------------------------------------------------------------------- measuring


def _status_kb(key: str) -> int | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def rss_bytes() -> int:
    """Current resident set size of this process (VmRSS; psutil elsewhere)."""
    v = _status_kb("VmRSS")
    if v is None:
        import psutil

        v = psutil.Process().memory_info().rss
    return v


def peak_rss_bytes() -> int:
    """Peak resident set size since start or the last successful :func:`reset_peak_rss` (VmHWM)."""
    v = _status_kb("VmHWM")
    if v is None:
        import resource
        import sys

        r = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        v = r if sys.platform == "darwin" else r * 1024
    return v


def reset_peak_rss() -> bool:
    """Reset VmHWM to the current RSS by writing 5 to /proc/self/clear_refs (Linux >= 4.0).

    Returns False where that is not allowed; :class:`PeakRSS` then falls back to sampling."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


class PeakRSS:
    """Measure the peak RSS of a code region: ``with PeakRSS() as p: ...; p.peak, p.start``.

    Uses the kernel's high-water mark after resetting it, and a sampling thread
    (every `interval` s) as a fallback and cross-check where the reset is refused.
    """

    def __init__(self, interval: float = 0.005):
        self.interval = interval
        self.start = 0
        self.sampled = 0
        self.hwm_ok = False
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._end_hwm = 0

    def __enter__(self) -> PeakRSS:
        self.hwm_ok = reset_peak_rss()
        self.start = rss_bytes()
        self.sampled = self.start
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="edgerun-peak-rss", daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.sampled = max(self.sampled, rss_bytes())

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self.sampled = max(self.sampled, rss_bytes())
        self._end_hwm = peak_rss_bytes() if self.hwm_ok else 0

    @property
    def peak(self) -> int:
        """Peak RSS inside the region (bytes, whole process)."""
        end = self._end_hwm if not (self._thread and self._thread.is_alive()) else peak_rss_bytes()
        return max(self.sampled, end if self.hwm_ok else 0)

    @property
    def growth(self) -> int:
        """Peak RSS inside the region minus RSS at its start."""
        return self.peak - self.start


# ----------------------------------------------------------------------------- planning


@dataclass(frozen=True)
class AttnLayer:
    """KV shape of one decoder layer: heads, kv heads, head size, the model's own window (None = global)."""

    n_heads: int
    n_kv: int
    head_dim: int
    model_window: int | None = None


@dataclass
class ModelFootprint:
    """What a model needs, in bytes, independent of the budget.

    layer_bytes: each decoder layer's byte range in weights.bin (quantized, as stored).
    layer_dense_bytes: the same layers dequantized to float32 (empty = no dense tier; the native
    loader gives none, since its kernels read the stored bytes).
    global_bytes / global_dense_bytes: embeddings, head, norms (always resident).
    attn: one :class:`AttnLayer` per decoder layer (KV shapes).
    act_bytes_per_token: activation scratch per token of a block; act_fixed: scratch independent of T.
    overhead: tokenizer and bookkeeping measured by the loader. context_length: trained context.
    """

    layer_bytes: Sequence[int]
    global_bytes: int
    attn: Sequence[AttnLayer]
    act_bytes_per_token: int = 0
    act_fixed: int = 0
    overhead: int = 0
    layer_dense_bytes: Sequence[int] = ()
    global_dense_bytes: int = 0
    context_length: int = 4096
    global_stream_bytes: int = 0  # globals that can be read in chunks per token instead (embedding / tied head)
    load_peak: int = 0  # measured peak while opening (imports, tokenizer parse transient), before any weight


@dataclass
class MemoryPlan:
    """The decision: how weights are held, KV window/sinks/bits, chunk sizes, and the byte breakdown."""

    budget: int | None
    weights: str  # "dense" (float32 resident) | "resident" (quantized, resident) | "streamed"
    n_buffers: int  # layer buffers of the streamer (0 when nothing is streamed)
    pinned: list[int]  # layers held resident while the others stream
    kv_window: int
    kv_sinks: int
    kv_bits: int
    layer_windows: list[int]  # window per layer (Gemma-3 local layers: min(own, kv_window))
    layer_sinks: list[int]
    prefill_chunk: int
    minimum: int  # smallest budget that can run this model at these KV settings
    breakdown: dict[str, int] = field(default_factory=dict)
    stream_globals: bool = False  # the big embedding / head is read in chunks every token, not held

    @property
    def total(self) -> int:
        """Bytes the plan uses."""
        return sum(self.breakdown.values())

    @property
    def streamed(self) -> list[int]:
        """Layers read from disk every token."""
        n = len(self.layer_windows)
        return [i for i in range(n) if self.weights == "streamed" and i not in self.pinned]

    def describe(self) -> str:
        """One line: mode, buffers, KV window, total vs budget."""
        b = fmt_bytes(self.budget) if self.budget else "none"
        parts = ", ".join(f"{k} {fmt_bytes(v)}" for k, v in self.breakdown.items())
        extra = f" ({self.n_buffers} buffers, {len(self.pinned)} pinned)" if self.weights == "streamed" else ""
        return (
            f"weights {self.weights}{extra}; KV {self.kv_bits}-bit, "
            f"{self.kv_sinks} sinks + {self.kv_window} window; "
            f"plan {fmt_bytes(self.total)} of budget {b} [{parts}]"
        )


def kv_specs(fp: ModelFootprint, window: int, sinks: int):
    """Per-layer cache specs for a global window W and S sinks (local layers: own window, no sinks)."""
    from edgerun.runtime.llm.kv_cache import LayerSpec

    out = []
    for a in fp.attn:
        if a.model_window is not None:
            out.append(LayerSpec(a.n_heads, a.n_kv, a.head_dim, min(a.model_window, window), 0))
        else:
            out.append(LayerSpec(a.n_heads, a.n_kv, a.head_dim, window, sinks))
    return out


def kv_nbytes(fp: ModelFootprint, window: int, sinks: int, bits: int, chunk: int) -> int:
    """Bytes of the sink + window cache (all layers, scratch included)."""
    from edgerun.runtime.llm.kv_cache import SinkWindowKVCache

    return SinkWindowKVCache.nbytes_for(kv_specs(fp, window, sinks), bits, chunk=chunk)


PREFILL_CHUNKS = (256, 128, 64)  # prefill block sizes a plan picks from, largest first


def plan_memory(
    budget: int | str | None,
    fp: ModelFootprint,
    kv_bits: int = 16,
    kv_window: int | None = None,
    kv_sinks: int | None = None,
    prefill_chunk: int | None = None,
    **kw,
) -> MemoryPlan:
    """Decide how a model lives inside `budget` (bytes or a string like "300MB"; None = unlimited): see
    :func:`plan_memory_chunk` (the other keywords are its).

    `prefill_chunk`: the tokens a prompt is prefilled in at once; None picks the largest of
    :data:`PREFILL_CHUNKS` whose activations and attention scratch cost the plan nothing else than those bytes
    (the KV window chosen at the smallest is kept; weights held the same way, as many layers pinned): fewer, larger
    blocks prefill faster (less work per block, and a streamed layer is read once per block). Raises
    EdgerunError stating the minimum (at the smallest chunk) when the budget cannot hold the model."""
    if prefill_chunk is not None:
        return plan_memory_chunk(budget, fp, kv_bits, kv_window, kv_sinks, prefill_chunk, **kw)
    base = plan_memory_chunk(budget, fp, kv_bits, kv_window, kv_sinks, PREFILL_CHUNKS[-1], **kw)
    for c in PREFILL_CHUNKS[:-1]:
        try:
            p = plan_memory_chunk(budget, fp, kv_bits, base.kv_window, kv_sinks, c, **kw)  # the window stays
        except EdgerunError:
            continue
        same = (p.weights, p.n_buffers, p.pinned, p.kv_window, p.stream_globals)
        if same == (base.weights, base.n_buffers, base.pinned, base.kv_window, base.stream_globals):
            p.minimum = base.minimum
            return p
    return base


def plan_memory_chunk(
    budget: int | str | None,
    fp: ModelFootprint,
    kv_bits: int = 16,
    kv_window: int | None = None,
    kv_sinks: int | None = None,
    prefill_chunk: int = 64,
    max_window: int = 4096,
    min_window: int = 64,
    kv_share: float = 0.25,
    prefetch_buffers: int = 2,
    reserve: float = 0.04,
) -> MemoryPlan:
    """The plan for one prefill chunk: how a model lives inside `budget` (bytes or a string like "300MB"; None =
    unlimited).

    Order of choices: the KV window (user's, or the largest <= min(max_window, context) whose cache
    takes at most `kv_share` of the budget, never below `min_window`); then weights: dense float32
    if they fit, else quantized resident, else streamed through `prefetch_buffers` layer buffers
    (1 if only that fits) with as many layers pinned resident as the rest allows.
    Raises EdgerunError stating the minimum when even one layer buffer + minimum KV does not fit.
    `reserve` (a share of the budget) is kept free for allocator slack and short-lived temporaries.
    """
    from edgerun.quant.kv import check_bits

    bits = check_bits(kv_bits)
    budget = full_budget = parse_budget(budget)
    sinks = 4 if kv_sinks is None else int(kv_sinks)
    if sinks < 0 or (kv_window is not None and kv_window < 1):
        raise EdgerunError(f"kv_sinks={kv_sinks} / kv_window={kv_window}: need sinks >= 0 and window >= 1")
    n = len(fp.layer_bytes)
    chunk = prefill_chunk
    act = fp.act_fixed + fp.act_bytes_per_token * chunk
    fixed = fp.global_bytes + fp.overhead + act
    big = max(fp.layer_bytes) if n else 0
    w_target = min(max_window, fp.context_length)
    w_min = kv_window if kv_window is not None else min(min_window, w_target)
    gs = fp.global_stream_bytes
    minimum = int((fixed - gs + kv_nbytes(fp, w_min, sinks, bits, chunk) + big) / (1 - reserve)) + 1
    minimum = max(minimum, fp.load_peak + 1)  # opening the model already reached this much

    def done(weights, k, pinned, w, stream_globals=False):
        held = fp.global_bytes - (gs if stream_globals else 0)
        bd = {"globals": held, "overhead": fp.overhead, "activations": act,
              "kv": kv_nbytes(fp, w, sinks, bits, chunk)}  # fmt: skip
        if weights == "dense":
            bd["globals"] = fp.global_dense_bytes
            bd["layers"] = sum(fp.layer_dense_bytes)
        elif weights == "resident":
            bd["layers"] = sum(fp.layer_bytes)
        else:
            bd["layer_buffers"] = k * big
            bd["pinned"] = sum(fp.layer_bytes[i] for i in pinned)
        specs = kv_specs(fp, w, sinks)
        return MemoryPlan(full_budget, weights, k, pinned, w, sinks, bits, [s.window for s in specs],
                          [s.sinks for s in specs], chunk, minimum, bd, stream_globals)  # fmt: skip

    if budget is None:
        dense = "dense" if fp.layer_dense_bytes else "resident"
        return done(dense, 0, list(range(n)), kv_window or w_target)
    if budget < minimum:  # (budget is still the user's full figure here)
        need = fmt_bytes(minimum, up=True)
        raise EdgerunError(
            f"ram budget {fmt_bytes(budget)} is below this model's minimum working set {need} "
            f"(one layer {fmt_bytes(big)} + globals {fmt_bytes(fp.global_bytes - gs)} + KV + scratch; "
            f"opening it peaked at {fmt_bytes(fp.load_peak)}); "
            f"use ram of at least {need}"
        )
    budget = int(budget * (1 - reserve))
    if kv_window is not None:
        w = kv_window
    else:  # the largest window (multiple of 64) whose cache fits in kv_share of the budget
        lo, hi = w_min, w_target
        if kv_nbytes(fp, hi, sinks, bits, chunk) <= kv_share * budget:
            lo = hi
        while hi - lo > 64:
            mid = (lo + hi) // 2 // 64 * 64
            if mid <= lo:
                break
            if kv_nbytes(fp, mid, sinks, bits, chunk) <= kv_share * budget:
                lo = mid
            else:
                hi = mid
        w = lo
    kvb = kv_nbytes(fp, w, sinks, bits, chunk)
    room = budget - fixed - kvb
    if fp.layer_dense_bytes and fp.global_dense_bytes + sum(fp.layer_dense_bytes) + fp.overhead + act + kvb <= budget:
        return done("dense", 0, list(range(n)), w)
    if sum(fp.layer_bytes) <= room:
        return done("resident", 0, list(range(n)), w)
    if kv_window is None:  # a shorter window (not below min(512, target)) that keeps every layer resident?
        w2 = w
        while w2 > max(w_min, min(512, w_target)) and budget - fixed - kv_nbytes(fp, w2, sinks, bits, chunk) < sum(
            fp.layer_bytes
        ):
            w2 = max(w_min, min(512, w_target), w2 - 256)
        if budget - fixed - kv_nbytes(fp, w2, sinks, bits, chunk) >= sum(fp.layer_bytes):
            return done("resident", 0, list(range(n)), w2)
    stream_globals = False
    if room < big and gs and budget - (fixed - gs) - kvb >= big:  # read the big head in chunks instead
        stream_globals, fixed = True, fixed - gs
        room = budget - fixed - kvb
    if room < big:  # the KV share left no room for one buffer: shrink the window down to the minimum
        while w > w_min and budget - fixed - kv_nbytes(fp, w, sinks, bits, chunk) < big:
            w = max(w_min, w // 2)
        if budget - fixed - kv_nbytes(fp, w, sinks, bits, chunk) < big and gs and not stream_globals:
            stream_globals, fixed = True, fixed - gs
        room = budget - fixed - kv_nbytes(fp, w, sinks, bits, chunk)
    k = min(prefetch_buffers, n, max(1, room // big)) if big else 0
    left = room - k * big
    pinned = []
    for i in range(n):  # pin from the front: every pinned layer is one read less per token
        if fp.layer_bytes[i] <= left and n - len(pinned) > k:
            pinned.append(i)
            left -= fp.layer_bytes[i]
    return done("streamed", k, pinned, w, stream_globals)


def limit_malloc_arenas(n: int = 1) -> bool:
    """Under a RAM budget: at most `n` glibc malloc arenas. Every thread that allocates (the assistant's LLM
    thread, the layer streamer) otherwise gets an arena of its own whose freed pages stay resident: measured
    +35 MB of RSS for the voice assistant's LLM thread. Returns False where glibc's mallopt is unavailable."""
    import ctypes

    try:
        libc = ctypes.CDLL(None)
        return bool(libc.mallopt(-8, int(n)))  # M_ARENA_MAX
    except (OSError, AttributeError):
        return False
