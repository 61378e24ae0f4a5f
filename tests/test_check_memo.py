"""The check memo (harness/check_memo.py) against the runner's plain check: every CPU's part
taken from the memo must give the verdict, decode reports, flows and streams that computing it
gives. Every shipped scenario and variant through a short exhaustive search, each run checked
both ways; the key must change with every field a part reads; a remembered failure stays a
failure; what the memo hands out is the run's own."""

from __future__ import annotations

from array import array
from dataclasses import replace

import pytest

from emu.decisions import RandomSource
from emu.engine import Engine, native_module
from emu.path import Cost
from emu.retired import Retired
from emu.text_poke_record import TextPokeRecord
from emu.verdict import Verdict, VerdictKind
from harness.check_memo import CheckMemo, CpuPart, _order, cpu_key, shared_key, times_key
from harness.explore.exhaustive import explore_exhaustive
from harness.oracles import TornFetch
from harness.run import Outcome, Runner
from harness.scenario.shipped import SCENARIOS
from harness.trace.pt.encoder import TraceConfig
from harness.trace.pt.flow import AsyncEvent
from harness.trace.verify import CpuCheck
from tests.test_engines import CASES

pytestmark = pytest.mark.skipif(native_module("machine") is None,
                                reason="emu._native was not compiled (setup.py)")


def _checked_both_ways(runner: Runner, source) -> tuple[Outcome, Outcome]:
    """One run, checked through the runner's memo and then with none (the reference)."""
    result = runner.machine.run(source, cache=runner.snapshots)
    out = runner.check(result)
    memo, runner.memo = runner.memo, None
    try:
        ref = runner.check(result)
    finally:
        runner.memo = memo
    return out, ref


def _same(out: Outcome, ref: Outcome) -> None:
    assert out.verdict == ref.verdict
    assert out.decode == ref.decode
    assert [r.to_json() for r in out.decode] == [r.to_json() for r in ref.decode]
    assert out.streams == ref.streams
    assert out.flows == ref.flows


@pytest.mark.parametrize(("name", "variant"), CASES, ids=[f"{n}-{v}" for n, v in CASES])
def test_remembered_parts_give_what_computing_them_gives(name: str, variant: str | None):
    runner = Runner(SCENARIOS[name], variant, event_mode=True, engine=Engine.FAST)
    assert runner.memo is not None  # the fast engine's default

    def run(src):
        out, ref = _checked_both_ways(runner, src)
        _same(out, ref)
        return out

    explore_exhaustive(run, Cost(1, 1, 1), limit=10, reduce=True)
    searched = runner.memo.hits
    for seed in (0, 0):  # again: every part remembered
        _same(*_checked_both_ways(runner, RandomSource(seed)))
    assert runner.memo.hits >= searched + runner.built.cpus


def test_a_record_placed_otherwise_among_the_same_instructions_is_another_part():
    """The parts of z5_record_placement (buggy: the record's time is wrong) differ in where
    the text-poke record falls among the same instructions: remembered by their times' order,
    each is served only to a run that places the record alike. Perturbed: a key without the
    order serves run 59 of this search a part of another order (a wrong verdict)."""
    runner = Runner(SCENARIOS["z5_record_placement"], "buggy", event_mode=True,
                    engine=Engine.FAST)

    def run(src):
        out, ref = _checked_both_ways(runner, src)
        _same(out, ref)
        return out

    explore_exhaustive(run, Cost(1, 1, 1), limit=80, reduce=True)
    assert runner.memo.hits > runner.memo.misses


def test_a_remembered_failure_stays_a_failure():
    runner = Runner(SCENARIOS["static_key"], "no_int3", event_mode=True, engine=Engine.FAST)
    seed = next(s for s in range(40) if not runner.run(RandomSource(s)).ok)
    first = runner.run(RandomSource(seed))
    hits = runner.memo.hits
    again = runner.run(RandomSource(seed))
    assert runner.memo.hits == hits + runner.built.cpus  # every part remembered
    assert not again.ok and again.verdict == first.verdict


def test_what_the_memo_hands_out_is_the_runs_own():
    """A reader changing a verdict of its run changes no other run's: neither the one the
    memo was filled from, nor one it was served to."""
    probe = Runner(SCENARIOS["static_key"], "no_int3", event_mode=True, engine=Engine.FAST)
    seed = next(s for s in range(40) if any(r.verdict for r in probe.run(RandomSource(s)).decode))
    runner = Runner(SCENARIOS["static_key"], "no_int3", event_mode=True, engine=Engine.FAST)

    def failing(out: Outcome):
        return next(c for r in out.decode for c in r.cpus if c.verdict is not None)

    filled = runner.run(RandomSource(seed))
    detail = failing(filled).verdict.detail
    failing(filled).verdict.detail = "changed by the first reader"
    served = runner.run(RandomSource(seed))
    assert runner.memo.misses == runner.built.cpus  # the second run was served
    assert failing(served).verdict.detail == detail
    failing(served).verdict.detail = "changed by the second reader"
    assert failing(runner.run(RandomSource(seed))).verdict.detail == detail


def test_the_memo_forgets_the_least_recently_used():
    memo = CheckMemo(most=2)
    runner = Runner(SCENARIOS["static_key"], None, event_mode=True, engine=Engine.FAST)
    runner.memo = memo
    runner.run(RandomSource(0))  # three CPUs' parts: the first one dropped
    assert len(memo) == 2


_RECORD = TextPokeRecord(5, 0, 0x1000, b"\x90", b"\xcc")
_RETIRED = ((1, 0x1000, b"\x90"), (2, 0x1001, b"\xeb\xfe"), (6, 0x1001, b"\xeb\xfe"))


def _shared(start: bytes = b"\x90" * 8, end: bytes = b"\xcc" * 8,
            records: tuple[TextPokeRecord, ...] = (_RECORD,)) -> bytes:
    return shared_key(start, end, list(records))


def _key(shift: int = 0, **change) -> bytes:
    """A part's key; `shift`: every time later by that many ticks (the order kept)."""
    records = change.pop("records", (_RECORD,))
    args = {"cpu": 1, "retired": Retired([(t + shift, ip, c) for t, ip, c in _RETIRED]),
            "events": [AsyncEvent(3 + shift, 0x1001, 0x1001, 0x2000)],
            "faulted": [(4 + shift, 0x1003, b"\x0f\x0b")], "final_rip": 0x1001,
            "shared": _shared(records=records), "record_ticks": [r.tick + shift for r in records]}
    args.update(change)
    return cpu_key(**args)


def test_the_key_changes_with_every_field_a_part_reads():
    base = _key()
    assert _key() == base  # made again from equal inputs: the same key
    rec = _RECORD
    changed = {
        "cpu": _key(cpu=2),
        "final rip": _key(final_rip=0x1000),
        "a tick past an event": _key(retired=Retired([(1, 0x1000, b"\x90"),
                                                      (3, 0x1001, b"\xeb\xfe"),
                                                      (6, 0x1001, b"\xeb\xfe")])),
        "an ip": _key(retired=Retired([(1, 0x1000, b"\x90"), (2, 0x1002, b"\xeb\xfe"),
                                       (6, 0x1001, b"\xeb\xfe")])),
        "a fetched byte": _key(retired=Retired([(1, 0x1000, b"\x90"),
                                                (2, 0x1001, b"\xeb\xff"),
                                                (6, 0x1001, b"\xeb\xfe")])),
        "where a record's bytes end": _key(retired=Retired([(1, 0x1000, b"\x90\xeb"),
                                                            (2, 0x1001, b"\xfe"),
                                                            (6, 0x1001, b"\xeb\xfe")])),
        "an event": _key(events=[AsyncEvent(3, 0x1001, 0x1001, 0x2001)]),
        "an event before an instruction": _key(events=[AsyncEvent(1, 0x1001, 0x1001, 0x2000)]),
        "no event": _key(events=[]),
        "a faulted fetch": _key(faulted=[(4, 0x1003, b"\x0f\x0c")]),
        "a faulted fetch after the last instruction": _key(faulted=[(7, 0x1003, b"\x0f\x0b")]),
        "the start text": _key(shared=_shared(start=b"\x90" * 7 + b"\x91")),
        "the end text": _key(shared=_shared(end=b"\xcc" * 7 + b"\x90")),
        "a record after the last instruction": _key(records=(replace(rec, tick=7),)),
        "a record at an instruction": _key(records=(replace(rec, tick=6),)),
        "a record before the event": _key(records=(replace(rec, tick=2),)),
        "a record's CPU": _key(records=(replace(rec, cpu=1),)),
        "a record's address": _key(records=(replace(rec, addr=0x1001),)),
        "a record's old bytes": _key(records=(replace(rec, old=b"\x90\x90"),)),
        "a record's new bytes": _key(records=(replace(rec, new=b"\xcd"),)),
        "no record": _key(records=()),
        "time 0 at an instruction": _key(shift=-1),
    }
    assert [name for name, key in changed.items() if key == base] == []
    assert len(set(changed.values())) == len(changed)


def test_the_key_of_a_part_is_the_order_of_its_times_not_the_times():
    """Every time later by as much, or only those between two others moved: the same key
    (the part compares times alone); its times_key tells them apart. 0 is one of the times
    (the first PSB+'s)."""
    base, times = _key(), times_key(Retired(list(_RETIRED)), [], [], [5])
    assert _key(shift=7) == base == _key(shift=1)
    moved = Retired([(1, 0x1000, b"\x90"), (2, 0x1001, b"\xeb\xfe"), (9, 0x1001, b"\xeb\xfe")])
    assert _key(retired=moved) == base
    assert times_key(moved, [], [], [5]) != times
    assert times_key(Retired(list(_RETIRED)), [], [], [6]) != times


def test_the_order_in_c_is_the_reference_order():
    """harness/trace/pt/_native.c's `order` against check_memo._order, on random ticks and
    times (ties with the ticks, repeats, none). Perturbed: a time moved past a tick, or a
    tick moved past a time, is another order."""
    import random

    native = native_module("trace")
    rng = random.Random(15)
    for _ in range(3000):
        own = array("Q", sorted(rng.sample(range(200), rng.randrange(30))))
        times = [rng.randrange(210) for _ in range(rng.randrange(12))]
        times += rng.sample(list(own), min(3, len(own)))
        assert native.order(own, array("Q", times)) == _order(own, times).tobytes()
    own, times = array("Q", [1, 2, 6]), [0, 5, 3, 4]
    assert native.order(own, array("Q", times)) != native.order(own, array("Q", [0, 6, 3, 4]))
    assert native.order(own, array("Q", times)) != \
        native.order(array("Q", [1, 4, 6]), array("Q", times))


def test_a_part_that_found_something_is_remembered_with_its_times():
    """Its report names times (a record's, a torn instruction's tick): a part with the same
    order of other times is computed again; one that found nothing is served. At a TSC
    period above 1 (the encoder subtracts times) every part is looked up with its times."""
    found = CpuPart(None, CpuCheck(0, 3, Verdict(VerdictKind.DECODE_DIVERGENCE, "at time 5")),
                    None)
    torn = CpuPart(TornFetch(7, 0, 0x1000, b"\x0f\x0b", "jl0", 0x1000), CpuCheck(0, 3, None),
                   CpuCheck(0, 3, None))
    clean = CpuPart(None, CpuCheck(0, 3, None), None)
    memo = CheckMemo()
    memo.put(b"k1", lambda: b"t1", found)
    memo.put(b"k2", lambda: b"t1", clean)
    memo.put(b"k3", lambda: b"t1", torn)
    assert memo.get(b"k1", lambda: b"t2") is None and memo.get(b"k3", lambda: b"t2") is None
    assert memo.get(b"k1", lambda: b"t1") == found and memo.get(b"k3", lambda: b"t1") == torn
    assert memo.get(b"k2", lambda: b"t2") == clean
    timed = CheckMemo(by_order=False)
    timed.put(b"k2", lambda: b"t1", clean)
    assert timed.get(b"k2", lambda: b"t2") is None
    assert timed.get(b"k2", lambda: b"t1") == clean
    assert Runner(SCENARIOS["static_key"], None, trace=TraceConfig(tsc_period=2),
                  event_mode=True, engine=Engine.FAST).memo.by_order is False


def test_the_keys_fields_do_not_run_into_each_other():
    """A byte moved from one field to the next is another key (each field has its length)."""
    a = shared_key(b"\x90\x90", b"\xcc", [])
    b = shared_key(b"\x90", b"\x90\xcc", [])
    assert a != b


@pytest.mark.parametrize("flag", [True, False])
def test_explore_no_memo_checks_every_schedule_in_full(monkeypatch, flag):
    """`explore --no-memo`: the plan says so, and its runner has no memo (every check is the
    plain one); the same exhaustive search finds the same schedules and verdicts either way.
    Perturbed (`flag` False): without the flag the runner has its memo, which some part of
    the search hits."""
    from harness import cli
    from harness.explore import explore as explore_mod
    from harness.explore.schedule import plan_runner

    plans = []

    def recording(plan, *args, **kwargs):
        plans.append(plan)
        return real(plan, *args, **kwargs)

    real = explore_mod.explore
    monkeypatch.setattr(explore_mod, "explore", recording)
    argv = ["explore", "z4_bytewise", "--variant", "buggy", "--strategy", "exhaustive",
            "--preemptions", "1", "--delays", "1", "--interrupts", "0", "--dpor",
            "--no-shrink", "--schedules", "40", "--json"]
    assert cli.main(argv + (["--no-memo"] if flag else [])) == 1  # the bytewise race
    runner = plan_runner(plans[0], event_mode=True)
    assert plans[0].memo is not flag and (runner.memo is None) is flag
    if not flag:
        assert runner.memo.hits > 0
        return
    other = real(replace(plans[0], memo=True), 40)
    mine = real(plans[0], 40)
    assert [(r.path, r.verdict, r.detail) for r in mine.results] == \
        [(r.path, r.verdict, r.detail) for r in other.results]


def test_a_search_saved_with_the_memo_resumes_without_it(tmp_path, monkeypatch):
    """--no-memo changes how checks are made, not what they find: an exploration saved in
    --db with the memo resumes with --no-memo (and one saved before the option existed,
    whose parameters have no `memo`, resumes too). Perturbed: the memo counted in the saved
    parameters, and the resume is refused."""
    from dataclasses import asdict

    from harness.explore import explore as explore_mod
    from harness.explore.results_db import ResultsDbError
    from harness.explore.schedule import Plan

    plan = Plan("z4_bytewise", "fixed", strategy="exhaustive", preemptions=1, delays=1,
                interrupts=0, dpor=True, shrink=False)
    db = tmp_path / "x.db"
    first = explore_mod.explore(plan, 12, db=db)
    again = explore_mod.explore(replace(plan, memo=False), 20, db=db, resume=True)
    assert again.skipped == len(first.results) == 12 and len(again.results) == 20
    monkeypatch.setattr(explore_mod, "identity_of", asdict)
    with pytest.raises(ResultsDbError, match="memo"):
        explore_mod.explore(replace(plan, memo=False), 30, db=db, resume=True)
