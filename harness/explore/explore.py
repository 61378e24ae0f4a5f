"""The explorer: many schedules of one scenario, each fully verified, failures turned into
replay tokens and shrunk, everything persisted as it happens. One schedule (its plan, run
and judged result) is schedule.py's; this module decides which schedules run where.

Random and PCT: schedule i of an exploration uses seed `seed + i` (portfolio: random and PCT
alternate, the pair 2j, 2j+1 with seed `seed + j`, strategies.source_for); a schedule is a pure
function of its plan and index, so the verdicts do not depend on how many processes run them
(--jobs, --cluster: cluster.py). Exhaustive: in one process, schedule i is the i-th path of
the search's order; on a cluster, workers explore regions of it (partition.py) and the set
of paths does not depend on how many; the frontier is saved with the results, so --resume
continues it, on one process or many. In one process results are committed together about
every second, a failure at once (Recorder)."""

from __future__ import annotations

import functools
import itertools
import json
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

from emu.decisions import ReplaySource
from emu.engine import Engine
from emu.held_sigint import HeldSigint
from harness.errors import BadInput
from harness.run import Outcome, Runner
from harness.scenario.load import ScenarioRef, resolve
from harness.scenario.scenario import Scenario

from .cluster import (
    ClusterSpec,
    connect,
    path_digest,
    run_batches,
    run_regions,
    shrunk_on,
    slice_seconds,
    spec_from,
)
from .estimate import SpaceEstimate, estimate_space
from .exhaustive import Search
from .partition import Partition, RegionRun
from .results_db import ResultsDb, ResultsDbError
from .schedule import (
    Plan,
    ScheduleResult,
    estimate_steps,
    identity_of,
    plan_runner,
    run_schedule,
    runner_for,
)
from .strategies import STRATEGIES, PctSource
from .token import Token, TokenError, fingerprint
from .work import PausedGc, step


@dataclass
class Summary:
    """What an exploration recorded: how many schedules, its failures, and every result
    unless `results` is None (`explore(keep_results=False)`, the command line: the I=1
    static_key search would keep 1.9 M of them, ~0.5 GB, for a count and its failures; --db
    has them all)."""

    plan: Plan
    exploration: int | None
    results: list[ScheduleResult] | None = field(default_factory=list)
    schedules: int = 0  # results recorded, those of an earlier run (`skipped`) included
    last: ScheduleResult | None = None  # the result recorded last (a progress callback's)
    seconds: float = 0.0
    skipped: int = 0  # finished in an earlier, resumed run
    bound: float | None = None  # PCT's probability bound per schedule
    exhausted: bool | None = None  # exhaustive: was the bounded space exhausted
    interrupted: bool = False  # stopped by Ctrl-C (SIGINT): what was recorded stands
    first_failure_seconds: float | None = None  # when this session recorded its 1st failure
    tasks: int = 0  # on a cluster: the tasks this session ran there (batches, slices)
    _failed: list[ScheduleResult] = field(default_factory=list, init=False, repr=False)

    def add(self, result: ScheduleResult) -> None:
        """One more recorded result."""
        if self.results is not None:
            self.results.append(result)
        if result.failed:
            self._failed.append(result)
        self.schedules += 1
        self.last = result

    @property
    def failed(self) -> int:
        """How many failed (a progress callback's count, without sorting them)."""
        return len(self._failed)

    @property
    def failures(self) -> list[ScheduleResult]:
        """The failing results, by index."""
        return sorted(self._failed, key=lambda r: r.idx)


def estimate(plan: Plan, probes: int, seconds: float | None = None) -> SpaceEstimate:
    """How many paths `plan`'s bounded space holds (estimate.py), from `probes` probes seeded
    by the plan's seed (fewer if `seconds` run out first); the runs are the exhaustive
    search's machine runs, unverified (only their choices count), continuing from its
    snapshots."""
    runner = plan_runner(plan, event_mode=True)
    return estimate_space(lambda src: runner.machine.run(src, cache=runner.snapshots),
                          plan.bound, probes, plan.seed, seconds)


def explore(plan: Plan, schedules: int | None = None, seconds: float | None = None,
            jobs: int = 1, db: Path | str | None = None, resume: bool = False,
            stop_at_first: bool = False,
            progress: Callable[[Summary], None] | None = None,
            interruptible: bool = False, cluster: str | None = None,
            tls: object | None = None, client: object | None = None,
            stop: Callable[[], bool] | None = None, flag: str | None = None,
            keep_results: bool = True) -> Summary:
    """Run and record the schedules of `plan`: in this process (`jobs` 1, no cluster), on a
    LocalCluster of `jobs` processes, on the Dask scheduler at `cluster` (TEXTPOKE_CLUSTER;
    `tls`: cluster.Tls), or on a connected `client`'s cluster (cluster.py). With
    `interruptible` (the command line), Ctrl-C ends the exploration with what was recorded
    (`Summary.interrupted`); otherwise it propagates, as a caller such as pytest expects.
    `stop()` true ends it as a budget does, and on a cluster the Dask Variable `flag` set to
    0 stops its running tasks (side_by_side.py: another strategy found a failure).
    `keep_results` False: the summary counts the schedules and keeps only the failures."""
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
    spec = None
    if client is None and (jobs > 1 or cluster or _env_cluster()):
        spec = spec_from(jobs, cluster, tls)  # a bad address is refused before any work
    if plan.strategy == "exhaustive" and (spec or client):
        slice_seconds()  # so is a bad $TEXTPOKE_SLICE_SECONDS
    results_db = ResultsDb(db) if db else None  # a bad file is refused before any work
    if results_db:
        results_db.check_seeds(plan.seed, schedules)
    if plan.strategy in ("pct", "portfolio") and plan.steps == 0:
        plan = replace(plan, steps=estimate_steps(plan))
    exp_id, rows, skipped, done = None, {}, 0, set()
    if results_db:
        exp_id, _resumed = results_db.exploration(identity_of(plan), resume)
        rows = results_db.done(exp_id, failed_only=not keep_results)
        skipped = results_db.done_count(exp_id)
        if plan.strategy == "exhaustive":
            _check_frontier(results_db.frontier(exp_id), plan)
        else:  # the indices a resumed random/PCT exploration skips
            done = results_db.done_indices(exp_id)
    summary = Summary(plan, exp_id, results=[] if keep_results else None, skipped=skipped)
    if plan.strategy in ("pct", "portfolio"):  # portfolio: its PCT (odd) schedules'
        summary.bound = PctSource.bound(plan_runner(plan).built.cpus, plan.steps, plan.depth)
    for idx, row in sorted(rows.items()):  # the earlier results, or only their failures
        summary.add(ScheduleResult(idx, row[0], row[1], row[2], row[3], row[4], row[5],
                                   row[6]))
    summary.schedules, summary.last = skipped, None  # so the count is all of them
    start = time.perf_counter()

    def more(i: int) -> bool:
        if schedules is not None and i >= schedules:
            return False
        if seconds is not None and time.perf_counter() - start >= seconds:
            return False
        if stop is not None and stop():
            return False
        return not (stop_at_first and summary.failed)

    def record_all(rs: list[ScheduleResult], frontier: str | None = None) -> None:
        """Results in the summary and in --db (with the search's frontier after them), all
        or none of them."""
        with HeldSigint():
            for r in rs:
                if r.failed and summary.first_failure_seconds is None:
                    summary.first_failure_seconds = time.perf_counter() - start
            if results_db and (rs or frontier is not None):
                results_db.finished_many(exp_id, [(r.idx, r.seed, r.verdict, r.detail,
                                                   r.decisions, r.token, r.shrunk,
                                                   r.shrunk_deviations) for r in rs], frontier)
            for r in rs:  # one progress call per result, each the last in the summary
                summary.add(r)
                summary.seconds = time.perf_counter() - start
                if progress:
                    progress(summary)

    def started(rows: list[tuple[int, int]]) -> None:
        if results_db:
            with HeldSigint():
                results_db.started_many(exp_id, rows)

    recorder = Recorder(record_all, batched=results_db is not None)

    indices = (i for i in itertools.count() if i not in done)
    try:
        if spec is not None or client is not None:

            with connect(spec or ClusterSpec(jobs), client) as cl:
                summary.exhausted = _on_cluster(cl, plan, summary, indices, more, started,
                                                record_all, stop_at_first, schedules,
                                                results_db.frontier(exp_id) if results_db
                                                else None, results_db is not None, flag)
        elif plan.strategy == "exhaustive":
            summary.exhausted = exhaustive_search(
                plan, plan_runner(plan, event_mode=True), more, recorder.add,
                first=skipped, saved=results_db.frontier(exp_id) if results_db else None,
                persist=results_db is not None, flush=recorder.flush)
        else:
            try:
                for i in indices:
                    if not more(i):
                        break
                    recorder.add(run_schedule(plan, i))
            finally:  # finished schedules are whole: kept, whatever ends the loop
                recorder.flush()
    except KeyboardInterrupt:  # what was recorded stands; --resume goes on from there
        if results_db:
            results_db.rollback()  # a write cut in two by a caller's own SIGINT handler
        recorder.drop()  # what exhaustive_search could not save with its frontier
        if not interruptible:
            raise
        summary.interrupted = True
        if plan.strategy == "exhaustive":
            summary.exhausted = False
    if summary.results is not None:
        summary.results.sort(key=lambda r: r.idx)
    summary.seconds = time.perf_counter() - start
    return summary


def _env_cluster() -> str | None:
    return os.environ.get("TEXTPOKE_CLUSTER") or None


def _on_cluster(cl, plan: Plan, summary: Summary, indices, more, started, record_all,
                stop_at_first: bool, schedules: int | None, saved: str | None,
                persist: bool, flag: str | None = None) -> bool | None:
    """The exploration on a connected cluster (cluster.py): after the handshake, random/PCT
    batches or exhaustive regions. Returns whether an exhaustive search was exhausted."""

    exhaustive = plan.strategy == "exhaustive"
    runner = plan_runner(plan, event_mode=exhaustive)
    build = fingerprint(runner.built, runner.trace)
    cl.check(plan, build)
    variant = runner.built.variant
    if not exhaustive:
        held, summary.tasks = run_batches(cl, plan, variant, build, indices, more, started,
                                          record_all, stop_at_first, flag)
        if held:  # --stop-at-first: shrink only the lowest failure, as one process does
            first = min(held, key=lambda r: r.idx)
            for r in sorted(held, key=lambda r: r.idx):
                record_all([shrunk_on(cl, plan, variant, build, r.idx)
                            if r is first and plan.shrink else r])
        return None
    part = _resumed_partition(saved, plan, runner) if saved else \
        Partition.of(Search(plan.bound, plan.dpor))

    def frontier() -> str | None:
        if not persist:
            return None
        return _frontier_json(build, part, None)

    def budget() -> int | None:
        return None if schedules is None else schedules - summary.schedules

    # --stop-at-first: a slice ends at its failure, which its worker shrinks
    exhausted, summary.tasks = run_regions(cl, plan, variant, build, part, more, budget,
                                           lambda rs: record_all(rs, frontier()),
                                           stop_at_first, summary.schedules, flag)
    return exhausted


def _frontier_json(build: str, part, live) -> str:
    """The frontier saved with a result: one undivided search as one process saves it
    (`search`), a divided one as its regions (`partition`). `live`: the region running in
    this process, whose progress the partition does not hold yet."""
    single = part.single()
    if single is not None and live is not None and (single is live[0]):
        return json.dumps({"build": build, "search": live[1].search.state()},
                          separators=(",", ":"))
    doc = part.to_json()
    if live is not None:
        region, run = live
        doc["regions"] = [[i, st, run.state() if i == region.id else state]
                          for i, st, state in doc["regions"]]
    return json.dumps({"build": build, "partition": doc}, separators=(",", ":"))


def _check_frontier(saved: str | None, plan: Plan) -> None:
    """Refuse (ResultsDbError, before any work) a saved frontier `exhaustive_search` could not
    continue from."""
    if saved is not None:
        _resumed_partition(saved, plan, plan_runner(plan, event_mode=True))


def _resumed_partition(saved: str, plan: Plan, runner: Runner):
    """The search a saved frontier holds (partition.py: one region, or many); ResultsDbError
    if it is damaged, was saved by another build (guest code, data, machine, fetch model or
    trace settings: `fingerprint`) or under other bounds."""

    build = fingerprint(runner.built, runner.trace)
    try:
        state = json.loads(saved)
        ran_on = state["build"]
        if "partition" in state:
            part = Partition.from_json(state["partition"])
        else:
            search = Search.from_state(state["search"])
            part = Partition.of(search)
    except (ValueError, KeyError, TypeError, AttributeError, IndexError, RecursionError) as e:
        raise ResultsDbError(f"--resume: the saved frontier in --db is damaged ({e!r}); start "
                             "afresh without --resume") from None
    if ran_on != build:
        raise ResultsDbError(f"--resume: the saved exploration ran another build ({ran_on}: "
                             "guest code, data, machine, fetch model or trace settings); this "
                             f"one is {build}: start afresh without --resume")
    if (part.bound, part.reduce) != (plan.bound, plan.dpor):
        raise ResultsDbError(f"--resume: the saved exploration has bounds {part.bound}"
                             f"{' with DPOR' if part.reduce else ''}, not {plan.bound}"
                             f"{' with DPOR' if plan.dpor else ''}")
    return part


Frontier = Callable[[], str]  # the search's frontier as saved now (_frontier_json), when asked
RECORD_SECONDS = 1.0  # in one process with --db: results committed together at most this often


class Recorder:
    """One process's results on their way to the summary and --db (`write`: both at once).
    `batched` (with a database): committed together with the frontier after the last of them,
    at most every RECORD_SECONDS and at once for a failure. Two commits, each an fsync, and
    the whole frontier per schedule took 30 % of a one-process exhaustive search (BENCHMARKS.md,
    seventh session). Ctrl-C, bad input or a crash commits what is pending first (an
    exhaustive search's, if its frontier still holds); a kill loses at most the uncommitted
    second, which --resume runs again: nothing committed is lost or repeated, no failure
    waits, and what is reported (summary, --log) is what is committed."""

    def __init__(self, write: Callable[[list[ScheduleResult], str | None], None],
                 batched: bool, seconds: float | None = None) -> None:
        self._write = write
        self._batched = batched
        self._seconds = RECORD_SECONDS if seconds is None else seconds
        self._pending: list[ScheduleResult] = []
        self._frontier: Frontier | None = None
        self._since = time.monotonic()

    def add(self, result: ScheduleResult, frontier: Frontier | None = None) -> None:
        """A result, and (an exhaustive search) how to get the frontier after it: valid until
        the search takes its next run in, which exhaustive_search's calls of `flush` respect."""
        self._pending.append(result)
        self._frontier = frontier
        if not self._batched or result.failed or \
                time.monotonic() - self._since >= self._seconds:
            self.flush()

    def flush(self) -> None:
        """Commit what is pending. Taken off first: results a Ctrl-C cuts off here are not
        committed, and --resume runs them again."""
        batch, frontier = self._pending, self._frontier
        self._pending, self._frontier = [], None
        self._since = time.monotonic()
        if batch:
            self._write(batch, None if frontier is None else frontier())

    def drop(self) -> None:
        """Forget what is pending (its frontier may no longer be the search's)."""
        self._pending, self._frontier = [], None


def exhaustive_search(plan: Plan, runner: Runner, more: Callable[[int], bool],
                      record: Callable[[ScheduleResult, Frontier | None], None], *,
                      first: int = 0, saved: str | None = None, persist: bool = False,
                      flush: Callable[[], None] = lambda: None) -> bool:
    """Every path within P preemptions and V delayed view updates, or with `plan.dpor` one per
    order of dependent steps (harness/explore/exhaustive.py), on `runner` (event mode), in
    this process, from the `saved` frontier when resuming (one search, or the regions a
    cluster left: partition.py, explored one after the other). Schedule i is recorded in
    path order; with `persist`, with a function giving the frontier after it, valid until the
    search takes its next run in. `flush()` saves what `record` holds back with the last such
    frontier: it is called at a region's end, and when anything (Ctrl-C, bad input, a crash)
    ends the search while that frontier still holds. `more(i)` says whether to go on. True
    when exhausted."""

    build = fingerprint(runner.built, runner.trace)
    part = _resumed_partition(saved, plan, runner) if saved else \
        Partition.of(Search(plan.bound, plan.dpor))
    i = first
    current = True  # the search's state is the one after the last result recorded

    def taken() -> None:  # the search takes in a run not recorded yet
        nonlocal current
        current = False

    try:
        with PausedGc() as collector:
            while not part.exhausted and more(i):
                region = part.take()
                run = RegionRun(region.state, plan.bound, plan.dpor, plan.engine)
                while not run.exhausted and more(i):
                    d = step(run, runner, plan, taken if persist else None)
                    collector.schedule_done()
                    res = ScheduleResult(i, 0, d["verdict"], d["detail"], d["decisions"],
                                         d["token"], d["shrunk"], d["shrunk_deviations"],
                                         d["deviations"], path_digest(d["path"]))
                    if persist:  # what this run added to other regions' choices, saved with it
                        for level, position, values in run.reports():
                            part.report(level, position, values)
                    record(res, functools.partial(_frontier_json, build, part, (region, run))
                           if persist else None)
                    current = True
                    i += 1
                flush()
                part.returned(region, run.state(), run.reports())
    except BaseException:
        if current:  # else the frontier is past a run not recorded: --resume runs them again
            flush()
        raise
    return part.exhausted


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
        n = s.schedules - s.skipped
        rate = n / s.seconds if s.seconds else 0.0
        stream.write(f"\r  schedules {s.schedules}  {rate:6.1f}/s  failures {s.failed} ")
        stream.flush()
    return show
