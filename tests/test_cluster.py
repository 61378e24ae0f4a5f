"""Issue 18: exploration on a Dask cluster (harness/explore/cluster.py, work.py, partition.py).

The tests share one LocalCluster of 2 processes (conftest.dask_client); `jobs` with a given
client is how many tasks are kept in flight, so 3 exercises a partition into 3 regions on it.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from dataclasses import replace
from types import SimpleNamespace

import pytest

from emu.path import Cost
from harness import litmus
from harness.cli import main
from harness.errors import BadInput, WorkerDied
from harness.explore import cluster as C
from harness.explore import partition as P
from harness.explore.exhaustive import explore_exhaustive
from harness.explore.explore import explore
from harness.explore.schedule import Plan, plan_runner
from harness.scenario.load import Origin
from tests.test_explore import done_rows

Z4 = Plan("z4_bytewise", "buggy", strategy="exhaustive", preemptions=1, delays=0, interrupts=0,
          shrink=False)


def _rows(summary):
    return [(r.idx, r.seed, r.verdict, r.detail, r.decisions, r.token) for r in summary.results]


@pytest.mark.parametrize("strategy, scenario, variant", [
    ("random", "z5_record_placement", "buggy_late"), ("pct", "z6_unsorted_batch", "buggy")])
def test_random_and_pct_on_the_cluster_equal_one_process(dask_client, strategy, scenario,
                                                         variant):
    plan = Plan(scenario, variant, strategy=strategy, shrink=False)
    one = explore(plan, schedules=6)
    two = explore(plan, schedules=6, client=dask_client)
    assert _rows(one) == _rows(two)
    assert one.failures
    # the comparison can fail: other seeds are other schedules
    other = explore(replace(plan, seed=1), schedules=6, client=dask_client)
    assert _rows(other) != _rows(one)


@pytest.fixture
def short_slices(monkeypatch):
    """Slices of a few runs, so that a small search is split and its regions return often."""
    monkeypatch.setattr(C, "SLICE_SECONDS", 0.2)


@pytest.mark.parametrize("dpor", [False, True])
def test_exhaustive_explores_the_same_paths_with_1_2_and_3_workers(dask_client, short_slices,
                                                                   dpor):
    plan = replace(Z4, dpor=dpor)
    one = explore(plan)
    assert one.exhausted and one.failures
    paths = sorted(r.path for r in one.results)
    verdicts = sorted((r.path, r.verdict) for r in one.results)
    for jobs in ([3] if not dpor else [2, 3]):
        shown: list[int] = []  # what --log prints: the last result at each progress call
        many = explore(plan, client=dask_client, jobs=jobs,
                       progress=lambda s, shown=shown: shown.append(s.results[-1].idx))
        assert many.exhausted
        assert sorted(shown) == list(range(len(paths)))  # once each, results came in batches
        assert sorted(r.path for r in many.results) == paths  # each once, none missing
        assert sorted((r.path, r.verdict) for r in many.results) == verdicts
        assert [r.idx for r in many.results] == list(range(len(paths)))


def _litmus_runs(name: str):
    m = litmus.machine(next(lit for lit in litmus.CATALOGUE if lit.name == name))

    def one(src):
        return tuple(c.value for c in m.run(src).path)
    return one


class _Ok:
    ok = True


def _serial_paths(run, bound: Cost, reduce: bool) -> list:
    made = []
    res = explore_exhaustive(lambda s: (made.append(run(s)), _Ok())[1], bound, reduce=reduce)
    assert res.exhausted
    return sorted(made)


@pytest.mark.parametrize("name", ["TAIL", "XMC+INT3"])
@pytest.mark.parametrize("reduce", [False, True])
def test_litmus_paths_do_not_depend_on_the_number_of_workers(name, reduce):
    """The cluster's schedule of regions played in one process (partition.explore_partitioned:
    the same split, slice and report code as cluster.run_regions)."""
    run, bound = _litmus_runs(name), Cost(1, 2, 1)
    serial = _serial_paths(run, bound, reduce)
    for workers in (1, 2, 3):
        got = P.explore_partitioned(run, bound, reduce, workers, slice_runs=2)
        assert sorted(got) == serial, (name, reduce, workers)


def test_dpor_reports_between_regions_are_load_bearing(monkeypatch):
    """z4_bytewise (fixed) with DPOR in 3 regions: some runs add values to try at choices
    another region owns (on the litmus tests above the owners find them themselves).
    Dropping those reports loses paths, so the comparisons above would see it."""
    runner = plan_runner(replace(Z4, variant="fixed"), event_mode=True)

    def run(src):
        return tuple(c.value for c in runner.machine.run(src).path)
    serial = _serial_paths(run, Z4.bound, True)
    assert sorted(P.explore_partitioned(run, Z4.bound, True, 3, slice_runs=1)) == serial
    monkeypatch.setattr(P.Partition, "report", lambda self, level, position, values: None)
    assert set(P.explore_partitioned(run, Z4.bound, True, 3, slice_runs=1)) < set(serial)


def test_a_frontier_saved_on_the_cluster_resumes_on_one_process_and_back(dask_client,
                                                                       short_slices, tmp_path):
    """A distributed search stopped after some schedules (its frontier: regions) finishes on
    one process, and one process's frontier finishes on the cluster: the same paths, each
    once, as one uninterrupted search."""
    plan = replace(Z4, dpor=True)
    whole = explore(plan)
    paths = sorted(r.path for r in whole.results)
    db = tmp_path / "a.db"
    first = explore(plan, schedules=20, client=dask_client, jobs=3, db=db)
    assert not first.exhausted and len(first.results) == 20
    state = sqlite3.connect(db).execute("SELECT state FROM frontiers").fetchone()[0]
    assert "partition" in json.loads(state)  # saved as regions
    rest = explore(plan, db=db, resume=True)
    assert rest.exhausted and rest.skipped == 20
    new = [r.path for r in rest.results if r.idx >= 20]
    assert sorted([r.path for r in first.results] + new) == paths
    db2 = tmp_path / "b.db"
    first = explore(plan, schedules=20, db=db2)
    rest = explore(plan, db=db2, resume=True, client=dask_client, jobs=2)
    assert rest.exhausted
    done = sqlite3.connect(db2).execute(
        "SELECT COUNT(*), COUNT(DISTINCT idx) FROM schedules WHERE status = 'done'").fetchone()
    assert done == (len(paths), len(paths))
    assert sorted([r.path for r in first.results]
                  + [r.path for r in rest.results if r.idx >= 20]) == paths


def _worker_pids(client) -> dict[str, int]:
    return client.run(os.getpid)


def test_killing_a_worker_mid_task_loses_nothing(dask_client, tmp_path):
    """A worker SIGKILLed while it runs a batch: Dask runs the batch again elsewhere; every
    schedule is recorded once, as one process records it."""
    plan = Plan("z4_bytewise", "fixed", shrink=False)
    one = explore(plan, schedules=16)
    before = _worker_pids(dask_client)
    killed = []

    def kill_one(summary):
        if not killed and len(summary.results) >= 2:
            pid = sorted(before.values())[0]
            os.kill(pid, signal.SIGKILL)
            killed.append(pid)

    db = tmp_path / "k.db"
    two = explore(plan, schedules=16, client=dask_client, db=db, progress=kill_one)
    assert killed  # the premise: a worker died under the exploration
    assert _rows(two) == _rows(one)
    con = sqlite3.connect(db)
    assert con.execute("SELECT COUNT(*), COUNT(DISTINCT idx) FROM schedules WHERE status = "
                       "'done'").fetchone() == (16, 16)
    dask_client.wait_for_workers(2, timeout=60)  # the nanny restarts it for the next tests
    assert set(_worker_pids(dask_client).values()) != set(before.values())


def _explore_cmd(db, address, *extra):
    return [sys.executable, "-m", "harness", "explore", "z6_unsorted_batch", "--variant",
            "buggy", "--schedules", "30", "--no-shrink", "--db", str(db), "--cluster", address,
            *extra]


def test_client_sigkill_and_resume_lose_nothing_and_repeat_nothing(dask_client, tmp_path):
    """kill -9 of the client while its batches run on the cluster; --resume finishes: no
    finished schedule runs again, none is lost, every token as one process has it."""
    address = dask_client.scheduler.address
    db = tmp_path / "x.db"
    proc = subprocess.Popen(_explore_cmd(db, address, "--log"), stdout=subprocess.PIPE,
                            text=True)
    for n, _line in enumerate(proc.stdout, 1):  # wait for results, not for time
        if n == 4:
            proc.send_signal(signal.SIGKILL)
            break
    proc.wait()
    con = sqlite3.connect(db)
    before = dict(con.execute("SELECT idx, token FROM schedules WHERE status = 'done'"))
    assert 4 <= len(before) < 30
    out = subprocess.run(_explore_cmd(db, address, "--resume", "--json"), capture_output=True,
                         text=True, timeout=600)
    assert out.returncode == 1, out.stderr
    doc = json.loads(out.stdout)
    assert doc["schedules"] == 30 and doc["resumed"] == len(before) and doc["failures"] == 30
    after = dict(con.execute("SELECT idx, token FROM schedules WHERE status = 'done'"))
    assert len(after) == 30 and all(after[i] == t for i, t in before.items())
    one = explore(Plan("z6_unsorted_batch", "buggy", strategy="portfolio", shrink=False),
                  schedules=30)
    assert after == {r.idx: r.token for r in one.results}


def test_stop_at_first_stops_every_worker_and_shrinks_the_lowest(dask_client):
    plan = Plan("z3_call_emulation", "buggy", seed=0, shrink_budget=12)
    one = explore(plan, schedules=40, stop_at_first=True)
    two = explore(plan, schedules=40, stop_at_first=True, client=dask_client)
    assert [r.idx for r in one.results] == [0] and one.results[0].shrunk
    assert two.failures[0].idx == 0 and two.failures[0].shrunk == one.results[0].shrunk
    assert [r.idx for r in two.results if r.shrunk] == [0]
    assert len(two.results) <= 5  # what ran when it was found, never the 40
    ex = explore(replace(Z4, shrink=True, shrink_budget=4), stop_at_first=True,
                 client=dask_client)
    assert ex.failures and not ex.exhausted and len(ex.results) < 92


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_an_unreachable_cluster_is_bad_input_naming_it(monkeypatch, capsys):
    monkeypatch.setattr(C, "CONNECT_TIMEOUT", 1.0)
    address = f"tcp://127.0.0.1:{_free_port()}"
    for bad, why in ((address, "cannot reach the scheduler"),
                     ("127.0.0.1:8786", "not a scheduler address"),
                     ("tls://127.0.0.1:8786", "needs --tls-ca-file")):
        rc = main(["explore", "z4_bytewise", "--schedules", "2", "--cluster", bad])
        err = capsys.readouterr().err
        assert rc == 2 and why in err and bad in err and "Traceback" not in err, err


def test_a_worker_given_up_on_is_exit_3_not_a_failure(monkeypatch, capsys):
    """Dask gives up on a task whose workers keep dying (KilledWorker): exit 3, saying so."""
    from distributed import KilledWorker

    class Dead:
        def result(self):
            raise KilledWorker("run_batch-1", SimpleNamespace(address="tcp://127.0.0.1:1"), 3)
    with pytest.raises(WorkerDied):
        C._result(Dead())

    def dies(*args, **kwargs):
        raise WorkerDied("run_batch-1 on tcp://127.0.0.1:1")
    monkeypatch.setattr("harness.explore.explore.explore", dies)
    rc = main(["explore", "z4_bytewise", "--schedules", "2"])
    err = capsys.readouterr().err
    assert rc == 3 and "worker process died" in err and "Traceback" not in err


def test_a_version_mismatch_is_refused_naming_the_workers(dask_client, monkeypatch):
    plan = Plan("z4_bytewise", "fixed", shrink=False)
    monkeypatch.setattr(C, "textpoke_version", lambda: "99.0")
    with pytest.raises(C.ClusterError) as e:
        explore(plan, schedules=2, client=dask_client)
    addresses = list(_worker_pids(dask_client))
    assert all(a in str(e.value) for a in addresses) and "99.0" in str(e.value)
    monkeypatch.undo()
    assert explore(plan, schedules=2, client=dask_client).results  # the same, matching


def test_a_worker_that_cannot_import_the_scenario_is_refused(dask_client, tmp_path,
                                                             monkeypatch):
    """A scenario in a module only this process can import (on its sys.path, not the
    workers'): exit-2 material naming the worker and the module."""
    (tmp_path / "only_here.py").write_text(
        "from harness.scenario.shipped import SCENARIOS\nmine = SCENARIOS['z4_bytewise']\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    plan = Plan("z4_bytewise", "fixed", shrink=False, origin=Origin(module="only_here"))
    assert explore(plan, schedules=1).results  # it loads here
    with pytest.raises(C.ClusterError) as e:
        explore(plan, schedules=2, client=dask_client)
    assert "cannot load" in str(e.value) and "only_here" in str(e.value)
    assert any(a in str(e.value) for a in _worker_pids(dask_client))


def test_a_result_that_does_not_match_its_task_is_refused():
    cl = C.Cluster(None, "tcp://127.0.0.1:1")
    plan = Plan("z4_bytewise", "fixed")
    good = {"worker": "w", "error": None, "scenario": "z4_bytewise", "variant": "fixed",
            "build": "b"}
    assert C._checked(cl, plan, "fixed", "b", good) is good
    for key, value in (("scenario", "z5_record_placement"), ("variant", "buggy"),
                       ("build", "other")):
        with pytest.raises(C.ClusterError, match=f"{key}.*refused"):
            C._checked(cl, plan, "fixed", "b", good | {key: value})
    with pytest.raises(C.ClusterError, match="seed"):
        C.schedule_result({"seed": "0", "verdict": "pass", "detail": "", "decisions": 1}, 0)
    run = {"seed": 0, "verdict": "pass", "detail": "", "decisions": 2}
    assert C.schedule_result(run | {"path": [0, 1]}, 0).path == C.path_digest([0, 1])
    assert C.path_digest([0, 1]) not in (C.path_digest([1, 0]), C.path_digest([0, 1, 0]))
    for path in (["0", 1], [0.5, 1], [1 << 64]):  # a path's values are integers of 64 bits
        with pytest.raises(C.ClusterError, match="path.*refused"):
            C.schedule_result(run | {"path": path}, 0)


def test_a_run_outside_its_regions_prefix_is_refused(dask_client, monkeypatch):
    """A worker's result whose path does not start with its region's prefix is not
    recorded (here: every run's path is moved by one choice). Slices of one run each: the
    first region has no prefix to check, and a fast worker exhausted this small search in
    the first 0.05 s slice once, before any region had one."""
    real = C.explore_region

    def forged(*args):
        got = real(*args)
        for d in got.get("results", []):
            d["path"] = [1 - d["path"][0], *d["path"][1:]]
        return got
    monkeypatch.setattr(C, "explore_region", forged)
    monkeypatch.setattr(C, "SLICE_SECONDS", 1e-6)
    with pytest.raises(C.ClusterError, match="outside its region"):
        explore(Z4, client=dask_client, jobs=3)


def test_a_real_dask_scheduler_and_two_workers(tmp_path):
    """`dask scheduler` + two `dask worker` processes on localhost, driven by `textpoke
    explore --cluster`: the same results as one process."""
    port = _free_port()
    address = f"tcp://127.0.0.1:{port}"
    dask = os.path.join(os.path.dirname(sys.executable), "dask")
    procs = [subprocess.Popen([dask, "scheduler", "--host", "127.0.0.1", "--port", str(port),
                               "--no-dashboard"], stderr=subprocess.DEVNULL)]
    try:
        time.sleep(1)
        for _ in range(2):
            procs.append(subprocess.Popen([dask, "worker", address, "--nthreads", "1",
                                           "--no-dashboard"], stderr=subprocess.DEVNULL))
        cmd = [sys.executable, "-m", "harness", "explore", "z5_record_placement", "--variant",
               "buggy_late", "--schedules", "6", "--no-shrink", "--json"]
        out = subprocess.run([*cmd, "--cluster", address], capture_output=True, text=True,
                             timeout=300)
        ref = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
        assert out.returncode == ref.returncode == 1, out.stderr
        assert json.loads(out.stdout)["failed"] == json.loads(ref.stdout)["failed"]
    finally:
        for p in procs:
            p.send_signal(signal.SIGINT)
        for p in procs:
            try:
                p.wait(timeout=20)
            except subprocess.TimeoutExpired:
                p.kill()


def test_side_by_side_reports_which_strategy_found_what_first(dask_client):
    """Random, PCT and exhaustive at once on the cluster; with --stop-at-first each stops
    once any has a failure. z4's buggy race shows at random's first
    schedule; on the fixed variant none finds anything."""
    from harness.explore.side_by_side import side_by_side

    plan = Plan("z4_bytewise", "buggy", preemptions=1, delays=0, interrupts=0, shrink=False)
    entries = side_by_side(plan, schedules=60, stop_at_first=True, client=dask_client)
    assert sorted(e.strategy for e in entries) == ["exhaustive", "pct", "random"]
    first = entries[0]
    assert first.first_failure_seconds is not None and first.summary.failures
    # the others stopped too: none ran its whole budget (unstopped, all three do: exhaustive
    # finds its first failure after a dozen schedules, and the random ones fail on most)
    assert all(len(e.summary.results) < 60 for e in entries), \
        [(e.strategy, len(e.summary.results)) for e in entries]
    fixed = side_by_side(replace(plan, variant="fixed"), schedules=2, client=dask_client)
    assert all(e.first_failure_seconds is None and not e.summary.failures for e in fixed)
    with pytest.raises(BadInput, match="needs a cluster"):
        side_by_side(plan, schedules=2)


def test_an_exhaustive_client_killed_on_the_cluster_resumes_on_one_process(dask_client,
                                                                         tmp_path):
    """kill -9 of the client of a distributed exhaustive search (regions out on workers);
    --resume in one process: every path once, the failures those of one uninterrupted
    search (their tokens hold their paths). P=2: 1,942 schedules, long enough on the cluster
    to be killed in (P=1's 64 could all be done before 20 were committed)."""
    whole = explore(replace(Z4, dpor=True, preemptions=2))
    db = tmp_path / "e.db"
    cmd = [sys.executable, "-m", "harness", "explore", "z4_bytewise", "--variant", "buggy",
           "--strategy", "exhaustive", "--preemptions", "2", "--delays", "0", "--interrupts",
           "0", "--dpor", "--no-shrink", "--db", str(db)]
    proc = subprocess.Popen([*cmd, "--cluster", dask_client.scheduler.address, "--log"],
                            stdout=subprocess.PIPE, text=True,
                            env=os.environ | {"TEXTPOKE_SLICE_SECONDS": "0.1"})
    for n, _line in enumerate(proc.stdout, 1):  # wait for results, not for time
        # past the first slices (regions out on both workers), and at least 20 of them
        # committed: results are committed together, about every second (explore.Recorder)
        if n >= 20 and done_rows(db) >= 20:
            proc.send_signal(signal.SIGKILL)
            break
    proc.wait()
    con = sqlite3.connect(db)
    before = con.execute("SELECT COUNT(*) FROM schedules WHERE status = 'done'").fetchone()[0]
    assert 20 <= before < len(whole.results)
    out = subprocess.run([*cmd, "--resume", "--json"], capture_output=True, text=True,
                         timeout=600)
    doc = json.loads(out.stdout)
    assert out.returncode == 1 and doc["exhausted"] is True and doc["resumed"] == before
    rows = con.execute("SELECT idx, verdict, token FROM schedules WHERE status = 'done'"
                       ).fetchall()
    assert sorted(i for i, _v, _t in rows) == list(range(len(whole.results)))
    assert sorted(t for _i, v, t in rows if v != "pass") == \
        sorted(r.token for r in whole.failures)


def test_the_version_a_worker_reports_names_its_code_revision(tmp_path):
    """Two revisions of one textpoke version differ in their code digest (a worker running
    yesterday's checkout is refused, not only one that builds the scenario otherwise)."""
    from harness import __version__
    from harness.explore.work import code_digest, textpoke_version

    for package in ("emu", "harness", "guest_code"):
        (tmp_path / package).mkdir()
    (tmp_path / "emu" / "machine.py").write_text("x = 1\n")
    (tmp_path / "guest_code" / "users.S").write_text("nop\n")
    before = code_digest(tmp_path)
    (tmp_path / "emu" / "machine.py").write_text("x = 2\n")
    assert code_digest(tmp_path) != before
    (tmp_path / "emu" / "machine.py").write_text("x = 1\n")
    (tmp_path / "emu" / "notes.txt").write_text("not code")
    assert code_digest(tmp_path) == before
    assert textpoke_version().startswith(f"{__version__}+")


def _ownership_gaps(part: P.Partition) -> list[tuple[int, int, int]]:
    """(region, position, level) for each choice of a region's prefix that its owners name
    on a level no region owns it on: a DPOR report there would find no owner."""
    out = []
    for r in part.regions:
        s = r.state
        for pos in range(s["base"] + 1):
            level = next((lv for lo, hi, lv in s["owners"] if lo <= pos <= hi), s["level"])
            if not any(o.owns(level, pos) for o in part.regions):
                out.append((r.id, pos, level))
    return out


def test_every_prefix_choice_of_every_region_has_an_owner(monkeypatch):
    """Regions split again and again (8 workers, a slice of one run): after every split each
    region names, for every choice of its prefix, the region that owns it. A range's second
    half once forgot the first half's choices, and the regions split off its deeper levels
    then named themselves for them."""
    gaps: list = []
    split = P.Partition.split

    def checked(self, region):
        out = split(self, region)
        gaps.extend(_ownership_gaps(self))
        return out
    monkeypatch.setattr(P.Partition, "split", checked)
    run = _litmus_runs("TAIL")
    serial = _serial_paths(run, Cost(2, 2, 1), True)
    assert sorted(P.explore_partitioned(run, Cost(2, 2, 1), True, 8, slice_runs=1)) == serial
    assert gaps == []


@pytest.mark.parametrize(("forge", "says"), [
    (lambda g: g["state"].update(limit=0), "another region"),
    (lambda g: g["state"].update(level=g["state"]["level"] + 7), "another region"),
    (lambda g: g.update(reports=[[0, "x", [1]]]), "malformed reports"),
])
def test_a_returned_region_state_that_is_not_the_regions_rest_is_refused(
        dask_client, monkeypatch, forge, says):
    """A worker's region state with another limit or level (which could make the partition
    look exhausted with paths never run) or malformed reports: refused, not recorded."""
    real = C.explore_region

    def forged(*args):
        got = real(*args)
        if isinstance(got.get("state"), dict):
            forge(got)
        return got
    monkeypatch.setattr(C, "explore_region", forged)
    monkeypatch.setattr(C, "SLICE_SECONDS", 0.05)
    with pytest.raises(C.ClusterError, match=says):
        explore(Z4, client=dask_client, jobs=3)


@pytest.mark.parametrize("text", ["abc", "0", "-1", "nan", "inf", ""])
def test_a_bad_slice_length_is_bad_input_naming_the_variable(monkeypatch, text):
    monkeypatch.setenv(C.SLICE_ENV, text)
    with pytest.raises(C.ClusterError, match=C.SLICE_ENV):
        C.slice_seconds()


def test_the_slice_length_from_the_environment(monkeypatch):
    monkeypatch.delenv(C.SLICE_ENV, raising=False)
    assert C.slice_seconds() == C.SLICE_SECONDS
    monkeypatch.setenv(C.SLICE_ENV, "2.5")
    assert C.slice_seconds() == 2.5


def test_a_bad_slice_length_is_refused_before_any_work_and_only_where_it_counts(
        monkeypatch, tmp_path, capsys):
    """Refused with exit 2 before a cluster starts or a database is written; an exploration
    in this process does not read it (the module once parsed it on import: any command
    would have crashed)."""
    monkeypatch.setenv(C.SLICE_ENV, "abc")
    db = tmp_path / "x.db"
    args = ["explore", "z4_bytewise", "--variant", "fixed", "--strategy", "exhaustive",
            "--preemptions", "0", "--delays", "1", "--interrupts", "0"]
    assert main([*args, "--jobs", "2", "--db", str(db)]) == 2
    err = capsys.readouterr().err
    assert C.SLICE_ENV in err and "Traceback" not in err and not db.exists()
    assert main(args) == 0


def test_the_clusters_textpoke_starts_keep_short_low_level_logs(monkeypatch):
    """Dask keeps the last low-level-log-length messages of each stream whole (the
    scheduler's, every exhaustive task with its region's state), and a worker samples its
    task's thread every 10 ms for a dashboard: the client and LocalCluster connect() starts
    are made with LOW_LEVEL_LOG and without profiling, and the caller's settings are back
    after. (The LocalCluster's nannies hand their configuration to the workers' processes:
    checked by hand, a worker's `periodic_callbacks` has no "profile" then.)"""
    import dask
    import distributed

    key, profile = "distributed.admin.low-level-log-length", "distributed.worker.profile.enabled"
    seen = []

    class Fake:
        scheduler_address = "tcp://127.0.0.1:1"

        def __init__(self, *args, **kwargs):
            seen.append((type(self).__name__, dask.config.get(key), dask.config.get(profile)))

        def wait_for_workers(self, n, timeout):
            pass

        def close(self):
            seen.append(("close", dask.config.get(key), dask.config.get(profile)))

    monkeypatch.setattr(distributed, "LocalCluster", type("LocalCluster", (Fake,), {}))
    monkeypatch.setattr(distributed, "Client", type("Client", (Fake,), {}))
    before = dask.config.get(key)
    assert before > C.LOW_LEVEL_LOG and dask.config.get(profile) is True
    with C.connect(C.ClusterSpec(jobs=2)):
        pass
    assert seen == [(name, C.LOW_LEVEL_LOG, False)
                    for name in ("LocalCluster", "Client", "close", "close")]
    assert dask.config.get(key) == before and dask.config.get(profile) is True


def test_a_local_cluster_on_a_taken_dashboard_port_says_nothing_of_it(monkeypatch):
    """A second exploration at once (or pytest's own cluster) leaves the scheduler's HTTP
    port 8787 taken; Dask then warns to whoever runs textpoke, of a port nothing of ours
    uses. connect() silences that warning and no other."""
    import warnings

    import distributed

    class Fake:
        scheduler_address = "tcp://127.0.0.1:1"

        def __init__(self, *args, **kwargs):
            if type(self).__name__ == "LocalCluster":  # as distributed/node.py says it
                warnings.warn("Port 8787 is already in use.\nPerhaps you already have a "
                              "cluster running?\nHosting the HTTP server on port 40001 "
                              "instead", UserWarning, stacklevel=2)
                warnings.warn("another warning", UserWarning, stacklevel=2)

        def wait_for_workers(self, n, timeout):
            pass

        def close(self):
            pass

    monkeypatch.setattr(distributed, "LocalCluster", type("LocalCluster", (Fake,), {}))
    monkeypatch.setattr(distributed, "Client", type("Client", (Fake,), {}))
    with warnings.catch_warnings(record=True) as said:
        warnings.simplefilter("always")
        with C.connect(C.ClusterSpec(jobs=2)):
            pass
    assert [str(w.message) for w in said] == ["another warning"]
