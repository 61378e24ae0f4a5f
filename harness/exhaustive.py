"""Exhaustive exploration with preemption bounding (CHESS) and bounded fetch-view delays,
depth-first over the decision path as loom does (src/rt/path.rs).

The machine runs in event mode: a CPU runs until its next visible event (text store, fetch of
bytes with a pending store, shared protocol data access, exception/interrupt, IRET) or until it
spins or passes a quiescent point. Every choice has a default: keep running the current CPU
(or, after a yield, the next one round-robin), deliver interrupts at once, flush every pending
fetch-view unit. A path may differ from the defaults in at most P CPU/interrupt choices
(preemptions) and at most V FLUSH choices (delayed view updates). Each run records every choice
with its default; the next path changes the deepest choice that still has an untried
alternative within the bounds. When none is left, the bounded space is exhausted."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from emu.decisions import DecisionSource, Kind
from emu.machine import StepContext


class ExhaustiveSource(DecisionSource):
    def __init__(self, prefix: list[int]) -> None:
        self.prefix = prefix
        # kind, arity, value, default; a choice after a yield has no alternative (arity 1 here)
        self.record: list[tuple[Kind, int, int, int]] = []
        self.ctx: StepContext | None = None

    def observe(self, context: object) -> None:
        if isinstance(context, StepContext):
            self.ctx = context

    def default(self, kind: Kind, arity: int) -> int:
        if kind is Kind.CPU and self.ctx is not None:
            run = self.ctx.runnable
            last = self.ctx.last
            if last in run and last not in self.ctx.yielded:
                return run.index(last)  # no preemption
            after = [i for i, c in enumerate(run) if last is None or c > last]
            return after[0] if after else 0
        if kind in (Kind.IPI, Kind.NMI):
            return 1
        return 0

    def pick(self, kind: Kind, arity: int, position: int) -> int:
        d = self.default(kind, arity)
        value = self.prefix[position] if position < len(self.prefix) else d
        if value >= arity:
            value = d  # cannot happen for a deterministic machine; stay total anyway
        choices = arity
        if kind is Kind.CPU and self.ctx is not None and (
                self.ctx.last not in self.ctx.runnable or self.ctx.last in self.ctx.yielded):
            choices = 1  # after a yield the next CPU is not a preemption: round-robin, forced
        self.record.append((kind, choices, value, d))
        return value


def _cost(rec: list[tuple[Kind, int, int, int]]) -> tuple[int, int]:
    p = sum(1 for k, _a, v, d in rec if v != d and k is not Kind.FLUSH)
    f = sum(1 for k, _a, v, d in rec if v != d and k is Kind.FLUSH)
    return p, f


def next_prefix(rec: list[tuple[Kind, int, int, int]], preemptions: int,
                delays: int) -> list[int] | None:
    """The next path in depth-first order within the bounds, or None: exhausted."""
    p_used = [0]
    f_used = [0]
    for k, _a, v, d in rec:  # running totals, so each position's budget is known
        p_used.append(p_used[-1] + (v != d and k is not Kind.FLUSH))
        f_used.append(f_used[-1] + (v != d and k is Kind.FLUSH))
    for i in range(len(rec) - 1, -1, -1):
        kind, arity, value, d = rec[i]
        order = [d] + [x for x in range(arity) if x != d]
        nxt = order[order.index(value) + 1:] if value in order else []
        for nv in nxt:
            p = p_used[i] + (kind is not Kind.FLUSH)
            f = f_used[i] + (kind is Kind.FLUSH)
            if p <= preemptions and f <= delays:
                return [r[2] for r in rec[:i]] + [nv]
    return None


@dataclass
class ExhaustiveResult:
    schedules: int = 0
    exhausted: bool = False
    failures: list[tuple[int, object]] = field(default_factory=list)  # (schedule, outcome)


def explore_exhaustive(run: Callable[[DecisionSource], object], preemptions: int, delays: int,
                       limit: int | None = None, stop_at_first: bool = False,
                       on_result: Callable[[int, object], None] | None = None
                       ) -> ExhaustiveResult:
    """`run(source)` -> an Outcome (harness.run). Explores every bounded path once."""
    res = ExhaustiveResult()
    prefix: list[int] = []
    while True:
        src = ExhaustiveSource(prefix)
        out = run(src)
        res.schedules += 1
        if on_result:
            on_result(res.schedules - 1, out)
        if not out.ok:
            res.failures.append((res.schedules - 1, out))
            if stop_at_first:
                return res
        nxt = next_prefix(src.record, preemptions, delays)
        if nxt is None:
            res.exhausted = True
            return res
        if limit is not None and res.schedules >= limit:
            return res
        prefix = nxt
