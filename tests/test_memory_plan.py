"""runtime/memory.py: budget parsing, RSS measurement, memory planning."""

import subprocess
import sys

import numpy as np
import pytest
from edgerun.errors import EdgerunError
from edgerun.runtime import memory as mem
from edgerun.runtime.memory import AttnLayer, ModelFootprint, parse_budget, plan_memory


@pytest.mark.parametrize(
    "text,n",
    [("300MB", 300_000_000), ("1.5GB", 1_500_000_000), ("512MiB", 512 << 20), ("2G", 2 << 30),
     (" 64 kB", 64_000), ("100", 100), (12345, 12345), ("1e9", 10**9), ("256m", 256 << 20)],
)  # fmt: skip
def test_parse_budget(text, n):
    assert parse_budget(text) == n


@pytest.mark.parametrize("bad", ["lots", "300 parsecs", "-5MB", "0", "", True, "MB"])
def test_parse_budget_errors(bad):
    with pytest.raises(EdgerunError, match="ram="):
        parse_budget(bad)


def test_peak_rss_tracks_allocation():
    # In a fresh process: in a long-lived one, freed heap pages stay resident and get reused,
    # so a new 40 MB array need not raise RSS at all.
    code = (
        "import numpy as np\nfrom edgerun.runtime import memory as mem\n"
        "with mem.PeakRSS() as p:\n"
        "    a = np.ones(40_000_000 // 8)\n"  # 40 MB touched
        "    del a\n"
        "print(p.growth, int(mem.rss_bytes() < p.peak))\n"
    )
    growth, below = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                                   check=True).stdout.split()  # fmt: skip
    assert int(growth) >= 35_000_000
    assert below == "1"


def test_reset_peak_in_subprocess():
    code = (
        "import numpy as np\nfrom edgerun.runtime import memory as m\n"
        "a = np.ones(60_000_000 // 8); del a\n"
        "before = m.peak_rss_bytes()\nok = m.reset_peak_rss()\n"
        "print(int(ok), before - m.peak_rss_bytes())\n"
    )
    ok, dropped = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                                 check=True).stdout.split()  # fmt: skip
    if ok == "1":
        assert int(dropped) > 50_000_000


def footprint(n=30, layer=3_000_000, dense=True):
    attn = [AttnLayer(9, 3, 64)] * n
    return ModelFootprint(
        layer_bytes=[layer] * n, global_bytes=20_000_000, attn=attn, act_bytes_per_token=50_000,
        overhead=5_000_000, layer_dense_bytes=[layer * 7] * n if dense else (),
        global_dense_bytes=120_000_000,
        context_length=8192,
    )  # fmt: skip


def test_unlimited_is_dense_and_full_window():
    p = plan_memory(None, footprint())
    assert p.weights == "dense" and p.kv_window == 4096 and p.n_buffers == 0


def test_generous_budget_dense_then_resident_then_streamed():
    fp = footprint()
    assert plan_memory("2GB", fp).weights == "dense"
    p = plan_memory("200MB", fp)
    assert p.weights == "resident" and p.total <= 200e6
    p = plan_memory("60MB", fp)
    assert p.weights == "streamed" and p.n_buffers == 2 and p.total <= 60e6
    assert 0 < len(p.pinned) < 30 and len(p.streamed) == 30 - len(p.pinned)
    assert p.kv_window >= 64


def test_plans_never_exceed_budget():
    fp = footprint()
    for bits in (16, 8, 4, 2):
        for b in np.linspace(plan_memory("1GB", fp, kv_bits=bits).minimum, 1e9, 40):
            p = plan_memory(int(b), fp, kv_bits=bits)
            assert p.total <= b, (b, bits, p.describe())


def test_too_small_budget_states_minimum():
    fp = footprint()
    minimum = plan_memory("1GB", fp).minimum
    with pytest.raises(EdgerunError, match="minimum working set") as e:
        plan_memory(minimum - 1, fp)
    assert mem.fmt_bytes(minimum, up=True) in str(e.value)
    assert parse_budget(mem.fmt_bytes(minimum, up=True).replace(" ", "")) >= minimum
    plan_memory(minimum, fp)  # exactly the minimum works


def test_lower_kv_bits_buy_a_longer_window():
    fp = footprint(dense=False)
    w = [plan_memory("150MB", fp, kv_bits=b).kv_window for b in (16, 8, 4, 2)]
    assert w == sorted(w) and w[-1] > w[0]


def test_local_layers_keep_their_own_window():
    attn = [AttnLayer(4, 1, 256, 512)] * 5 + [AttnLayer(4, 1, 256, None)]
    fp = ModelFootprint([1_000_000] * 6, 10_000_000, attn, context_length=32768)
    p = plan_memory("80MB", fp, kv_window=2048, kv_sinks=4)
    assert p.layer_windows == [512] * 5 + [2048] and p.layer_sinks == [0] * 5 + [4]


def test_user_window_respected_or_rejected():
    fp = footprint(dense=False)
    assert plan_memory("100MB", fp, kv_window=256, kv_sinks=2).kv_window == 256
    with pytest.raises(EdgerunError, match="minimum"):
        plan_memory("30MB", fp, kv_window=100_000)


def test_prefill_chunk_largest_that_costs_nothing_else():
    """The plan prefills in the largest of PREFILL_CHUNKS that leaves the rest of the plan as at the smallest (the
    same window, weights held the same way, as many pinned layers), its activations counted; a given chunk is kept."""
    fp = footprint()
    for budget in ("2GB", "200MB", "100MB", "60MB", "45MB"):
        p, base = plan_memory(budget, fp), plan_memory(budget, fp, prefill_chunk=mem.PREFILL_CHUNKS[-1])
        assert p.prefill_chunk in mem.PREFILL_CHUNKS
        assert (p.weights, p.n_buffers, p.pinned, p.kv_window) == (base.weights, base.n_buffers, base.pinned,
                                                                   base.kv_window)  # fmt: skip
        assert p.total <= parse_budget(budget) and p.minimum == base.minimum
        assert p.breakdown["activations"] == fp.act_fixed + fp.act_bytes_per_token * p.prefill_chunk
        bigger = [c for c in mem.PREFILL_CHUNKS if c > p.prefill_chunk]
        for c in bigger:  # each larger chunk would have cost the plan something
            try:
                q = plan_memory(budget, fp, kv_window=base.kv_window, prefill_chunk=c)
            except EdgerunError:
                continue
            assert (q.weights, q.n_buffers, q.pinned) != (base.weights, base.n_buffers, base.pinned)
    assert plan_memory("200MB", fp).prefill_chunk == 256
    assert plan_memory("200MB", fp, prefill_chunk=32).prefill_chunk == 32
