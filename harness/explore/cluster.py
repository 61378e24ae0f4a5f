"""Exploration on a Dask cluster: the client side.

`--jobs N` (N > 1) starts a Dask `LocalCluster` of N worker processes listening on 127.0.0.1
only; `--cluster tcp://HOST:PORT` (or TEXTPOKE_CLUSTER) uses a running one (`dask scheduler`,
`dask worker`), `tls://` with the certificates of Dask's `Security`. A Dask scheduler runs
whatever its clients send: it must never listen where an untrusted host can reach it.

This process stays the only writer of --db: random/PCT tasks are batches of schedules (about
a second of work each) whose rows are committed before the batch is submitted and completed
as its results arrive; exhaustive tasks are time slices of regions of the search
(partition.py), each slice's results committed with the frontier after it. A worker that dies
has its task run again elsewhere (Dask reschedules it); nothing is recorded twice, since only
what comes back is recorded. Results are plain data, checked against their task before they
are recorded: a result of another scenario, variant, build or path prefix is refused
(`ClusterError`).
"""

from __future__ import annotations

import hashlib
import logging
import math
import os
import sys
import uuid
import warnings
from array import array
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace

from harness.errors import BadInput, WorkerDied

from .partition import Partition, Region
from .schedule import Plan, ScheduleResult
from .strategies import schedule_seed
from .work import explore_region, identity, run_batch, textpoke_version

ENV = "TEXTPOKE_CLUSTER"
CONNECT_TIMEOUT = 10.0  # seconds to reach a scheduler
WORKER_TIMEOUT = 60.0  # seconds for a scheduler's first worker (or the local ones) to come
BATCH_SECONDS = 1.0  # the work a random/PCT task carries (Dask: a task should run >= ~1 s)
# an exhaustive task's time slice before it returns what is left (SLICE_ENV may set it:
# shorter slices balance a small search better, at more per-task overhead). 4 s: on two
# workers, static_key P=2 V=2 --dpor made 18 % more schedules than with 1 s slices (each
# slice a region's state both ways and the whole frontier saved; a region moved to the other
# worker starts without its snapshots), and 10 s no more than 4 s (BENCHMARKS.md)
SLICE_SECONDS = 4.0
SLICE_ENV = "TEXTPOKE_SLICE_SECONDS"
WORKER_SETUP = "harness.explore.work"  # its dask_setup: Ctrl-C to the client, die with it
# Dask keeps the last `distributed.admin.low-level-log-length` (1,000) messages of each
# batched stream for debugging, every message under 1 MB whole: on the scheduler's stream to
# each worker, every exhaustive task with its region's state (~580 nodes): most of the
# client's 1.2 GB after an hour on --jobs 2 (~0.9 KB a schedule while the logs fill, the
# results kept ~0.25). What connect() starts keeps LOW_LEVEL_LOG of them.
LOW_LEVEL_LOG = 16
# and its workers do not profile themselves: a worker samples its task's thread every 10 ms
# (`distributed.worker.profile`, for the dashboard we do not start), ~2 % of its CPU
CONFIG = {"distributed.admin.low-level-log-length": LOW_LEVEL_LOG,
          "distributed.worker.profile.enabled": False}


class ClusterError(BadInput):
    """The cluster cannot be used for this exploration: unreachable, no workers, a worker
    of another textpoke or build, one that cannot load the scenario, a result that does not
    match its task. Names the address and what differs."""


def slice_seconds() -> float:
    """The exhaustive slice: $TEXTPOKE_SLICE_SECONDS if set, else SLICE_SECONDS. Read when a
    search starts, so a bad value is refused there (bad input), not when the module loads."""
    text = os.environ.get(SLICE_ENV)
    if text is None:
        return SLICE_SECONDS
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not 0 < value < math.inf:
        raise ClusterError(f"{SLICE_ENV}={text!r}: a slice is a positive number of seconds")
    return value


@dataclass(frozen=True)
class Tls:
    """Certificates for a tls:// scheduler (Dask's `Security`)."""

    ca: str
    cert: str
    key: str


@dataclass(frozen=True)
class ClusterSpec:
    """Where the exploration runs: in this process (jobs 1, no address), on a LocalCluster
    of `jobs` processes, or on the scheduler at `address`."""

    jobs: int = 1
    address: str | None = None
    tls: Tls | None = None


def spec_from(jobs: int, address: str | None, tls: Tls | None = None) -> ClusterSpec:
    """The spec for --jobs/--cluster, TEXTPOKE_CLUSTER when no --cluster is given."""
    address = address or os.environ.get(ENV) or None
    if address is not None:
        if not address.startswith(("tcp://", "tls://", "inproc://")):
            raise ClusterError(f"--cluster {address}: not a scheduler address (tcp://HOST:PORT "
                               "or tls://HOST:PORT)")
        if address.startswith("tls://") and tls is None:
            raise ClusterError(f"--cluster {address}: a tls:// scheduler needs --tls-ca-file, "
                               "--tls-cert and --tls-key")
    return ClusterSpec(jobs, address, tls)


@dataclass
class Cluster:
    """A connected client and the address it talks to."""

    client: object  # distributed.Client
    address: str
    parallel: int | None = None  # tasks in flight (None: one per worker)

    @property
    def workers(self) -> int:
        if self.parallel is not None:
            return self.parallel
        return max(1, len(self.client.scheduler_info(n_workers=-1)["workers"]))

    def check(self, plan: Plan, build: str) -> None:
        """Every worker runs this textpoke and builds `plan`'s scenario as this process does
        (the same fingerprint), or ClusterError naming each worker and what differs."""
        mine = textpoke_version()
        problems = []
        for addr, got in sorted(self.client.run(identity, plan).items()):
            if got["version"] != mine:
                problems.append(f"worker {addr} runs textpoke {got['version']}, this client "
                                f"{mine}")
            elif got["error"]:
                problems.append(f"worker {addr} cannot load scenario {plan.scenario!r}: "
                                f"{got['error']}")
            elif got["build"] != build:
                problems.append(f"worker {addr} builds {plan.scenario!r} as {got['build']}, "
                                f"this client as {build} (guest code, data, machine or trace "
                                "settings differ)")
        if problems:
            raise ClusterError(f"cluster {self.address}: " + "; ".join(problems))

    def flag(self) -> str:
        """A fresh --stop-at-first flag (a Dask Variable: -1 until a failure is known)."""
        from distributed import Variable

        name = f"textpoke-stop-{uuid.uuid4().hex}"
        Variable(name, client=self.client).set(-1)
        return name

    def raise_flag(self, name: str, value: int) -> None:
        from distributed import Variable

        Variable(name, client=self.client).set(value)


@contextmanager
def connect(spec: ClusterSpec, client: object | None = None) -> Iterator[Cluster]:
    """The cluster `spec` names (a LocalCluster on 127.0.0.1, or a running scheduler), or
    `client`'s (a test's shared cluster, with `spec.jobs` > 1 tasks in flight), closed after
    unless it was given. What it starts (the client; a LocalCluster's scheduler and workers)
    keeps LOW_LEVEL_LOG messages of each stream, and its workers do not profile (CONFIG); a
    running scheduler keeps what its own configuration says (README: start it with a short
    log)."""
    import dask

    if client is not None:
        yield Cluster(client, str(client.scheduler.address),
                      spec.jobs if spec.jobs > 1 else None)
        return
    logging.getLogger("distributed").setLevel(logging.ERROR)
    with dask.config.set(CONFIG):
        with _connected(spec) as cl:
            yield cl


@contextmanager
def _connected(spec: ClusterSpec) -> Iterator[Cluster]:
    from distributed import Client, LocalCluster

    if spec.address is None:
        with warnings.catch_warnings():
            # without a dashboard the scheduler still serves its HTTP routes, on port 8787
            # if free: a second exploration at once (or a pytest cluster) takes another, and
            # Dask warns of it to whoever runs this; nothing here uses that port
            warnings.filterwarnings("ignore", "Port 8787 is already in use", UserWarning)
            local = LocalCluster(n_workers=spec.jobs, threads_per_worker=1, processes=True,
                                 host="127.0.0.1", dashboard_address=None,
                                 silence_logs=logging.ERROR, preload=[WORKER_SETUP])
        client = Client(local)
        try:
            client.wait_for_workers(spec.jobs, timeout=WORKER_TIMEOUT)
            yield Cluster(client, local.scheduler_address)
        finally:
            client.close()
            local.close()
        return
    security = None
    if spec.tls is not None:
        from distributed.security import Security

        for what, path in (("--tls-ca-file", spec.tls.ca), ("--tls-cert", spec.tls.cert),
                           ("--tls-key", spec.tls.key)):
            if not os.path.isfile(path):
                raise ClusterError(f"--cluster {spec.address}: {what} {path}: no such file")
        security = Security(tls_ca_file=spec.tls.ca, tls_client_cert=spec.tls.cert,
                            tls_client_key=spec.tls.key, require_encryption=True)
    try:
        client = Client(spec.address, timeout=CONNECT_TIMEOUT, security=security)
    except (OSError, TimeoutError) as e:
        raise ClusterError(f"--cluster {spec.address}: cannot reach the scheduler "
                           f"({type(e).__name__}: {e})") from None
    try:
        try:
            client.wait_for_workers(1, timeout=WORKER_TIMEOUT)
        except (OSError, TimeoutError):
            raise ClusterError(f"--cluster {spec.address}: the scheduler has no worker after "
                               f"{WORKER_TIMEOUT:.0f} s (start some with `dask worker "
                               f"{spec.address}`)") from None
        yield Cluster(client, spec.address)
    finally:
        client.close()


def _result(fut) -> dict:
    """A task's plain-data result; a task Dask gave up on is WorkerDied."""
    from distributed import KilledWorker

    try:
        return fut.result()
    except KilledWorker as e:
        raise WorkerDied(str(e)) from None


def _checked(cl: Cluster, plan: Plan, variant: str, build: str, got: dict) -> dict:
    """Refuse a result that is not this exploration's (ClusterError, nothing recorded)."""
    if got.get("error"):
        raise ClusterError(f"cluster {cl.address}: worker {got.get('worker')} cannot run "
                           f"scenario {plan.scenario!r}: {got['error']}")
    for key, want in (("scenario", plan.scenario), ("variant", variant), ("build", build)):
        if got.get(key) != want:
            raise ClusterError(f"cluster {cl.address}: worker {got.get('worker')} returned a "
                               f"result for {key} {got.get(key)!r}, not {want!r}: refused")
    return got


def schedule_result(d: dict, idx: int) -> ScheduleResult:
    """A ScheduleResult from a worker's plain data, its fields type-checked."""
    def typed(name: str, kind: type, optional: bool = False):
        v = d.get(name)
        if v is None and optional:
            return None
        if not isinstance(v, kind) or isinstance(v, bool):
            raise ClusterError(f"a worker's result has {name} {v!r}: refused")
        return v
    path = d.get("path")
    try:
        digest = None if path is None else path_digest(path)
    except (TypeError, OverflowError):
        raise ClusterError(f"a worker's result has path {path!r:.80}: refused") from None
    return ScheduleResult(idx, typed("seed", int), typed("verdict", str), typed("detail", str),
                          typed("decisions", int), typed("token", str, True),
                          typed("shrunk", str, True), typed("shrunk_deviations", int, True),
                          typed("deviations", int, True), digest)


def path_digest(values: list[int]) -> str:
    """A run's path as a short digest (the set of explored paths, compared across runs): its
    values as little-endian 64-bit integers, hashed. (Hashing their decimal text cost four
    times as much: on --jobs 2 the client made a digest of every run, 5 % of a core.)"""
    packed = array("q", values)
    if sys.byteorder == "big":
        packed.byteswap()
    return hashlib.sha256(packed).hexdigest()[:20]


def run_batches(cl: Cluster, plan: Plan, variant: str, build: str,
                indices: Iterator[int], more: Callable[[int], bool],
                started: Callable[[list[tuple[int, int]]], None],
                record: Callable[[list[ScheduleResult]], None],
                stop_at_first: bool,
                shared: str | None = None) -> tuple[list[ScheduleResult], int]:
    """Random/PCT on the cluster: batches of schedules (the first of one schedule each, then
    sized to BATCH_SECONDS from what came back), their rows committed (`started`) before
    each is submitted, their results recorded as each batch comes back. With
    `stop_at_first`, a batch ends at its first failure and the others at a schedule past the
    lowest failure known; failures are returned unshrunk ("held") for the caller to shrink
    the lowest. `shared`: a flag other explorations raise too (side_by_side.py). Returns
    the held failures and how many tasks ran."""
    from distributed import as_completed

    flag = (shared or cl.flag()) if stop_at_first else None
    work = plan if not stop_at_first else _no_shrink(plan)
    pending = as_completed()
    inflight: dict[object, list[int]] = {}
    per_schedule: float | None = None
    held: list[ScheduleResult] = []
    first_fail: int | None = None
    source = iter(indices)
    tasks: list[int] = []

    def submit() -> bool:
        size = 1 if per_schedule is None else max(1, math.ceil(BATCH_SECONDS / per_schedule))
        batch: list[int] = []
        while len(batch) < size:
            i = next(source, None)
            if i is None or not more(i) or (first_fail is not None):
                break
            batch.append(i)
        if not batch:
            return False
        started([(i, schedule_seed(plan.strategy, plan.seed, i)) for i in batch])
        fut = cl.client.submit(run_batch, work, batch, flag, pure=False)
        inflight[fut] = batch
        tasks.append(len(batch))
        pending.add(fut)
        return True

    for _ in range(2 * cl.workers):
        if not submit():
            break
    for fut in pending:
        batch = inflight.pop(fut)
        got = _checked(cl, plan, variant, build, _result(fut))
        if got.get("indices") != batch:
            raise ClusterError(f"cluster {cl.address}: worker {got.get('worker')} returned "
                               f"schedules {got.get('indices')}, not its task's {batch}: "
                               "refused")
        rows = got["results"]
        out = []
        for k, d in enumerate(rows):
            r = schedule_result(d, batch[k])
            if r.seed != schedule_seed(plan.strategy, plan.seed, r.idx):
                raise ClusterError(f"cluster {cl.address}: worker {got['worker']} returned "
                                   f"schedule {r.idx} with seed {r.seed}: refused")
            out.append(r)
        if rows:
            per = got["seconds"] / len(rows)
            per_schedule = per if per_schedule is None else (per_schedule + per) / 2
        if stop_at_first:
            fails = [r for r in out if r.failed]
            held.extend(fails)
            out = [r for r in out if not r.failed]
            if fails and (first_fail is None or fails[0].idx < first_fail):
                first_fail = fails[0].idx
                cl.raise_flag(flag, first_fail)
        record(out)
        if not (stop_at_first and first_fail is not None):
            submit()
    return held, len(tasks)


def shrunk_on(cl: Cluster, plan: Plan, variant: str, build: str, idx: int) -> ScheduleResult:
    """Schedule `idx` again on the cluster, shrunk (--stop-at-first's lowest failure): this
    process runs no machine."""
    got = _checked(cl, plan, variant, build, _result(
        cl.client.submit(run_batch, plan, [idx], None, pure=False)))
    if got.get("indices") != [idx] or len(got["results"]) != 1:
        raise ClusterError(f"cluster {cl.address}: worker {got.get('worker')} returned "
                           f"schedules {got.get('indices')}, not [{idx}]: refused")
    return schedule_result(got["results"][0], idx)


def _no_shrink(plan: Plan) -> Plan:
    return replace(plan, shrink=False)


def run_regions(cl: Cluster, plan: Plan, variant: str, build: str, part: Partition,
                more: Callable[[int], bool], budget: Callable[[], int | None],
                record: Callable[[list[ScheduleResult]], None],
                stop_at_first: bool, first: int,
                shared: str | None = None) -> tuple[bool, int]:
    """Exhaustive on the cluster: waiting regions handed to workers for a slice each; a
    returned region goes back into the partition with its reports, and when workers would
    be idle, waiting regions are split (partition.py). Each slice's results are recorded
    with the frontier after it (`record`). Returns whether the search is exhausted, and how
    many tasks ran."""
    from distributed import as_completed

    slice_s = slice_seconds()
    flag = (shared or cl.flag()) if stop_at_first else None
    pending = as_completed()
    inflight: dict[object, Region] = {}
    next_idx = first
    stopping = False
    slice_budget: dict[object, int | None] = {}
    tasks: list[int] = []

    def fill(unrecorded: int = 0) -> None:
        """Hand waiting regions to idle workers; `unrecorded` results came back and are not
        in the budget's count yet."""
        want = cl.workers
        while len(inflight) < want and part.waiting() and not stopping and more(next_idx):
            spare = budget()
            if spare is not None:
                spare -= unrecorded + sum(b or 0 for b in slice_budget.values())
                if spare <= 0:
                    return
                spare = max(1, spare // max(1, want - len(inflight)))
            region = part.hand_out(want - len(inflight))
            fut = cl.client.submit(explore_region, plan, region.state, spare, slice_s,
                                   flag, pure=False)
            inflight[fut] = region
            slice_budget[fut] = spare
            tasks.append(region.id)
            pending.add(fut)

    fill()
    for fut in pending:
        region = inflight.pop(fut)
        slice_budget.pop(fut)
        got = _checked(cl, plan, variant, build, _result(fut))
        prefix = [n[2] for n in region.state["nodes"][:region.state["base"] + 1]]
        out = []
        for d in got["results"]:
            path = d.get("path")
            if not isinstance(path, list) or path[:len(prefix)] != prefix:
                raise ClusterError(f"cluster {cl.address}: worker {got['worker']} returned a "
                                   f"run outside its region's path prefix: refused")
            out.append(schedule_result(d, next_idx))
            next_idx += 1
        _check_returned(cl, got, region.state)
        part.returned(region, got["state"], got["reports"])
        if stop_at_first and any(r.failed for r in out):
            stopping = True
            cl.raise_flag(flag, 0)
        if not more(next_idx):
            stopping = True
        # the idle worker's next slice first, then the record (a worker waits for this
        # round trip: the slice's results fetched, checked, the region split)
        fill(len(out))
        record(out)
    return part.exhausted, len(tasks)


def _check_returned(cl: Cluster, got: dict, sent: dict) -> None:
    """What a worker returned for a region is the rest of that region: the same level, range,
    owners and prefix, and reports only for choices outside its range (others' choices), as
    lists of integers. Anything else is refused, not recorded: a forged or confused state
    could make the partition look exhausted with paths never run."""
    state, reports = got.get("state"), got.get("reports")
    who = f"cluster {cl.address}: worker {got.get('worker')}"
    if not isinstance(state, dict) or any(state.get(k) != sent[k]
                                          for k in ("level", "base", "limit", "owners")):
        raise ClusterError(f"{who} returned the state of another region: refused")
    nodes, base = state.get("nodes"), sent["base"]
    if not isinstance(nodes, list) or len(nodes) < base + 1 or (
            base >= 0 and [n[2] for n in nodes[:base + 1]]
            != [n[2] for n in sent["nodes"][:base + 1]]):
        raise ClusterError(f"{who} returned a state off its region's path prefix: refused")
    limit = sent["limit"]

    def foreign(p: object) -> bool:  # a choice of another region (RegionRun._foreign)
        return isinstance(p, int) and 0 <= p and (p <= base or limit is not None and p > limit)
    if not isinstance(reports, list) or not all(
            isinstance(r, list | tuple) and len(r) == 3 and isinstance(r[0], int)
            and foreign(r[1]) and isinstance(r[2], list)
            and all(isinstance(v, int) for v in r[2]) for r in reports):
        raise ClusterError(f"{who} returned malformed reports: refused")
