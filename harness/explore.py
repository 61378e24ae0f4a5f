"""The explorer: many schedules of one scenario, each fully verified, failures turned into
replay tokens and shrunk, everything persisted as it happens.

Schedule i of an exploration uses seed `seed + i`; a schedule is a pure function of its plan
and index, so the verdicts do not depend on how many processes run them (--jobs)."""

from __future__ import annotations

import itertools
import sys
import time
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from dataclasses import asdict, dataclass, field
from pathlib import Path

from emu.decisions import RandomSource

from .pt.encoder import TraceConfig
from .results_db import ResultsDb
from .run import Outcome, Runner
from .scenario import Scenario
from .scenarios import get
from .shrink import replay_source, shrink
from .strategies import DefaultSource, PctSource
from .token import Token, TokenError, guest_hash

STRATEGIES = ("random", "pct", "exhaustive")


@dataclass(frozen=True)
class Plan:
    """Everything a worker needs to run schedule i; picklable."""

    scenario: str
    variant: str | None = None
    cpus: int | None = None
    strategy: str = "random"
    seed: int = 0
    depth: int = 3  # PCT bug depth d
    steps: int = 0  # PCT: scheduling steps k, estimated from a first run (0: estimate)
    shrink: bool = True
    shrink_budget: int = 80
    preemptions: int = 2  # exhaustive: P
    delays: int = 2  # exhaustive: V
    dpor: bool = False  # exhaustive: partial-order reduction (harness/exhaustive.py)


@dataclass
class ScheduleResult:
    idx: int
    seed: int
    verdict: str
    detail: str
    decisions: int
    token: str | None = None
    shrunk: str | None = None
    shrunk_decisions: int | None = None

    @property
    def failed(self) -> bool:
        return self.verdict != "pass"


@dataclass
class Summary:
    plan: Plan
    exploration: int | None
    results: list[ScheduleResult] = field(default_factory=list)
    seconds: float = 0.0
    skipped: int = 0  # finished in an earlier, resumed run
    bound: float | None = None  # PCT's probability bound per schedule
    exhausted: bool | None = None  # exhaustive: was the bounded space exhausted

    @property
    def failures(self) -> list[ScheduleResult]:
        return sorted((r for r in self.results if r.failed), key=lambda r: r.idx)


_RUNNERS: dict[tuple, Runner] = {}


def runner_for(scenario: str, variant: str | None, cpus: int | None,
               trace: TraceConfig | None = None, event_mode: bool = False) -> Runner:
    """One Runner (machine) per process and configuration, reset between schedules."""
    key = (scenario, variant, cpus, trace, event_mode)
    if key not in _RUNNERS:
        _RUNNERS[key] = Runner(get(scenario), variant, cpus, trace, event_mode=event_mode)
    return _RUNNERS[key]


def estimate_steps(plan: Plan) -> int:
    """PCT's k: the scheduling steps of one default-policy run (as shuttle estimates it)."""
    out = runner_for(plan.scenario, plan.variant, plan.cpus).run(DefaultSource())
    return out.result.steps


def make_token(runner: Runner, out: Outcome, path, seed: int | None) -> str:
    b = runner.built
    return Token(b.scenario.name, b.variant, b.cpus, tuple(path), guest_hash(b.program.code),
                 seed, runner.trace.tsc_period, runner.trace.psb_period,
                 runner.trace.ret_compression, b.config.event_mode).encode()


def explore_exhaustively(plan: Plan, limit: int | None, stop_at_first: bool,
                         progress: Callable[[Summary], None] | None) -> Summary:
    """Every path within P preemptions and V delayed view updates, or with `plan.dpor` one
    per order of dependent steps (harness/exhaustive.py)."""
    from .exhaustive import explore_exhaustive

    runner = runner_for(plan.scenario, plan.variant, plan.cpus, event_mode=True)
    summary = Summary(plan, None)
    start = time.perf_counter()

    def on_result(i: int, out: Outcome) -> None:
        r = ScheduleResult(i, 0, out.verdict.kind, str(out.verdict), len(out.result.path))
        if out.verdict.kind != "pass":
            r.token = make_token(runner, out, out.result.path, None)
        summary.results.append(r)
        summary.seconds = time.perf_counter() - start
        if progress:
            progress(summary)

    res = explore_exhaustive(runner.run, plan.preemptions, plan.delays, limit, stop_at_first,
                             on_result, reduce=plan.dpor)
    summary.exhausted = res.exhausted
    return summary


def run_schedule(plan: Plan, idx: int) -> ScheduleResult:
    return run_one(runner_for(plan.scenario, plan.variant, plan.cpus), plan, idx)


def run_one(runner: Runner, plan: Plan, idx: int) -> ScheduleResult:
    """Schedule `idx` of `plan` on `runner`: verified, and if it fails tokenized and shrunk."""
    seed = plan.seed + idx
    if plan.strategy == "pct":
        source = PctSource(seed, runner.built.cpus, plan.depth, plan.steps)
    else:
        source = RandomSource(seed)
    out = runner.run(source)
    res = ScheduleResult(idx, seed, out.verdict.kind, str(out.verdict), len(out.result.path))
    if out.verdict.kind != "pass":
        res.token = make_token(runner, out, out.result.path, seed)
        if plan.shrink:
            def attempt(src):
                o = runner.run(src)
                return o.verdict.kind, o.result.path
            small = shrink(attempt, list(out.result.path), out.verdict.kind,
                           plan.shrink_budget)
            res.shrunk = make_token(runner, out, small.path, seed)
            res.shrunk_decisions = len(small.path)
    return res


def explore(plan: Plan, schedules: int | None = None, seconds: float | None = None,
            jobs: int = 1, db: Path | str | None = None, resume: bool = False,
            stop_at_first: bool = False,
            progress: Callable[[Summary], None] | None = None) -> Summary:
    if plan.strategy not in STRATEGIES:
        raise ValueError(f"unknown strategy {plan.strategy!r}: use {'|'.join(STRATEGIES)}")
    if plan.strategy == "exhaustive":
        return explore_exhaustively(plan, schedules, stop_at_first, progress)
    if schedules is None and seconds is None:
        raise ValueError("give a number of schedules or a time budget")
    if plan.strategy == "pct" and plan.steps == 0:
        plan = Plan(**{**asdict(plan), "steps": estimate_steps(plan)})
    results_db = ResultsDb(db) if db else None
    exp_id, done = None, {}
    if results_db:
        exp_id, _resumed = results_db.exploration(asdict(plan), resume)
        done = results_db.done(exp_id)
    summary = Summary(plan, exp_id, skipped=len(done))
    if plan.strategy == "pct":
        summary.bound = PctSource.bound(runner_for(plan.scenario, plan.variant,
                                                   plan.cpus).built.cpus, plan.steps, plan.depth)
    for idx, row in sorted(done.items()):
        summary.results.append(ScheduleResult(idx, row[0], row[1], row[2], row[3], row[4],
                                              row[5], row[6]))
    start = time.perf_counter()

    def more(i: int) -> bool:
        if schedules is not None and i >= schedules:
            return False
        if seconds is not None and time.perf_counter() - start >= seconds:
            return False
        return not (stop_at_first and summary.failures)

    def record(r: ScheduleResult) -> None:
        summary.results.append(r)
        if results_db:
            results_db.finished(exp_id, r.idx, r.verdict, r.detail, r.decisions, r.token,
                                r.shrunk, r.shrunk_decisions)
        summary.seconds = time.perf_counter() - start
        if progress:
            progress(summary)

    def started(i: int) -> None:
        if results_db:
            results_db.started(exp_id, i, plan.seed + i)

    indices = (i for i in itertools.count() if i not in done)
    if jobs <= 1:
        for i in indices:
            if not more(i):
                break
            started(i)
            record(run_schedule(plan, i))
    else:
        with ProcessPoolExecutor(jobs) as pool:
            pending = {}
            for i in indices:
                while len(pending) >= 2 * jobs:
                    finished, _ = wait(pending, return_when=FIRST_COMPLETED)
                    for f in finished:
                        pending.pop(f)
                        record(f.result())
                if not more(i):
                    break
                started(i)
                pending[pool.submit(run_schedule, plan, i)] = i
            for f in pending:
                record(f.result())
    summary.results.sort(key=lambda r: r.idx)
    summary.seconds = time.perf_counter() - start
    return summary


def replay(token_text: str, scenario: Scenario | None = None) -> tuple[Token, Outcome]:
    """Run a token's schedule again, exactly (on `scenario` if given, else the shipped one
    of the token's name)."""
    tok = Token.decode(token_text)
    trace = TraceConfig(tsc_period=tok.tsc_period, psb_period=tok.psb_period,
                        ret_compression=tok.ret_compression)
    if scenario is not None:
        if scenario.name != tok.scenario:
            raise TokenError(f"token is for scenario {tok.scenario!r}, not {scenario.name!r}")
        runner = Runner(scenario, tok.variant, tok.cpus, trace, event_mode=tok.event_mode)
    else:
        runner = runner_for(tok.scenario, tok.variant, tok.cpus, trace, tok.event_mode)
    if guest_hash(runner.built.program.code) != tok.guest:
        raise TokenError(f"token recorded against other guest code ({tok.guest}); this build "
                         f"is {guest_hash(runner.built.program.code)}")
    return tok, runner.run(replay_source(list(tok.path)))


def progress_bar(stream=sys.stderr) -> Callable[[Summary], None]:
    def show(s: Summary) -> None:
        n = len(s.results) - s.skipped
        rate = n / s.seconds if s.seconds else 0.0
        stream.write(f"\r  schedules {len(s.results)}  {rate:6.1f}/s  failures "
                     f"{len(s.failures)} ")
        stream.flush()
    return show
