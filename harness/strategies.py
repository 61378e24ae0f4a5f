"""Schedulers: decision sources for the explorer. Each answers the machine's choices; the path
they produce is what gets recorded, replayed and shrunk."""

from __future__ import annotations

import random

from emu.decisions import DecisionSource, Kind
from emu.machine import StepContext


class DefaultSource(DecisionSource):
    """The fixed policy a replayed path continues with once its explicit choices run out (so a
    shrunk path may stop early): round-robin CPUs, 4-instruction quanta, pending fetch-view
    units made visible at once, interrupts delivered at once, no spontaneous NMI."""

    def __init__(self) -> None:
        self._last: int | None = None
        self._runnable: tuple[int, ...] = ()

    def observe(self, context: object) -> None:
        if isinstance(context, StepContext):
            self._runnable, self._last = context.runnable, context.last

    def pick(self, kind: Kind, arity: int, position: int) -> int:
        if kind is Kind.CPU:
            last = -1 if self._last is None else self._last
            after = [i for i, c in enumerate(self._runnable) if c > last]
            return after[0] if after else 0
        if kind is Kind.QUANTUM:
            return min(4, arity) - 1
        if kind is Kind.NMI_RAISE:
            return 0
        return 1 if arity > 1 else 0  # VIEW: the oldest pending unit; IPI/NMI: deliver


class PctSource(DecisionSource):
    """PCT (Burckhardt, Kothari, Musuvathi, Nagarakatte, ASPLOS 2010): random distinct CPU
    priorities d..d+n-1, and d-1 change points drawn from the k scheduling steps; always run the
    highest-priority runnable CPU; at the i-th change point the running CPU drops to priority i.
    A CPU that spun (PAUSE) drops below every other, as shuttle does for a yield, so spin-waits
    make progress. Other choices (quanta, view updates, interrupts) are drawn at random. For a
    bug of depth d, one schedule finds it with probability >= 1 / (n * k^(d-1))."""

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
        self.ctx: StepContext | None = None

    def observe(self, context: object) -> None:
        if not isinstance(context, StepContext):
            return
        self.ctx = context
        self.step += 1
        if context.last is not None:
            if self.step in self.changes:
                self.prio[context.last] = self.changes.index(self.step) + 1
            elif context.last in context.yielded:
                self.low -= 1
                self.prio[context.last] = self.low

    def pick(self, kind: Kind, arity: int, position: int) -> int:
        if kind is Kind.CPU and self.ctx is not None and len(self.ctx.runnable) == arity:
            best = max(range(arity), key=lambda i: self.prio.get(self.ctx.runnable[i], 0))
            return best
        return self.rng.randrange(arity)

    @staticmethod
    def bound(ncpus: int, steps: int, depth: int) -> float:
        return 1.0 / (ncpus * max(steps, 1) ** (depth - 1))
