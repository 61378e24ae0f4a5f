"""Shrinking a failing decision path (Hypothesis-style, on the choice sequence).

A candidate is replayed leniently (a choice that no longer fits is reinterpreted) and
continued by the default policy; if it fails with the same verdict kind, what it actually
recorded (cut to the candidate's length) becomes the new path, so the result replays exactly.
Passes: the shortest failing prefix (the rest left to the default policy), then deleting
blocks of choices. The result is never longer than the input."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from emu.decisions import Choice, ReplaySource

from .strategies import DefaultSource


@dataclass
class Shrunk:
    path: list[Choice]
    runs: int


def replay_source(path: list[Choice], lenient: bool = False) -> ReplaySource:
    return ReplaySource(path, then=DefaultSource(), lenient=lenient)


def shrink(run: Callable[[ReplaySource], tuple[str, list[Choice]]], path: list[Choice],
           kind: str, budget: int = 80) -> Shrunk:
    """`run(source)` -> (verdict kind, recorded path)."""
    best = list(path)
    runs = 0

    def fails(candidate: list[Choice]) -> list[Choice] | None:
        nonlocal runs
        runs += 1
        got, recorded = run(replay_source(candidate, lenient=True))
        return recorded[:len(candidate)] if got == kind else None

    # 1. the shortest failing prefix, by bisection (failure need not be monotone: re-check)
    lo, hi = 0, len(best)
    while lo < hi and runs < budget // 2:
        mid = (lo + hi) // 2
        if (found := fails(best[:mid])) is not None:
            hi, best = mid, found
        else:
            lo = mid + 1
    # 2. delete blocks, large to small
    size = max(len(best) // 8, 1)
    while size >= 1 and runs < budget:
        i = 0
        while i < len(best) and runs < budget:
            candidate = best[:i] + best[i + size:]
            if (found := fails(candidate)) is not None and len(found) < len(best):
                best = found
            else:
                i += size
        size //= 2
    return Shrunk(best, runs)
