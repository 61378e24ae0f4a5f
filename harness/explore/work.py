"""What a worker runs: a batch of random/PCT schedules, or a time slice of a region of an
exhaustive search (partition.py). A task carries the plan (the scenario by name, or by the
file or module it is defined in: `Plan.origin`) and the path prefix of its region, never a
machine: each worker builds and caches its own runners (schedule.runner_for).

Results go back as plain data (dicts, lists, str, int), which the client checks against the
task before it records anything (cluster.py); a worker's error that is the user's (a scenario
it cannot load) comes back as data naming it, not as an exception to unpickle."""

from __future__ import annotations

import functools
import gc
import hashlib
import os
import signal
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path

from harness import __version__
from harness.errors import BadInput
from harness.scenario.text_poke_loc import ScenarioError

from .partition import RegionRun
from .schedule import Plan, judge, plan_runner, run_one
from .token import fingerprint

PR_SET_PDEATHSIG = 1  # include/uapi/linux/prctl.h


def dask_setup(worker) -> None:
    """Preload of the LocalCluster's worker processes (cluster.connect): a worker leaves
    Ctrl-C to the client (a terminal sends SIGINT to the whole process group) and dies with
    it, however the client ends (SIGKILL included): prctl(PR_SET_PDEATHSIG, SIGKILL)
    (kernel/sys.c), then getppid() to close the race of a parent already gone."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if sys.platform.startswith("linux"):
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), "prctl(PR_SET_PDEATHSIG)")
        if os.getppid() == 1:  # the client is already gone: nothing to work for
            os._exit(1)


@functools.cache
def textpoke_version() -> str:
    """This process's textpoke: `textpoke --version` and a digest of its code, so that a
    worker running another revision of the same version is told apart, not only one that
    builds the scenario otherwise."""
    return f"{__version__}+{code_digest(Path(__file__).resolve().parents[2])}"


def code_digest(root: Path) -> str:
    """A hash of every .py, .c and .S file of the packages under `root`, by relative path."""
    h = hashlib.sha256()
    for package in ("emu", "harness", "guest_code"):
        for f in sorted((root / package).rglob("*")):
            if f.suffix in (".py", ".c", ".S") and f.is_file():
                h.update(str(f.relative_to(root)).encode() + b"\0" + f.read_bytes() + b"\0")
    return h.hexdigest()[:12]


def _here() -> str:
    """This worker's address (this process's, when run without a cluster)."""
    try:
        from distributed import get_worker

        return get_worker().address
    except ValueError:
        return "this process"


_BUILDS: dict[Plan, str] = {}


def build_of(plan: Plan) -> str:
    """The fingerprint of the build `plan` runs (guest code, data, machine, trace): what a
    worker must share with the client for their results to mean the same. Computed once
    per process and plan, as its runner is built once (schedule.runner_for)."""
    if plan not in _BUILDS:
        runner = plan_runner(plan, event_mode=plan.strategy == "exhaustive")
        _BUILDS[plan] = fingerprint(runner.built, runner.trace)
    return _BUILDS[plan]


def identity(plan: Plan) -> dict:
    """The handshake: this worker's textpoke version and the build of `plan` here, or why it
    cannot load the scenario."""
    out = {"version": textpoke_version(), "build": None, "error": None}
    try:
        out["build"] = build_of(plan)
    except (ScenarioError, BadInput, ImportError, OSError) as e:
        out["error"] = f"{type(e).__name__}: {e}"
    return out


def _header(plan: Plan, **rest) -> dict:
    try:
        build = build_of(plan)
    except (ScenarioError, BadInput, ImportError, OSError) as e:
        return {"worker": _here(), "error": f"{type(e).__name__}: {e}"}
    return {"worker": _here(), "error": None, "scenario": plan.scenario,
            "variant": plan_runner(plan, plan.strategy == "exhaustive").built.variant,
            "build": build, **rest}


def stopped(flag: str | None, idx: int | None = None) -> bool:
    """--stop-at-first: the client has set `flag` to the lowest failing schedule it knows
    (-1: none yet); schedule `idx` is not needed past it (exhaustive: any failure stops)."""
    if flag is None:
        return False
    from distributed import Variable

    first = Variable(flag).get()
    return first >= 0 and (idx is None or idx > first)


def run_batch(plan: Plan, indices: list[int], flag: str | None = None) -> dict:
    """Schedules `indices` of a random, PCT or portfolio plan, each a function of its index
    alone; with a stop flag the batch ends at its first failure, or at a schedule after
    the lowest failure the client knows."""
    out = _header(plan, indices=list(indices))
    if out["error"]:
        return out
    runner = plan_runner(plan)
    start = time.perf_counter()
    results = []
    for i in indices:
        if stopped(flag, i):
            break
        r = run_one(runner, plan, i)
        results.append(asdict(r))
        if flag is not None and r.failed:
            break
    out.update(results=results, seconds=time.perf_counter() - start)
    return out


def explore_region(plan: Plan, state: dict, budget: int | None, seconds: float,
                   flag: str | None = None) -> dict:
    """A slice of an exhaustive region: its runs, verified, until the region is exhausted,
    `budget` runs were made or `seconds` passed; then what is left of it and what its runs
    added to other regions' choices. With a stop flag it ends at a failure."""
    out = _header(plan, prefix=None)
    if out["error"]:
        return out
    runner = plan_runner(plan, event_mode=True)
    start = time.perf_counter()
    results = []
    with SLICES_GC as collector:
        region = RegionRun(state, plan.bound, plan.dpor, plan.engine)
        while not region.exhausted and (budget is None or len(results) < budget):
            results.append(step(region, runner, plan))
            collector.schedule_done()
            if flag is not None and (results[-1]["verdict"] != "pass" or stopped(flag)):
                break
            if time.perf_counter() - start >= seconds:
                break
        # what is left, made while the collector is still off, and the region's objects
        # dropped (by their counts: none is in a cycle): the first collection once it is on
        # scans whatever was made since the last one, 20-90 ms a slice while the region was
        # alive and its state was being made
        out.update(prefix=region.prefix(), results=results, state=region.state(),
                   reports=region.reports(), seconds=time.perf_counter() - start)
        del region
    return out


COLLECT_EVERY = 1000  # schedules before the first full collection while the collector is paused
COLLECT_MOST = 32_000  # the longest stretch between two, while collections find no garbage


class PausedGc:
    """The cyclic garbage collector off for a stretch of exhaustive schedules, and a full
    collection now and then (`schedule_done`): the first after COLLECT_EVERY schedules, and
    each later one twice as many schedules after the last (at most COLLECT_MOST) while they
    find less garbage than one object a schedule, COLLECT_EVERY again after one that finds
    more (a search whose schedules make cycles; a Dask worker's own threads leave a few
    dozen objects in cycles a minute, which do not). A schedule makes thousands of
    containers (a Node, Choice, Step and Footprint per choice, their sets) that the search
    and the snapshot cache keep for a while; the collections they trigger scanned them again
    and again, for no garbage: none of them is in a cycle (BENCHMARKS.md). A full collection
    of a worker's ~130,000 objects takes ~0.1 s and, every 1,000 schedules, found nothing in
    the static_key search: 3 % of its time (sixteenth session). An instance keeps its count
    and interval from one `with` to the next (SLICES_GC)."""

    def __init__(self) -> None:
        self._was = False
        self._count = 0
        self._every = COLLECT_EVERY
        # slices run at once on a worker of several threads: the collector is back (if it
        # was on) when the last of them leaves
        self._inside = 0
        self._lock = threading.Lock()

    def __enter__(self) -> PausedGc:
        with self._lock:
            if not self._inside:
                self._was = gc.isenabled()
                gc.disable()
            self._inside += 1
        return self

    def schedule_done(self) -> None:
        self._count += 1
        if self._count >= self._every:
            self._count = 0
            found = gc.collect()  # (unreachable objects: garbage in cycles)
            self._every = COLLECT_EVERY if found >= self._every else \
                min(2 * self._every, COLLECT_MOST)

    def __exit__(self, *exc: object) -> None:
        with self._lock:
            self._inside -= 1
            if not self._inside and self._was:
                gc.enable()


# The collector of this process's exhaustive slices (explore_region), one for the process as
# the garbage collector it pauses is: a worker runs a slice of ~4 s (~1,000-2,000 schedules)
# at a time, and a PausedGc made for each slice collected at its 1,000th schedule, every
# slice, where one kept across slices backs off to one collection in ~32,000 schedules.
SLICES_GC = PausedGc()


def step(region: RegionRun, runner, plan: Plan,
         taken: Callable[[], None] | None = None) -> dict:
    """One run of the region's search, verified: its result with its path's choices.
    `taken()` is called just before the search takes the run in."""
    src = region.source()
    outcome = runner.run(src)
    if taken is not None:
        taken()
    region.finish(src)
    res = judge(runner, plan, 0, None, outcome)
    return asdict(res) | {"path": [c.value for c in outcome.result.path]}
