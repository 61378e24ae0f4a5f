"""Decoder benchmark (issue 4): decoded instructions per second of our PT decoder on every
shipped scenario (one schedule each, all CPUs, forward and backward), plus the encoder's rate.

Usage: python bench/decode.py [--json]
"""

from __future__ import annotations

import argparse
import json
import time

from harness.run import Runner
from harness.scenario.shipped import SCENARIOS
from harness.trace import verify


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    rows = []
    for name, scn in SCENARIOS.items():
        runner = Runner(scn, decode=False)
        out = runner.run_seed(0)
        res = out.result
        records = res.sideband
        t = time.perf_counter()
        streams = verify.encode_all(out.flows, res.final_rips, runner.trace)
        t_enc = time.perf_counter() - t
        steps = 0
        t = time.perf_counter()
        for backward in (False, True):
            rep = verify.check(streams, out.flows, res.text_start, res.text_end, records,
                               backward)
            assert rep.verdict is None, rep.verdict
            steps += sum(c.steps for c in rep.cpus)
        t_dec = time.perf_counter() - t
        rows.append({"scenario": name, "instructions": steps // 2,
                     "pt_bytes": sum(map(len, streams)),
                     "decoded_insn_per_s": round(steps / t_dec),
                     "encoded_insn_per_s": round(steps / 2 / t_enc)})
    total_steps = sum(r["instructions"] for r in rows)
    if args.json:
        print(json.dumps(rows, indent=2))
        return
    print(f"{'scenario':24} {'insns':>7} {'PT bytes':>9} {'decoded/s':>10} {'encoded/s':>10}")
    for r in rows:
        print(f"{r['scenario']:24} {r['instructions']:7} {r['pt_bytes']:9} "
              f"{r['decoded_insn_per_s']:10} {r['encoded_insn_per_s']:10}")
    print(f"total instructions per direction: {total_steps}")


if __name__ == "__main__":
    main()
