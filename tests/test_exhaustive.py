"""Exhaustive exploration and the litmus catalogue."""

import json
import random
import subprocess
import sys

import pytest

from emu import layout
from emu.decisions import Decisions, DecisionSource
from emu.engine import Engine
from emu.footprint import Footprint, data_words, describe, irq, text_grains
from emu.path import Choice, Cost, CpuContext, Kind, Request, simplest
from harness import litmus
from harness.explore import dpor
from harness.explore.dpor import Step, backtrack_points, dependences, races
from harness.explore.exhaustive import (
    ExhaustiveSource,
    Node,
    Search,
    SearchError,
    explore_exhaustive,
    taken_in,
    untried,
)
from harness.explore.explore import explore, replay
from harness.explore.schedule import Plan


def _choice(kind: Kind, arity: int, value: int, first: int) -> Choice:
    """A recorded choice whose request's simplest value is `first` (a CPU choice's last CPU;
    any other kind here has 0)."""
    ctx = CpuContext(tuple(range(arity)), first, frozenset()) if kind is Kind.CPU else None
    request = Request(kind, arity, context=ctx)
    assert simplest(request) == first
    return Choice(kind, arity, value, request)


def _search(bound: Cost, *nodes: tuple[Kind, int, int, int]) -> Search:
    """A search that has run one path of these choices (kind, arity, value, simplest)."""
    search = Search(bound)
    src = ExhaustiveSource([])
    src.attach([_choice(*n) for n in nodes])
    search.finish(src)
    return search


def test_the_next_run_deviates_at_the_shallowest_choice_within_the_bounds():
    def nxt(nodes, p, v, i=0):
        search = _search(Cost(p, v, i), *nodes)
        return None if search.exhausted else [n.value for n in search.next]

    rec = [(Kind.CPU, 3, 0, 0), (Kind.FLUSH, 4, 0, 0), (Kind.CPU, 3, 1, 1)]
    assert nxt(rec, 1, 1) == [1]  # shallowest first: preempt at the first point
    assert nxt(rec, 0, 1) == [0, 1]  # no preemption left: delay a view update
    assert nxt(rec, 0, 0) is None  # nothing within the bounds: exhausted
    nmi = [(Kind.CPU, 2, 0, 0), (Kind.NMI_RAISE, 2, 0, 0)]
    assert nxt(nmi, 1, 1) == [1]  # raising an NMI spends an interrupt, not a preemption
    assert nxt(nmi, 0, 1, 1) == [0, 1]


def test_a_deviation_runs_its_own_choices_before_the_next_of_its_parent():
    """Pre-order over deviations: after the run that deviates at choice 0, its own later
    choices come before the parent's choice 1; every path of the space comes exactly once."""
    search = _search(Cost(2, 0, 0), (Kind.CPU, 2, 0, 0), (Kind.CPU, 2, 0, 0))
    order = []
    while not search.exhausted:
        prefix = [n.value for n in search.next]
        order.append(tuple(prefix))
        src = ExhaustiveSource(prefix)
        src.attach([_choice(Kind.CPU, 2, prefix[k] if k < len(prefix) else 0, 0)
                     for k in range(2)])
        search.finish(src)
    assert order == [(1,), (1, 1), (0, 1)]


def test_a_run_whose_choices_are_not_the_searched_ones_is_refused():
    """A run's first choices must be those of the run it deviates from: the same request, or
    (a saved search's nodes have none) the same kind, arity, runnable CPUs and simplest
    value. Perturbed: the same choice with another CPU runnable."""
    ctx = CpuContext((0, 1, 2), 0, frozenset())
    saved = [Node(Kind.CPU, 3, 1, 0, (0, 1, 2))]  # as Search.from_state makes them: no request

    def take(runnable: tuple[int, ...]) -> None:
        src = ExhaustiveSource([1])
        req = Request(Kind.CPU, 3, context=CpuContext(runnable, 0, frozenset()))
        src.attach([Choice(Kind.CPU, 3, 1, req), _choice(Kind.CPU, 2, 0, 0)])
        taken_in(saved, src, reduce=False)

    take(ctx.runnable)
    assert saved[0].request is not None  # checked once: the request is the node's from now on
    saved[0].request = None
    with pytest.raises(SearchError, match=r"choice 0: .* \(runnable \(0, 1, 3\), simplest 0\)"):
        take((0, 1, 3))


def test_negative_bounds_are_refused():
    for bad in (Cost(-1, 0, 0), Cost(0, -1, 0), Cost(0, 0, -1)):
        with pytest.raises(SearchError):
            Search(bad)


def test_exhaustive_enumerates_each_bounded_path_once():
    seen = []

    class Out:
        ok = True

    def run(src):
        ctx = CpuContext((0, 1), None, frozenset())
        dec = Decisions(src)
        for req in [Request(Kind.CPU, 2, context=ctx), Request(Kind.CPU, 3),
                    Request(Kind.FLUSH, 2)]:
            dec.choose(req)
        dec.close()
        seen.append(tuple(c.value for c in dec.path))
        return Out()

    res = explore_exhaustive(run, Cost(1, 1, 0))
    assert res.exhausted and len(seen) == len(set(seen))
    # simplest (0,0,0); one preemption at either CPU choice (1 + 2 ways), each with or without
    # the one delayed flush: (1 + 3) * 2 = 8
    assert res.schedules == 8


def _steps(*fps: tuple[int, set[int], set[int]]) -> list[Step]:
    return [Step(i, Footprint(cpu, reads | writes, writes)) for i, (cpu, reads, writes)
            in enumerate(fps)]


def test_races_are_unordered_dependent_pairs():
    x, y = data_words(0x1000, 8)[0], data_words(0x2000, 8)[0]
    # cpu0 writes x; cpu1 reads y (independent), then reads x: one race, (0, 2)
    found = races(_steps((0, set(), {x}), (1, {y}, set()), (1, {x}, set())))
    assert [(i, j) for i, j, _ in found] == [(0, 2)]
    assert found[0][2][0] == 1  # the reversal starts with the reader's CPU
    # reads commute
    assert races(_steps((0, {x}, set()), (1, {x}, set()))) == []
    # cpu0 writes x, cpu1 copies x to y, cpu2 reads y then x: the x race 0 -> 3 is ordered
    # through cpu1 (0 -> 1 -> 2 -> 3), so only the adjacent pairs race
    found = races(_steps((0, set(), {x}), (1, {x}, {y}), (2, {y}, set()), (2, {x}, set())))
    assert [(i, j) for i, j, _ in found] == [(0, 1), (1, 2)]


def test_dependences_are_the_direct_cross_cpu_ones():
    x, y = data_words(0x1000, 8)[0], data_words(0x2000, 8)[0]
    # cpu0 writes x; cpu1 and cpu2 read x (each after the write, not after the other read);
    # cpu0 writes x again (after both reads, its own write aside); cpu1 reads y (nothing)
    steps = _steps((0, set(), {x}), (1, {x}, set()), (2, {x}, set()), (0, set(), {x}),
                   (1, {y}, set()))
    assert list(dependences(steps)) == [set(), {0}, {0}, {1, 2}, set()]
    # cpu2's write of y depends on cpu1's read of y alone: cpu0's write of x, before that
    # read in cpu1's order, is ordered before it through cpu1 and is not named
    steps = _steps((0, set(), {x}), (1, {x}, set()), (1, {y}, set()), (2, set(), {y}))
    assert list(dependences(steps)) == [set(), {0}, set(), {2}]
    # a CPU's own read before its write is program order, not a dependence
    steps = _steps((0, set(), {x}), (1, {x}, set()), (1, set(), {x}))
    assert list(dependences(steps)) == [set(), {0}, {0}]


def test_races_name_the_initials_that_lead_to_j():
    x, y = data_words(0x1000, 8)[0], data_words(0x2000, 8)[0]
    # cpu0 writes x; cpu2 writes y; cpu1 reads y and then x. Reversing (0, 3) must start with
    # cpu2 or cpu1 -- cpu1's first step after 0 (reading y) needs cpu2's write first
    found = races(_steps((0, set(), {x}), (2, set(), {y}), (1, {y}, set()), (1, {x}, set())))
    lead = next(c for i, j, c in found if (i, j) == (0, 3))
    assert lead == [2]


def _walked_backtrack_points(steps: list[Step]) -> list[tuple[int, list[int]]]:
    """backtrack_points by its definition, walking back from each race's first step."""
    def choice_before(t: int) -> int | None:
        while t >= 0 and steps[t].node is None:
            t -= 1
        return None if t < 0 else steps[t].node

    out = []
    for i, _j, lead in races(steps):
        start = i
        while start > 0 and steps[start - 1].cpu == steps[i].cpu:
            start -= 1
        for t in (i, start) if start != i else (i,):
            if choice_before(t) is not None:
                out.append((choice_before(t), lead))
    return out


@pytest.mark.parametrize("engine", list(Engine))
def test_backtrack_points_are_the_choices_before_each_race_and_its_block(engine: Engine):
    """The points are found in one pass per run (with the C race finder on the fast engine);
    they equal the definition's walk on random runs (long blocks, steps without a choice of
    their own), and a moved choice shows."""
    rng = random.Random(3)
    pool = [*data_words(0x1000, 32), *text_grains(0, 64)]
    for trial in range(30):
        steps, cpu = [], 0
        for k in range(rng.randint(0, 80)):
            if rng.random() < 0.3:
                cpu = rng.randrange(3)
            steps.append(Step(k if rng.random() < 0.6 else None,
                              Footprint(cpu, set(rng.sample(pool, 3)),
                                        set(rng.sample(pool, rng.randint(0, 1))))))
        want = _walked_backtrack_points(steps)
        assert backtrack_points(steps, engine) == want, f"trial {trial}"
        if want:  # perturbed: the choice before the first race's step moves
            node = want[0][0]
            k = next(k for k, s in enumerate(steps) if s.node == node)
            steps[k] = Step(node + 1000, steps[k].footprint)
            assert backtrack_points(steps, engine) != want


def test_text_and_interrupt_locations():
    fp = Footprint(1)
    fp.write_all(text_grains(0x10, 5))
    assert [describe(g) for g in sorted(fp.writes)] == ["text+0x10"]
    assert describe(irq(2)) == "irq(cpu2)" and describe(irq(2, nmi=True)) == "nmi(cpu2)"
    other = Footprint(0, reads=set(text_grains(0x14, 1)))
    assert fp.dependent(other) and not fp.dependent(Footprint(1, reads=set(fp.writes)))


def test_machine_records_footprints_in_event_mode():
    """A text store, a sideband record and an IPI are writes; fetches and handshakes reads."""
    from harness.run import Runner
    from harness.scenario.shipped import get

    src = ExhaustiveSource([], footprints=True)
    runner = Runner(get("z4_bytewise"), "fixed", 3, decode=False, event_mode=True)
    out = runner.run(src)
    assert out.ok and src.steps and all(s.footprint.reads for s in src.steps)
    kinds = {describe(w).split("+")[0].split("@")[0].split("(")[0]
             for s in src.steps for w in s.footprint.writes}
    assert {"text", "data", "irq"} <= kinds
    site = runner.built.sites[0][1] - layout.TEXT_BASE
    assert any(s.cpu == 0 and text_grains(site, 1)[0] in s.footprint.writes for s in src.steps)
    assert any(s.cpu != 0 and text_grains(site, 1)[0] in s.footprint.reads for s in src.steps)


class _CpuOrder(DecisionSource):
    """CPU choices by CPU number from `order` (seeded random past its end); every other
    choice its simplest. Keeps each step's footprint."""

    wants_footprints = True

    def __init__(self, order: list[int], seed: int = 0) -> None:
        self.order, self.rng = order, random.Random(seed)
        self.steps: list[Footprint] = []

    def step_done(self, footprint: Footprint) -> None:
        self.steps.append(footprint)

    def pick(self, request: Request, position: int) -> int:
        if request.kind is not Kind.CPU:
            return simplest(request)
        k = len(self.steps)
        return (request.context.runnable.index(self.order[k]) if k < len(self.order)
                else self.rng.randrange(request.arity))


def test_independent_adjacent_steps_commute():
    """The reduction's premise: swapping two adjacent steps of different CPUs whose footprints
    are independent changes nothing the oracles see (each CPU's instructions, the final text,
    the verdict). A location the footprints missed would show up here as a difference."""
    from harness.run import Runner
    from harness.scenario.shipped import get

    runner = Runner(get("z4_bytewise"), "fixed", 3, decode=False, event_mode=True)

    def seen(out):
        return out.verdict.kind, out.result.text_end, [
            [(ip, code) for _t, ip, code in out.result.truth.retired[c]] for c in range(3)]

    swapped = 0
    for seed in (1, 2):
        first = _CpuOrder([], seed)
        base = seen(runner.run(first))
        cpus = [f.cpu for f in first.steps]
        for k, (a, b) in enumerate(zip(first.steps, first.steps[1:], strict=False)):
            if a.cpu == b.cpu or a.dependent(b):
                continue
            order = cpus[:k] + [b.cpu, a.cpu] + cpus[k + 2:]
            assert seen(runner.run(_CpuOrder(order))) == base, f"seed {seed}: steps {k}, {k + 1}"
            swapped += 1
    assert swapped >= 40


def test_dpor_explores_fewer_paths_of_the_same_space():
    from harness.run import Runner
    from harness.scenario.shipped import get

    runner = Runner(get("z4_bytewise"), "fixed", 3, decode=False, event_mode=True)
    paths: dict[bool, set[tuple[int, ...]]] = {}
    for reduce in (False, True):
        seen: set[tuple[int, ...]] = set()

        def run(src, seen=seen):
            out = runner.run(src)
            seen.add(tuple(c.value for c in out.result.path))
            return out

        res = explore_exhaustive(run, Cost(1, 0, 0), reduce=reduce)
        assert res.exhausted and not res.failures
        paths[reduce] = seen
    assert paths[True] < paths[False]  # a strict subset: every DPOR path is in the space
    assert len(paths[True]) < 0.8 * len(paths[False])
    bad = explore(Plan("z4_bytewise", "buggy", strategy="exhaustive", preemptions=1, delays=0,
                       interrupts=0, dpor=True), schedules=5000, stop_at_first=True)
    assert bad.failures  # and the reduction still finds the bug


def test_exhaustive_scenario_exhausts_and_finds_the_bug():
    ok = explore(Plan("z4_bytewise", "fixed", strategy="exhaustive", preemptions=1, delays=1,
                      interrupts=0), schedules=5000)
    assert ok.exhausted and not ok.failures and len(ok.results) > 50
    bad = explore(Plan("z4_bytewise", "buggy", strategy="exhaustive", preemptions=1, delays=0,
                       interrupts=0), schedules=5000, stop_at_first=True)
    assert bad.failures
    _tok, out = replay(bad.failures[0].token)  # event-mode tokens replay too
    assert out.verdict.kind == bad.failures[0].verdict


@pytest.mark.parametrize("lit", litmus.CATALOGUE, ids=[t.name for t in litmus.CATALOGUE])
def test_litmus_observed_equals_allowed(lit):
    r = litmus.run(lit)
    assert r.exhausted and r.observed == lit.allowed, (sorted(r.observed), sorted(lit.allowed))


def test_litmus_catalogue_covers_the_cases():
    names = {t.name for t in litmus.CATALOGUE}
    assert {"SM", "SM+cpuid", "XMC", "XMC+cpuid", "TAIL+INT3", "TAIL", "INT3"} <= names
    torn = {t.name for t in litmus.CATALOGUE if "torn" in t.allowed}
    assert "TAIL" in torn and "TAIL+INT3" not in torn and "INT3" not in torn


def test_litmus_cli_json():
    out = subprocess.run([sys.executable, "-m", "harness", "litmus", "--json"],
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0
    doc = json.loads(out.stdout)
    assert all(t["ok"] and t["observed"] == t["allowed"] for t in doc["tests"])


def test_cli_exhaustive_reports_exhaustion_and_count():
    out = subprocess.run([sys.executable, "-m", "harness", "explore", "z4_bytewise", "--variant",
                          "fixed", "--strategy", "exhaustive", "--preemptions", "1", "--delays",
                          "0", "--interrupts", "0", "--schedules", "2000", "--json"],
                         capture_output=True, text=True, timeout=600)
    doc = json.loads(out.stdout)
    assert out.returncode == 0 and doc["exhausted"] is True and doc["failures"] == 0
    assert doc["schedules"] > 10 and doc["dpor"] is False
    out = subprocess.run([sys.executable, "-m", "harness", "explore", "z4_bytewise", "--variant",
                          "fixed", "--strategy", "exhaustive", "--preemptions", "1", "--delays",
                          "0", "--interrupts", "0", "--schedules", "2000", "--dpor", "--json"],
                         capture_output=True, text=True, timeout=600)
    reduced = json.loads(out.stdout)
    assert out.returncode == 0 and reduced["dpor"] is True and reduced["exhausted"] is True
    assert 1 < reduced["schedules"] < doc["schedules"]
    text = subprocess.run([sys.executable, "-m", "harness", "explore", "z4_bytewise",
                           "--variant", "fixed", "--strategy", "exhaustive", "--preemptions",
                           "0", "--delays", "0", "--interrupts", "0"], capture_output=True,
                          text=True, timeout=600)
    assert "space exhausted after 1 schedules" in text.stdout


@pytest.mark.parametrize("option", ["--preemptions", "--delays", "--interrupts"])
def test_cli_refuses_negative_bounds(option):
    """A negative bound cannot be honoured: bad input, never "space exhausted"."""
    out = subprocess.run([sys.executable, "-m", "harness", "explore", "z4_bytewise",
                          "--strategy", "exhaustive", option, "-1"], capture_output=True,
                         text=True, timeout=600)
    assert out.returncode == 2 and option in out.stderr and "exhausted" not in out.stdout


def test_one_delayed_update_shows_the_old_instruction_or_one_stale_byte():
    """The delay bound counts stale observations: with V=1 the executor, however long it
    waited for the flag, may still fetch the whole old instruction (a line held since) or a
    mix with one stale byte. Charged per step kept stale, V=1 saw only the new code."""
    xmc = next(t for t in litmus.CATALOGUE if t.name == "XMC")
    r = litmus.run(xmc, preemptions=1, delays=1)
    assert r.exhausted and r.observed == {"old", "new", "torn"}
    assert litmus.run(xmc, preemptions=1, delays=0).observed == {"new"}


def test_the_paused_collector_collects_every_so_many_schedules_and_comes_back(monkeypatch):
    """PausedGc: off inside, a full collection after COLLECT_EVERY schedules, then twice as
    many schedules after each that found less garbage than one object a schedule (at most
    COLLECT_MOST), COLLECT_EVERY again after one that found more; the collector as it was
    afterwards (left off when it was off)."""
    import gc

    from harness.explore import work

    at: list[int] = []
    garbage = {9: 6, 30: 11}  # what the collections at these schedules find
    now = [0]  # the schedule just done
    monkeypatch.setattr(work, "COLLECT_EVERY", 3)
    monkeypatch.setattr(work, "COLLECT_MOST", 12)
    monkeypatch.setattr(gc, "collect", lambda *a: at.append(now[0]) or garbage.get(now[0], 0))
    assert gc.isenabled()
    with work.PausedGc() as collector:
        assert not gc.isenabled()
        for now[0] in range(1, 60):
            collector.schedule_done()
    # 3, +6, then 6 found in 6 schedules at 9: +3, +6, +12; 11 found in 12 at 30: +12, +12
    assert gc.isenabled() and at == [3, 9, 12, 18, 30, 42, 54]
    gc.disable()
    try:
        with work.PausedGc():
            pass
        assert not gc.isenabled()
    finally:
        gc.enable()


def test_the_slices_collector_keeps_its_interval_and_nests(monkeypatch):
    """One PausedGc over many slices (work.SLICES_GC) goes on counting where the last slice
    stopped, so its interval backs off across slices; slices that overlap (a worker of
    several threads) leave the collector off until the last one ends. Perturbed: a collector
    per slice collects at the same schedule of every slice; the first slice to end turning
    the collector back on while the other runs fails."""
    import gc

    from harness.explore import work

    at: list[int] = []
    now = [0]
    monkeypatch.setattr(work, "COLLECT_EVERY", 3)
    monkeypatch.setattr(work, "COLLECT_MOST", 12)
    monkeypatch.setattr(gc, "collect", lambda *a: at.append(now[0]) or 0)
    collector = work.PausedGc()
    for _ in range(5):  # slices of 4 schedules
        with collector:
            for _ in range(4):
                now[0] += 1
                collector.schedule_done()
    assert at == [3, 9]  # not [3, 7, 11, 15, 19]
    assert gc.isenabled()
    with collector:
        with collector:
            assert not gc.isenabled()
        assert not gc.isenabled()
    assert gc.isenabled()


def test_a_slice_makes_what_it_returns_while_the_collector_is_off(monkeypatch):
    """explore_region makes the region's state and reports before the collector is back on
    (the first collection after it scans everything made since the last one). Perturbed:
    made after the `with`, the state is made with the collector on."""
    import gc

    from harness.explore import partition, work
    from harness.explore.schedule import Plan

    seen: list[bool] = []
    state = partition.RegionRun.state
    monkeypatch.setattr(partition.RegionRun, "state",
                        lambda self: seen.append(gc.isenabled()) or state(self))
    plan = Plan(scenario="static_key", cpus=2, strategy="exhaustive", preemptions=1,
                delays=0, interrupts=0, dpor=True)
    out = work.explore_region(plan, dict(partition.FRESH), 5, 60.0)
    assert len(out["results"]) == 5 and out["state"]["nodes"]
    assert seen == [False] and gc.isenabled()


def test_slices_count_their_schedules_on_the_process_collector(monkeypatch):
    """explore_region counts its schedules on the process's collector (work.SLICES_GC), so a
    second slice goes on from the first's count. Perturbed: a PausedGc made per slice leaves
    the process's collector at 0."""
    from harness.explore import partition, work
    from harness.explore.schedule import Plan

    collector = work.PausedGc()
    monkeypatch.setattr(work, "SLICES_GC", collector)
    plan = Plan(scenario="static_key", cpus=2, strategy="exhaustive", preemptions=1,
                delays=0, interrupts=0, dpor=True)
    state = dict(partition.FRESH)
    for _ in range(2):
        state = work.explore_region(plan, state, 3, 60.0)["state"]
    assert collector._count == 6


def _dpor_runs(scenario, variant, cpus, bound: Cost, limit: int, races: Engine | None = None
               ) -> list[tuple[int, ...]]:
    """Every run of a DPOR search (at most `limit`, test_snapshot's), as its choices' values
    (`races`: the race finder's engine)."""
    from emu.snapshot import SnapshotCache
    from harness.run import Runner
    from harness.scenario.shipped import SCENARIOS
    from tests.test_snapshot import _search

    runner = Runner(SCENARIOS[scenario], variant, cpus, event_mode=True, engine=Engine.FAST,
                    decode=False)
    return [tuple(c.value for c in result.path)
            for result, _steps in _search(runner, SnapshotCache(), bound, limit, races)]


@pytest.mark.parametrize(("scenario", "variant", "cpus", "bound", "limit"), [
    ("static_key", None, 3, Cost(2, 1, 1), 400),
    ("z1_optprobe_shadow", "buggy", None, Cost(1, 0, 1), 200),
    ("z4_bytewise", "fixed", None, Cost(1, 1, 0), 400),
], ids=["static_key", "z1_buggy", "z4_bytewise"])
def test_skipping_the_races_a_run_shares_with_its_parent_keeps_the_search(
        monkeypatch, scenario, variant, cpus, bound, limit):
    """taken_in finds only the races whose second step the run does not share with the run
    it deviates from (dpor.first_new_step): the same runs, in the same order, as finding
    every race of every run, the reference. Perturbed: starting one step late loses races,
    and the search differs."""
    from harness.explore import dpor, exhaustive

    fast = _dpor_runs(scenario, variant, cpus, bound, limit)
    first_new_step = dpor.first_new_step
    monkeypatch.setattr(exhaustive, "first_new_step", lambda steps, base: 0)
    assert fast == _dpor_runs(scenario, variant, cpus, bound, limit)
    if scenario == "z4_bytewise":  # (in static_key's first 400 runs only from 2 late on)
        monkeypatch.setattr(exhaustive, "first_new_step",
                            lambda steps, base: first_new_step(steps, base) + 1)
        with pytest.raises(ValueError, match="is not the prior run's"):  # the C finder sees it
            _dpor_runs(scenario, variant, cpus, bound, limit)
        assert fast != _dpor_runs(scenario, variant, cpus, bound, limit, Engine.REFERENCE)


def _scanning_first_untried(self: Search, level, end: int) -> tuple[int, int] | None:
    """Search._first_untried as defined: the level's choices scanned from its first, each
    time (`untried`); the reference for the search's resume points."""
    return next(untried(level, self.bound, end), None)


@pytest.mark.parametrize(("scenario", "variant", "cpus", "bound", "limit"), [
    ("static_key", None, 3, Cost(2, 1, 1), 400),
    ("z4_bytewise", "fixed", None, Cost(1, 1, 0), 400),
], ids=["static_key", "z4_bytewise"])
def test_resuming_each_level_where_it_stopped_keeps_the_search(
        monkeypatch, scenario, variant, cpus, bound, limit):
    """The search resumes a level's choices where it last stopped (Level.resume), moved back
    where a later run's races add a value: the same runs, in the same order, as scanning every
    level from its first choice each time. Perturbed: not moving back loses runs."""
    from harness.explore import exhaustive

    fast = _dpor_runs(scenario, variant, cpus, bound, limit)
    with monkeypatch.context() as m:
        m.setattr(Search, "_first_untried", _scanning_first_untried)
        assert fast == _dpor_runs(scenario, variant, cpus, bound, limit)
    backtrack = exhaustive.backtrack
    monkeypatch.setattr(exhaustive, "backtrack",
                        lambda path, steps, engine, since, added, prior, kept:
                        backtrack(path, steps, engine, since, None, prior, kept))
    assert fast != _dpor_runs(scenario, variant, cpus, bound, limit)


def test_the_first_new_step_is_the_first_that_ends_after_the_deviation():
    fp = Footprint(0, set(), set())
    steps = [Step(0, fp, 2), Step(2, fp, 3), Step(None, fp, 3), Step(3, fp, 5)]
    assert dpor.first_new_step(steps, -1) == 0  # the first run: every step is new
    assert dpor.first_new_step(steps, 1) == 0  # step 0 made choices 0 and 1
    assert dpor.first_new_step(steps, 2) == 1  # step 0 ended before choice 2
    assert dpor.first_new_step(steps, 3) == 3  # steps 1 and 2 ended before choice 3
    assert dpor.first_new_step(steps, 5) == 4
    assert dpor.first_new_step([Step(0, fp, 2), Step(2, fp)], 3) == 1  # no end: new
    assert races(steps, since=1) == [r for r in races(steps) if r[1] >= 1]
