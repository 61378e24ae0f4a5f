"""Dynamic partial-order reduction over one run's steps: which pairs of steps race, which CPUs
can start each reversal, and at which CPU choices of the path to try them.

Flanagan and Godefroid (POPL 2005) with source-DPOR's choice of CPUs (Abdulla et al., POPL
2014): for every pair of dependent steps i < j of different CPUs (their footprints,
emu/footprint.py) that nothing else orders, the CPUs that can start the reversal are tried at
the choice before i, and, as bounded POR does (Coons, Musuvathi, McKinley, OOPSLA 2013), at the
start of the block of steps i belongs to. The search that tries them is exhaustive.py.
A run shares its steps before its deviation with the run it deviates from, and so their races
and what those ask for: the search looks only at the races whose second step is new to the run
(`first_new_step`; tests/test_exhaustive.py runs whole searches both ways).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

from emu.engine import Engine, native_module, resolve
from emu.footprint import Footprint


@dataclass(slots=True)
class Step:
    """One scheduling step of a run: its CPU choice (a path index, None when only one CPU
    could run), its footprint, and how many choices the run had made when it ended (-1:
    not known)."""

    node: int | None
    footprint: Footprint
    end: int = -1

    @property
    def cpu(self) -> int:
        return self.footprint.cpu


def dependences(steps: list[Step]) -> Iterator[set[int]]:
    """Per step j, in order, the earlier steps of other CPUs it directly depends on: the last
    write of a location j touches, and, for a location j writes, each CPU's last read of it
    since. Every other dependence between steps of different CPUs follows from these and
    program order, transitively (what `races` builds its vector clocks from)."""
    last_write: dict[int, int] = {}
    reads: dict[int, dict[int, int]] = {}  # location -> CPU -> its last read since the write
    for j, step in enumerate(steps):
        c, fp = step.cpu, step.footprint
        preds: set[int] = set()
        for loc in fp.reads | fp.writes:
            w = last_write.get(loc)
            if w is not None and steps[w].cpu != c:
                preds.add(w)
            if loc in fp.writes:
                preds.update(r for cpu, r in reads.get(loc, {}).items() if cpu != c)
        yield preds
        for loc in fp.writes:
            last_write[loc] = j
            reads.pop(loc, None)
        for loc in fp.reads - fp.writes:
            reads.setdefault(loc, {})[c] = j


def races(steps: list[Step], since: int = 0) -> list[tuple[int, int, list[int]]]:
    """(i, j, cpus), for j >= `since`: step i and the later step j of another CPU are
    dependent and i does not happen-before j through other steps. `cpus` are the CPUs that
    can start the reversal, the initials of v = (the steps after i that do not depend on i,
    then j), as source-DPOR (Abdulla et al., POPL 2014) takes them: j's CPU first when it is
    one, then those that lead to j. Happens-before is tracked with vector clocks over step
    indices."""
    ncpus = 1 + max((s.cpu for s in steps), default=0)
    clock = [[-1] * ncpus for _ in range(ncpus)]  # per CPU: the last step of each it knows
    clocks: list[list[int]] = []
    out: list[tuple[int, int, list[int]]] = []
    for j, (step, preds) in enumerate(zip(steps, dependences(steps), strict=True)):
        c = step.cpu
        before = clock[c]
        vc = list(before)
        for i in preds:
            vc = [max(a, b) for a, b in zip(vc, clocks[i], strict=True)]
        vc[c] = j
        clocks.append(vc)
        for i in sorted(preds) if j >= since else ():
            if i > before[steps[i].cpu]:  # not ordered before j by anything else
                out.append((i, j, _initials(steps, clocks, i, j)))
        clock[c] = vc
    return out


def find_races(steps: list[Step], engine: Engine | None = None, since: int = 0,
               prior: object | None = None, kept: list[object] | None = None
               ) -> list[tuple[int, int, list[int]]]:
    """`races`, in C (harness/explore/_dpor.c) under the fast engine where it is installed;
    `races` itself is the reference. In C, `kept` (a list) gets this run's RaceLog: what a run
    that deviates from this one needs of its first steps, which it passes as `prior` with its
    `since` (first_new_step), so that only its own steps are read and walked."""
    native = native_module("search") if resolve(engine) is Engine.FAST else None
    if native is None:
        return races(steps, since)
    if kept is None:
        return native.races(steps, since, prior)
    found, log = native.races(steps, since, prior, True)
    kept.append(log)
    return found


def first_new_step(steps: list[Step], base: int) -> int:
    """The first step a run that deviates at choice `base` may not share with the run it
    deviates from: the first that ends after that choice, or that does not say when it
    ended. The machine is deterministic, so the steps before it, their footprints and the
    races among them are the other run's: its search has taken them in already."""
    for k, step in enumerate(steps):
        if step.end < 0 or step.end > base:
            return k
    return len(steps)


def _initials(steps: list[Step], clocks: list[list[int]], i: int, j: int) -> list[int]:
    ci = steps[i].cpu
    first: dict[int, int] = {}  # CPU -> its first step in v
    for k in range(i + 1, j + 1):
        if k == j or clocks[k][ci] < i:  # k does not depend on i
            first.setdefault(steps[k].cpu, k)
    initial = [c for c, k in first.items()
               if not any(d != c and f <= clocks[k][d] for d, f in first.items())]
    vj = clocks[j]
    return sorted(initial, key=lambda c: (c != steps[j].cpu, first[c] > vj[c], c))


def _block_start(steps: list[Step], i: int) -> int:
    """The first step of step i's block (the run of consecutive steps of its CPU)."""
    cpu = steps[i].footprint.cpu
    while i and steps[i - 1].footprint.cpu == cpu:
        i -= 1
    return i


def _choice_before(steps: list[Step], t: int) -> int | None:
    """The path index of the CPU choice before step t (the nearest at or before t)."""
    while t >= 0:
        node = steps[t].node
        if node is not None:
            return node
        t -= 1
    return None


def backtrack_points(steps: list[Step], engine: Engine | None = None, since: int = 0,
                     prior: object | None = None, kept: list[object] | None = None
                     ) -> list[tuple[int, list[int]]]:
    """What the races of this run whose second step is `since` or later ask for: (path index
    of a CPU choice, lead), a CPU of `lead` to try there; at the choice before the race's
    first step, and at the start of its block. (Block starts and choices are looked up for
    the races' first steps alone: a run has hundreds of steps and a few dozen races.)
    `prior`, `kept`: find_races'."""
    out: list[tuple[int, list[int]]] = []
    starts: dict[int, int] = {}
    choices: dict[int, int | None] = {}
    for i, _j, lead in find_races(steps, engine, since, prior, kept):
        start = starts.get(i)
        if start is None:
            start = starts[i] = _block_start(steps, i)
        for t in (i, start) if start != i else (i,):
            if t in choices:
                node = choices[t]
            else:
                node = choices[t] = _choice_before(steps, t)
            if node is not None:
                out.append((node, lead))
    return out
