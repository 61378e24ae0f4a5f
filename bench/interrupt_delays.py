"""How much of the exhaustive search's interrupt dimension a partial-order reduction could
remove (issue 15, fifth session): prints, over runs of `static_key` in event mode, how often
a delivered IPI's handler commutes with the step its CPU runs after the handler returns.

Leaving an IPI pending one step ("not yet", an interrupt deviation) runs that step s before
the handler H instead of after it. Where H and s touch nothing in common (footprints,
emu/footprint.py, without the CPU's own stack: the kernel keeps no data below RSP, it builds
with -mno-red-zone because an interrupt may push a frame there at any instruction) the two
orders reach the same state, and a reduction could skip the deviation unless a later step
of another CPU orders them (a chain s -> d -> H). H's serialization makes the CPU's pending
text visible and s fetches text: where s fetches a grain H read (the patch site, in
practice) they do not commute, as stale bytes before H are the very race under test.

Commuting is not enough under the bounds: where s ends with its CPU yielding (a spin-wait,
a quiescent point, HLT, the end), the delayed run goes on round-robin to the other CPUs before
H at no cost, and the order it stands for (their steps before H) costs a preemption without
the delay. So the fraction that commutes *and* whose s does not yield is an upper bound of the
delays such a reduction could remove.
Measured with the reference engine (its steps all pass through the Python footprint hook
this script wraps to learn each step's interrupt nesting). Usage: python
bench/interrupt_delays.py [--runs N] [--seed S].
"""

from __future__ import annotations

import argparse
import random
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager

from emu.engine import Engine
from emu.footprint import Footprint, irq, is_text, stack
from emu.machine import Machine
from emu.path import Kind, Request
from harness.explore.exhaustive import ExhaustiveSource
from harness.explore.schedule import Plan, plan_runner


class _Source(ExhaustiveSource):
    """Records, per step, whether an IPI was delivered at its start."""

    def __init__(self, prefix: list[int]) -> None:
        super().__init__(prefix, footprints=True)
        self.delivered: set[int] = set()  # step indices

    def pick(self, request: Request, position: int) -> int:
        value = super().pick(request, position)
        if request.kind is Kind.IPI and value == 1:
            self.delivered.add(len(self.steps))
        return value


@contextmanager
def _nesting(depths: list[int], yields: list[bool]) -> Iterator[None]:
    """Appends each step's interrupt nesting at its end (the handlers not yet returned), and
    whether its CPU yielded the machine then (spun, halted or finished)."""
    done = Machine._footprint_done

    def record(cpu, dec, fp: Footprint) -> None:
        depths.append(len(cpu.state.handling))
        st = cpu.state
        yields.append(st.yielded or st.halted or st.finished)
        done(cpu, dec, fp)

    Machine._footprint_done = staticmethod(record)  # type: ignore[method-assign]
    try:
        yield
    finally:
        Machine._footprint_done = staticmethod(done)  # type: ignore[method-assign]


def classify(src: _Source, depths: list[int], yields: list[bool], counts: Counter) -> None:
    steps = src.steps
    for t in sorted(src.delivered):
        c = steps[t].cpu
        mine = [k for k in range(len(steps)) if steps[k].cpu == c]
        before = [k for k in mine if k < t]
        outer = depths[before[-1]] if before else 0
        handler = [k for k in mine if k >= t]
        ends = [k for k in handler if depths[k] <= outer]
        if not ends or ends[0] == handler[-1]:
            counts["handler or CPU did not go on"] += 1
            continue
        h = [k for k in handler if k <= ends[0]]
        after = handler[len(h)]
        s = steps[after].footprint
        own = {stack(c), irq(c), irq(c, nmi=True)}
        h_reads = set().union(*(steps[k].footprint.reads for k in h)) - own
        h_writes = set().union(*(steps[k].footprint.writes for k in h)) - own
        data = (h_writes & (s.reads | s.writes)) | ((s.writes - own) & h_reads)
        view = {loc for loc in h_reads if is_text(loc)} & s.reads
        counts["delivered"] += 1
        counts["data conflict"] += bool(data)
        counts["text H made visible, fetched by s"] += bool(view)
        counts["commute"] += not data and not view
        counts["commute, and s does not yield"] += not data and not view and not yields[after]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=30)
    ap.add_argument("--seed", type=int, default=1)
    args = ap.parse_args()
    plan = Plan("static_key", "correct", cpus=3, strategy="exhaustive", preemptions=2,
                delays=2, interrupts=1, engine=Engine.REFERENCE)
    runner = plan_runner(plan, event_mode=True)
    rng = random.Random(args.seed)
    counts: Counter = Counter()
    for i in range(args.runs):
        # the simplest run, then runs whose first few hundred CPU choices are random
        prefix = [] if i == 0 else [rng.randrange(3) for _ in range(rng.randrange(50, 400))]
        depths: list[int] = []
        yields: list[bool] = []
        src = _Source(prefix)
        with _nesting(depths, yields):
            runner.machine.run(src)
        classify(src, depths, yields, counts)
    n = counts["delivered"]
    print(f"static_key --cpus 3, {args.runs} runs: {n} IPIs delivered and returned from")
    for key in ("data conflict", "text H made visible, fetched by s", "commute",
                "commute, and s does not yield", "handler or CPU did not go on"):
        print(f"  {key}: {counts[key]} ({counts[key] / max(n, 1):.0%})")


if __name__ == "__main__":
    main()
