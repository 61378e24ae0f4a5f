"""The explorer: many schedules of one scenario, each fully verified, failures turned into
replay tokens and shrunk, everything persisted as it happens.

Random and PCT: schedule i of an exploration uses seed `seed + i` (portfolio: random and PCT
alternate, the pair 2j, 2j+1 with seed `seed + j`, strategies.source_for); a schedule is a pure
function of its plan and index, so the verdicts do not depend on how many processes run them
(--jobs). Exhaustive: schedule i is the i-th path of the depth-first search (workers only
verify); its frontier is saved with each result, so --resume continues it in the same order."""

from __future__ import annotations

import itertools
import json
import multiprocessing
import os
import pickle
import signal
import sys
import time
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from emu.config import RunBudget
from emu.decisions import DecisionSource, ReplaySource
from emu.engine import Engine
from emu.held_sigint import HeldSigint
from emu.path import Choice, Cost, deviations
from emu.verdict import VerdictKind
from harness.errors import BadInput
from harness.run import Outcome, Runner
from harness.scenario.load import Origin, ScenarioRef, resolve
from harness.scenario.scenario import Scenario
from harness.trace.pt.encoder import TraceConfig

from .exhaustive import Search
from .results_db import ResultsDb, ResultsDbError
from .shrink import run_budget, shrink
from .strategies import (
    STRATEGIES,
    PctSource,
    is_decision,
    schedule_seed,
    source_for,
)
from .token import Token, TokenError, fingerprint


@dataclass(frozen=True)
class Plan:
    """Everything a worker needs to run schedule i; picklable."""

    scenario: str
    variant: str | None = None
    cpus: int | None = None
    strategy: str = "random"  # the front-ends' default is DEFAULT_STRATEGY (portfolio)
    seed: int = 0
    depth: int = 3  # PCT bug depth d
    steps: int = 0  # PCT: real scheduling decisions k, estimated from PCT runs (0: estimate)
    shrink: bool = True
    shrink_budget: int = 80
    preemptions: int = 2  # exhaustive: P
    delays: int = 2  # exhaustive: V
    dpor: bool = False  # exhaustive: partial-order reduction (harness/explore/exhaustive.py)
    interrupts: int = 1  # exhaustive: I (NMIs raised, interrupts left pending)
    origin: Origin | None = None  # a user's scenario: its file or module (None: shipped)
    engine: Engine | None = None  # None: the fast engine where its native code is installed

    @property
    def bound(self) -> Cost:
        return Cost(self.preemptions, self.delays, self.interrupts)


@dataclass
class ScheduleResult:
    idx: int
    seed: int
    verdict: str
    detail: str
    decisions: int
    token: str | None = None
    shrunk: str | None = None
    shrunk_deviations: int | None = None  # the shrunk path's deviations from the simplest
    deviations: int | None = None  # the failing path's (emu/path.deviations)

    @property
    def failed(self) -> bool:
        return self.verdict != VerdictKind.PASS


@dataclass
class Summary:
    plan: Plan
    exploration: int | None
    results: list[ScheduleResult] = field(default_factory=list)
    seconds: float = 0.0
    skipped: int = 0  # finished in an earlier, resumed run
    bound: float | None = None  # PCT's probability bound per schedule
    exhausted: bool | None = None  # exhaustive: was the bounded space exhausted
    interrupted: bool = False  # stopped by Ctrl-C (SIGINT): what was recorded stands
    first_failure_seconds: float | None = None  # when this session recorded its 1st failure

    @property
    def failures(self) -> list[ScheduleResult]:
        return sorted((r for r in self.results if r.failed), key=lambda r: r.idx)


PR_SET_PDEATHSIG = 1  # include/uapi/linux/prctl.h


def _worker_init(parent: int) -> None:
    """A worker leaves Ctrl-C to its parent (a terminal sends SIGINT to the whole process
    group) and dies with it: however the parent ends (SIGKILL included), no worker is left
    running. Linux: prctl(PR_SET_PDEATHSIG, SIGKILL) (kernel/sys.c), then getppid() to close
    the race of a parent that died before the prctl took effect."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if sys.platform.startswith("linux"):
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), "prctl(PR_SET_PDEATHSIG)")
    if os.getppid() != parent:  # the parent is already gone: nothing to work for
        os._exit(1)


@contextmanager
def workers(jobs: int) -> Iterator[ProcessPoolExecutor]:
    """Worker processes that leave Ctrl-C to this one and die with it (`_worker_init`): on
    Ctrl-C, work not started is dropped and only what runs is waited for."""
    # fork: a worker is this process's child (what PR_SET_PDEATHSIG and getppid refer to),
    # not a fork server's, whatever the platform's default start method
    context = multiprocessing.get_context("fork") if sys.platform.startswith("linux") else None
    pool = ProcessPoolExecutor(jobs, mp_context=context, initializer=_worker_init,
                               initargs=(os.getpid(),))
    try:
        yield pool
    except KeyboardInterrupt:
        pool.shutdown(wait=True, cancel_futures=True)
        raise
    finally:
        pool.shutdown(wait=True)


_RUNNERS: dict[tuple, Runner] = {}


def runner_for(scenario: str, variant: str | None, cpus: int | None,
               trace: TraceConfig | None = None, event_mode: bool = False,
               origin: Origin | None = None, engine: Engine | None = None) -> Runner:
    """One Runner (machine) per process and configuration, reset between schedules; a user's
    scenario is loaded from its `origin` (so a --jobs worker loads the same one)."""
    key = (scenario, variant, cpus, trace, event_mode, origin, engine)
    if key not in _RUNNERS:
        _RUNNERS[key] = Runner(resolve(ScenarioRef(scenario, origin)), variant, cpus, trace,
                               event_mode=event_mode, engine=engine)
    return _RUNNERS[key]


def plan_runner(plan: Plan, event_mode: bool = False) -> Runner:
    """This process's runner for `plan`'s scenario, variant and CPUs."""
    return runner_for(plan.scenario, plan.variant, plan.cpus, event_mode=event_mode,
                      origin=plan.origin, engine=plan.engine)


PCT_ESTIMATE_RUNS = 3


def pct_steps(runner: Runner, seed: int) -> int:
    """PCT's k on `runner`: the most real decisions (`is_decision`) of a few PCT runs without
    change points, seeds `seed`, `seed + 1`, ... Shuttle estimates k from a first run and
    raises it when a later one is longer; a fixed k, from the plan alone, keeps every
    schedule a function of its index. The simplest run (what this counted before) takes
    the longest quantum at every step and counted the choices with one CPU runnable: about
    half a PCT run's real decisions, so change points fell only in its first half."""
    ncpus = runner.built.cpus
    return max(sum(is_decision(c.request) for c in runner.machine.run(
        PctSource(seed + i, ncpus, 1, 1)).path if c.request is not None)
        for i in range(PCT_ESTIMATE_RUNS))


def estimate_steps(plan: Plan) -> int:
    """PCT's k for `plan` (`pct_steps`)."""
    return pct_steps(plan_runner(plan), plan.seed)


def make_token(runner: Runner, path, seed: int | None, origin: Origin | None = None) -> str:
    b = runner.built
    return Token(b.scenario.name, b.variant, b.cpus, tuple(path),
                 fingerprint(b, runner.trace), seed, runner.trace.tsc_period,
                 runner.trace.psb_period, runner.trace.ret_compression,
                 b.config.event_mode, origin).encode()


def run_schedule(plan: Plan, idx: int) -> ScheduleResult:
    return run_one(plan_runner(plan), plan, idx)


def run_one(runner: Runner, plan: Plan, idx: int) -> ScheduleResult:
    """Schedule `idx` of `plan` on `runner`: verified, and if it fails tokenized and shrunk."""
    seed = schedule_seed(plan.strategy, plan.seed, idx)
    source = source_for(plan.strategy, seed, idx, runner.built.cpus, plan.depth, plan.steps)
    return judge(runner, plan, idx, seed, runner.run(source))


def judge(runner: Runner, plan: Plan, idx: int, seed: int | None, out: Outcome) -> ScheduleResult:
    """A verified run's result; if it failed, its replay token and (unless the plan says not
    to) the token of its shrunk path."""
    res = ScheduleResult(idx, seed or 0, out.verdict.kind, str(out.verdict),
                         len(out.result.path))
    if not out.verdict.ok:
        res.token = make_token(runner, out.result.path, seed, plan.origin)
        res.deviations = deviations(out.result.path)
        if plan.shrink:
            limit = run_budget(out.result.ticks)

            def attempt(src: DecisionSource) -> tuple[str | None, list[Choice]]:
                return shrink_attempt(runner, src, limit)
            # an exhaustive witness stays within the bounds it was found under
            bound = plan.bound if runner.built.config.event_mode else None
            small = shrink(attempt, list(out.result.path), out.verdict.kind,
                           plan.shrink_budget, bound)
            res.shrunk = make_token(runner, small.path, seed, plan.origin)
            res.shrunk_deviations = deviations(small.path)
    return res


def shrink_attempt(runner: Runner, source: DecisionSource,
                   limit: RunBudget) -> tuple[str | None, list[Choice]]:
    """One shrink candidate: its verdict kind and path, or None for the kind when it ran past
    `limit` (not verified: a cut run reproduces nothing, and is not a hang)."""
    result = runner.machine.run(source, limit)
    if result.cut:
        return None, result.path
    return runner.check(result).verdict.kind, result.path


def explore(plan: Plan, schedules: int | None = None, seconds: float | None = None,
            jobs: int = 1, db: Path | str | None = None, resume: bool = False,
            stop_at_first: bool = False,
            progress: Callable[[Summary], None] | None = None,
            interruptible: bool = False) -> Summary:
    """Run and record the schedules of `plan`. With `interruptible` (the command line),
    Ctrl-C ends the exploration with what was recorded (`Summary.interrupted`); otherwise it
    propagates, as a caller such as pytest expects."""
    if plan.strategy not in STRATEGIES:
        raise BadInput(f"unknown strategy {plan.strategy!r}: use {'|'.join(STRATEGIES)}")
    if schedules is None and seconds is None and plan.strategy != "exhaustive":
        raise BadInput("give a number of schedules or a time budget")
    if schedules is not None and schedules < 1 or seconds is not None and not seconds > 0:
        raise BadInput(f"nothing to explore: {schedules} schedules, {seconds} seconds")
    if jobs < 1:
        raise BadInput(f"--jobs {jobs}: at least one process runs the schedules")
    if resume and not db:
        raise BadInput("--resume needs --db: the file the exploration to continue is in")
    results_db = ResultsDb(db) if db else None  # a bad file is refused before any work
    if results_db:
        results_db.check_seeds(plan.seed, schedules)
    if plan.strategy in ("pct", "portfolio") and plan.steps == 0:
        plan = replace(plan, steps=estimate_steps(plan))
    exp_id, done = None, {}
    if results_db:
        exp_id, _resumed = results_db.exploration(asdict(plan), resume)
        done = results_db.done(exp_id)
        if plan.strategy == "exhaustive":
            _check_frontier(results_db.frontier(exp_id), plan)
    summary = Summary(plan, exp_id, skipped=len(done))
    if plan.strategy in ("pct", "portfolio"):  # portfolio: its PCT (odd) schedules'
        summary.bound = PctSource.bound(plan_runner(plan).built.cpus, plan.steps, plan.depth)
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

    def record(r: ScheduleResult, frontier: str | None = None) -> None:
        with HeldSigint():  # in the summary and in --db, or in neither
            if r.failed and summary.first_failure_seconds is None:
                summary.first_failure_seconds = time.perf_counter() - start
            summary.results.append(r)
            if results_db:
                results_db.finished(exp_id, r.idx, r.verdict, r.detail, r.decisions, r.token,
                                    r.shrunk, r.shrunk_deviations, frontier)
            summary.seconds = time.perf_counter() - start
        if progress:
            progress(summary)

    def started(i: int, seed: int) -> None:
        if results_db:
            with HeldSigint():
                results_db.started(exp_id, i, seed)

    indices = (i for i in itertools.count() if i not in done)
    try:
        if plan.strategy == "exhaustive":
            summary.exhausted = exhaustive_search(
                plan, plan_runner(plan, event_mode=True), more,
                record, first=len(done), saved=results_db.frontier(exp_id) if results_db else None,
                started=lambda i: started(i, 0), jobs=jobs, persist=results_db is not None)
        elif jobs <= 1:
            for i in indices:
                if not more(i):
                    break
                started(i, schedule_seed(plan.strategy, plan.seed, i))
                record(run_schedule(plan, i))
        else:
            # --stop-at-first: the workers do not shrink; at the first failure nothing more
            # is started, what is queued is dropped, and of the failures the schedules
            # already running find, this process shrinks only the lowest index -- every lower
            # index ran, so it is the failure a single process stops at, for any --jobs.
            held: list[ScheduleResult] = []
            hold = stop_at_first and plan.shrink
            work = replace(plan, shrink=False) if hold else plan

            def take(f: Future) -> None:
                r = f.result()
                if hold and r.failed:
                    held.append(r)
                else:
                    record(r)

            with workers(jobs) as pool:
                pending: dict[Future, int] = {}
                for i in indices:
                    while len(pending) >= 2 * jobs:
                        finished, _ = wait(pending, return_when=FIRST_COMPLETED)
                        for f in finished:
                            pending.pop(f)
                            take(f)
                    if held or not more(i):
                        break
                    started(i, schedule_seed(plan.strategy, plan.seed, i))
                    pending[pool.submit(run_schedule, work, i)] = i
                for f in pending:
                    if held or (stop_at_first and summary.failures):
                        f.cancel()  # not started yet: dropped (--db: started, not finished)
                for f in pending:
                    if not f.cancelled():
                        take(f)
            if held:
                first = min(held, key=lambda r: r.idx)
                for r in sorted(held, key=lambda r: r.idx):
                    record(run_schedule(plan, r.idx) if r is first else r)
    except KeyboardInterrupt:  # what was recorded stands; --resume goes on from there
        if results_db:
            results_db.rollback()  # a write cut in two by a caller's own SIGINT handler
        if not interruptible:
            raise
        summary.interrupted = True
        if plan.strategy == "exhaustive":
            summary.exhausted = False
    summary.results.sort(key=lambda r: r.idx)
    summary.seconds = time.perf_counter() - start
    return summary


def _check_frontier(saved: str | None, plan: Plan) -> None:
    """Refuse (ResultsDbError, before any work) a saved frontier `exhaustive_search` could not
    continue from."""
    if saved is not None:
        _resumed_search(saved, plan, plan_runner(plan, event_mode=True))


def _resumed_search(saved: str, plan: Plan, runner: Runner) -> Search:
    """The search a saved frontier holds; ResultsDbError if it is damaged, was saved by
    another build (guest code, data, machine, fetch model or trace settings: `fingerprint`)
    or under other bounds."""
    build = fingerprint(runner.built, runner.trace)
    try:
        state = json.loads(saved)
        ran_on = state["build"]
        search = Search.from_state(state["search"])
    except (ValueError, KeyError, TypeError, AttributeError, IndexError, RecursionError) as e:
        raise ResultsDbError(f"--resume: the saved frontier in --db is damaged ({e!r}); start "
                             "afresh without --resume") from None
    if ran_on != build:
        raise ResultsDbError(f"--resume: the saved exploration ran another build ({ran_on}: "
                             "guest code, data, machine, fetch model or trace settings); this "
                             f"one is {build}: start afresh without --resume")
    if (search.bound, search.reduce) != (plan.bound, plan.dpor):
        raise ResultsDbError(f"--resume: the saved exploration has bounds {search.bound}"
                             f"{' with DPOR' if search.reduce else ''}, not {plan.bound}"
                             f"{' with DPOR' if plan.dpor else ''}")
    return search


def exhaustive_search(plan: Plan, runner: Runner, more: Callable[[int], bool],
                      record: Callable[[ScheduleResult, str | None], None], *, first: int = 0,
                      saved: str | None = None, started: Callable[[int], None] = lambda i: None,
                      jobs: int = 1, persist: bool = False) -> bool:
    """Every path within P preemptions and V delayed view updates, or with `plan.dpor` one per
    order of dependent steps (harness/explore/exhaustive.py), on `runner` (event mode), depth-first
    from the `saved` frontier when resuming. Schedule i is recorded in path order, with the
    frontier after it when `persist`; `more(i)` says whether to go on. True when exhausted.

    The search needs only the machine's run of each path (its choices and steps), never the
    verification, so with `jobs` > 1 this process runs each path and the workers verify the
    runs: the same paths in the same order for any N. A run is pickled before the machine
    runs again, so what a worker gets cannot change under it. The workers build their runner
    from the plan: a shipped scenario, or a user's from the plan's origin."""
    build = fingerprint(runner.built, runner.trace)
    search = _resumed_search(saved, plan, runner) if saved else Search(plan.bound, plan.dpor)

    def frontier() -> str | None:
        if not persist:
            return None
        return json.dumps({"build": build, "search": search.state()}, separators=(",", ":"))

    i = first
    if jobs <= 1:
        while not search.exhausted and more(i):
            src = search.source()
            started(i)
            result = judge(runner, plan, i, None, runner.run(src))
            search.finish(src)
            record(result, frontier())
            i += 1
        return search.exhausted
    # In path order: each path's worker, the frontier after it, and whether that exhausted it.
    # The search runs ahead of what is recorded; whatever is left unrecorded when `more` says
    # stop is dropped, as a serial search would not have run it.
    window: deque[tuple[int, Future, str | None, bool]] = deque()
    recorded_exhausted = False

    def drain(everything: bool) -> bool:
        nonlocal recorded_exhausted
        while window and (everything or window[0][1].done() or len(window) >= 2 * jobs):
            idx, fut, state, exhausted = window.popleft()
            record(fut.result(), state)
            recorded_exhausted = exhausted
            if not more(idx + 1):
                for _i, rest, _s, _e in window:
                    rest.cancel()
                window.clear()
                return False
        return True

    with workers(jobs) as pool:
        while not search.exhausted and more(i):
            src = search.source()
            started(i)
            run = pickle.dumps(runner.machine.run(src), pickle.HIGHEST_PROTOCOL)
            search.finish(src)
            window.append((i, pool.submit(check_run, plan, i, run), frontier(),
                           search.exhausted))
            i += 1
            if not drain(False):
                break
        drain(True)
    return recorded_exhausted


def check_run(plan: Plan, idx: int, run: bytes) -> ScheduleResult:
    """Exhaustive schedule `idx`: the search's run of it (pickled), verified in a worker
    process. Verifying the search's own run, not a replay of its path, is what a serial
    search does, and spares the worker a second machine run."""
    runner = plan_runner(plan, event_mode=True)
    return judge(runner, plan, idx, None, runner.check(pickle.loads(run)))


def replay(token_text: str, scenario: Scenario | None = None,
           engine: Engine | None = None) -> tuple[Token, Outcome]:
    """Run a token's schedule again, exactly (on `scenario` if given, else the one the token
    names: shipped, or loaded from the file or module it records): its whole path and
    nothing else (a ReplayError names the position where the run and the path part)."""
    tok = Token.decode(token_text)
    trace = tok.trace
    if scenario is None and tok.origin is not None:  # loaded afresh: the file may have changed
        scenario = resolve(ScenarioRef(tok.scenario, tok.origin))
    if scenario is not None:
        if scenario.name != tok.scenario:
            raise TokenError(f"token is for scenario {tok.scenario!r}, not {scenario.name!r}")
        runner = Runner(scenario, tok.variant, tok.cpus, trace, event_mode=tok.event_mode,
                        engine=engine)
    else:
        runner = runner_for(tok.scenario, tok.variant, tok.cpus, trace, tok.event_mode,
                            engine=engine)
    build = fingerprint(runner.built, trace)
    if build != tok.fingerprint:
        raise TokenError(f"token recorded against another build ({tok.fingerprint}: guest "
                         f"code, data, machine or trace settings); this one is {build}")
    return tok, runner.run(ReplaySource(tok.path))


def progress_bar(stream=sys.stderr) -> Callable[[Summary], None]:
    def show(s: Summary) -> None:
        n = len(s.results) - s.skipped
        rate = n / s.seconds if s.seconds else 0.0
        stream.write(f"\r  schedules {len(s.results)}  {rate:6.1f}/s  failures "
                     f"{len(s.failures)} ")
        stream.flush()
    return show
