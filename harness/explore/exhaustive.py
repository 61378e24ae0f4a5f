"""Exhaustive exploration with bounded deviations (CHESS's preemption bounding, delayed
fetch-view updates and interrupts), depth-first over the run's Path as loom does
(src/rt/path.rs), optionally with a dynamic partial-order reduction over the CPU choices.

The machine runs in event mode: a CPU runs until its next visible event (text store, fetch of
bytes with a pending store, shared protocol data access, exception/interrupt, IRET) or until it
spins or passes a quiescent point; a spontaneous NMI may arrive before any instruction of a CPU
that has some (emu/machine.py). Every choice has its simplest value (emu/path.simplest); a
path may deviate from it in at most P CPU choices (preemptions), V FLUSH choices (fetches that
see a stale unit: delayed view updates) and I interrupt choices (an NMI raised, an interrupt
left pending when it could be taken), as emu/path.cost counts them.

Each run records its choices as `Node`s and, per step, the footprint the machine measured
(emu/footprint.py). The next path changes the deepest choice that still has an untried value
in its `todo` set within the bounds; when none is left, the bounded space is exhausted.

Which values go into `todo`:
- interrupt, NMI and FLUSH choices: every value;
- CPU choices, by default: every runnable CPU. This is the bounded space itself;
- CPU choices with `reduce` (`--dpor`): the value taken, plus what races ask for (dpor.py):
  dynamic partial-order reduction (Flanagan and Godefroid, POPL 2005) with source-DPOR's choice
  of CPUs (Abdulla et al., POPL 2014): for every pair of dependent steps i < j of different
  CPUs (emu/footprint.py) that nothing else orders, the CPUs that can start the reversal are
  tried at the choice before i, and, as bounded POR does (Coons, Musuvathi, McKinley, OOPSLA
  2013), at the start of the block of steps i belongs to. Orders of independent steps reach
  the same state and are not tried again.

Without bounds DPOR is complete for the footprints' dependence: every order of dependent steps
is explored. Under preemption bounds it is not quite: the reversal of a race may need a
preemption that a path of the naive space spends elsewhere, so `exhausted` with `reduce` means
"every order of dependent steps that the search reached", not the whole bounded space
(tests/test_exhaustive.py compares the verdicts both find on small programs). Sleep sets were
tried and left out: under the bound they lost far more, because a sleeping CPU's branch had its
own preemption budget.

`Search` is the whole state of the depth-first search, so an exploration can stop after any
schedule and continue later from its saved state (harness/explore/explore.py keeps it in --db).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from emu import layout, x86
from emu.decisions import DecisionSource
from emu.footprint import Footprint, text_grains
from emu.path import FREE, Cost, Kind, Request, deviation, simplest

from .dpor import Step, backtrack_points


@dataclass
class Node:
    """One choice of the current path, and what is left to try at it."""

    kind: Kind
    arity: int
    value: int
    simplest: int
    runnable: tuple[int, ...] = ()  # CPU choices: the CPU each value stands for
    todo: set[int] = field(default_factory=set)
    done: set[int] = field(default_factory=set)
    rip: int | None = None  # NMI_RAISE inside a run: the instruction the NMI would precede

    def cost(self, value: int) -> Cost:
        """What taking `value` here spends of the bounds (emu/path.cost)."""
        return FREE if value == self.simplest else deviation(self.kind)


class ExhaustiveSource(DecisionSource):
    """Follows a prefix, then the simplest values; records every choice and, with
    `footprints`, every step (what the reduction needs)."""

    def __init__(self, prefix: list[int], footprints: bool = False) -> None:
        self.prefix = prefix
        self.wants_footprints = footprints
        self.record: list[Node] = []
        self.steps: list[Step] = []
        self.text_written: frozenset[int] = frozenset()
        self._cpu_node: int | None = None

    def step_done(self, footprint: Footprint) -> None:
        self.steps.append(Step(self._cpu_node, footprint))
        self._cpu_node = None

    def pick(self, request: Request, position: int) -> int:
        first = simplest(request)
        value = self.prefix[position] if position < len(self.prefix) else first
        if value >= request.arity:
            value = first  # cannot happen for a deterministic machine; `finish` refuses it
        runnable = ()
        if request.kind is Kind.CPU and request.context is not None:
            runnable = request.context.runnable
            self._cpu_node = position
        self.record.append(Node(request.kind, request.arity, value, first, runnable,
                                rip=request.rip))
        return value

    def close(self, length: int, text_written: frozenset[int]) -> None:
        self.text_written = text_written


def backtrack(path: list[Node], steps: list[Step]) -> None:
    """Add to the path's CPU choices what the races of this run ask for (dpor.py); every CPU
    where none of the lead could run."""
    for index, lead in backtrack_points(steps):
        node = path[index]
        can = [node.runnable.index(c) for c in lead if c in node.runnable]
        node.todo.update(can or range(node.arity))


def advance(path: list[Node], bound: Cost) -> bool:
    """Move `path` to the next prefix in depth-first order within the bounds (it then ends at
    the changed choice); False when the bounded space is exhausted."""
    spent = [FREE]
    for node in path:
        spent.append(spent[-1] + node.cost(node.value))
    for i in range(len(path) - 1, -1, -1):
        node = path[i]
        for v in sorted(node.todo - node.done, key=lambda v: (v != node.simplest, v)):
            if (spent[i] + node.cost(v)).within(bound):
                node.value = v
                node.done.add(v)
                del path[i + 1:]
                return True
    return False


def _interrupt_point(node: Node, text_written: frozenset[int]) -> bool:
    """Whether a spontaneous NMI is tried at this choice: at the start of every step, and
    inside a run before an instruction whose bytes the run patches (a task preempted inside
    a patch site, Z1). Between other instructions of a step, arrival differs from arrival at
    the step's start only in the registers and in shared data the step touched without a
    scheduling point, which no shipped handler reads: those boundaries are not tried."""
    if node.kind is not Kind.NMI_RAISE or node.rip is None:
        return True
    off = node.rip - layout.TEXT_BASE
    return any(g in text_written for g in text_grains(off, x86.MAX_INSN_LENGTH))


def check_bound(bound: Cost) -> None:
    """Negative bounds cannot be honoured: refuse them rather than report a space exhausted."""
    for name, n in (("preemptions", bound.preemptions), ("delays", bound.delays),
                    ("interrupts", bound.interrupts)):
        if not isinstance(n, int) or isinstance(n, bool) or n < 0:
            raise SearchError(f"--{name} must be a non-negative integer, got {n!r}")


class Search:
    """The depth-first search's whole state: the current path, each node with what is left to
    try. It is all a resumed search needs (`state` / `from_state`)."""

    def __init__(self, bound: Cost, reduce: bool = False, path: list[Node] | None = None,
                 exhausted: bool = False) -> None:
        check_bound(bound)
        self.bound, self.reduce = bound, reduce
        self.path: list[Node] = path or []
        self.exhausted = exhausted

    def source(self) -> ExhaustiveSource:
        """The decision source of the next schedule: the path's prefix, then the simplest."""
        return ExhaustiveSource([n.value for n in self.path], footprints=self.reduce)

    def finish(self, src: ExhaustiveSource) -> None:
        """Take in what the schedule run from `src` recorded, then move to the next prefix."""
        path = self.path
        if len(src.record) < len(path):
            raise SearchError(f"the run made {len(src.record)} choices, fewer than the "
                              f"{len(path)} of the search's path: the machine is not the one "
                              "this search ran on")
        for k, (old, new) in enumerate(zip(path, src.record, strict=False)):
            if (old.kind, old.arity, old.runnable, old.simplest) != \
                    (new.kind, new.arity, new.runnable, new.simplest):
                raise SearchError(f"choice {k}: the search expected a {old.kind.value} choice "
                                  f"of {old.arity} values (runnable {old.runnable}), the run "
                                  f"made a {new.kind.value} choice of {new.arity} (runnable "
                                  f"{new.runnable}): the machine is not the one this search "
                                  "ran on")
        for node in src.record[len(path):]:
            full = (not self.reduce or node.kind is not Kind.CPU) \
                and _interrupt_point(node, src.text_written)
            node.todo = set(range(node.arity)) if full else {node.value}
            node.done = {node.value}
            path.append(node)
        if self.reduce:
            backtrack(path, src.steps)
        self.exhausted = not advance(path, self.bound)

    def state(self) -> dict:
        b = self.bound
        return {"preemptions": b.preemptions, "delays": b.delays, "interrupts": b.interrupts,
                "reduce": self.reduce, "exhausted": self.exhausted,
                "path": [[n.kind.value, n.arity, n.value, n.simplest, list(n.runnable),
                          sorted(n.todo), sorted(n.done), n.rip] for n in self.path]}

    @classmethod
    def from_state(cls, d: dict) -> Search:
        try:
            path = [Node(Kind(k), int(a), int(v), int(first), tuple(map(int, run)),
                         set(map(int, todo)), set(map(int, done)),
                         None if rip is None else int(rip))
                    for k, a, v, first, run, todo, done, rip in d["path"]]
            bound = Cost(d["preemptions"], d["delays"], d["interrupts"])
            search = cls(bound, bool(d["reduce"]), path, bool(d["exhausted"]))
        except (KeyError, TypeError, ValueError) as e:
            raise SearchError(f"damaged search state: {e!r}") from None
        for k, n in enumerate(path):
            if n.arity < 2 or not {n.value, n.simplest} | n.todo | n.done <= set(range(n.arity)):
                raise SearchError(f"damaged search state: choice {k} has values outside "
                                  f"0..{n.arity - 1}")
        return search


class SearchError(ValueError):
    """A saved search that does not fit: damaged, or from a machine that decides otherwise;
    or bounds that cannot be honoured."""


@dataclass
class ExhaustiveResult:
    schedules: int = 0
    exhausted: bool = False
    failures: list[tuple[int, object]] = field(default_factory=list)  # (schedule, outcome)


def explore_exhaustive(run: Callable[[DecisionSource], object], bound: Cost,
                       limit: int | None = None, stop_at_first: bool = False,
                       on_result: Callable[[int, object], None] | None = None,
                       reduce: bool = False) -> ExhaustiveResult:
    """`run(source)` -> an object with `.ok` (a harness.run Outcome). Explores the bounded
    space once: every path, or with `reduce` one path per order of dependent steps."""
    res = ExhaustiveResult()
    search = Search(bound, reduce)
    while True:
        src = search.source()
        out = run(src)
        res.schedules += 1
        if on_result:
            on_result(res.schedules - 1, out)
        if not out.ok:
            res.failures.append((res.schedules - 1, out))
            if stop_at_first:
                return res
        search.finish(src)
        if search.exhausted:
            res.exhausted = True
            return res
        if limit is not None and res.schedules >= limit:
            return res
