"""An exhaustive search's frontier, partitioned into regions that workers explore apart.

A region is a part of the search (exhaustive.py: Search) a worker can take alone: a *root
level* -- one run's choices, the path prefix -- of which it owns the choices at positions
(base, limit], with what is left to try at each, and the deeper levels it is in the middle
of. The first region is the whole search (base -1, no limit). A worker explores a region for
a time slice and returns what is left of it; an idle cluster makes the client split a
returned region, as the scalable DPOR of Simsa, Bryant, Gibson and Hickey (RV 2012) does
with time-sliced load balancing and Nidhugg with work stealing:
- its deeper levels (the run it is in the middle of, and those it deviates from) become a
  region of their own, rooted at the run they start from;
- its remaining range of own choices is cut in two.

Every choice of the search has one owner: the region whose root level holds it in its range.
The choices before a region's range (its prefix) and after it belong to other regions; the
`owners` of a region say which level each of them is on. Without DPOR nothing is ever added
to a choice's values after its run, so regions are disjoint subtrees and their union is the
search. With DPOR, a run's races add values to try at choices of its prefix (dpor.py), and
those may be another region's: the worker reports them (`RegionRun.reports`), and the client
adds them to the owner's choice (`Partition.report`), at once if that region is waiting, when
it returns if it is running, and by making it wait again if it was done. The set of runs a
DPOR search makes is the least set closed under "a run's races add values at its choices, and
each untried value within the bounds is run once": it does not depend on the order of the
runs, so any partition explores the same paths as one process does (tests/test_cluster.py
checks it on z4_bytewise and two litmus tests with 1, 2 and 3 workers).

A region travels as plain data (`RegionRun.state`): the root level's choices (kind, arity,
value, simplest, runnable, values to try, values tried), its base, limit, owners and deeper
levels. The saved frontier of a search in --db (`Partition.to_json`) is the list of regions;
a single undivided region is saved as one process's search always was, so a frontier saved by
a distributed search resumes on one process and one saved by one process resumes on many.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

from emu.engine import Engine
from emu.path import Cost

from .exhaustive import (
    ExhaustiveSource,
    Level,
    Search,
    SearchError,
    _node_from_state,
    _node_state,
)


class Status(enum.StrEnum):
    WAITING = "waiting"  # to be handed to a worker
    RUNNING = "running"  # a worker explores it (its values reported meanwhile are queued)
    DONE = "done"  # nothing left to try, unless a report adds to its choices


class RegionRun:
    """A region being explored (in a worker, or in this process): the Search over it, and
    what its runs added to other regions' choices."""

    def __init__(self, state: dict, bound: Cost, reduce: bool,
                 engine: Engine | None = None) -> None:
        try:
            self.level, self.base = int(state["level"]), int(state["base"])
            self.limit = None if state["limit"] is None else int(state["limit"])
            self.owners = [(int(lo), int(hi), int(lv)) for lo, hi, lv in state["owners"]]
            nodes = [_node_from_state(x) for x in state["nodes"]]
            if state.get("fresh"):  # the search's first run is still to be made
                self.root: Level | None = None
                self.search = Search(bound, reduce, engine=engine)
                self._before: dict[int, frozenset[int]] = {}
                return
            if not -1 <= self.base < len(nodes) or \
                    self.limit is not None and not self.base <= self.limit < len(nodes):
                raise ValueError(f"a region's range ({self.base}, {self.limit}] is outside "
                                 f"its {len(nodes)} choices")
            self.root = Level(self.base, nodes)
            levels = [self.root]
            for base, own in state["upper"]:
                below = levels[-1].path
                base = int(base)
                own = [_node_from_state(x) for x in own]
                if not own or not levels[-1].base < base < len(below):
                    raise ValueError(f"a level deviates at choice {base}")
                own[0].origin = below[base]
                levels.append(Level(base, below[:base] + own))
        except (KeyError, TypeError, ValueError, IndexError) as e:
            raise SearchError(f"damaged region of the search's frontier: {e!r}") from None
        for k, n in enumerate(nodes):
            if n.arity < 2 or not {n.value, n.simplest} | n.todo | n.done <= set(range(n.arity)):
                raise SearchError(f"damaged region of the search's frontier: choice {k} has "
                                  f"values outside 0..{n.arity - 1}")
        self.search = Search(bound, reduce, levels, limit=self.limit, engine=engine)
        self.search.exhausted = not self.search._advance()
        self._before = {i: frozenset(nodes[i].todo) for i in self._foreign()}

    @classmethod
    def whole(cls, search: Search) -> RegionRun:
        """The region of a one-process search (base -1: it owns every choice)."""
        if not search.levels:  # not started
            return cls(FRESH, search.bound, search.reduce)
        return cls(_state_of(search, 0, None, []), search.bound, search.reduce)

    def _foreign(self) -> list[int]:
        """Positions of the root level this region does not own."""
        if self.root is None:
            return []
        n = len(self.root.path)
        end = n - 1 if self.limit is None else self.limit
        return [i for i in range(n) if i <= self.base or i > end]

    @property
    def exhausted(self) -> bool:
        return self.search.exhausted

    def source(self) -> ExhaustiveSource:
        return self.search.source()

    def finish(self, src: ExhaustiveSource) -> None:
        self.search.finish(src)
        if self.root is None:  # the first run: the root level (done already, if it is all)
            self.root = self.search.last

    def prefix(self) -> list[int]:
        """The choices every run of this region starts with (up to its range)."""
        if self.root is None:
            return []
        return [n.value for n in self.root.path[:self.base + 1]]

    def reports(self) -> list[tuple[int, int, list[int]]]:
        """(level, position, values): what this region's runs added to the choices of other
        regions (DPOR's backtrack points before its range), for the client to pass on."""
        out = []
        for i, before in self._before.items():
            todo = self.root.path[i].todo
            if todo - before:
                out.append((self.owner(i), i, sorted(todo)))
        return out

    def owner(self, position: int) -> int:
        """The level the choice at `position` of the root level is on (this region's own
        level for a choice after its range)."""
        for lo, hi, level in self.owners:
            if lo <= position <= hi:
                return level
        return self.level

    def state(self) -> dict:
        """What is left of the region, as plain data. The next run's choice is put back
        among the values to try (it is chosen again, first, when the region resumes)."""
        if self.root is None:
            return dict(FRESH)
        return _state_of(self.search, self.level, self.limit, self.owners, self.root)


FRESH = {"level": 0, "base": -1, "limit": None, "owners": [], "nodes": [], "upper": [],
         "fresh": True}


def _state_of(search: Search, level: int, limit: int | None,
              owners: list[tuple[int, int, int]], root: Level | None = None) -> dict:
    root = root or search.levels[0]
    upper = search.levels[1:] if search.levels and search.levels[0] is root else []
    nodes = [_node_state(n) for n in root.path]
    ups = [[lv.base, [_node_state(n) for n in lv.path[lv.base:]]] for lv in upper]
    if search.next:  # the next run, chosen and not made: back among the values to try
        pos, value = len(search.next) - 1, search.next[-1].value
        top = ups[-1][1] if ups else nodes
        offset = upper[-1].base if ups else 0
        top[pos - offset][6] = [v for v in top[pos - offset][6] if v != value]
    return {"level": level, "base": root.base, "limit": limit,
            "owners": [list(o) for o in owners], "nodes": nodes, "upper": ups}


@dataclass
class Region:
    """A region as the client keeps it: its last state and whether it waits, runs or is
    done; values reported for its choices while it runs wait in `queued`."""

    id: int
    state: dict
    status: Status = Status.WAITING
    queued: dict[int, set[int]] = field(default_factory=dict)

    def owns(self, level: int, position: int) -> bool:
        s = self.state
        end = len(s["nodes"]) - 1 if s["limit"] is None else s["limit"]
        return s["level"] == level and s["base"] < position <= end


class Partition:
    """The client's view of a distributed exhaustive search: every region, which of them
    waits for a worker, and who owns which choice. The only writer of its state."""

    def __init__(self, bound: Cost, reduce: bool, regions: list[Region], levels: int) -> None:
        self.bound, self.reduce = bound, reduce
        self.regions = regions
        self.levels = levels  # level ids handed out so far

    @classmethod
    def of(cls, search: Search) -> Partition:
        if search.exhausted:  # a search saved exhausted
            return cls(search.bound, search.reduce, [], 1)
        run = RegionRun.whole(search)
        status = Status.DONE if run.exhausted else Status.WAITING
        return cls(search.bound, search.reduce, [Region(0, run.state(), status)], 1)

    @property
    def exhausted(self) -> bool:
        return all(r.status is Status.DONE for r in self.regions)

    def waiting(self) -> list[Region]:
        return [r for r in self.regions if r.status is Status.WAITING]

    def take(self) -> Region:
        region = self.waiting()[0]
        region.status = Status.RUNNING
        return region

    def hand_out(self, idle: int) -> Region:
        """The next region for one of `idle` idle workers: when fewer regions wait than
        workers are idle, every waiting one is split first (the load balancing both the
        cluster's schedule, cluster.run_regions, and its play here, explore_partitioned,
        follow)."""
        if len(self.waiting()) < idle:
            for region in self.waiting():
                self.split(region)
        return self.take()

    def returned(self, region: Region, state: dict,
                 reports: list[tuple[int, int, list[int]]]) -> None:
        """A slice of `region` came back: what is left of it (`state`), with what was
        reported for its choices meanwhile; then what it reports for others' choices."""
        region.state = state
        queued, region.queued = region.queued, {}
        for position, values in queued.items():
            _add(region.state, position, values)
        region.status = Status.WAITING if self._has_work(region) else Status.DONE
        for level, position, values in reports:
            self.report(int(level), int(position), [int(v) for v in values])

    def report(self, level: int, position: int, values: list[int]) -> None:
        """Values to try at the choice `position` of `level`: to its owner."""
        owner = next((r for r in self.regions if r.owns(level, position)), None)
        if owner is None:
            # the partition's own bookkeeping, not the user's input: an internal error (exit 3)
            raise RuntimeError(f"no region owns choice {position} of level {level}")
        if owner.status is Status.RUNNING:
            owner.queued.setdefault(position, set()).update(values)
            return
        if _add(owner.state, position, values) and owner.status is Status.DONE:
            owner.status = Status.WAITING if self._has_work(owner) else Status.DONE

    def _has_work(self, region: Region) -> bool:
        return not RegionRun(region.state, self.bound, self.reduce).exhausted

    def split(self, region: Region) -> list[Region]:
        """Cut a waiting region in two or three (its deeper levels; the two halves of its
        range), each owning its own choices: the regions to hand out, `region` first."""
        out = [region]
        s = region.state
        if s["upper"]:  # the deeper levels: a region rooted at the first of them
            first_base, first_own = s["upper"][0]
            nodes = s["nodes"][:first_base] + first_own
            owners = [*s["owners"], [s["base"] + 1, first_base, s["level"]]]
            new = {"level": self.levels, "base": first_base, "limit": None, "owners": owners,
                   "nodes": nodes, "upper": s["upper"][1:]}
            self.levels += 1
            s["upper"] = []
            out.append(self._new(new))
        end = len(s["nodes"]) - 1 if s["limit"] is None else s["limit"]
        open_at = [i for i in range(s["base"] + 1, end + 1) if s["nodes"][i][5]
                   and set(s["nodes"][i][5]) - set(s["nodes"][i][6])]
        if len(open_at) >= 2:  # the range in two, at the middle of its open choices
            cut = open_at[len(open_at) // 2] - 1
            # owners name the levels of the prefix, the first half's choices included (on
            # this same level: a region split off this half's deeper levels later inherits
            # them); a choice after it is on the region's own
            new = {"level": s["level"], "base": cut, "limit": s["limit"],
                   "owners": [*s["owners"], [s["base"] + 1, cut, s["level"]]],
                   "nodes": list(s["nodes"]), "upper": []}
            s["limit"] = cut
            out.append(self._new(new))
        for r in out:
            if not self._has_work(r):
                r.status = Status.DONE
        return [r for r in out if r.status is Status.WAITING]

    def _new(self, state: dict) -> Region:
        region = Region(1 + max(r.id for r in self.regions), state)
        self.regions.append(region)
        return region

    def to_json(self) -> dict:
        """The frontier: every region (one that runs as it was handed out, with what was
        reported for it since), so a resumed search runs again what had not come back."""
        regions = []
        for r in self.regions:
            state = r.state
            if r.queued:
                state = {**state, "nodes": [list(n) for n in state["nodes"]]}
                for position, values in r.queued.items():
                    _add(state, position, values)
            regions.append([r.id, str(r.status if r.status is Status.DONE else Status.WAITING),
                            state])
        b = self.bound
        return {"preemptions": b.preemptions, "delays": b.delays, "interrupts": b.interrupts,
                "reduce": self.reduce, "levels": self.levels, "regions": regions}

    @classmethod
    def from_json(cls, d: dict) -> Partition:
        try:
            bound = Cost(int(d["preemptions"]), int(d["delays"]), int(d["interrupts"]))
            reduce = bool(d["reduce"])
            regions = [Region(int(i), dict(state), Status(status))
                       for i, status, state in d["regions"]]
            part = cls(bound, reduce, regions, int(d["levels"]))
        except (KeyError, TypeError, ValueError) as e:
            raise SearchError(f"damaged partition of the search's frontier: {e!r}") from None
        for r in regions:  # each must load
            RegionRun(r.state, bound, reduce)
        return part

    def single(self) -> Region | None:
        """The one region, when the search was never divided (saved as one process's)."""
        if len(self.regions) == 1 and self.regions[0].state["base"] == -1 and \
                self.regions[0].state["limit"] is None:
            return self.regions[0]
        return None


def _add(state: dict, position: int, values) -> bool:
    """Add `values` to try at a root-level choice of `state`; True if any is new."""
    node = state["nodes"][position]
    new = set(values) - set(node[5])
    if new:
        state["nodes"][position] = node[:5] + [sorted(set(node[5]) | new)] + node[6:]
    return bool(new)


def explore_partitioned(run, bound: Cost, reduce: bool, workers: int,
                        slice_runs: int = 3) -> list:
    """The cluster's exhaustive schedule (cluster.run_regions) played in this process:
    `workers` regions handed out at once, each explored `slice_runs` runs at a time, in
    turn; returned regions go back with their reports, waiting ones are split when fewer
    wait than workers are idle. `run(source)` makes a run; returns what each run returned,
    in the order made. For tests that check that the explored paths do not depend on
    `workers` on programs that are not scenarios (the litmus tests), at no cluster's cost."""
    part = Partition.of(Search(bound, reduce))
    made: list = []
    inflight: list[tuple[Region, RegionRun]] = []
    while True:
        while len(inflight) < workers and part.waiting():
            region = part.hand_out(workers - len(inflight))
            inflight.append((region, RegionRun(region.state, bound, reduce)))
        if not inflight:
            return made
        region, rr = inflight.pop(0)
        for _ in range(slice_runs):
            if rr.exhausted:
                break
            src = rr.source()
            made.append(run(src))
            rr.finish(src)
        part.returned(region, rr.state(), rr.reports())
