"""Run every shipped scenario's correct (or fixed) variant for N consecutive seeds, each fully
verified (oracles, PT decoded forward and backward), and report any failure.
Usage: python bench/sweep.py [--seeds 200] [--jobs 2] [SCENARIO ...]"""

from __future__ import annotations

import argparse
import sys
import time
from concurrent.futures import ProcessPoolExecutor

from harness.run import Runner
from harness.scenario.shipped import SCENARIOS


def sweep(name: str, seeds: int) -> tuple[str, str, int, float, list]:
    runner = Runner(SCENARIOS[name])
    t = time.perf_counter()
    bad = [(s, str(o.verdict)) for s in range(seeds) if not (o := runner.run_seed(s)).ok]
    return name, runner.built.variant, seeds, time.perf_counter() - t, bad


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seeds", type=int, default=200)
    ap.add_argument("--jobs", type=int, default=1)
    ap.add_argument("names", nargs="*")
    args = ap.parse_args()
    names = args.names or list(SCENARIOS)
    with ProcessPoolExecutor(args.jobs) as pool:
        results = list(pool.map(sweep, names, [args.seeds] * len(names)))
    for name, variant, seeds, dt, bad in results:
        print(f"{name:24} [{variant}] {seeds - len(bad)}/{seeds} passed in {dt:.1f}s"
              + (f"; first failure seed {bad[0][0]}: {bad[0][1]}" if bad else ""))
    return 1 if any(r[4] for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
