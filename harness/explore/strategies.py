"""Schedulers: decision sources for the explorer. Each answers the machine's choices; the path
they produce is what gets recorded, replayed and shrunk."""

from __future__ import annotations

import random

from emu.decisions import DecisionSource, RandomSource
from emu.path import Kind, Request

STRATEGIES = ("portfolio", "random", "pct", "exhaustive")
DEFAULT_STRATEGY = "portfolio"


def is_decision(request: Request) -> bool:
    """A real scheduling decision, the steps PCT counts: a CPU choice between two or more
    runnable CPUs (with one runnable there is nothing to decide, as shuttle counts them)."""
    return request.kind is Kind.CPU and request.arity > 1


class PctSource(DecisionSource):
    """PCT (Burckhardt, Kothari, Musuvathi, Nagarakatte, ASPLOS 2010): random distinct CPU
    priorities d..d+n-1, and d-1 distinct change points drawn uniformly from [1, k-1], where
    k counts the real scheduling decisions of a run (`is_decision`; `steps`, estimated from
    PCT runs, schedule.estimate_steps); always run the highest-priority runnable CPU; after
    the c_i-th decision (the i-th change point in time) the CPU that ran it drops to
    priority i. A CPU that spun (PAUSE) or passed a quiescent point drops below every other,
    as shuttle does for a yield, so spin-waits make progress. Change points and yields act
    only at real decisions. Other choices (quanta, view updates, interrupts) are drawn as
    RandomSource draws them. For a bug of depth d, one schedule finds it with probability
    >= 1 / (n * k^(d-1))."""

    def __init__(self, seed: int, ncpus: int, depth: int, steps: int) -> None:
        self.rng = random.Random(seed)
        self.depth, self.steps = depth, max(steps, 1)
        prios = list(range(depth, depth + ncpus))
        self.rng.shuffle(prios)
        self.prio = dict(enumerate(prios))
        # a change after the last decision changes nothing (shuttle: [1, max_steps - 1])
        points = range(1, self.steps)
        self.changes = sorted(self.rng.sample(points, min(depth - 1, len(points))))
        self.decisions = 0  # real decisions made so far
        self.low = 0  # below every priority handed out so far (yields)
        self._other = RandomSource(self.rng.randrange(2**63))

    def pick(self, request: Request, position: int) -> int:
        ctx = request.context
        if request.kind is not Kind.CPU or ctx is None:
            return self._other.pick(request, position)
        if is_decision(request):
            if ctx.last is not None:
                if self.decisions in self.changes:
                    self.prio[ctx.last] = self.changes.index(self.decisions) + 1
                elif ctx.last in ctx.yielded:
                    self.low -= 1
                    self.prio[ctx.last] = self.low
            self.decisions += 1
        return max(range(request.arity), key=lambda i: self.prio.get(ctx.runnable[i], 0))

    @staticmethod
    def bound(ncpus: int, steps: int, depth: int) -> float:
        return 1.0 / (ncpus * max(steps, 1) ** (depth - 1))


def schedule_seed(strategy: str, first: int, idx: int) -> int:
    """Schedule `idx`'s seed: `first + idx`; for `portfolio`, `first + idx // 2` (the
    random schedule and the PCT schedule of a pair share it)."""
    return first + idx // 2 if strategy == "portfolio" else first + idx


def source_for(strategy: str, seed: int, idx: int, ncpus: int, depth: int,
               steps: int) -> DecisionSource:
    """Schedule `idx`'s source (`seed` is its `schedule_seed`), from its index alone, so
    --jobs changes nothing.

    `portfolio` alternates: schedule 2j is random schedule j (RandomSource(first + j), what
    a random exploration runs as its schedule j), schedule 2j+1 is PCT's schedule j. So 2N
    portfolio schedules run random's first N, and find whatever those find -- never worse
    than random with half the schedules, nor than PCT with half. If a random schedule finds
    a bug with probability p and a PCT one with q (>= 1/(n*k^(d-1)) for a depth-d bug), N
    portfolio schedules miss it with probability at most (1-p)^ceil(N/2) * (1-q)^floor(N/2).
    (Z1's random failures in its first 60 seeds are all odd seeds: interleaving seeds
    `first + idx` would have left the portfolio's random half none of them.)"""
    if strategy == "pct" or (strategy == "portfolio" and idx % 2 == 1):
        return PctSource(seed, ncpus, depth, steps)
    return RandomSource(seed)
