"""Issue 14, part 1: what "space exhausted, no failure" claims must hold.

- A race through memory the old footprints did not see (another CPU's stack) is found by the
  exhaustive search with and without DPOR at the same bounds; without the stack location in
  the footprints, DPOR exhausts its space and misses it (the check can fail).
- On small programs, the verdicts (litmus outcomes) DPOR finds equal those the naive search
  finds at the same bounds.
- Spontaneous NMIs are choices of the exhaustive search, with their own bound.
"""

from __future__ import annotations

import pytest

from emu import layout
from emu.path import Cost, Kind
from harness import litmus
from harness.explore.exhaustive import explore_exhaustive
from harness.run import Runner
from harness.scenario.op import Raw
from harness.scenario.scenario import Scenario
from harness.scenario.site import ObserverCode

# A slot deep in CPU 0's stack (the patcher's), far below anything its calls push.
SLOT = layout.STACK_BASE + 0x4000 - 0x800
PEEK = f"""    mov rax, {SLOT:#x}
    cmp qword ptr [rax], 1
    jne peek_ok
    mov edi, 0x51
    xor esi, esi
    mov eax, HC_ASSERT
    out HC_PORT, eax
peek_ok:
"""
# The patcher sets the slot and clears it again, each in a step of its own: a visible write
# ends each (a scheduling point that is no yield, so the simplest schedule keeps running the
# patcher). Only the stack slot links the middle step to the observer's read.
WINDOW = f"""    mov qword ptr [V_CSD], 0
    mov rax, {SLOT:#x}
    mov qword ptr [rax], 1
    mov qword ptr [V_CSD], 0
    mov qword ptr [rax], 0
    mov qword ptr [V_CSD], 0
"""


STACK_RACE = Scenario("stack_race", "an observer reads a word of the patcher's stack",
                      sites=[ObserverCode("peek", PEEK)], ops=[Raw(WINDOW)], cpus=2, initial_wait=1)


def _verdicts(runner: Runner, reduce: bool, bound: Cost, limit: int = 3000
              ) -> tuple[set[str], bool]:
    seen: set[str] = set()

    def run(src):
        out = runner.run(src)
        seen.add(str(out.verdict.kind))
        return out

    res = explore_exhaustive(run, bound, limit, reduce=reduce)
    return seen, res.exhausted


def test_a_race_through_another_cpus_stack_is_found_with_and_without_dpor():
    runner = Runner(STACK_RACE, cpus=2, decode=False, event_mode=True)
    bound = Cost(preemptions=1, delays=0, interrupts=0)
    naive, naive_done = _verdicts(runner, False, bound)
    reduced, reduced_done = _verdicts(runner, True, bound)
    assert naive_done and reduced_done
    assert "guest_assert" in naive and naive == reduced


def test_without_the_stack_location_dpor_misses_it(monkeypatch):
    """The premise of the test above: the old footprints (no stack location) make DPOR
    report the space exhausted with no failure."""
    monkeypatch.setattr("emu.cpu.Cpu.track_foreign_stacks", lambda self, stacks: None)
    monkeypatch.setattr("emu.native_cpu.NativeCpu.track_foreign_stacks",  # the fast engine's
                        lambda self, stacks: None)
    runner = Runner(STACK_RACE, cpus=2, decode=False, event_mode=True)
    reduced, done = _verdicts(runner, True, Cost(1, 0, 0))
    assert done and reduced == {"pass"}


@pytest.mark.parametrize("lit", litmus.CATALOGUE, ids=[t.name for t in litmus.CATALOGUE])
def test_dpor_finds_the_litmus_outcomes_the_naive_search_finds(lit):
    naive = litmus.run(lit, preemptions=1, delays=2, interrupts=1)
    reduced = litmus.run(lit, preemptions=1, delays=2, interrupts=1, reduce=True)
    assert naive.exhausted and reduced.exhausted
    assert reduced.observed == naive.observed
    assert reduced.schedules <= naive.schedules


@pytest.mark.parametrize("name,variant", [("z4_bytewise", "buggy"), ("z4_bytewise", "fixed"),
                                          ("z6_unsorted_batch", "buggy")])
def test_dpor_finds_the_verdicts_the_naive_search_finds(name, variant):
    from harness.scenario.shipped import get

    runner = Runner(get(name), variant, 2, decode=False, event_mode=True)
    bound = Cost(preemptions=1, delays=0, interrupts=0)
    naive, naive_done = _verdicts(runner, False, bound)
    reduced, reduced_done = _verdicts(runner, True, bound)
    assert naive_done and reduced_done and naive == reduced


def test_the_exhaustive_search_raises_nmis_within_its_interrupt_bound():
    """Event mode offers a spontaneous NMI before instructions of a CPU that has some left;
    with I=0 none is raised, with I=1 some path raises exactly one."""
    from harness.scenario.shipped import get

    runner = Runner(get("z1_optprobe_shadow"), "fixed", 3, decode=False, event_mode=True)
    raised: list[int] = []

    def run(src):
        out = runner.run(src)
        raised.append(sum(c.kind is Kind.NMI_RAISE and c.value == 1 for c in out.result.path))
        return out

    explore_exhaustive(run, Cost(0, 0, 0))
    assert raised == [0]
    raised.clear()
    explore_exhaustive(run, Cost(0, 0, 1), limit=40)
    assert max(raised) == 1 and raised[0] == 0


def test_a_shrunk_exhaustive_witness_stays_within_its_bounds():
    """The shrinker continues a candidate with the simplest values and refuses one whose run
    spends more than the bounds the failure was found under (it used to continue with a
    default policy that preempted at every step and took stale text at every FLUSH)."""
    from emu.path import path_cost
    from harness.explore.explore import explore, replay
    from harness.explore.schedule import Plan

    plan = Plan("z4_bytewise", "buggy", strategy="exhaustive", preemptions=1, delays=1,
                interrupts=0, shrink_budget=30)
    found = explore(plan, schedules=400, stop_at_first=True)
    (failure,) = found.failures
    for token in (failure.token, failure.shrunk):
        _tok, out = replay(token)
        assert out.verdict.kind == failure.verdict
        assert path_cost(out.result.path).within(plan.bound), path_cost(out.result.path)
    assert failure.shrunk_deviations <= failure.deviations


def test_a_hostile_continuation_does_not_leak_into_a_shrunk_witness(monkeypatch):
    """With the old continuation (another CPU at every CPU choice past the candidate), the
    shrunk witness still spends no more than the bounds it was found under."""
    from emu.path import Kind as K
    from emu.path import path_cost, simplest
    from harness.explore import shrink as shrink_mod
    from harness.explore.explore import explore, replay
    from harness.explore.schedule import Plan

    def rotating(self, request, position):
        if position >= len(self.candidate) and request.kind is K.CPU:
            return (simplest(request) + 1) % request.arity
        return original(self, request, position)

    original = shrink_mod.ShrinkSource.pick
    monkeypatch.setattr(shrink_mod.ShrinkSource, "pick", rotating)
    plan = Plan("z4_bytewise", "buggy", strategy="exhaustive", preemptions=1, delays=0,
                interrupts=0, shrink_budget=12)
    (failure,) = explore(plan, schedules=400, stop_at_first=True).failures
    _tok, out = replay(failure.shrunk)
    assert path_cost(out.result.path).within(plan.bound)
