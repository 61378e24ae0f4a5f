"""Shrinking a failing path (Hypothesis-style, on the choice sequence of emu/path.py).

A candidate is a path edited from the best one so far. It is run with `ShrinkSource`, which
reinterprets a choice that no longer fits its request (a CPU by its number, a value that was
the simplest stays the simplest) and answers past the candidate's end with the simplest
values. If the run fails with the same verdict kind, and within the bounds the failure was
found under (an exhaustive witness stays a witness of its bounded space), what it recorded --
the whole path, the simplest choices included -- becomes the best, so the result replays
exactly. "Better" is fewer deviations from the simplest (emu/path.deviations), then a shorter
path. Passes: the shortest failing prefix, deleting blocks of choices, lowering each choice
to its simplest. The result is never worse than the input.

Each candidate runs under a `RunBudget` from the failing run's own length (`run_budget`): a
candidate that leaves the failure for a spin-wait is cut after about twice the failure's
instructions instead of running the machine's whole budget (400k a CPU, tens of seconds),
and a cut candidate does not reproduce -- it is never taken for a hang.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from emu.config import RunBudget
from emu.decisions import DecisionSource
from emu.path import Choice, Cost, Kind, Request, deviations, path_cost, simplest


@dataclass
class Shrunk:
    path: list[Choice]
    runs: int

    @property
    def deviations(self) -> int:
        return deviations(self.path)


class ShrinkSource(DecisionSource):
    """Follows a candidate leniently, then the simplest values (see the module)."""

    def __init__(self, candidate: Sequence[Choice]) -> None:
        self.candidate = list(candidate)

    def simplest_from(self) -> int | None:
        return len(self.candidate)

    def pick(self, request: Request, position: int) -> int:
        if position >= len(self.candidate):
            return simplest(request)
        want = self.candidate[position]
        if want.kind is not request.kind or want.request is None:
            return simplest(request)
        if want.value == simplest(want.request):
            return simplest(request)
        ctx, old = request.context, want.request.context
        if request.kind is Kind.CPU and ctx is not None and old is not None:
            cpu = old.runnable[want.value]
            return ctx.runnable.index(cpu) if cpu in ctx.runnable else simplest(request)
        return want.value if want.value < request.arity else simplest(request)


SHRINK_FACTOR = 2  # a candidate may run this many times the failing run's instructions ...
SHRINK_MARGIN = 2_000  # ... plus this many (a short failure still gets room to differ)


def run_budget(failing_ticks: int) -> RunBudget:
    """The budget of each shrink candidate of a failure that retired `failing_ticks`."""
    return RunBudget(SHRINK_FACTOR * failing_ticks + SHRINK_MARGIN)


def _key(path: Sequence[Choice]) -> tuple[int, int]:
    return deviations(path), len(path)


def shrink(run: Callable[[DecisionSource], tuple[str | None, list[Choice]]],
           path: list[Choice], kind: str, budget: int = 80, bound: Cost | None = None) -> Shrunk:
    """`run(source)` -> (verdict kind, or None for a run cut by its `run_budget`; recorded
    path). `path` is the failing run's recorded path; `bound`, when the failure was found
    under bounds, is what a shrunk path may spend; `budget` counts candidate runs."""
    best = list(path)
    runs = 0

    def better(candidate: list[Choice]) -> bool:
        nonlocal runs, best
        runs += 1
        got, recorded = run(ShrinkSource(candidate))
        if got != kind or (bound is not None and not path_cost(recorded).within(bound)):
            return False
        if _key(recorded) < _key(best):
            best = list(recorded)
            return True
        return False

    # 1. the shortest failing prefix, by bisection (failure need not be monotone: re-check)
    lo, hi = 0, len(best)
    while lo < hi and runs < budget // 3:
        mid = (lo + hi) // 2
        if better(best[:mid]):
            hi = min(mid, len(best))
        else:
            lo = mid + 1
    # 2. delete blocks of the deviations, large to small
    size = max(deviations(best) // 4, 1)
    while size >= 1 and runs < 2 * budget // 3:
        marks = [i for i, c in enumerate(best) if not c.simplest]
        i = 0
        while i < len(marks) and runs < 2 * budget // 3:
            cut = set(marks[i:i + size])
            if not better([c for k, c in enumerate(best) if k not in cut]):
                i += size
            else:
                marks = [k for k, c in enumerate(best) if not c.simplest]
        size //= 2
    # 3. lower each remaining deviation to its simplest, latest first
    i = len(best) - 1
    while i >= 0 and runs < budget:
        c = best[i]
        if not c.simplest and c.request is not None:
            lowered = best[:i] + [Choice(c.kind, c.arity, simplest(c.request), c.request)]
            better(lowered + best[i + 1:])
        i = min(i, len(best)) - 1
    return Shrunk(best, runs)
