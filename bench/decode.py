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


def libipt_rates(flavour) -> dict[str, float] | str:
    """libipt's decoded instructions per second (harness/trace/libipt.py, pt_insn or pt_blk)
    over every shipped scenario's seed-0 run, forward; a string saying why if it is missing."""
    from emu import layout
    from harness.trace import libipt

    ipt = libipt.load()
    if isinstance(ipt, libipt.LibiptMissing):
        return str(ipt)
    steps, seconds = 0, 0.0
    for scn in SCENARIOS.values():
        runner = Runner(scn, decode=False)
        out = runner.run_seed(0)
        for flow, stream in zip(out.flows, out.streams, strict=True):
            t = time.perf_counter()
            res = libipt.decode(ipt, stream, layout.TEXT_BASE, out.result.text_start,
                                out.result.sideband, len(flow) + 16, flavour)
            seconds += time.perf_counter() - t
            assert res.error is None and len(res.steps) == len(flow), res.error
            steps += len(res.steps)
    return {"instructions": steps, "insn_per_s": round(steps / seconds)}


def libipt_main(as_json: bool) -> None:
    from harness.trace.libipt import Flavour

    rates = {f"libipt_{f.name.lower()}": libipt_rates(f) for f in Flavour}
    if as_json:
        print(json.dumps(rates, indent=2))
        return
    for name, r in rates.items():
        print(f"{name}: " + (r if isinstance(r, str) else
                             f"{r['insn_per_s']} decoded/s over {r['instructions']} insns"))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--libipt", action="store_true", help="libipt's pt_insn and pt_blk instead")
    args = ap.parse_args()
    if args.libipt:
        libipt_main(args.json)
        return
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
