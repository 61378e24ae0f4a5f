"""What libipt and perf do with a failing run of every buggy variant (issue 16): the first
failing seed of each zoo card's buggy variants and of the generic variants on `static_key`,
saved, then `textpoke crosscheck`ed. A cell says, over the run's CPUs, whether the decoder
agreed with the ground truth on every CPU, reported an error, or was silently wrong (no error,
another flow): the worst of its CPUs, with the CPUs it happened on.

Usage: python bench/crosscheck_table.py [--budget N] [--json]
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

from harness.crosscheck import Decoder, Outcome, crosscheck
from harness.run import Runner, write_artifacts
from harness.scenario.scenario import GENERIC_VARIANTS
from harness.scenario.shipped import SCENARIOS

DECODERS = (Decoder.LIBIPT_INSN, Decoder.LIBIPT_BLK, Decoder.PERF, Decoder.OURS)
RANK = {Outcome.AGREE: 0, Outcome.ERROR: 1, Outcome.SILENTLY_WRONG: 2}


def rows_to_check() -> list[tuple[str, str]]:
    rows = []
    for name, scn in SCENARIOS.items():
        rows += [(name, v) for v in scn.variants if v != scn.default_variant]
    rows += [("static_key", v) for v in GENERIC_VARIANTS
             if v != SCENARIOS["static_key"].default_variant]
    return rows


def cell(report, decoder: Decoder) -> str:
    per_cpu = [(c.cpu, d.outcome) for c in report.cpus for d in c.decodings
               if d.decoder is decoder]
    if not per_cpu:
        return "not available"
    worst = max((o for _, o in per_cpu), key=RANK.__getitem__)
    if worst is Outcome.AGREE:
        return "agree"
    return f"{worst.value} (" + ", ".join(f"cpu{c}" for c, o in per_cpu if o is worst) + ")"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--budget", type=int, default=40, help="seeds tried per variant")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    out_rows = []
    for name, variant in rows_to_check():
        runner = Runner(SCENARIOS[name], variant)
        row = {"scenario": name, "variant": variant, "verdict": "pass", "seed": None}
        for seed in range(args.budget):
            out = runner.run_seed(seed)
            if out.ok:
                continue
            row.update(verdict=str(out.verdict.kind), seed=seed)
            with tempfile.TemporaryDirectory() as tmp:
                write_artifacts(out, seed, Path(tmp))
                report = crosscheck(Path(tmp))
            row.update({d.value: cell(report, d) for d in DECODERS})
            break
        out_rows.append(row)
    if args.json:
        print(json.dumps(out_rows, indent=2))
        return
    heads = ["scenario", "variant", "verdict", "seed", *(d.value for d in DECODERS)]
    print("| " + " | ".join(heads) + " |")
    print("|" + "---|" * len(heads))
    for r in out_rows:
        print("| " + " | ".join("-" if r.get(h) is None else str(r[h]) for h in heads) + " |")


if __name__ == "__main__":
    main()
