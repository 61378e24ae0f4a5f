"""One schedule of an exploration: the Plan every worker runs it from, this process's Runner
for the plan, the run, and its judged result (a failure's replay token and shrunk token).
explore.py runs many of them, in this process or on a cluster (work.py, cluster.py), all
through `run_one` and `judge`."""

from __future__ import annotations

import sys
from dataclasses import asdict, dataclass, field, fields

from emu.config import RunBudget
from emu.decisions import DecisionSource
from emu.engine import Engine
from emu.path import Choice, Cost, deviations
from emu.verdict import VerdictKind
from harness.run import Outcome, Runner
from harness.scenario.load import Origin, ScenarioRef, resolve
from harness.trace.pt.encoder import TraceConfig

from .shrink import run_budget, shrink
from .strategies import PctSource, is_decision, schedule_seed, source_for
from .token import Token, fingerprint

IDENTITY = "identity"  # a Plan field's metadata key: False leaves it out of `identity_of`


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
    # False: every check made in full, none of its CPU parts taken from the runner's memo of
    # earlier runs' parts (harness/check_memo.py: keyed by a digest; --no-memo). How checks
    # are made, not what they find: not part of an exploration's identity (`identity_of`)
    memo: bool = field(default=True, metadata={IDENTITY: False})

    @property
    def bound(self) -> Cost:
        return Cost(self.preemptions, self.delays, self.interrupts)


def identity_of(plan: Plan) -> dict:
    """The plan's parameters an exploration in --db is saved and resumed under: every field
    but those whose metadata says IDENTITY False (a search saved with the memo resumes with
    --no-memo, and one saved before such a field existed resumes)."""
    params = asdict(plan)
    return {f.name: params[f.name] for f in fields(plan) if f.metadata.get(IDENTITY, True)}


@dataclass(slots=True)
class ScheduleResult:
    """One schedule's outcome, as recorded. An exploration from the library keeps one per
    schedule (1.9 M in the exhaustive static_key search at I=1; the command line keeps the
    failures only, explore.Summary): slots, and the verdict's and detail's text
    shared between results (`sys.intern`; most details are one of a few), make it 221 bytes
    instead of 389."""

    idx: int
    seed: int
    verdict: str
    detail: str
    decisions: int
    token: str | None = None
    shrunk: str | None = None
    shrunk_deviations: int | None = None  # the shrunk path's deviations from the simplest
    deviations: int | None = None  # the failing path's (emu/path.deviations)
    path: str | None = None  # exhaustive: a digest of the run's path (not saved in --db)

    def __post_init__(self) -> None:
        if type(self.verdict) is str:  # (a VerdictKind is one object already)
            self.verdict = sys.intern(self.verdict)
        if type(self.detail) is str:
            self.detail = sys.intern(self.detail)

    @property
    def failed(self) -> bool:
        return self.verdict != VerdictKind.PASS


_RUNNERS: dict[tuple, Runner] = {}


def runner_for(scenario: str, variant: str | None, cpus: int | None,
               trace: TraceConfig | None = None, event_mode: bool = False,
               origin: Origin | None = None, engine: Engine | None = None,
               memo: bool = True) -> Runner:
    """One Runner (machine) per process and configuration, reset between schedules; a user's
    scenario is loaded from its `origin` (so a --jobs worker loads the same one). `memo`
    False: a runner without a check memo (Runner's reference check)."""
    key = (scenario, variant, cpus, trace, event_mode, origin, engine, memo)
    if key not in _RUNNERS:
        _RUNNERS[key] = Runner(resolve(ScenarioRef(scenario, origin)), variant, cpus, trace,
                               event_mode=event_mode, engine=engine,
                               memo=None if memo else False)
    return _RUNNERS[key]


def plan_runner(plan: Plan, event_mode: bool = False) -> Runner:
    """This process's runner for `plan`'s scenario, variant and CPUs."""
    return runner_for(plan.scenario, plan.variant, plan.cpus, event_mode=event_mode,
                      origin=plan.origin, engine=plan.engine, memo=plan.memo)


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
