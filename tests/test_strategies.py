"""Issue 17, items 8 and 9: shrinking is bounded by the failure's own length (a candidate
that hangs is cut, and is no hang), `--stop-at-first`, PCT as the literature has it, and the
`portfolio` strategy that cannot do worse than random."""

from __future__ import annotations

from dataclasses import replace

from emu.config import RunBudget
from emu.decisions import DecisionSource, RandomSource
from emu.path import Kind, Request, simplest
from harness.explore import explore as ex
from harness.explore import schedule as sch
from harness.explore.shrink import run_budget
from harness.run import Runner
from harness.scenario.op import Raw
from harness.scenario.scenario import Scenario
from harness.scenario.site import ObserverCode

# The patcher opens a one-instruction window (the flag set, then cleared), asks the observer
# for an acknowledgement and waits for it in a loop WITHOUT a PAUSE: no yield, so the simplest
# schedule keeps running the patcher, which spins to the machine's whole instruction budget.
# Random schedules switch CPUs and finish; a few preempt the patcher inside the window.
SPIN_PATCH = """    mov qword ptr [V_SCRATCH], 1
    mov qword ptr [V_SCRATCH], 0
    mov qword ptr [V_SCRATCH + 8], 1
spin_ack:
    cmp qword ptr [V_SCRATCH + 16], 1
    jne spin_ack
"""
LOOK = """    cmp qword ptr [V_SCRATCH], 1
    jne look_ok
    mov edi, 0x51
    xor esi, esi
    mov eax, HC_ASSERT
    out HC_PORT, eax
look_ok:
    cmp qword ptr [V_SCRATCH + 8], 1
    jne look_done
    mov qword ptr [V_SCRATCH + 16], 1
look_done:
"""


SPIN_ACK = Scenario("spin_ack", "a race whose shrink candidates spin without a yield",
                    sites=[ObserverCode("look", LOOK)], ops=[Raw(SPIN_PATCH)], cpus=2)
FAILING_SEED = 19  # RandomSource(19) preempts the patcher inside the window: guest_assert


class PickLast(DecisionSource):
    """Always the highest-numbered runnable CPU: the observer, never the patcher it waits on."""

    def pick(self, request: Request, position: int) -> int:
        return request.arity - 1 if request.kind is Kind.CPU else simplest(request)


def test_a_run_budget_cuts_a_run_and_says_so():
    runner = Runner(SPIN_ACK, cpus=2, decode=False)
    res = runner.machine.run(PickLast(), RunBudget(3000))
    assert res.cut and 3000 < res.ticks <= 3000 + runner.built.config.max_quantum
    assert res.verdict.event == "run_budget"
    whole = runner.machine.run(PickLast())  # the same run without one: the machine's budget
    assert not whole.cut and whole.verdict.event == "budget"


def test_a_cut_shrink_candidate_is_no_verdict_not_a_hang():
    kind, path = sch.shrink_attempt(Runner(SPIN_ACK, cpus=2), PickLast(), RunBudget(3000))
    assert kind is None and path


def test_shrinking_is_bounded_by_the_failures_own_length():
    """Most candidates of this failure hang (the simplest schedule spins): each is cut at
    twice the failure's length, and the shrunk path still fails. Before, each ran the
    machine's 400k instructions a CPU and was verified (about 30 s a candidate)."""
    runner = Runner(SPIN_ACK, cpus=2)
    out = runner.run(RandomSource(FAILING_SEED))
    assert out.verdict.kind == "guest_assert"
    assert run_budget(out.result.ticks).ticks < 10 * out.result.ticks + 5000
    seen: list[tuple[int, bool]] = []
    run = runner.machine.run

    def spy(source, budget=None):
        res = run(source, budget)
        seen.append((res.ticks, res.cut))
        return res

    runner.machine.run = spy  # type: ignore[method-assign]
    res = sch.judge(runner, sch.Plan("spin_ack", cpus=2), 0, FAILING_SEED, out)
    runner.machine.run = run  # type: ignore[method-assign]
    assert max(t for t, _c in seen) < 10 * out.result.ticks + 5000  # not 400k a CPU
    assert sum(cut for _t, cut in seen) >= 5  # the premise: candidates did hang
    assert res.shrunk and res.shrunk_deviations is not None
    assert res.shrunk_deviations < res.deviations
    tok, again = ex.replay(res.shrunk, SPIN_ACK)
    assert again.verdict.kind == "guest_assert"


def test_stop_at_first_on_the_command_line():
    import json
    import subprocess
    import sys
    out = subprocess.run([sys.executable, "-m", "harness", "explore", "z3_call_emulation",
                          "--variant", "buggy", "--schedules", "30", "--stop-at-first",
                          "--json"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 1, out.stderr
    doc = json.loads(out.stdout)
    assert doc["schedules"] == 1 and doc["failed"][0]["shrunk_token"]


def test_pct_k_is_the_real_decisions_of_a_pct_run():
    """k is what a PCT run decides: the simplest run (the old estimate) takes the longest
    quantum every step and has about half as many, so every change point fell in the first
    half of a run."""
    import statistics

    from harness.explore.strategies import PctSource, is_decision
    runner = sch.runner_for("z4_bytewise", "buggy", None)
    real = [sum(is_decision(c.request) for c in runner.machine.run(
        PctSource(seed, runner.built.cpus, 3, 300)).path if c.request is not None)
        for seed in range(10, 16)]
    assert sch.estimate_steps(sch.Plan("z4_bytewise", "buggy", strategy="pct")) >= \
        statistics.median(real)


def test_pct_change_points_fall_between_real_decisions():
    """Change points in [1, k-1] (a change after the last decision changes nothing), and a
    CPU choice with one runnable CPU is no decision: not counted, no change there."""
    from emu.path import CpuContext
    from harness.explore.strategies import PctSource
    for seed in range(200):
        src = PctSource(seed, 2, 3, 4)
        assert len(src.changes) == 2 and set(src.changes) <= {1, 2, 3}
    src = PctSource(0, 2, 2, 10)
    only = Request(Kind.CPU, 1, context=CpuContext((1,), 0, frozenset()))
    both = Request(Kind.CPU, 2, context=CpuContext((0, 1), 0, frozenset()))
    for _ in range(20):
        src.pick(only, 0)
    assert src.decisions == 0
    src.pick(both, 0)
    assert src.decisions == 1


def test_portfolio_finds_a_race_pct_alone_misses_on_a_small_budget():
    """z5's buggy_late: random finds it in most schedules, PCT (depth 3, k estimated) in few;
    the portfolio's schedule 0 is random's schedule 0 and finds it."""
    plan = sch.Plan("z5_record_placement", "buggy_late", strategy="pct", shrink=False)
    assert not ex.explore(plan, schedules=6).failures
    portfolio = ex.explore(replace(plan, strategy="portfolio"), schedules=2)
    assert [r.idx for r in portfolio.failures] == [0]
    assert portfolio.bound is not None  # its PCT half's bound is stated


def test_portfolio_runs_randoms_schedules_at_even_indices(dask_client):
    plan = sch.Plan("z4_bytewise", "buggy", strategy="random", shrink=False)
    rnd = ex.explore(plan, schedules=3)
    mix = ex.explore(replace(plan, strategy="portfolio"), schedules=6, client=dask_client)
    assert [(r.seed, r.verdict, r.detail, r.decisions, r.token) for r in rnd.results] == \
        [(r.seed, r.verdict, r.detail, r.decisions, r.token) for r in mix.results
         if r.idx % 2 == 0]



def test_portfolio_is_the_default_of_explore_zoo_and_the_plugin():
    import inspect

    from harness import cli, pytest_plugin, zoo
    args = cli.build_parser().parse_args(["explore", "static_key"])
    assert args.strategy == "portfolio"
    assert cli.build_parser().parse_args(["zoo"]).strategy == "portfolio"
    assert inspect.signature(zoo.zoo).parameters["strategy"].default == "portfolio"
    fixture = pytest_plugin.textpoke.__wrapped__  # the fixture's own function

    class Config:
        def getoption(self, name):
            return 0 if name == "--textpoke-seed" else None

    class Request:
        config = Config()

        class node:
            @staticmethod
            def get_closest_marker(name):
                return None

    assert fixture(Request()).strategy == "portfolio"
