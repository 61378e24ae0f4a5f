"""How many paths a bounded space holds, estimated before an exhaustive search of it.

Knuth's estimator ("Estimating the efficiency of backtrack programs", Math. Comp. 29, 1975),
as GenMC and Nidhugg print one: a probe walks down the search tree of exhaustive.py from
its first run, each time to a child chosen uniformly (a run the search makes from this one:
one untried value within the bounds at one of its own choices, `exhaustive.untried`); with
d_1, d_2, ... the numbers of children met on the way, 1 + d_1 + d_1 d_2 + ... estimates the
number of runs. The mean over independent probes is unbiased; its standard error says how
far to trust it. A probe costs as many runs as its path has deviations (at most the bounds'
sum); the first run, the same for all, is made once.

The tree is the space without DPOR. With `--dpor` the search makes a subset of these paths,
so the estimate is an upper bound of its count: DPOR's children of a run are the values its
races and those of every run below it add, which a probe cannot see without exploring that
subtree (a probe that counted only the races it meets would underestimate, by a factor that
grows with the depth: on static_key P=1 V=0 I=0 it would say 246 where the search makes 392,
BENCHMARKS.md).
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable
from dataclasses import dataclass

from emu.decisions import DecisionSource
from emu.path import Cost

from .exhaustive import ExhaustiveSource, Level, check_bound, taken_in, untried


@dataclass(frozen=True)
class SpaceEstimate:
    """The estimated number of paths of a bounded space (the naive search's runs)."""

    bound: Cost
    paths: float  # the mean of the probes' estimates
    stderr: float  # its standard error (0 with one probe)
    probes: int
    runs: int  # the runs the probes made
    seconds: float
    deepest: int  # the most deviations one probe's path reached

    def line(self) -> str:
        return (f"{self.bound}: about {self.paths:,.0f} paths (standard error {self.stderr:,.0f};"
                f" {self.probes} probes, {self.runs} runs, {self.seconds:.1f} s); an exhaustive "
                "search makes that many, fewer with --dpor")


def probe(run: Callable[[DecisionSource], object], bound: Cost, rng: random.Random,
          first: Level) -> tuple[float, int]:
    """One walk from the first run (`first`, run once for every probe) to a run with no
    children: its estimate of the number of runs, and the runs it made (one per deviation of
    its last run)."""
    level = first
    weight, total, runs = 1, 1, 0
    while True:
        children = list(untried(level, bound))
        if not children:
            return total, runs
        weight *= len(children)
        total += weight
        i, v = rng.choice(children)
        prefix = level.deviating_at(i, v)
        src = ExhaustiveSource([n.value for n in prefix])
        run(src)
        runs += 1
        level = taken_in(prefix, src, reduce=False)


def estimate_space(run: Callable[[DecisionSource], object], bound: Cost, probes: int,
                   seed: int = 0, seconds: float | None = None) -> SpaceEstimate:
    """`probes` independent probes (from `seed`), `run(source)` making each run; with
    `seconds`, no new probe starts once that much time has passed (the first always runs),
    and the estimate is over the probes made."""
    check_bound(bound)
    if probes < 1:
        raise ValueError(f"an estimate needs at least one probe, got {probes}")
    rng = random.Random(seed)
    start = time.perf_counter()
    src = ExhaustiveSource([])
    run(src)
    first = taken_in([], src, reduce=False)
    values: list[float] = []
    runs, deepest = 1, 0
    for _ in range(probes):
        if values and seconds is not None and time.perf_counter() - start >= seconds:
            break
        total, made = probe(run, bound, rng, first)
        values.append(total)
        runs += made
        deepest = max(deepest, made)
    n = len(values)
    mean = math.fsum(values) / n
    var = math.fsum((v - mean) ** 2 for v in values) / (n - 1) if n > 1 else 0.0
    return SpaceEstimate(bound, mean, math.sqrt(var / n), n, runs,
                         time.perf_counter() - start, deepest)
