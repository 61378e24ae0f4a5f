"""How redundant the exhaustive `--dpor` search is, and what its runs deviate in (issue 15,
sixth session): runs a whole bounded search in one process and prints how many of its runs
were distinct Mazurkiewicz traces, and how many runs deviate in which kinds of choice.

Source-DPOR (harness/explore/dpor.py) may run several schedules of one trace; an optimal DPOR
(wakeup trees, Abdulla et al., POPL 2014) runs one. A run's trace here is the set of its steps,
each named by its CPU and its index among that CPU's steps, with its footprint and the steps of
other CPUs it directly depends on (dpor.dependences, named the same way), together with the
run's non-CPU choices in order (IPI, NMI and fetch-view values, which change what the steps
are). Two runs with the same trace order every pair of dependent steps alike; the runs beyond
one per trace are what an optimal reduction could skip at most (less under the bounds: a
redundant run may be the only one within them whose own deviations lead on to another trace).

Usage: python bench/dpor_redundancy.py [--preemptions P] [--delays V] [--interrupts I]
[--scenario NAME] [--cpus N]
"""

from __future__ import annotations

import argparse
import hashlib
from collections import Counter

from emu.path import Kind
from harness.explore.dpor import Step, dependences
from harness.explore.exhaustive import ExhaustiveSource, Node, explore_exhaustive
from harness.explore.schedule import Plan, plan_runner
from harness.explore.work import PausedGc
from harness.run import Outcome


def trace_digest(steps: list[Step], record: list[Node]) -> bytes:
    """The run's trace (see the module), as a digest independent of the order of independent
    steps."""
    names: list[tuple[int, int]] = []
    seen: Counter[int] = Counter()
    keys = []
    for step, preds in zip(steps, dependences(steps), strict=True):
        c, fp = step.cpu, step.footprint
        names.append((c, seen[c]))
        seen[c] += 1
        keys.append((names[-1], sorted(fp.reads), sorted(fp.writes),
                     sorted(names[i] for i in preds)))
    others = [(n.kind.value, n.value) for n in record if n.kind is not Kind.CPU]
    return hashlib.blake2b(repr((sorted(keys), others)).encode(), digest_size=16).digest()


def deviation_kinds(record: list[Node]) -> tuple[str, ...]:
    """The kinds of the run's non-simplest choices, sorted, each once."""
    return tuple(sorted({n.kind.value for n in record if n.value != n.simplest}))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--scenario", default="static_key")
    ap.add_argument("--cpus", type=int, default=3)
    ap.add_argument("--preemptions", type=int, default=1)
    ap.add_argument("--delays", type=int, default=1)
    ap.add_argument("--interrupts", type=int, default=0)
    args = ap.parse_args()
    plan = Plan(args.scenario, cpus=args.cpus, strategy="exhaustive",
                preemptions=args.preemptions, delays=args.delays,
                interrupts=args.interrupts, dpor=True)
    runner = plan_runner(plan, event_mode=True)
    traces: Counter[bytes] = Counter()
    kinds: Counter[tuple[str, ...]] = Counter()
    with PausedGc() as collector:

        def run(src: ExhaustiveSource) -> Outcome:
            out = runner.run(src)
            traces[trace_digest(src.steps, src.record)] += 1
            kinds[deviation_kinds(src.record)] += 1
            collector.schedule_done()
            return out

        if not explore_exhaustive(run, plan.bound, reduce=True).exhausted:
            raise SystemExit("the search did not exhaust its space")
    runs = sum(traces.values())
    extra = runs - len(traces)
    print(f"{args.scenario} --cpus {args.cpus} {plan.bound} --dpor: {runs} runs, {len(traces)} "
          f"traces, {extra} redundant ({extra / max(runs, 1):.0%})")
    print("runs by the kinds of choice they deviate in:")
    for key, n in kinds.most_common():
        print(f"  {' + '.join(key) or '(none: the simplest run)'}: {n}")


if __name__ == "__main__":
    main()
