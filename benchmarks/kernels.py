"""Kernel benchmark for 1 and 2 threads; optional JSON output.

    python benchmarks/kernels.py [--threads 1 2] [--json out.json] [--quick]
"""

from __future__ import annotations

import argparse
import json

from edgerun.bench.kernels import bench_kernels


def main() -> None:
    """Run bench_kernels for each thread count and optionally save all rows as JSON."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, nargs="*", default=[1, 2])
    p.add_argument("--json", default=None)
    p.add_argument("--quick", action="store_true")
    a = p.parse_args()
    rows = []
    for nt in a.threads:
        rows += bench_kernels(nt, quick=a.quick)
    if a.json:
        with open(a.json, "w") as f:
            json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()
