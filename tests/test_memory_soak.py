"""Soak: an endless conversation keeps RSS flat and speed constant (the window slides, nothing grows)."""

import json
import os
import subprocess
import sys

import pytest

SCRIPT = """
import json, sys
from edgerun.bench.memory import soak
print("RESULT " + json.dumps(soak(None, n_tokens=int(sys.argv[1]), ram=sys.argv[2], kv_window=int(sys.argv[4]),
                                   every=int(sys.argv[3]), threads=1)))
"""


def run_soak(n_tokens, ram, every, window):
    args = [sys.executable, "-c", SCRIPT, str(n_tokens), ram, str(every), str(window)]
    env = dict(os.environ, OPENBLAS_NUM_THREADS="1")  # one compute thread: robust on a shared machine
    out = subprocess.run(args, capture_output=True, text=True, env=env)
    assert out.returncode == 0, out.stderr[-2000:]
    line = [x for x in out.stdout.splitlines() if x.startswith("RESULT ")][-1]
    return json.loads(line[7:])


def check(r):
    seg = r["segments"]
    rss = [s["rss_mb"] for s in seg[1:]]  # after the first segment the window is full
    assert max(rss) - min(rss) < 4.0, seg  # flat within a few MB
    assert seg[-1]["peak_mb"] - seg[1]["peak_mb"] < 4.0, seg  # no transient growth either
    # the last tokens cost no more work than the first: tok/s per CPU second of the process, the best block of each
    # segment (wall-clock tok/s, and a whole segment's CPU time, move with whatever else the machine runs: a
    # segment's mean fell to 0.8x of the first on a loaded machine while the blocks' best held)
    assert seg[-1]["cpu_tps_best"] > 0.8 * seg[0]["cpu_tps_best"], seg


@pytest.mark.model
def test_soak_short_8x_window():
    """384 tokens through a 64-token window (the 20,000-token soak below is the slow version)."""
    check(run_soak(int(os.environ.get("EDGERUN_SOAK_TOKENS", 384)), "400MB", 96, 64))


@pytest.mark.model
@pytest.mark.slow
def test_soak_20000_tokens_512_window():
    check(run_soak(20000, "400MB", 1000, 512))
