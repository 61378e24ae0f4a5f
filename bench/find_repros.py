"""Find, for every buggy variant of every shipped scenario, a decision sequence that shows its
failure kind, and store the shortest one found in tests/data/repros.json (the tests replay them).

Usage: python bench/find_repros.py [--seeds N]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from emu.path import encode_path
from harness.run import Runner
from harness.scenario.shipped import SCENARIOS

OUT = Path(__file__).resolve().parent.parent / "tests" / "data" / "repros.json"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seeds", type=int, default=300)
    args = ap.parse_args()
    repros = {}
    for scn in SCENARIOS.values():
        for vname, var in scn.variants.items():
            if var.expect is None:
                continue
            runner = Runner(scn, vname)
            best = None
            for seed in range(args.seeds):
                out = runner.run_seed(seed)
                if var.accepts(out.verdict.kind) and (best is None or
                                                       len(out.result.path) < len(best[1])):
                    best = (seed, out.result.path, str(out.verdict))
            key = f"{scn.name}/{vname}"
            if best is None:
                print(f"{key}: no {var.expect} in {args.seeds} seeds")
                continue
            repros[key] = {"expect": var.expect, "seed": best[0], "verdict": best[2],
                           "path": encode_path(best[1])}
            print(f"{key}: seed {best[0]}, {len(best[1])} decisions: {best[2][:90]}")
    OUT.write_text(json.dumps(repros, indent=1, sort_keys=True) + "\n")


if __name__ == "__main__":
    main()
