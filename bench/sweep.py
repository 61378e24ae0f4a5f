"""Run every shipped scenario's correct (or fixed) variant for N consecutive seeds and report
any failure. Usage: python bench/sweep.py [--seeds 200] [SCENARIO ...]"""

from __future__ import annotations

import argparse
import sys
import time

from harness.run import Runner
from harness.scenarios import SCENARIOS


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seeds", type=int, default=200)
    ap.add_argument("names", nargs="*")
    args = ap.parse_args()
    failed = 0
    for name in args.names or SCENARIOS:
        scn = SCENARIOS[name]
        runner = Runner(scn)
        t = time.perf_counter()
        bad = [(s, o.verdict) for s in range(args.seeds) if not (o := runner.run_seed(s)).ok]
        dt = time.perf_counter() - t
        print(f"{name:24} [{runner.built.variant}] {args.seeds - len(bad)}/{args.seeds} passed "
              f"in {dt:.1f}s" + (f"; first failure seed {bad[0][0]}: {bad[0][1]}" if bad else ""))
        failed += bool(bad)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
