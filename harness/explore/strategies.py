"""Schedulers: decision sources for the explorer. Each answers the machine's choices; the path
they produce is what gets recorded, replayed and shrunk."""

from __future__ import annotations

import random

from emu.decisions import DecisionSource, RandomSource
from emu.path import Kind, Request


class PctSource(DecisionSource):
    """PCT (Burckhardt, Kothari, Musuvathi, Nagarakatte, ASPLOS 2010): random distinct CPU
    priorities d..d+n-1, and d-1 change points drawn from the k CPU choices; always run the
    highest-priority runnable CPU; at the i-th change point the running CPU drops to priority i.
    A CPU that spun (PAUSE) drops below every other, as shuttle does for a yield, so spin-waits
    make progress. Other choices (quanta, view updates, interrupts) are drawn as RandomSource
    draws them. For a bug of depth d, one schedule finds it with probability
    >= 1 / (n * k^(d-1))."""

    def __init__(self, seed: int, ncpus: int, depth: int, steps: int) -> None:
        self.rng = random.Random(seed)
        self.depth, self.steps = depth, max(steps, 1)
        prios = list(range(depth, depth + ncpus))
        self.rng.shuffle(prios)
        self.prio = dict(enumerate(prios))
        self.changes = sorted(self.rng.sample(range(1, self.steps + 1),
                                              min(depth - 1, self.steps)))
        self.step = 0
        self.low = 0  # below every priority handed out so far (yields)
        self._other = RandomSource(self.rng.randrange(2**63))

    def pick(self, request: Request, position: int) -> int:
        ctx = request.context
        if request.kind is not Kind.CPU or ctx is None:
            return self._other.pick(request, position)
        self.step += 1
        if ctx.last is not None:
            if self.step in self.changes:
                self.prio[ctx.last] = self.changes.index(self.step) + 1
            elif ctx.last in ctx.yielded:
                self.low -= 1
                self.prio[ctx.last] = self.low
        return max(range(request.arity), key=lambda i: self.prio.get(ctx.runnable[i], 0))

    @staticmethod
    def bound(ncpus: int, steps: int, depth: int) -> float:
        return 1.0 / (ncpus * max(steps, 1) ** (depth - 1))
