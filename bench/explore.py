"""Explorer benchmark (issue 5), in one run and one process:
- fully verified schedules/s on static_key (1 patcher + 3 observers), against the same with
  naive one-instruction-at-a-time interleaving (a scheduling decision before every instruction);
- per zoo card, schedules and seconds to the first failure of its buggy variant, random vs PCT;
- the exhaustive explorer's event-mode machine run on static_key (2 observers, default path,
  no verification) with step footprints measured (what --dpor needs) against without;
- an exhaustive search (z4_bytewise fixed, P=1 V=1 I=0) with --jobs 2 against one process: the
  search on the bare machine, two workers verifying;
- with --z1: the exhaustive search's first failure on z1_optprobe_shadow buggy at P=1 V=0 I=1
  (an early preemption and an NMI inside the probed region), without and with --dpor (minutes).

Usage: python bench/explore.py [--json] [--schedules N] [--z1]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time

from harness.explore.exhaustive import ExhaustiveSource
from harness.explore.explore import Plan, explore
from harness.run import Runner
from harness.scenario.shipped import SCENARIOS


def rate(runner: Runner, n: int) -> float:
    t = time.perf_counter()
    for seed in range(n):
        assert runner.run_seed(seed).ok
    return n / (time.perf_counter() - t)


def event_run_ms(runner: Runner, footprints: bool, n: int = 10) -> float:
    """Best of 5 batches: one default event-mode run of the machine alone, in ms."""
    best = float("inf")
    for _ in range(5):
        t = time.perf_counter()
        for _ in range(n):
            runner.machine.run(ExhaustiveSource([], footprints=footprints))
        best = min(best, (time.perf_counter() - t) / n)
    return best * 1000


def z1_exhaustive() -> list[dict]:
    """Schedules and seconds to the exhaustive search's first Z1 failure (issue 14)."""
    rows = []
    for dpor in (False, True):
        plan = Plan("z1_optprobe_shadow", "buggy", strategy="exhaustive", preemptions=1,
                    delays=0, interrupts=1, dpor=dpor, shrink=False)
        found = explore(plan, schedules=5000, stop_at_first=True)
        first = found.failures[0] if found.failures else None
        rows.append({"dpor": dpor, "schedule": first.idx if first else None,
                     "seconds": round(found.seconds, 1)})
    return rows


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--schedules", type=int, default=10)
    ap.add_argument("--z1", action="store_true", help="also time the exhaustive search on Z1")
    args = ap.parse_args()
    scn = SCENARIOS["static_key"]
    ours = rate(Runner(scn), args.schedules)
    naive = rate(Runner(dataclasses.replace(scn, max_quantum=1)), max(args.schedules // 5, 2))
    event = Runner(scn, cpus=3, decode=False, event_mode=True)
    plain_ms, fp_ms = event_run_ms(event, False), event_run_ms(event, True)
    search = Plan("z4_bytewise", "fixed", strategy="exhaustive", preemptions=1, delays=1,
                  interrupts=0)
    one, two = explore(search, jobs=1), explore(search, jobs=2)
    assert one.exhausted and two.exhausted and len(one.results) == len(two.results)
    exhaustive = {"schedules": len(one.results), "jobs1_s": round(one.seconds, 1),
                  "jobs2_s": round(two.seconds, 1),
                  "speedup": round(one.seconds / two.seconds, 2)}
    cards = []
    for s in sorted((s for s in SCENARIOS.values() if s.card), key=lambda s: s.card):
        row = {"card": s.card, "scenario": s.name}
        for strategy in ("random", "pct"):
            sm = explore(Plan(s.name, "buggy", strategy=strategy, shrink=False),
                         schedules=200, stop_at_first=True)
            first = sm.failures[0] if sm.failures else None
            row[strategy] = {"schedules": first.idx + 1 if first else None,
                             "seconds": round(sm.seconds, 2) if first else None}
        cards.append(row)
    out = {"static_key_schedules_per_s": round(ours, 2),
           "naive_one_insn_schedules_per_s": round(naive, 3),
           "speedup_over_naive": round(ours / naive, 1),
           "event_run_ms": round(plain_ms, 1), "event_run_with_footprints_ms": round(fp_ms, 1),
           "footprint_cost_ratio": round(fp_ms / plain_ms, 2), "exhaustive_jobs": exhaustive,
           "first_failure": cards, "z1_exhaustive": z1_exhaustive() if args.z1 else None}
    if args.json:
        print(json.dumps(out, indent=2))
        return
    for row in out["z1_exhaustive"] or []:
        print(f"exhaustive z1_optprobe_shadow buggy P=1 V=0 I=1{' --dpor' if row['dpor'] else ''}: "
              f"first failure at schedule {row['schedule']} after {row['seconds']} s")
    print(f"static_key, fully verified: {ours:.2f} schedules/s; naive one-instruction "
          f"interleaving: {naive:.3f} schedules/s ({ours / naive:.1f}x)")
    print(f"event-mode run (static_key, 3 CPUs): {plain_ms:.1f} ms; with footprints "
          f"{fp_ms:.1f} ms ({fp_ms / plain_ms:.2f}x)")
    print(f"exhaustive z4_bytewise P=1 V=1, {exhaustive['schedules']} schedules: one process "
          f"{exhaustive['jobs1_s']} s, --jobs 2 {exhaustive['jobs2_s']} s "
          f"({exhaustive['speedup']}x)")
    print(f"{'card':5} {'scenario':24} {'random: sched / s':>20} {'pct: sched / s':>18}")
    for r in cards:
        a, b = r["random"], r["pct"]
        print(f"{r['card']:5} {r['scenario']:24} {str(a['schedules']):>8} / "
              f"{str(a['seconds']):>7}   {str(b['schedules']):>6} / {str(b['seconds']):>7}")


if __name__ == "__main__":
    main()
