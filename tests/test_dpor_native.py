"""The race finder in C (harness/explore/_dpor.c) against dpor.races, its reference: the same
races, initials and order on recorded runs of every shipped scenario, on random footprints,
on runs resumed from the log of the run they deviate from, and on a perturbed run whose races
differ (so the comparison is not vacuous); its `backtrack` against exhaustive.backtrack's
loop over the reference races, on what they add to random paths."""

from __future__ import annotations

import random
from array import array

import pytest

from emu.engine import Engine, native_module
from emu.footprint import Footprint, data_words, irq, stack, text_grains
from emu.path import Cost, Kind
from harness.explore.dpor import Step, find_races, races
from harness.explore.exhaustive import (
    ExhaustiveSource,
    Node,
    backtrack,
    explore_exhaustive,
    own_nodes,
)
from harness.run import Runner
from harness.scenario.shipped import SCENARIOS

native = native_module("search")
pytestmark = pytest.mark.skipif(native is None,
                                reason="harness.explore._dpor was not compiled (setup.py)")

# a few prefixes per scenario: the simplest run, early preemptions, a delayed view update
PREFIXES = [[], [1], [0, 1], [1, 0, 1], [2, 2, 1]]


def _recorded(name: str, cpus: int | None) -> list[list[Step]]:
    runner = Runner(SCENARIOS[name], None, cpus, event_mode=True, engine=Engine.FAST,
                    decode=False)
    out = []
    for prefix in PREFIXES:
        src = ExhaustiveSource(prefix, footprints=True)
        runner.machine.run(src)
        out.append(src.steps)
    return out


@pytest.mark.parametrize("name", sorted(SCENARIOS))
def test_both_race_finders_agree_on_recorded_runs(name: str):
    for steps in _recorded(name, 3 if name == "static_key" else None):
        want = races(steps)
        assert native.races(steps) == want
        assert find_races(steps, Engine.FAST) == want  # the dispatch takes the C one
        half = len(steps) // 2  # a run's races from a step on (dpor.first_new_step)
        assert native.races(steps, half) == races(steps, half) == [r for r in want
                                                                    if r[1] >= half]
        assert races(steps, half) != want or not want


@pytest.mark.parametrize("name", sorted(SCENARIOS))
def test_both_backtracks_ask_the_same_on_recorded_runs(name: str):
    """_dpor.c's `backtrack` against exhaustive.backtrack's loop on recorded runs of every
    shipped scenario, their own nodes as the search makes them (with the reduction): the
    same values to try at every choice and the same `added`, from the first step and from
    the middle; and the runs do ask for some (so the comparison is not vacuous)."""
    runner = Runner(SCENARIOS[name], None, 3 if name == "static_key" else None,
                    event_mode=True, engine=Engine.FAST, decode=False)
    asked = 0
    for prefix in PREFIXES:
        src = ExhaustiveSource(prefix, footprints=True)
        runner.machine.run(src)
        for since in (0, len(src.steps) // 2):
            todos, added = {}, {}
            for engine in Engine:
                path = own_nodes(src.choices, 0, True, Engine.REFERENCE)
                added[engine] = []
                backtrack(path, src.steps, engine, since, added[engine])
                todos[engine] = [n.todo for n in path]
            assert todos[Engine.FAST] == todos[Engine.REFERENCE], f"{prefix}, {since}"
            assert added[Engine.FAST] == added[Engine.REFERENCE], f"{prefix}, {since}"
            asked += len(added[Engine.FAST])
    assert asked > 0


@pytest.mark.parametrize("name", ["static_key", "z1_optprobe_shadow"])
def test_both_node_makers_make_the_same_nodes(name: str):
    """_dpor.c's `nodes` against node_of's loop (own_nodes' reference) on recorded runs,
    with and without the reduction, from the start and from inside a run: the same fields,
    the same request objects, and the same `known` entries. Perturbed: C giving a CPU
    choice every value under the reduction."""
    runner = Runner(SCENARIOS[name], None, 3 if name == "static_key" else None,
                    event_mode=True, engine=Engine.FAST, decode=False)
    for prefix in PREFIXES:
        src = ExhaustiveSource(prefix, footprints=True)
        runner.machine.run(src)
        for reduce in (True, False):
            for start in (0, len(src.choices) // 2):
                known: dict = {e: {} for e in Engine}
                made = {e: own_nodes(src.choices, start, reduce, e, known[e]) for e in Engine}
                fast, ref = made[Engine.FAST], made[Engine.REFERENCE]
                assert known[Engine.FAST] == known[Engine.REFERENCE] != {}
                assert len(fast) == len(src.choices) - start > 0
                assert fast == ref
                assert [n.request for n in fast] == [n.request for n in ref]
                assert all(a.request is b.request and a.origin is None for a, b in zip(
                    fast, ref, strict=True))
                assert any(n.kind is Kind.CPU and len(n.todo) < n.arity for n in fast) == \
                    (reduce and any(n.kind is Kind.CPU and n.arity > 1 for n in fast))


def test_both_walks_over_a_prefix_find_the_same_new_requests():
    """taken_in's walk over the choices a run shares with its prefix (_dpor.c:
    same_requests) against its reference loop: random prefixes and runs where some choices
    answered another request object, of either length. Perturbed: a C walk that compares the
    requests' values, not their identity, finds none of the new ones."""
    from emu.path import Choice, Request
    from harness.explore.exhaustive import _new_requests

    rng = random.Random(11)
    requests = [Request(Kind.CPU, 2, None) for _ in range(4)]
    for _ in range(200):
        prefix = [Node(Kind.CPU, 2, 0, 0, request=rng.choice(requests))
                  for _ in range(rng.randrange(30))]
        choices = [Choice(Kind.CPU, 2, 0, n.request if rng.random() < 0.8 else
                          Request(Kind.CPU, 2, None))
                   for n in prefix[:rng.randrange(len(prefix) + 1)]]
        choices += [Choice(Kind.CPU, 2, 0, requests[0]) for _ in range(rng.randrange(3))]
        walked = {e: [(k, n is prefix[k], c is choices[k])
                      for k, n, c in _new_requests(prefix, choices, e)] for e in Engine}
        assert walked[Engine.FAST] == walked[Engine.REFERENCE]
        assert all(n and c for _, n, c in walked[Engine.FAST])
        assert [k for k, _, _ in walked[Engine.FAST]] == [
            k for k, (n, c) in enumerate(zip(prefix, choices, strict=False))
            if n.request is not c.request]


def test_nodes_are_not_made_in_c_for_a_dataclass_of_other_fields(monkeypatch):
    from harness.explore import exhaustive

    monkeypatch.setattr(exhaustive, "NODE_FIELDS", exhaustive.NODE_FIELDS[:-1])
    with pytest.raises(RuntimeError, match="rebuild the extension"):
        own_nodes([], 0, True, Engine.FAST)


def test_both_race_finders_agree_on_random_footprints():
    """Many CPUs, shared and private locations of every kind, reads and writes overlapping."""
    rng = random.Random(5)
    for trial in range(40):
        steps = _random_steps(rng, rng.randint(0, 120), rng.randint(1, 6))
        assert native.races(steps) == races(steps), f"trial {trial}"


_POOL = [*text_grains(0, 256), *data_words(0x1000, 64), *(irq(c) for c in range(6)),
         *(stack(c) for c in range(6))]


def _random_steps(rng: random.Random, n: int, ncpus: int) -> list[Step]:
    steps = []
    for k in range(n):
        reads = set(rng.sample(_POOL, rng.randint(0, 12)))
        writes = set(rng.sample(_POOL, rng.randint(0, 3)))
        steps.append(Step(k if rng.random() < 0.7 else None,
                          Footprint(rng.randrange(ncpus), reads, writes)))
    return steps


def test_a_run_resumed_from_the_log_of_the_run_it_deviates_from_finds_the_same_races():
    """A run sharing its first `since` steps with an earlier one starts from that run's log
    (the checkpoint before `since`, then the steps between) and reads only its own steps:
    the races of the reference, over three generations, at `since` around and on the
    checkpoints (every 32 steps), the first and the last shared step."""
    rng = random.Random(11)
    for trial in range(40):
        ncpus = rng.randint(2, 4)
        parent = _random_steps(rng, rng.randint(1, 140), ncpus)
        found, log = native.races(parent, 0, None, True)
        assert found == races(parent)
        n = len(parent)
        for since in sorted({1, n, rng.randint(1, n), *(x for x in (31, 32, 33, 64, 65)
                                                         if x <= n)}):
            child = parent[:since] + _random_steps(rng, rng.randint(0, 80), ncpus)
            got, child_log = native.races(child, since, log, True)
            assert got == races(child, since), f"trial {trial}, since {since}"
            cut = rng.randint(1, len(child))
            grandchild = child[:cut] + _random_steps(rng, rng.randint(0, 60), ncpus)
            assert native.races(grandchild, cut, child_log) == races(grandchild, cut), \
                f"trial {trial}, since {since}, then {cut}"


def _random_path(rng: random.Random, n: int, ncpus: int) -> list[Node]:
    """CPU choices for steps' nodes 0..n-1: some CPUs runnable, in any order (a lead CPU may
    not be among them), some of them a deviation's copy whose origin keeps what is tried."""
    path = []
    for _ in range(n):
        runnable = tuple(rng.sample(range(ncpus), rng.randint(1, ncpus)))
        node = Node(Kind.CPU, len(runnable), 0, 0, runnable, {0}, {0})
        if rng.random() < 0.2:
            node.origin = Node(Kind.CPU, len(runnable), 0, 0, runnable, set(), {0})
        path.append(node)
    return path


def _copied(path: list[Node]) -> list[Node]:
    out = []
    for n in path:
        c = Node(n.kind, n.arity, n.value, n.simplest, n.runnable, set(n.todo), set(n.done))
        if n.origin is not None:
            c.origin = _copied([n.origin])[0]
        out.append(c)
    return out


def _todos(path: list[Node]) -> list[tuple[set[int], set[int] | None]]:
    return [(n.todo, None if n.origin is None else n.origin.todo) for n in path]


def test_both_backtracks_ask_the_same_of_the_path():
    """_dpor.c's `backtrack` (races, points and their application in one pass, repeats
    skipped) against exhaustive.backtrack's loop over the reference races: the same values
    to try at every node (or its origin) and the same `added`, from the first step and
    resumed from the log of the run deviated from (three generations). Perturbed: a step's
    choice moved changes what C asks."""
    rng = random.Random(17)
    for trial in range(40):
        ncpus = rng.randint(2, 5)
        steps = _random_steps(rng, rng.randint(0, 120), ncpus)
        path = _random_path(rng, 300, ncpus)
        ref, fast = _copied(path), _copied(path)
        added_ref: list[int] = []
        added_fast: list[int] = []
        kept: list[object] = []
        backtrack(ref, steps, Engine.REFERENCE, 0, added_ref)
        backtrack(fast, steps, Engine.FAST, 0, added_fast, None, kept)
        assert (_todos(fast), added_fast) == (_todos(ref), added_ref), f"trial {trial}"
        if not steps:
            continue
        since = rng.randint(1, len(steps))
        child = steps[:since] + _random_steps(rng, rng.randint(0, 60), ncpus)
        for k in range(since, len(child)):
            child[k] = Step(k if rng.random() < 0.7 else None, child[k].footprint)
        path = _random_path(rng, 300, ncpus)
        ref, fast = _copied(path), _copied(path)
        added_ref, added_fast, kept2 = [], [], []
        backtrack(ref, child, Engine.REFERENCE, since, added_ref)
        backtrack(fast, child, Engine.FAST, since, added_fast, kept[0], kept2)
        assert (_todos(fast), added_fast) == (_todos(ref), added_ref), f"trial {trial} child"
        cut = rng.randint(1, len(child))
        grandchild = child[:cut] + _random_steps(rng, rng.randint(0, 40), ncpus)
        ref, fast = _copied(path), _copied(path)
        backtrack(ref, grandchild, Engine.REFERENCE, cut)
        backtrack(fast, grandchild, Engine.FAST, cut, None, kept2[0])
        assert _todos(fast) == _todos(ref), f"trial {trial} grandchild"
        moved = [s for s in steps if s.node is not None]
        if added_fast and moved:  # perturbed: every step's choice one later
            shifted = [Step(None if s.node is None else s.node + 1, s.footprint) for s in steps]
            again = _copied(path)
            backtrack(again, shifted, Engine.FAST, 0, [])
            base = _copied(path)
            backtrack(base, steps, Engine.FAST, 0, [])
            assert _todos(again) != _todos(base)


def test_backtrack_refuses_a_path_too_short_for_its_steps():
    steps = _random_steps(random.Random(2), 60, 3)
    with pytest.raises(IndexError, match="backtrack: choice"):
        native.backtrack(_random_path(random.Random(2), 3, 3), steps)


def test_a_resumed_run_with_a_new_cpu_starts_from_its_first_step():
    rng = random.Random(3)
    parent = _random_steps(rng, 50, 2)
    _, log = native.races(parent, 0, None, True)
    child = parent[:30] + [Step(None, Footprint(2, {text_grains(0, 8)[0]}, set()))] + \
        _random_steps(rng, 20, 3)
    assert native.races(child, 30, log) == races(child, 30)


def test_a_log_of_another_run_is_refused():
    """The last shared step must be the log's (its CPU and its entries): a log of a run that
    does not share the steps is an error, not wrong races."""
    rng = random.Random(4)
    parent = _random_steps(rng, 40, 2)
    _, log = native.races(parent, 0, None, True)
    other = list(parent)
    last = other[19].footprint
    other[19] = Step(None, Footprint(last.cpu, last.reads | {data_words(0x9000, 1)[0]},
                                     last.writes))
    with pytest.raises(ValueError, match="step 19 is not the prior run's"):
        native.races(other, 20, log)
    with pytest.raises(TypeError, match="RaceLog"):
        native.races(parent, 20, object())


def _as_the_machine_keeps_it(fp: Footprint, rng: random.Random) -> Footprint:
    """The same footprint with its entries split between `packed` (the native machine's)
    and `added` (Python's), some of them twice, in any order."""
    entries = [*array("Q", fp.packed), *fp.added]
    entries += rng.sample(entries, len(entries) // 3)
    rng.shuffle(entries)
    cut = rng.randint(0, len(entries))
    out = Footprint(fp.cpu)
    out.packed, out.added = array("Q", entries[:cut]).tobytes(), entries[cut:]
    assert (out.reads, out.writes) == (fp.reads, fp.writes)
    return out


def test_both_race_finders_agree_on_footprints_kept_in_both_forms():
    """A footprint the C loop began and Python went on with: both halves read, each location
    once whatever its repeats, WRITTEN telling writes from reads in either half."""
    rng = random.Random(7)
    for name in ("static_key", "z4_bytewise"):
        for steps in _recorded(name, None):
            split = [Step(s.node, _as_the_machine_keeps_it(s.footprint, rng), s.end)
                     for s in steps]
            assert native.races(split) == races(split) == races(steps), name


def test_a_perturbed_footprint_changes_the_races_both_find():
    """Perturbed: the first step of the first race touches nothing. Both finders see the
    change alike."""
    steps = _recorded("static_key", 3)[1]
    want = races(steps)
    k = want[0][0]
    steps[k] = Step(steps[k].node, Footprint(steps[k].cpu, set(), set()))
    changed = races(steps)
    assert changed != want
    assert native.races(steps) == changed


@pytest.mark.parametrize("name", ["static_key", "z1_optprobe_shadow", "kprobe_two"])
def test_both_step_recorders_record_the_same_steps(name: str):
    """ExhaustiveSource.step_done in C (the fast engine's) and in Python (its reference): the
    same steps, each with its CPU choice, footprint and end, on runs with preemptions and
    delays."""
    runner = Runner(SCENARIOS[name], None, 3 if name == "static_key" else None,
                    event_mode=True, engine=Engine.FAST, decode=False)

    def recorded(prefix, native_):
        src = ExhaustiveSource(prefix, footprints=True, native=native_)
        runner.machine.run(src)
        return [(s.node, s.end, s.cpu, s.footprint.reads, s.footprint.writes)
                for s in src.steps]

    for prefix in PREFIXES:
        ours, ref = recorded(prefix, native), recorded(prefix, None)
        assert ours == ref and any(node is not None for node, *_ in ours)


def test_the_c_recorder_leaves_its_steps_out_of_the_collectors_sight():
    """_dpor.c: step_done untracks a step it records, its footprint and the footprint's list
    of ints (nothing there can be in a cycle; the snapshot cache keeps tens of thousands);
    a footprint holding anything but ints stays tracked, as the reference's steps do.
    Perturbed: without untrack_step, or untracking whatever `added` holds, this fails."""
    import gc

    from harness.explore.exhaustive import StepLog

    def recorded(fp: Footprint) -> Step:
        log = StepLog([], [])
        native.step_done(log, Kind.CPU, Step, fp)
        return log.steps[-1]

    step = recorded(Footprint(1, [irq(1)], [stack(1)]))
    assert step.footprint.added and not any(
        gc.is_tracked(o) for o in (step, step.footprint, step.footprint.added))
    odd = recorded(Footprint(1, [irq(1), ("not", "an int")], []))
    assert all(gc.is_tracked(o) for o in (odd, odd.footprint, odd.footprint.added))
    runner = Runner(SCENARIOS["static_key"], None, 3, event_mode=True, engine=Engine.FAST,
                    decode=False)
    src = ExhaustiveSource([], footprints=True, native=native)
    runner.machine.run(src)
    assert src.steps and not any(gc.is_tracked(s) or gc.is_tracked(s.footprint)
                                 for s in src.steps)
    ref = ExhaustiveSource([], footprints=True)
    runner.machine.run(ref)
    assert all(gc.is_tracked(s) for s in ref.steps)


def test_bad_steps_are_errors_not_crashes():
    with pytest.raises(AttributeError):
        native.races([object()])
    with pytest.raises(TypeError):
        native.races([Step(None, Footprint(0, {"text"}, set()))])
    with pytest.raises(ValueError, match="CPU"):
        native.races([Step(None, Footprint(99, set(), set()))])


def test_the_search_visits_the_same_paths_with_either_race_finder():
    runner = Runner(SCENARIOS["z4_bytewise"], "fixed", event_mode=True, decode=False)
    visited = {}
    for engine in Engine:
        seen = []

        def run(src, seen=seen):
            result = runner.machine.run(src)
            seen.append(tuple(c.value for c in result.path))
            return type("Out", (), {"ok": result.verdict.ok})()

        assert explore_exhaustive(run, Cost(1, 1, 0), reduce=True, engine=engine).exhausted
        visited[engine] = seen
    assert len(visited[Engine.FAST]) > 10
    assert visited[Engine.FAST] == visited[Engine.REFERENCE]
