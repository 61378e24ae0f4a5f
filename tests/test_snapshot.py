"""Runs that continue from snapshots of earlier runs (emu/snapshot.py) against runs from the
reset state, the reference: whole exhaustive searches, each run's path, records, verdict and
every step's footprint equal; and perturbed restores are caught."""

from __future__ import annotations

import pytest

from emu.decisions import Decisions
from emu.engine import Engine
from emu.path import Cost
from emu.snapshot import SnapshotCache
from harness.explore.exhaustive import ExhaustiveSource, SearchError, explore_exhaustive
from harness.run import Runner
from harness.scenario.shipped import SCENARIOS
from tests.test_engines import differences
from tests.test_soundness import STACK_RACE


def _search(runner: Runner, cache: SnapshotCache | None, bound: Cost, limit: int,
            races: Engine | None = None) -> list[tuple[object, list[tuple]]]:
    """Every run of a DPOR search (at most `limit`): its result and each step's footprint.
    `races`: the race finder's engine (dpor.find_races)."""
    runs = []

    class Out:
        def __init__(self, ok: bool) -> None:
            self.ok = ok

    def run(src):
        result = runner.machine.run(src, cache=cache)
        runs.append((result, [(s.node, s.cpu, frozenset(s.footprint.reads),
                               frozenset(s.footprint.writes)) for s in src.steps]))
        return Out(result.verdict.ok)

    explore_exhaustive(run, bound, limit=limit, reduce=True, engine=races)
    return runs


def _mismatches(scenario, variant: str | None, cpus: int | None, bound: Cost, limit: int,
                cache: SnapshotCache) -> list[str]:
    scn = SCENARIOS[scenario] if isinstance(scenario, str) else scenario
    runners = [Runner(scn, variant, cpus, event_mode=True, engine=Engine.FAST, decode=False)
               for _ in range(2)]
    resumed = _search(runners[0], cache, bound, limit)
    reference = _search(runners[1], None, bound, limit)
    out = [] if len(resumed) == len(reference) else ["number of runs"]
    for k, ((a, fa), (b, fb)) in enumerate(zip(resumed, reference, strict=False)):
        out += [f"run {k}: {d}" for d in differences(runners[0], a, b)]
        if fa != fb:
            out.append(f"run {k}: footprints")
    return out


def _caught(cache: SnapshotCache) -> bool:
    """A perturbed restore shows in a static_key search: runs that differ from the
    reference's, or a run the search refuses (its choices are not those it ran before)."""
    try:
        return bool(_mismatches("static_key", None, 3, Cost(2, 1, 1), 40, cache))
    except SearchError:
        return True


@pytest.mark.parametrize(("scenario", "variant", "cpus", "bound", "limit", "every"), [
    ("static_key", None, 3, Cost(2, 1, 1), 40, 7),
    ("z1_optprobe_shadow", "buggy", None, Cost(1, 0, 1), 40, 3),  # NMIs, a failing run
    ("z4_bytewise", "fixed", None, Cost(1, 1, 0), 60, 3),
    (STACK_RACE, None, 2, Cost(1, 0, 0), 60, 1),
], ids=["static_key", "z1_buggy", "z4_bytewise", "stack_race"])
def test_a_search_from_snapshots_makes_the_runs_of_a_search_from_the_start(
        scenario, variant, cpus, bound, limit, every):
    """Snapshots every few steps, and not all kept (so that runs start from many places, and
    snapshots are dropped): the same runs, in the same order, as runs from the reset state."""
    cache = SnapshotCache(every=every, keep=400)
    assert _mismatches(scenario, variant, cpus, bound, limit, cache) == []
    assert cache.hits > 10 and cache.skipped > 0


def test_a_restore_that_forgets_the_pending_units_is_caught(monkeypatch):
    """Perturbed: the restored fetch views have no pending units."""
    from emu.machine import Machine

    restore = Machine._restore

    def forgetful(self, snap, dec):
        restore(self, snap, dec)
        for view in self.views:
            view._pending, view._pending_set, view._versions = [], set(), {}

    monkeypatch.setattr(Machine, "_restore", forgetful)
    assert _caught(SnapshotCache(every=5))


def test_a_restore_that_keeps_stale_translations_is_caught(monkeypatch):
    """Perturbed: Unicorn keeps its translations of the text the restored views change."""
    from emu.machine import Machine

    monkeypatch.setattr(Machine, "_restore", _perturbed_restore(
        "_drop_translations(cpu, cpu.state.view_touched + cc.state.view_touched, vc.buf)",
        "pass"))
    assert _caught(SnapshotCache(every=5))


def test_translations_are_dropped_where_the_coming_text_differs_alone():
    """_drop_translations: a range whose bytes the view keeps keeps its translations; one
    that differs anywhere (here past its first byte) loses them, merged ranges as one."""
    import ctypes
    from types import SimpleNamespace

    from emu.machine import _drop_translations

    dropped = []
    cpu = SimpleNamespace(view=SimpleNamespace(buf=ctypes.create_string_buffer(b"abcdefgh" * 2)),
                          remove_cache=lambda s, e: dropped.append((s, e)))
    coming = bytearray(cpu.view.buf.raw)
    coming[2] = ord("X")
    _drop_translations(cpu, [(0, 2), (1, 4), (10, 12)], bytes(coming))
    assert dropped == [(0, 4)]


def test_what_a_snapshot_copies_is_its_own():
    """CpuState.copy shares no set, list or dict (a new field is copied too), and packed
    records come back equal, only into an empty Retired. Perturbed: a copy that shares its
    lists is seen."""
    from dataclasses import fields, replace

    from emu.cpu import CpuState
    from emu.retired import Retired
    from emu.verdict import HandlerFrame

    st = CpuState(pending_ipis={0xFC}, own_dirty=[(1, 2)], handling=[HandlerFrame(3, 5)],
                  last_code=b"\xcc", nmis_left=2)

    def shared(a: CpuState, b: CpuState) -> list[str]:
        return [f.name for f in fields(a) if isinstance(getattr(a, f.name), set | list | dict)
                and getattr(a, f.name) is getattr(b, f.name)]

    assert st.copy() == st and shared(st, st.copy()) == []
    assert shared(st, replace(st)) != []  # a shallow copy shares them
    r = Retired([(1, 0x10, b"\x90"), (2, 0x11, b"\x0f\x0b")])
    back = Retired()
    back.extend_packed(r.packed())
    assert back == r and list(back) == list(r)
    assert back.at([1, 0]) == [(2, 0x11, b"\x0f\x0b"), (1, 0x10, b"\x90")] == back[::-1]
    with pytest.raises(ValueError):
        back.extend_packed(r.packed())


def test_the_cache_finds_the_longest_snapshot_within_the_planned_choices():
    """best(): the most choices, all of them the first planned; never more than planned; the
    least recently used is dropped first."""
    from emu.snapshot import Snapshot

    def snap(*values: int) -> Snapshot:
        return Snapshot(values, (), 0, 0, None, (b"", b"", b""), (), (), (), (), (), None,
                        "kind")

    cache = SnapshotCache(every=1, keep=3)
    for values in [(0,), (0, 1), (0, 1, 2), (1, 1)]:
        cache.add(snap(*values))
    assert len(cache) == 3  # (0,) dropped
    assert cache.best((0, 1, 2, 5), "kind").values == (0, 1, 2)
    assert cache.best((0, 1), "kind").values == (0, 1)  # (0, 1, 2) plans past it
    assert cache.best((0, 2), "kind") is None  # (0,) was dropped
    assert cache.best((1, 1, 0), "kind").values == (1, 1)
    cache.add(snap(2,))  # (0, 1, 2) is now the least recently used
    assert cache.best((0, 1, 2), "kind").values == (0, 1)
    assert cache.best((1, 1, 0), "another kind") is None
    with pytest.raises(ValueError):
        SnapshotCache(every=0)


def _footprints_after_a_plain_run(cache: SnapshotCache | None) -> list:
    """A run without footprints (a search without DPOR) leaves snapshots; then a run with
    them plans the same first choices: its steps, as its source recorded them."""
    runner = Runner(SCENARIOS["static_key"], None, 3, event_mode=True, engine=Engine.FAST,
                    decode=False)
    plain = runner.machine.run(ExhaustiveSource([]), cache=cache)
    src = ExhaustiveSource([c.value for c in plain.path[:300]], footprints=True)
    runner.machine.run(src, cache=cache)
    return [(s.node, s.cpu, frozenset(s.footprint.reads)) for s in src.steps]


def test_a_source_that_records_footprints_does_not_resume_a_plain_ones_snapshot(
        monkeypatch):
    """The plain run's snapshots hold no footprints: a DPOR run starts from the reset state
    and records all its steps. Perturbed: every source of one kind, and the DPOR run's first
    steps are missing."""
    from emu.decisions import DecisionSource

    reference = _footprints_after_a_plain_run(None)  # from the reset state
    cache = SnapshotCache(every=20)
    assert _footprints_after_a_plain_run(cache) == reference and cache.hits == 0
    monkeypatch.setattr(DecisionSource, "kind", lambda self: "one kind")
    cache = SnapshotCache(every=20)
    assert _footprints_after_a_plain_run(cache) != reference and cache.hits == 1


def _after_a_short_run(runner: Runner, cache: SnapshotCache | None, at: int):
    """A full run (snapshots from late in it), a run cut short without the cache, before the
    patcher's first text store but after the observers ran the sites (their code translated,
    nothing changed), then a run planned as the first run's first `at` choices."""
    from emu.config import RunBudget

    first = runner.machine.run(ExhaustiveSource([], footprints=True), cache=cache)
    runner.machine.run(ExhaustiveSource([]), RunBudget(ticks=600))
    assert not any(cpu.state.view_touched for cpu in runner.machine.cpus)
    planned = [c.value for c in first.path[:at]]
    return runner.machine.run(ExhaustiveSource(planned, footprints=True), cache=cache)


def _perturbed_restore(old: str, new: str):
    """Machine._restore compiled from its source with `old` replaced by `new`."""
    import inspect
    import textwrap

    from emu import machine

    source = textwrap.dedent(inspect.getsource(machine.Machine._restore))
    assert source.count(old) == 1
    namespace: dict = {}
    exec(compile(source.replace(old, new), machine.__file__, "exec"), vars(machine), namespace)
    return namespace["_restore"]


def test_a_run_resumed_after_a_short_run_drops_the_translations_of_the_snapshots_text(
        monkeypatch):
    """The snapshot's views hold bytes the run before never changed: Unicorn's translations
    of them (made from the first bytes) are dropped too. Perturbed: only the text the run
    before changed is dropped, and the resumed run executes stale code."""
    from emu.machine import Machine

    def resumed(cache: SnapshotCache | None) -> tuple[Runner, object]:
        runner = Runner(SCENARIOS["static_key"], None, 3, event_mode=True, engine=Engine.FAST,
                        decode=False)
        return runner, _after_a_short_run(runner, cache, 400)

    runner, reference = resumed(None)
    cache = SnapshotCache(every=20)
    assert differences(runner, resumed(cache)[1], reference) == []
    assert cache.hits == 1 and cache.skipped > 300
    monkeypatch.setattr(Machine, "_restore", _perturbed_restore(
        "cpu.state.view_touched + cc.state.view_touched", "cpu.state.view_touched"))
    assert differences(runner, resumed(SnapshotCache(every=20))[1], reference)


def test_a_source_wants_a_snapshot_after_a_choice_it_could_deviate_at():
    """Past its prefix and since it was last asked: a choice whose deviation the bound still
    allows. One spent by the prefix, a choice of the prefix, or no bound at all decide it."""
    from emu.path import Kind, Request

    ipi = Request(Kind.IPI, 2, 0)
    src = ExhaustiveSource([0], bound=Cost(0, 0, 1))  # its prefix delays an IPI: I spent
    dec = Decisions(src)
    dec.choose(ipi)
    dec.choose(ipi)
    assert not src.wants_snapshot()
    src = ExhaustiveSource([1], bound=Cost(0, 0, 1))
    dec = Decisions(src)
    dec.choose(ipi)  # a choice of the prefix: another run's to deviate at
    assert not src.wants_snapshot()
    dec.choose(ipi)
    assert src.wants_snapshot() and not src.wants_snapshot()  # once per choice seen
    src = ExhaustiveSource([], bound=Cost(1, 1, 0))  # IPIs: nothing left to deviate with
    Decisions(src).choose(ipi)
    assert not src.wants_snapshot()
    assert ExhaustiveSource([]).wants_snapshot()  # no bound: every snapshot


@pytest.mark.parametrize("always", [False, True])
def test_a_run_with_its_budget_spent_takes_no_snapshot(monkeypatch, always):
    """In a whole search, runs whose deviations spent the bound take no snapshot, and the
    runs that take some serve later runs. Perturbed (`always`): a source that always wants
    one, and spent runs take snapshots."""
    from emu.path import FREE, cost

    if always:
        monkeypatch.setattr(ExhaustiveSource, "wants_snapshot", lambda self: True)
    bound = Cost(1, 0, 1)
    runner = Runner(SCENARIOS["static_key"], None, 3, event_mode=True, engine=Engine.FAST,
                    decode=False)

    class Counting(SnapshotCache):
        taken = 0

        def add(self, snap) -> None:
            self.taken += 1
            super().add(snap)

    cache = Counting(every=8, keep=400)
    in_spent = 0

    class Out:
        ok = True

    def run(src):
        nonlocal in_spent
        taken = cache.taken
        runner.machine.run(src, cache=cache)
        spent = FREE
        for c in src.choices:
            spent = spent + cost(c.request, c.value)
        if spent == bound:
            in_spent += cache.taken - taken
        return Out()

    explore_exhaustive(run, bound, limit=150, reduce=True)
    assert cache.hits > 10
    assert (in_spent > 0) is always
