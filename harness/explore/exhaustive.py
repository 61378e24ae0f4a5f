"""Exhaustive exploration with bounded deviations (CHESS's preemption bounding, delayed
fetch-view updates and interrupts) over the run's Path (loom's src/rt/path.rs), shallowest
deviation first, optionally with a dynamic partial-order reduction over the CPU choices.

The machine runs in event mode: a CPU runs until its next visible event (text store, fetch of
bytes with a pending store, shared protocol data access, exception/interrupt, IRET) or until it
spins or passes a quiescent point; a spontaneous NMI may arrive before any instruction of a CPU
that has some (emu/delivery.py, where MachineConfig.nmi_text allows). Every choice has
its simplest value (emu/path.simplest); a path may deviate from it in at most P CPU choices
(preemptions), V FLUSH choices (fetches that see a stale unit: delayed view updates) and I
interrupt choices (an NMI raised, an interrupt left pending when it could be taken), as
emu/path.cost counts them.

Each run records its choices as `Node`s and, per step, the footprint the machine measured
(emu/footprint.py). The next path takes an untried value of a choice's `todo` set within the
bounds, in the order `Search` describes; when none is left, the bounded space is exhausted.

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
(tests/test_soundness.py compares the verdicts both find on small programs). Sleep sets were
tried and left out: under the bound they lost far more, because a sleeping CPU's branch had its
own preemption budget.

`Search` is the whole state of the search, so an exploration can stop after any
schedule and continue later from its saved state (harness/explore/explore.py keeps it in --db).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, fields
from typing import Any

from emu.decisions import DecisionSource
from emu.engine import Engine, native_module, resolve
from emu.footprint import Footprint
from emu.path import FREE, Choice, Cost, Kind, Request, deviation, simplest

from .dpor import Step, backtrack_points, first_new_step


@dataclass(slots=True)
class Node:
    """One choice of the current path, and what is left to try at it."""

    kind: Kind
    arity: int
    value: int
    simplest: int
    runnable: tuple[int, ...] = ()  # CPU choices: the CPU each value stands for
    todo: set[int] = field(default_factory=set)
    done: set[int] = field(default_factory=set)
    # a deviation's own node in the run it starts: a copy of the choice in the run it deviates
    # from, which keeps what is tried there (`origin`)
    origin: Node | None = field(default=None, repr=False, compare=False)
    # the machine's request this choice answered (None for a node of a saved search): a later
    # run that asks the same request object makes the same choice (`taken_in`)
    request: Request | None = field(default=None, repr=False, compare=False)

    def cost(self, value: int) -> Cost:
        """What taking `value` here spends of the bounds (emu/path.cost)."""
        return FREE if value == self.simplest else deviation(self.kind)


NODE_FIELDS = tuple(f.name for f in fields(Node))  # the order _dpor.c's `nodes` sets them in

# what a request decides of its node: (the request, kept so that its id stays its own; its
# simplest value; the CPUs a CPU choice's values stand for), by the request's id
Known = dict[int, tuple[Request, int, tuple[int, ...]]]
KNOWN_MOST = 4096  # requests remembered (the machine makes one per CPU context, made once)


def node_of(choice: Choice, known: Known | None = None, todo: set[int] | None = None
            ) -> Node:
    """The node of a choice a run recorded: `todo` to try at it (none by default), its own
    value done. `known` remembers what each request decides: a search takes in hundreds of
    choices per run, of a few requests."""
    request = choice.request
    got = known.get(id(request)) if known is not None else None
    if got is None:
        got = _entry(request, known)
    return Node(choice.kind, choice.arity, choice.value, got[1], got[2],
                set() if todo is None else todo, {choice.value}, request=request)


def _entry(request: Request | None, known: Known | None) -> tuple[Request, int, tuple[int, ...]]:
    """What `request` decides of its node, kept in `known` (also for _dpor.c: nodes)."""
    if request is None:
        raise SearchError("a recorded choice without its request")
    ctx = request.context
    got = (request, simplest(request),
           ctx.runnable if request.kind is Kind.CPU and ctx is not None else ())
    if known is not None:
        if len(known) >= KNOWN_MOST:
            known.clear()
        known[id(request)] = got
    return got


def own_nodes(choices: list[Choice], start: int, reduce: bool, engine: Engine | None = None,
              known: Known | None = None) -> list[Node]:
    """The nodes of a run's own choices (from `start`), as taken_in takes them in: every value
    to try, or with `reduce` a CPU choice's own value only. Under the fast engine in C
    (_dpor.c: nodes, a z1 run has ~1,900 of them); the loop over node_of is the reference."""
    native = native_module("search") if resolve(engine) is Engine.FAST else None
    if native is not None and isinstance(choices, list):
        if native.NODE_FIELDS != NODE_FIELDS:
            raise RuntimeError(f"_dpor.c makes Nodes of {native.NODE_FIELDS}, the dataclass "
                               f"has {NODE_FIELDS}: rebuild the extension")
        return native.nodes(Node, choices, start, {} if known is None else known, _entry,
                            Kind.CPU, reduce)
    return [node_of(c, known, set(range(c.arity)) if not reduce or c.kind is not Kind.CPU
                    else {c.value}) for c in choices[start:]]


_CPU = Kind.CPU  # (step_done's test, once per step: a module global, not an enum lookup)


@dataclass(slots=True)
class StepLog:
    """A run's steps as its ExhaustiveSource records them (`step_done`), kept apart from the
    source: the C recorder of the fast engine (_dpor.c: step_done) is bound to this, and so
    makes no reference cycle with the source (PausedGc: a schedule's objects are in none)."""

    choices: Sequence[Choice]  # the recorder's path (attach)
    steps: list[Step]
    stepped: int = 0  # the choices made before the last step ended


class ExhaustiveSource(DecisionSource):
    """Follows a prefix, then the simplest values; with `footprints`, records every step (what
    the reduction needs). Its choices are the recorder's path (`attach`), which the search
    takes in as nodes (`taken_in`): past the prefix the machine may answer them itself
    (`simplest_from`). A run of it may start from a snapshot of an earlier one
    (emu/snapshot.py).

    With the search's `bound`, it wants a snapshot only if the run has made, past its
    prefix and since it was last asked, a choice it could deviate at within the bound: a
    snapshot serves the runs that deviate from this one later on, at such choices. A run
    whose budget is spent, or whose remaining budget no later choice can use (in static_key
    P=2 V=2 I=1, delays left to runs that make no view choice any more), took 88 % of the
    snapshots, and none of them served a run (BENCHMARKS.md, seventh session); a run whose
    prefix spent the bound takes none (`may_want_snapshot`). Without a bound, every snapshot
    is wanted."""

    resumable = True

    def __init__(self, prefix: list[int], footprints: bool = False,
                 bound: Cost | None = None, native: Any = None) -> None:
        self.prefix = prefix
        self.wants_footprints = footprints
        self.bound = bound
        self.choices: Sequence[Choice] = []  # the recorder's path (attach)
        self.log = StepLog(self.choices, [])
        self._asked = 0  # the choices made when a snapshot was last asked for
        self._spent = FREE  # what the prefix's choices made so far spend of the bound
        self._open = self._affordable()  # the kinds of choice the bound leaves a deviation
        if native is not None:  # `step_done` in C (harness/explore/_dpor.c), on the log
            self.step_done = functools.partial(  # type: ignore[method-assign]
                native.step_done, self.log, _CPU, Step)

    @property
    def steps(self) -> list[Step]:
        return self.log.steps

    def attach(self, path: Sequence[Choice]) -> None:
        self.choices = self.log.choices = path

    def simplest_from(self) -> int | None:
        return len(self.prefix)

    def follows(self) -> Sequence[int]:
        return self.prefix  # a prefix value that is the simplest spends nothing (`pick`)

    def step_done(self, footprint: Footprint) -> None:
        log = self.log
        choices = log.choices
        end = len(choices)
        node = None  # the step's CPU choice, if it had one
        for k in range(end - 1, log.stepped - 1, -1):
            c = choices[k]
            if c.kind is _CPU and c.request is not None and c.request.context is not None:
                node = k
                break
        log.steps.append(Step(node, footprint, end))
        log.stepped = end

    def planned(self) -> tuple[int, ...]:
        return tuple(self.prefix)

    def mark(self) -> object:
        # shared, not copied: steps do not change once recorded, and a run resumed from a
        # snapshot never resumes past its own prefix (SnapshotCache.best); the choices are the
        # snapshot's path, which the machine puts back before it resumes this
        return tuple(self.log.steps), self.log.stepped, self._spent

    def resume(self, mark: object) -> None:
        steps, self.log.stepped, self._spent = mark  # type: ignore[misc]
        self.log.steps = list(steps)
        self._asked = len(self.choices)
        self._open = self._affordable()

    def _affordable(self) -> frozenset[Kind]:
        return frozenset() if self.bound is None else _open_kinds(self._spent, self.bound)

    def may_want_snapshot(self) -> bool:
        # the prefix's deviations only ever spend more of the bound: what is closed stays so
        return self.bound is None or bool(self._open)

    def wants_snapshot(self) -> bool:
        if self.bound is None:
            return True
        # past the prefix every choice is the simplest, so what the bound leaves open is
        # what it was at the prefix's end
        start, self._asked = max(self._asked, len(self.prefix)), len(self.choices)
        open_ = self._open
        return any(c.kind in open_ for c in self.choices[start:])

    def pick(self, request: Request, position: int) -> int:
        first = simplest(request)
        if position >= len(self.prefix):
            return first
        value = self.prefix[position]
        if value >= request.arity:
            value = first  # cannot happen for a deterministic machine; `finish` refuses it
        if value != first and self.bound is not None:
            self._spent = self._spent + deviation(request.kind)
            self._open = self._affordable()
        return value


def backtrack(path: list[Node], steps: list[Step], engine: Engine | None = None,
              since: int = 0, added: list[int] | None = None, prior: object | None = None,
              kept: list[object] | None = None) -> None:
    """Add to the path's CPU choices what the races of this run ask for (dpor.py), those
    whose second step is `since` or later; every CPU where none of the lead could run. The
    positions where a value to try was added go to `added`; `prior`, `kept`: find_races'.
    Under the fast engine in one pass in C (_dpor.c: backtrack, which skips a point that
    repeats one it applied); the loop below is the reference."""
    native = native_module("search") if resolve(engine) is Engine.FAST else None
    if native is not None and isinstance(path, list) and isinstance(added, list | None):
        log = native.backtrack(path, steps, since, prior, added, kept is not None)
        if kept is not None:
            kept.append(log)
        return
    for index, lead in backtrack_points(steps, engine, since, prior, kept):
        node = path[index]
        node = node.origin or node  # a deviation's copy: what is tried is kept by its original
        can = [node.runnable.index(c) for c in lead if c in node.runnable]
        had = len(node.todo)
        node.todo.update(can or range(node.arity))
        if added is not None and len(node.todo) != had:
            added.append(index)


@dataclass
class Level:
    """A run of the search and the deviation it was run for: `path` is its record, the
    choices before `base` shared with the run it deviates from, the choice at `base` a copy of
    that run's with the deviating value (base -1: the first run, with no deviation)."""

    base: int
    path: list[Node]
    # where the search resumes trying this level's own choices (Search._advance): every own
    # choice before it has nothing left to try, and `spent` is what the choices before it
    # spend; -1: from the first own choice. A later run's races that add a value before it
    # move it back (Search.finish).
    resume: int = -1
    spent: Cost = FREE
    # the C race finder's log of this run (dpor.find_races), for the runs that deviate from it
    races: object | None = field(default=None, repr=False, compare=False)

    def deviating_at(self, i: int, value: int) -> list[Node]:
        """The prefix of the run that takes `value` at choice i of this level's path: the
        choices before i, then a copy of choice i with that value (`_deviation`)."""
        return self.path[:i] + [_deviation(self.path[i], value)]


def check_bound(bound: Cost) -> None:
    """Negative bounds cannot be honoured: refuse them rather than report a space exhausted."""
    for name, n in (("preemptions", bound.preemptions), ("delays", bound.delays),
                    ("interrupts", bound.interrupts)):
        if not isinstance(n, int) or isinstance(n, bool) or n < 0:
            raise SearchError(f"--{name} must be a non-negative integer, got {n!r}")


class Search:
    """The search's whole state, which is all a resumed search needs (`state` / `from_state`).

    The order is shallowest deviation first: a run's own choices (after the deviation it was
    run for) are tried from the first to the last, and each new deviation is a run whose own
    choices are tried, within the bounds, before the next choice of the run it came from. It
    reaches every path of the bounded space once, as depth-first search does, but the paths
    that deviate early come before those that only deviate late in the run: a bug that needs
    one early preemption and one interrupt is found in tens of schedules, where deepest-first
    order runs through every late deviation first. `levels` is the stack of runs whose choices
    are still being tried; `next` the prefix of the next run."""

    def __init__(self, bound: Cost, reduce: bool = False, levels: list[Level] | None = None,
                 next_prefix: list[Node] | None = None, exhausted: bool = False,
                 limit: int | None = None, engine: Engine | None = None) -> None:
        check_bound(bound)
        self.bound, self.reduce = bound, reduce
        self.engine = engine  # which race finder (dpor.find_races): the same races either way
        self.levels: list[Level] = levels or []
        self.next: list[Node] = next_prefix or []
        self.exhausted = exhausted
        # the bottom level's own choices end at `limit` (None: its last): a part of the
        # frontier split off for another worker (partition.py) owns only its range
        self.limit = limit
        self.last: Level | None = None
        self._known: Known = {}  # node_of's
        self._from: Level | None = None  # the level the next run deviates from (_advance)

    def source(self) -> ExhaustiveSource:
        """The decision source of the next schedule: its prefix, then the simplest values."""
        native = native_module("search") if self.reduce and \
            resolve(self.engine) is Engine.FAST else None
        return ExhaustiveSource([n.value for n in self.next], footprints=self.reduce,
                                bound=self.bound, native=native)

    def finish(self, src: ExhaustiveSource) -> None:
        """Take in what the schedule run from `src` recorded, then choose the next one."""
        added: list[int] = []
        self.last = taken_in(self.next, src, self.reduce, self.engine, self._known, added,
                             self._from.races if self._from is not None else None)
        for p in added:  # a value to try at p: its level resumes there at the latest
            if p > self.last.base:
                continue  # the new run's own choice: its level starts from its first
            owner = next((lv for lv in reversed(self.levels) if lv.base < p), None)
            if owner is not None and 0 <= p < owner.resume:
                owner.resume, owner.spent = p, spent_before(owner.path, p)
        self.levels.append(self.last)
        self.exhausted = not self._advance()

    def _advance(self) -> bool:
        """The next run: the first untried value, within the bounds, of the top level's own
        choices; a level with none left is done. False when every level is done."""
        while self.levels:
            top = self.levels[-1]
            end = len(top.path)
            if self.limit is not None and top is self.levels[0]:
                end = min(end, self.limit + 1)
            found = self._first_untried(top, end)
            if found is not None:
                i, v = found
                top.path[i].done.add(v)
                self.next, self._from = top.deviating_at(i, v), top
                return True
            self.levels.pop()
        self.next, self._from = [], None
        return False

    def _first_untried(self, level: Level, end: int) -> tuple[int, int] | None:
        """`untried`'s first (position, value) of the level's choices before `end`, looked
        for from where the level last stopped (Level.resume), which moves there."""
        if level.resume < 0:
            level.resume = level.base + 1
            level.spent = spent_before(level.path, level.resume)
        for i, v, spent in _untried(level, self.bound, end, level.resume, level.spent):
            level.resume, level.spent = i, spent
            return i, v
        return None

    def state(self) -> dict:
        """Each level's own choices (from its deviation on), and where the next run deviates."""
        b = self.bound
        top = self.levels[-1] if self.levels else None
        return {"preemptions": b.preemptions, "delays": b.delays, "interrupts": b.interrupts,
                "reduce": self.reduce, "exhausted": self.exhausted,
                "levels": [[lv.base, [_node_state(n) for n in lv.path[max(lv.base, 0):]]]
                           for lv in self.levels],
                "next": None if top is None or not self.next else
                [len(self.next) - 1, self.next[-1].value]}

    @classmethod
    def from_state(cls, d: dict) -> Search:
        try:
            bound = Cost(d["preemptions"], d["delays"], d["interrupts"])
            levels: list[Level] = []
            for base, nodes in d["levels"]:
                base = int(base)
                own = [_node_from_state(x) for x in nodes]
                below = levels[-1].path if levels else []
                first = -1 if not levels else levels[-1].base + 1
                if not own or (base != -1 if not levels else not first <= base < len(below)):
                    raise ValueError(f"a level deviates at choice {base}")
                if base >= 0:
                    own[0].origin = below[base]
                levels.append(Level(base, below[:max(base, 0)] + own))
            nxt: list[Node] = []
            if d["next"] is not None:
                pos, value = int(d["next"][0]), int(d["next"][1])
                if not levels[-1].base < pos < len(levels[-1].path):
                    raise ValueError(f"the next run deviates at choice {pos}")
                nxt = levels[-1].deviating_at(pos, value)
            search = cls(bound, bool(d["reduce"]), levels, nxt, bool(d["exhausted"]))
        except (KeyError, TypeError, ValueError, IndexError) as e:
            raise SearchError(f"damaged search state: {e!r}") from None
        for lv in search.levels:
            for k, n in enumerate(lv.path):
                values = {n.value, n.simplest} | n.todo | n.done
                if n.arity < 2 or not values <= set(range(n.arity)):
                    raise SearchError(f"damaged search state: choice {k} has values outside "
                                      f"0..{n.arity - 1}")
        if search.exhausted != (not search.next):
            raise SearchError("damaged search state: exhausted, and a next run to make")
        return search


def taken_in(prefix: list[Node], src: ExhaustiveSource, reduce: bool,
             engine: Engine | None = None, known: Known | None = None,
             added: list[int] | None = None, prior: object | None = None) -> Level:
    """The run `src` recorded, made from `prefix` (the run it deviates from up to its
    deviation), as a level: its own choices with every value to try (with `reduce`, a CPU
    choice's only its own, and what the run's races add there and before, dpor.py: the
    positions where they add one are appended to `added`). `prior`: the race finder's log of
    the run it deviates from (Level.races)."""
    choices = src.choices
    if len(choices) < len(prefix):
        raise SearchError(f"the run made {len(choices)} choices, fewer than the "
                          f"{len(prefix)} of the search's prefix: the machine is not the one "
                          "this search ran on")
    for k, old, choice in _new_requests(prefix, choices, engine):
        new = node_of(choice, known)
        if (old.kind, old.arity, old.runnable, old.simplest) != \
                (new.kind, new.arity, new.runnable, new.simplest):
            raise SearchError(f"choice {k}: the search expected a {old.kind.value} choice "
                              f"of {old.arity} values (runnable {old.runnable}, simplest "
                              f"{old.simplest}), the run made a {new.kind.value} choice of "
                              f"{new.arity} (runnable {new.runnable}, simplest "
                              f"{new.simplest}): the machine is not the one this search ran on")
        old.request = choice.request
    path = list(prefix) + own_nodes(choices, len(prefix), reduce, engine, known)
    level = Level(len(prefix) - 1, path)
    if reduce:  # the races among the steps the run shares with its parent are the parent's
        kept: list[object] = []
        backtrack(path, src.steps, engine, first_new_step(src.steps, len(prefix) - 1), added,
                  prior, kept)
        level.races = kept[0] if kept else None
    return level


def _new_requests(prefix: list[Node], choices: Sequence[Choice], engine: Engine | None
                  ) -> Iterator[tuple[int, Node, Choice]]:
    """(k, node, choice) of the run's choices that answered another request than the
    prefix's node at k (the same request makes the same choice). Under the fast engine the
    walk between them is in C (_dpor.c: same_requests); the loop is the reference."""
    native = native_module("search") if resolve(engine) is Engine.FAST else None
    if native is not None and isinstance(choices, list):
        k, end = 0, min(len(prefix), len(choices))
        while (k := native.same_requests(prefix, choices, k)) < end:
            yield k, prefix[k], choices[k]
            k += 1
        return
    for k, (old, choice) in enumerate(zip(prefix, choices, strict=False)):
        if choice.request is not old.request:
            yield k, old, choice


def untried(level: Level, bound: Cost, end: int | None = None) -> Iterator[tuple[int, int]]:
    """(position, value): the untried values of the level's own choices (those before `end`)
    that keep the path within `bound`, in the order the search tries them, the first choice
    first and at each its simplest value first. Each is a run the search makes from this
    level: its children in the search's tree."""
    start = level.base + 1
    for i, v, _spent in _untried(level, bound, len(level.path) if end is None else end,
                                 start, spent_before(level.path, start)):
        yield i, v


def spent_before(path: list[Node], n: int) -> Cost:
    """What the first n choices of `path` spend of the bounds."""
    spent = FREE
    for node in path[:n]:
        if node.value != node.simplest:
            spent = spent + node.cost(node.value)
    return spent


def _untried(level: Level, bound: Cost, end: int, start: int, spent: Cost
             ) -> Iterator[tuple[int, int, Cost]]:
    """`untried` from the level's own choice `start` on, the choices before it spending
    `spent`: (position, value, what the choices before the position spend)."""
    path = level.path
    open_, fits = _open_kinds(spent, bound), spent.within(bound)
    for i in range(max(start, level.base + 1), end):
        node = path[i]
        todo, done, first = node.todo, node.done, node.simplest
        if not todo <= done:
            if fits and first in todo and first not in done:  # the simplest first: it is free
                yield i, first, spent
            if node.kind in open_:  # then the others, whose deviation fits the bound
                for v in sorted(todo - done):
                    if v != first:
                        yield i, v, spent
        if node.value != first:
            spent = spent + node.cost(node.value)
            open_, fits = _open_kinds(spent, bound), spent.within(bound)


@functools.lru_cache(maxsize=1024)
def _open_kinds(spent: Cost, bound: Cost) -> frozenset[Kind]:
    """The kinds of choice at which a deviation keeps a path that spent `spent` within
    `bound`. (Remembered: the search asks at every deviation of every path it scans, and
    a bound has a few dozen costs within it.)"""
    return frozenset(k for k in Kind if (spent + deviation(k)).within(bound))


def _deviation(node: Node, value: int) -> Node:
    """The copy of `node` a deviating run starts with: `value` taken, nothing else to try."""
    return Node(node.kind, node.arity, value, node.simplest, node.runnable, set(), {value},
                origin=node, request=node.request)


def _node_state(n: Node) -> list:
    return [n.kind.value, n.arity, n.value, n.simplest, list(n.runnable), sorted(n.todo),
            sorted(n.done)]


def _node_from_state(x: list) -> Node:
    k, a, v, first, run, todo, done = x
    return Node(Kind(k), int(a), int(v), int(first), tuple(map(int, run)), set(map(int, todo)),
                set(map(int, done)))


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
                       reduce: bool = False, engine: Engine | None = None) -> ExhaustiveResult:
    """`run(source)` -> an object with `.ok` (a harness.run Outcome). Explores the bounded
    space once: every path, or with `reduce` one path per order of dependent steps."""
    res = ExhaustiveResult()
    search = Search(bound, reduce, engine=engine)
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
