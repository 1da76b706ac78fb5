"""Run one fuzz target: coverage-guided with atheris (libFuzzer), or a seeded random mutator without it.

    python tests/fuzz/run.py gguf --seconds 5            # atheris, edgerun + gguf-py instrumented
    python tests/fuzz/run.py gguf --runs 300 --random    # the seeded mutation fuzzer (no atheris)

A crash (any exception other than EdgerunError) is written to `regressions/<target>/crash-<sha1>` and
the run exits non-zero. Both modes first replay every kept regression input and the seeds.
The last line printed is JSON: {"target", "engine", "execs", "coverage", "features", "crashes", "seconds"}.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

HERE = Path(__file__).parent
sys.path.insert(0, str(HERE))


def _replay(target: str, fn) -> int:
    """Replay kept regression inputs; each must end in EdgerunError or succeed."""
    from edgerun.errors import EdgerunError

    n = 0
    for p in sorted(targets_mod().regression_dir(target).glob("*")):
        try:
            fn(p.read_bytes())
        except EdgerunError:
            pass
        n += 1
    return n


def targets_mod():
    import targets

    return targets


def _save_crash(target: str, data: bytes) -> Path:
    d = targets_mod().regression_dir(target)
    d.mkdir(parents=True, exist_ok=True)
    p = d / f"crash-{targets_mod().digest(data)}"
    p.write_bytes(data)
    return p


def mutate(rng: random.Random, data: bytes) -> bytes:
    """Byte flips, random bytes, truncation, chunk duplication/removal, little-endian integer edits."""
    d = bytearray(data)
    for _ in range(rng.choice((1, 1, 2, 4, 8))):
        if not d:
            break
        op, i = rng.randrange(6), rng.randrange(len(d))
        if op == 0:
            d[i] ^= 1 << rng.randrange(8)
        elif op == 1:
            d[i] = rng.randrange(256)
        elif op == 2:
            del d[rng.randrange(len(d)) :]
        elif op == 3:
            j = min(len(d), i + rng.randrange(1, 64))
            d[i:i] = d[i:j]
        elif op == 4:
            del d[i : i + rng.randrange(1, 64)]
        else:
            v = rng.choice((0, 1, 0xFF, 0x7FFFFFFF, 0xFFFFFFFF, 1 << 40, 0xFFFFFFFFFFFFFFFF))
            d[i : i + 8] = v.to_bytes(8, "little")
    return bytes(d)


def run_random(target: str, runs: int, seconds: float, seed: int = 0) -> dict:
    """The seeded mutation fuzzer: `runs` mutations of the seeds (or until `seconds`)."""
    from edgerun.errors import EdgerunError

    fn, seeds_of = targets_mod().TARGETS[target]
    seeds = seeds_of()
    for s in seeds:
        fn(s)
    replayed = _replay(target, fn)
    rng, crashes, t0, n = random.Random(seed), [], time.time(), 0
    while n < runs and time.time() - t0 < seconds:
        data = mutate(rng, rng.choice(seeds))
        n += 1
        try:
            fn(data)
        except EdgerunError:
            pass
        except Exception:  # noqa: BLE001 - the finding
            crashes.append(str(_save_crash(target, data)))
            traceback.print_exc()
    return {"target": target, "engine": "random", "execs": n, "replayed": replayed, "crashes": crashes,
            "seconds": round(time.time() - t0, 1)}  # fmt: skip


def run_atheris(target: str, seconds: float, runs: int) -> dict:
    """libFuzzer through atheris in a child process (it exits when done); parses its stats."""
    with tempfile.TemporaryDirectory() as corpus:
        for i, seed in enumerate(targets_mod().TARGETS[target][1]()):
            Path(corpus, f"seed{i}").write_bytes(seed)
        reg = targets_mod().regression_dir(target)
        reg.mkdir(parents=True, exist_ok=True)
        args = [sys.executable, str(HERE / "atheris_main.py"), target, f"-max_total_time={int(seconds)}",
                f"-runs={runs}", "-rss_limit_mb=4096", f"-artifact_prefix={reg}/", "-print_final_stats=1",
                "-timeout=30", "-seed=1", corpus]  # fmt: skip  (seeded: the same mutations every run)
        t0 = time.time()
        out = subprocess.run(args, capture_output=True, text=True, env={**os.environ, "PYTHONHASHSEED": "0"})
        log = out.stdout + out.stderr
    stats = dict(re.findall(r"stat::(\w+):\s+(\d+)", log))
    cov = re.findall(r"cov: (\d+) ft: (\d+)", log)
    crashes = re.findall(r"Test unit written to (\S+)", log)
    if out.returncode != 0 and not crashes:
        sys.stderr.write(log[-4000:])
    return {"target": target, "engine": "atheris", "execs": int(stats.get("number_of_executed_units", 0)),
            "coverage": int(cov[-1][0]) if cov else None, "features": int(cov[-1][1]) if cov else None,
            "crashes": crashes, "returncode": out.returncode, "seconds": round(time.time() - t0, 1),
            "log_tail": log[-1500:] if crashes or out.returncode else ""}  # fmt: skip


def have_atheris() -> bool:
    try:
        import atheris  # noqa: F401
    except ImportError:
        return False
    return True


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("target", choices=["gguf", "artifact", "safetensors", "ct2", "audio"])
    ap.add_argument("--seconds", type=float, default=5)
    ap.add_argument("--runs", type=int, default=10**9)
    ap.add_argument("--random", action="store_true", help="the seeded mutator instead of atheris")
    a = ap.parse_args()
    if a.random or not have_atheris():
        r = run_random(a.target, a.runs, a.seconds)
    else:
        fn, _ = targets_mod().TARGETS[a.target]
        r = {**run_atheris(a.target, a.seconds, a.runs), "replayed": _replay(a.target, fn)}
    targets_mod().cleanup()
    print(json.dumps(r))
    return 1 if r["crashes"] else 0


if __name__ == "__main__":
    sys.exit(main())
