"""Runs that continue from snapshots of earlier runs (emu/snapshot.py) against runs from the
reset state, the reference: whole exhaustive searches, each run's path, records, verdict and
every step's footprint equal; and perturbed restores are caught."""

from __future__ import annotations

import random

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
    reference's, or a run the search refuses (its choices are not those it ran before), or
    whose steps the race finder refuses (they are not those of the run it deviates from)."""
    try:
        return bool(_mismatches("static_key", None, 3, Cost(2, 1, 1), 40, cache))
    except SearchError:
        return True
    except ValueError as e:
        return "is not the prior run's" in str(e)


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
        "cpu.view_takes(cpu.state.view_touched + cc.state.view_touched, coming)",
        "pass"))
    assert _caught(SnapshotCache(every=5))


def test_translations_are_dropped_where_the_coming_text_differs_alone():
    """Cpu.view_takes (the reference engine's, and the fast engine's in quantum mode): a
    range whose bytes the view keeps keeps its translations; one that differs anywhere (here
    past its first byte) loses them, merged ranges as one."""
    import ctypes
    from types import SimpleNamespace

    from emu.cpu import Cpu

    dropped = []
    cpu = SimpleNamespace(view=SimpleNamespace(buf=ctypes.create_string_buffer(b"abcdefgh" * 2)),
                          remove_cache=lambda s, e: dropped.append((s, e)))
    coming = bytearray(cpu.view.buf.raw)
    coming[2] = ord("X")
    Cpu.view_takes(cpu, [(0, 2), (1, 4), (10, 12)], bytes(coming))  # type: ignore[arg-type]
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
    back.extend_copy(r.copy())
    assert back == r and list(back) == list(r)
    assert back.at([1, 0]) == [(2, 0x11, b"\x0f\x0b"), (1, 0x10, b"\x90")] == back[::-1]
    with pytest.raises(ValueError):
        back.extend_copy(r.copy())


@pytest.mark.parametrize("perturb", [None, "no_check", "absolute_code"])
def test_a_copy_since_an_earlier_one_holds_only_the_new_records(monkeypatch, perturb):
    """Retired.copy(since): a segment of the records after `since`, which it shares; the
    chain comes back as the whole log. A record of `since` taken back (`pop`) and another
    retired in its place: a whole copy, not a segment. Perturbed: `since`'s last record not
    checked; the segment's code taken from the start of the log."""
    from emu.retired import Retired

    if perturb is not None:
        old, new = {"no_check": ("since.count > n or", "False and"),
                    "absolute_code": ("[code_lo:]", "[0:]")}[perturb]
        monkeypatch.setattr(Retired, "copy", _perturbed(Retired.copy, old, new))
    r = Retired([(1, 0x10, b"\x90"), (2, 0x11, b"\x0f\x0b")])
    first = r.copy()
    r.append(3, 0x13, b"\xcc")
    r.append(4, 0x14, b"\x48\x89\xc0")
    second = r.copy(first)
    back = Retired()
    back.extend_copy(second)
    ok = [second.parent is first, len(second.ticks) == 2 * 8, back == r]
    r.pop()
    r.pop()
    r.pop()  # record 2 of `first` taken back, another retired instead
    r.append(5, 0x11, b"\x0f\x0b")
    third = r.copy(first)
    again = Retired()
    again.extend_copy(third)
    ok += [third.parent is None, again == r]
    assert all(ok) is (perturb is None)


def _snap(*values: int, kind: object = "kind"):
    from emu.snapshot import Snapshot, packed

    return Snapshot(packed(values), (), 0, 0, None, (b"", b"", b""), (), (), (), (), (),
                    None, kind)


@pytest.mark.parametrize("native", [False, True], ids=["reference", "native"])
def test_the_cache_finds_the_longest_snapshot_within_the_planned_choices(native: bool):
    """best(): the most choices, all of them the first planned; never more than planned; the
    least recently used is dropped first. Through the reference loop and the C pass."""
    module = _machine_module() if native else None
    cache = SnapshotCache(every=1, keep=3, native=module)
    for values in [(0,), (0, 1), (0, 1, 2), (1, 1)]:
        cache.add(_snap(*values))
    assert len(cache) == 3  # (0,) dropped
    assert cache.best((0, 1, 2, 5), "kind").values == (0, 1, 2)
    assert cache.best((0, 1), "kind").values == (0, 1)  # (0, 1, 2) plans past it
    assert cache.best((0, 2), "kind") is None  # (0,) was dropped
    assert cache.best((1, 1, 0), "kind").values == (1, 1)
    cache.add(_snap(2,))  # (0, 1, 2) is now the least recently used
    assert cache.best((0, 1, 2), "kind").values == (0, 1)
    assert cache.best((1, 1, 0), "another kind") is None
    with pytest.raises(ValueError):
        SnapshotCache(every=0)


def _machine_module():
    from emu.engine import native_module

    module = native_module("machine")
    if module is None:
        pytest.skip("the native machine module is not built")
    return module


def _random_cache(rng: random.Random, native) -> SnapshotCache:
    cache = SnapshotCache(every=1, keep=40, native=native)
    for _ in range(60):  # prefixes of a few runs, and their kinds, as a search leaves them
        base = [rng.randrange(3) for _ in range(rng.randrange(12))]
        cache.add(_snap(*base[:rng.randrange(len(base) + 1)], kind=rng.choice("ab")))
    return cache


def test_the_c_pass_over_the_keys_finds_what_the_loop_finds():
    """SnapshotCache.best in C (emu/_native.c: best_key) against its reference loop on random
    caches and plans: the same snapshot each time, hits and the recency order included.
    Perturbed: a C pass that ignores the kind, or leaves a value uncompared, fails."""
    module = _machine_module()
    rng = random.Random(5)
    for _ in range(40):
        seed = rng.randrange(1 << 30)
        fast, slow = _random_cache(random.Random(seed), module), \
            _random_cache(random.Random(seed), None)
        for _ in range(30):
            plan = tuple(rng.randrange(3) for _ in range(rng.randrange(14)))
            kind = rng.choice("ab")
            got, want = fast.best(plan, kind), slow.best(plan, kind)
            assert (got and (got.key, got.source_kind)) == (want and (want.key, want.source_kind))
        assert [k for k in fast._snaps] == [k for k in slow._snaps]
        assert (fast.hits, fast.skipped) == (slow.hits, slow.skipped)
    with pytest.raises(TypeError):
        module.best_key([("a", "not bytes")], b"", "a")


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


def _perturbed(function, old: str, new: str):
    """`function` compiled from its source with `old` (there once) replaced by `new`, in its
    module's namespace."""
    import inspect
    import sys
    import textwrap

    module = sys.modules[function.__module__]
    source = textwrap.dedent(inspect.getsource(function))
    assert source.count(old) == 1
    namespace: dict = {}
    exec(compile(source.replace(old, new), module.__file__, "exec"), vars(module), namespace)
    return namespace[function.__name__]


def _perturbed_restore(old: str, new: str, method: str = "_restore"):
    """Machine._restore (or `method`) with `old` replaced by `new` (`_perturbed`)."""
    from emu.machine import Machine

    return _perturbed(getattr(Machine, method), old, new)


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
        monkeypatch.setattr(ExhaustiveSource, "may_want_snapshot", lambda self: True)
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


@pytest.mark.parametrize("late", [False, True])
def test_a_kept_snapshot_is_the_last_state_before_a_choice_to_deviate_at(monkeypatch, late):
    """Each snapshot a run keeps was taken at most `every` steps before a choice of that run
    which a later run may deviate at (past its prefix, of a kind the bound leaves open), and
    after none since the one before it. Perturbed (`late`): the snapshot taken when a window
    with such a choice ends is kept, as the machine did before (it serves only choices after
    it), and some kept snapshot has no such choice in the steps that follow it."""
    from emu.machine import Machine

    if late:
        monkeypatch.setattr(Machine, "run", _perturbed_restore(
            "if source.wants_snapshot() and pending is not None:",
            "if source.wants_snapshot() and (pending := self._snapshot(decisions, steps)):",
            "run"))
    runner = Runner(SCENARIOS["static_key"], None, 3, event_mode=True, engine=Engine.FAST,
                    decode=False)
    every = 8
    kept: list = []

    class Keeping(SnapshotCache):
        def add(self, snap) -> None:
            kept.append(snap)
            super().add(snap)

    cache = Keeping(every=every, keep=400)
    bad = []

    class Out:
        ok = True

    def run(src):
        before = len(kept)
        runner.machine.run(src, cache=cache)
        ends = [s.end for s in src.steps]
        for snap in kept[before:]:
            lo = ends[snap.steps - 1] if snap.steps else 0
            hi = ends[min(snap.steps + every, len(ends)) - 1]
            if not any(k >= len(src.prefix) and src.choices[k].kind in src._open
                       for k in range(lo, hi)):
                bad.append(snap.steps)
        return Out()

    explore_exhaustive(run, Cost(1, 1, 1), limit=120, reduce=True)
    assert len(kept) > 10
    assert (bad != []) is late


@pytest.mark.parametrize("perturb", [False, True])
def test_a_view_kept_as_its_changed_ranges_is_the_whole_view(monkeypatch, perturb):
    """A snapshot keeps a view as its bytes in CpuState.view_touched (the ranges where it may
    differ from the first text): at every snapshot of a static_key search (pokes, pending
    units, NMIs), those ranges over the first text give the whole view, byte for byte.
    Perturbed: the range that starts last left out, and some view is not given back."""
    from emu.fetch_view import FetchView

    seen: list[tuple[object, bytes]] = []
    saved = FetchView.saved

    def checked(self, touched):
        copy = saved(self, sorted(touched)[:-1] if perturb else touched)
        seen.append((copy, bytes(self.buf)))
        return copy

    monkeypatch.setattr(FetchView, "saved", checked)
    runner = Runner(SCENARIOS["static_key"], None, 3, event_mode=True, engine=Engine.FAST,
                    decode=False)
    first = runner.machine._initial_mem[0]
    cache = SnapshotCache(every=5, keep=400)

    class Out:
        ok = True

    def run(src):
        runner.machine.run(src, cache=cache)
        return Out()

    try:
        explore_exhaustive(run, Cost(1, 1, 1), limit=40, reduce=True)
    except SearchError:  # a restored run that went elsewhere: the search's refusal
        assert perturb
    except ValueError as e:  # or the race finder's
        assert perturb and "is not the prior run's" in str(e)
    assert sum(1 for copy, _ in seen if copy.changed) > 20
    assert any(copy.text(first) != whole for copy, whole in seen) is perturb
