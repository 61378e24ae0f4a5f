"""Issue 5: tokens, shrinking, strategies, persistence and resumption (--jobs and --cluster
invariance: tests/test_cluster.py)."""

import base64
import json
import os
import signal
import sqlite3
import subprocess
import sys
import zlib

import pytest

from emu.decisions import ReplayError, ReplaySource
from emu.path import Choice, Kind, decode_path, encode_path
from harness.explore.explore import explore, replay
from harness.explore.schedule import Plan, run_schedule
from harness.explore.strategies import PctSource
from harness.explore.token import Token, TokenError
from harness.run import Runner
from harness.scenario.shipped import SCENARIOS
from tests.conftest import one_changed


def _failing(scenario="z4_bytewise", variant="buggy"):
    for i in range(50):
        r = run_schedule(Plan(scenario, variant, shrink=True, shrink_budget=40), i)
        if r.failed:
            return r
    raise AssertionError("no failure found")


def test_token_round_trip():
    tok = Token("static_key", "correct", 4, (Choice(Kind.CPU, 4, 2), Choice(Kind.QUANTUM, 16, 3)),
                "abcdef012345", seed=7, tsc_period=3)
    text = tok.encode()
    assert text.startswith("tp2.") and Token.decode(text) == tok
    assert Token.decode(text[:20] + "\n  " + text[20:]) == tok  # survives line wrapping


@pytest.mark.parametrize("mangle,msg", [
    (lambda t: "tp1" + t[3:], "version"), (lambda t: t[:-1] + ("0" if t[-1] != "0" else "1"),
                                           "checksum"),
    (lambda t: t[:10] + "!" + t[11:], "damaged"), (lambda t: "hello", "not a replay token"),
])
def test_bad_tokens_are_refused(mangle, msg):
    text = Token("static_key", "correct", 4, (), "x").encode()
    with pytest.raises(TokenError, match=msg):
        Token.decode(mangle(text))


def _edit(token: str, **fields) -> str:
    """A checksum-valid token with some JSON fields replaced (what a hand edit makes)."""
    body = token.split(".")[1]
    doc = json.loads(zlib.decompress(base64.urlsafe_b64decode(body + "=" * (-len(body) % 4))))
    doc.update(fields)
    raw = zlib.compress(json.dumps(doc).encode())
    return f"tp2.{base64.urlsafe_b64encode(raw).decode().rstrip('=')}.{zlib.crc32(raw):08x}"


@pytest.mark.parametrize("fields,msg", [
    ({"s": ["static_key"]}, "scenario"), ({"v": 3}, "variant"), ({"c": 0}, "cpus"),
    ({"c": "4"}, "cpus"), ({"t": [0, 4096, 1]}, "trace"), ({"t": [1, 10, 1]}, "trace"),
    ({"t": [1, 4096]}, "trace"), ({"seed": -1}, "seed"), ({"e": 2}, "event mode"),
    ({"p": "c3.7"}, "path"), ({"p": 5}, "path"), ({"g": ""}, "fingerprint"),
])
def test_checksum_valid_tokens_with_bad_fields_are_refused(fields, msg):
    text = Token("static_key", "correct", 4, (Choice(Kind.CPU, 4, 1),), "x").encode()
    with pytest.raises(TokenError, match=msg):
        Token.decode(_edit(text, **fields))


def test_token_against_another_build_is_refused():
    """The fingerprint covers code, data tables, the machine configuration (the event-mode
    fetch model included) and the trace settings, not the guest code alone."""
    r = _failing()
    tok = Token.decode(r.token)
    forged = Token(tok.scenario, tok.variant, tok.cpus, tok.path, "000000000000", tok.seed)
    with pytest.raises(TokenError, match="another build"):
        replay(forged.encode())
    # the same path under other trace settings names another build too
    other = Token(tok.scenario, tok.variant, tok.cpus, tok.path, tok.fingerprint, tok.seed,
                  tsc_period=2)
    with pytest.raises(TokenError, match="another build"):
        replay(other.encode())


def test_a_truncated_or_extended_path_is_refused_not_replayed_as_pass():
    """A checksum-valid token whose path was cut (or grown) names the position where the run
    and the path part; it used to be continued by a default policy and replayed as `pass`."""
    r = _failing("z2_handler_vs_teardown")
    tok = Token.decode(r.token)
    path = encode_path(tok.path)
    cut = _edit(r.token, p=encode_path(tok.path[:len(tok.path) // 3]))
    with pytest.raises(ReplayError, match=f"decision {len(tok.path) // 3}: the path ended"):
        replay(cut)
    grown = _edit(r.token, p=path + ",c2.0")
    with pytest.raises(ReplayError, match="the run ended"):
        replay(grown)
    out = subprocess.run([sys.executable, "-m", "harness", "replay", cut], capture_output=True,
                         text=True, timeout=600)
    assert out.returncode == 2 and "decision" in out.stderr
    assert decode_path(path) == list(tok.path)


def test_replay_reproduces_the_failure_and_the_shrunk_one():
    r = _failing()
    _tok, out = replay(r.token)
    assert out.verdict.kind == r.verdict and str(out.verdict) == r.detail
    assert r.shrunk_deviations <= r.deviations
    tok, small = replay(r.shrunk)
    assert small.verdict.kind == r.verdict  # the shrunk path still fails the same way
    assert len(small.result.path) == len(tok.path)  # recorded whole, simplest choices too


def test_shrunk_path_is_exact_not_lenient():
    r = _failing("z6_unsorted_batch")
    tok = Token.decode(r.shrunk)
    runner = Runner(SCENARIOS[tok.scenario], tok.variant, tok.cpus)
    a = runner.run(ReplaySource(tok.path))
    b = runner.run(ReplaySource(tok.path))
    assert a.result.truth is not b.result.truth
    assert a.result.truth.digest() == b.result.truth.digest() and a.verdict.kind == r.verdict
    c = runner.run(one_changed(a.result.path))  # the same check sees one decision changed
    assert c.result.truth.digest() != a.result.truth.digest()


def test_pct_priorities_and_bound():
    src = PctSource(seed=3, ncpus=4, depth=3, steps=100)
    assert sorted(src.prio.values()) == [3, 4, 5, 6] and len(src.changes) == 2
    assert PctSource.bound(4, 100, 3) == pytest.approx(1 / (4 * 100 ** 2))
    s = explore(Plan("z6_unsorted_batch", "buggy", strategy="pct", shrink=False), schedules=3)
    assert s.bound is not None and s.plan.steps > 0 and s.failures


def _explore_cmd(db, *extra):
    return [sys.executable, "-m", "harness", "explore", "z6_unsorted_batch", "--variant",
            "buggy", "--schedules", "30", "--no-shrink", "--db", str(db), *extra]


def done_rows(db) -> int:
    """The schedules a running search has committed to `db` so far (0 before it has any)."""
    try:
        con = sqlite3.connect(db, timeout=5)
        try:
            return con.execute("SELECT COUNT(*) FROM schedules WHERE status = 'done'"
                               ).fetchone()[0]
        finally:
            con.close()
    except sqlite3.OperationalError:  # no table yet
        return 0


def test_sigkill_and_resume_lose_nothing_and_repeat_nothing(tmp_path):
    db = tmp_path / "x.db"
    proc = subprocess.Popen(_explore_cmd(db, "--log"), stdout=subprocess.PIPE, text=True)
    seen = []
    for line in proc.stdout:  # wait for results, not for time
        seen.append(line)
        if len(seen) == 6:
            proc.send_signal(signal.SIGKILL)
            break
    proc.wait()
    con = sqlite3.connect(db)
    before = dict(con.execute("SELECT idx, token FROM schedules WHERE status = 'done'"))
    assert len(before) >= 6
    out = subprocess.run(_explore_cmd(db, "--resume", "--json"), capture_output=True,
                         text=True, timeout=600)
    assert out.returncode == 1  # every schedule of the buggy variant fails
    doc = json.loads(out.stdout)
    assert doc["schedules"] == 30 and doc["resumed"] == len(before) and doc["failures"] == 30
    after = dict(con.execute("SELECT idx, token FROM schedules WHERE status = 'done'"))
    assert len(after) == 30 and all(after[i] == t for i, t in before.items())
    assert con.execute("SELECT COUNT(*) FROM explorations").fetchone()[0] == 1


def test_exhaustive_resumes_from_its_frontier_after_sigkill(tmp_path):
    """The search's frontier is committed with the results: a resumed exhaustive search runs
    exactly the schedules the killed one had left, in the same order."""
    plan = Plan("z4_bytewise", "buggy", strategy="exhaustive", preemptions=1, delays=0,
                interrupts=0, shrink=False)
    whole = explore(plan)
    assert whole.exhausted and whole.failures and len(whole.results) > 20
    db = tmp_path / "x.db"
    cmd = [sys.executable, "-m", "harness", "explore", "z4_bytewise", "--variant", "buggy",
           "--strategy", "exhaustive", "--preemptions", "1", "--delays", "0", "--interrupts", "0",
           "--no-shrink", "--db", str(db)]
    proc = subprocess.Popen([*cmd, "--log"], stdout=subprocess.PIPE, text=True)
    for n, _line in enumerate(proc.stdout, 1):  # wait for results, not for time
        if n >= 10 and done_rows(db) >= 10:  # (committed together, about every second)
            proc.send_signal(signal.SIGKILL)
            break
    proc.wait()
    out = subprocess.run([*cmd, "--resume", "--json"], capture_output=True, text=True,
                         timeout=600)
    doc = json.loads(out.stdout)
    assert out.returncode == 1 and doc["exhausted"] is True and doc["resumed"] >= 10
    assert doc["schedules"] == len(whole.results) and doc["failures"] == len(whole.failures)
    con = sqlite3.connect(db)
    rows = con.execute("SELECT idx, verdict, token FROM schedules WHERE status = 'done' "
                       "ORDER BY idx").fetchall()
    assert rows == [(r.idx, r.verdict, r.token) for r in whole.results]


def terminal_sigint() -> None:
    """SIGINT's disposition as under a terminal: a shell ignores it for background jobs, CI
    may run the tests so, and Python then installs no KeyboardInterrupt handler at all."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


@pytest.mark.parametrize("strategy", ["random", "exhaustive"])
def test_ctrl_c_reports_what_was_found_and_resume_goes_on(tmp_path, strategy, request):
    """SIGINT to the whole process group, as a terminal's Ctrl-C sends it (the --jobs
    LocalCluster's workers too; exhaustive: on the tests' shared cluster): a summary of the
    recorded schedules, no traceback, exit 130; --resume finishes the rest."""
    db = tmp_path / "x.db"
    where = ["--jobs", "2"] if strategy == "random" else \
        ["--cluster", request.getfixturevalue("dask_client").scheduler.address]
    cmd = [sys.executable, "-m", "harness", "explore", "z4_bytewise", "--variant", "fixed",
           "--strategy", strategy, *where, "--db", str(db), "--json",
           *(["--preemptions", "1", "--delays", "0", "--interrupts", "0"]
             if strategy == "exhaustive" else ["--schedules", "40"])]
    proc = subprocess.Popen([*cmd, "--log"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, start_new_session=True, preexec_fn=terminal_sigint)
    lines = []
    for line in proc.stderr:  # wait for results, not for time (--json: the log is on stderr)
        if line.startswith("schedule "):  # not a worker's own message
            lines.append(line)
        if len(lines) == 4:
            os.killpg(proc.pid, signal.SIGINT)
            break
    rest, err = proc.communicate(timeout=600)
    assert proc.returncode == 130 and "Traceback" not in err, err
    doc = json.loads(rest)  # only JSON on stdout
    assert doc["interrupted"] is True and doc["failures"] == 0 and doc["schedules"] >= 4
    assert doc["exhausted"] is (False if strategy == "exhaustive" else None)
    con = sqlite3.connect(db)
    done = con.execute("SELECT COUNT(*) FROM schedules WHERE status = 'done'").fetchone()[0]
    assert done == doc["schedules"]
    out = subprocess.run([*cmd, "--resume"], capture_output=True, text=True, timeout=600)
    again = json.loads(out.stdout)
    assert out.returncode == 0 and again["resumed"] == done and not again["interrupted"]
    assert again["exhausted"] if strategy == "exhaustive" else again["schedules"] == 40
    assert con.execute("SELECT COUNT(*), MAX(idx) FROM schedules WHERE status = 'done'"
                       ).fetchone() == (again["schedules"], again["schedules"] - 1)


def test_ctrl_c_propagates_from_the_library_unless_asked():
    """A library caller (pytest, the zoo) gets the KeyboardInterrupt; the command line asks
    for the summary instead."""
    def stop_after_two(s):
        if len(s.results) == 2:
            raise KeyboardInterrupt
    plan = Plan("z4_bytewise", "fixed", shrink=False)
    with pytest.raises(KeyboardInterrupt):
        explore(plan, schedules=5, progress=stop_after_two)
    s = explore(plan, schedules=5, progress=stop_after_two, interruptible=True)
    assert s.interrupted and [r.idx for r in s.results] == [0, 1]


def test_a_damaged_or_foreign_frontier_is_refused_and_keeps_the_results(tmp_path):
    db = tmp_path / "x.db"
    cmd = [sys.executable, "-m", "harness", "explore", "z4_bytewise", "--variant", "fixed",
           "--strategy", "exhaustive", "--preemptions", "1", "--delays", "0", "--interrupts", "0",
           "--db", str(db)]
    assert subprocess.run([*cmd, "--schedules", "3"], capture_output=True, timeout=600
                          ).returncode == 0
    con = sqlite3.connect(db)
    (state,) = con.execute("SELECT state FROM frontiers").fetchone()
    doc = json.loads(state)
    old_model = json.dumps(doc | {"build": "0" * 16})
    doc["search"]["levels"][0][1][0][1] += 1  # a choice this machine never offers there
    for bad, why in [('{"guest": 1}', "damaged"), (old_model, "ran another build"),
                     (json.dumps(doc), "choice 0: the search expected a cpu choice of")]:
        with con:
            con.execute("UPDATE frontiers SET state = ?", (bad,))
        out = subprocess.run([*cmd, "--resume"], capture_output=True, text=True, timeout=600)
        assert out.returncode == 2 and why in out.stderr, out.stderr
        assert con.execute("SELECT COUNT(*) FROM schedules WHERE status = 'done'"
                           ).fetchone()[0] == 3


def test_cli_explore_reports_tokens_and_exit_codes():
    ok = subprocess.run([sys.executable, "-m", "harness", "explore", "z4_bytewise", "--variant",
                         "fixed", "--schedules", "3", "--json"], capture_output=True, text=True,
                        timeout=600)
    assert ok.returncode == 0 and json.loads(ok.stdout)["failures"] == 0
    bad = subprocess.run([sys.executable, "-m", "harness", "explore", "static_key",
                          "--strategy", "nope"], capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2


def test_zoo_finds_every_buggy_variant_and_passes_every_fixed_one():
    out = subprocess.run([sys.executable, "-m", "harness", "zoo", "--json", "--buggy-budget",
                          "100", "--fixed-budget", "4"], capture_output=True, text=True,
                         timeout=900)
    rows = json.loads(out.stdout)
    assert out.returncode == 0, [r for r in rows if not r["found"]]
    assert {r["card"].split()[0] for r in rows} == {f"Z{i}" for i in range(1, 8)}
    for r in rows:
        assert r["found"] and r["fixed_passed"] == r["fixed_schedules"] == 4
        assert r["shrunk_deviations"] <= r["deviations"] and r["token"].startswith("tp2.")


def test_replay_artifacts_are_byte_identical_across_processes(tmp_path):
    found = subprocess.run([sys.executable, "-m", "harness", "explore", "z3_call_emulation",
                            "--variant", "buggy", "--schedules", "2", "--json"],
                           capture_output=True, text=True, timeout=600)
    token = json.loads(found.stdout)["failed"][0]["shrunk_token"]
    dirs = [tmp_path / "a", tmp_path / "b"]
    for d in dirs:
        out = subprocess.run([sys.executable, "-m", "harness", "replay", token, "--out", str(d)],
                             capture_output=True, text=True, timeout=600)
        assert out.returncode == 1 and "guest_fault" in out.stdout
    names = sorted(p.name for p in dirs[0].iterdir())
    assert names == sorted(p.name for p in dirs[1].iterdir()) and "cpu0.pt" in names
    for name in names:
        assert (dirs[0] / name).read_bytes() == (dirs[1] / name).read_bytes(), name


# ------------------------------------------------------------ results committed in slices
def _result(idx: int, failed: bool = False):
    from emu.verdict import VerdictKind
    from harness.explore.schedule import ScheduleResult
    kind = VerdictKind.SEMANTICS if failed else VerdictKind.PASS
    return ScheduleResult(idx, 0, kind.value, "", 1, "", None, None)


def test_a_result_shares_its_verdict_and_detail_text_with_the_others():
    """An exploration keeps every schedule's result: equal texts made apart (a worker's
    results are unpickled one by one) are one object, and a result has no __dict__.
    Perturbed: without the interning the details are two objects."""
    from harness.explore.cluster import schedule_result

    def made(idx: int):
        return schedule_result({"seed": 0, "verdict": "".join(["pa", "ss"]),
                                "detail": "".join(["every CPU ", "finished"]),
                                "decisions": 3, "path": [0, 1, idx]}, idx)

    a, b = made(0), made(1)
    assert a.detail == b.detail and a.detail is b.detail and a.verdict is b.verdict
    assert a.path != b.path and not hasattr(a, "__dict__")


def test_recorder_batches_commits_and_a_failure_goes_at_once():
    from harness.explore.explore import Recorder
    writes: list[tuple[list[int], str | None]] = []
    rec = Recorder(lambda rs, f: writes.append(([r.idx for r in rs], f)), batched=True,
                   seconds=3600)
    rec.add(_result(0), lambda: "after 0")
    rec.add(_result(1), lambda: "after 1")
    assert writes == []  # within the second: pending, not reported either
    rec.add(_result(2, failed=True), lambda: "after 2")
    assert writes == [([0, 1, 2], "after 2")]  # the failure and all before it, one commit
    rec.add(_result(3), lambda: "after 3")
    rec.flush()
    rec.flush()  # nothing pending: no empty commit
    assert writes[1:] == [([3], "after 3")]
    unbatched: list[list[int]] = []
    one = Recorder(lambda rs, f: unbatched.append([r.idx for r in rs]), batched=False)
    one.add(_result(0))
    one.add(_result(1))
    assert unbatched == [[0], [1]]


def test_recorder_commits_nothing_a_ctrl_c_cut_off():
    from harness.explore.explore import Recorder
    writes = []
    rec = Recorder(lambda rs, f: writes.append(rs), batched=True, seconds=3600)

    def cut() -> str:
        raise KeyboardInterrupt
    rec.add(_result(0), cut)
    with pytest.raises(KeyboardInterrupt):
        rec.flush()
    rec.flush()
    assert writes == []  # taken off before the frontier: --resume runs it again


@pytest.mark.parametrize("where", ["machine", "judge", "crash"])
def test_ctrl_c_in_one_process_keeps_a_resumable_search(tmp_path, monkeypatch, where):
    """Ctrl-C in a one-process exhaustive search whose results wait for their commit: in the
    machine (the search still stands where the last result left it) what waits is committed
    with that frontier; after the search took the run in (while it is judged) nothing of it
    is, as the frontier has moved past a run not recorded. An error in the machine (`crash`)
    is as Ctrl-C there. Either way --resume makes exactly the schedules of the whole search,
    each once, with the same verdicts."""
    from harness.explore import explore as explore_mod
    from harness.explore import work
    plan = Plan("z4_bytewise", "buggy", strategy="exhaustive", preemptions=1, delays=0,
                interrupts=0, shrink=False)
    whole = explore(plan)
    assert whole.exhausted and len(whole.results) > 12
    monkeypatch.setattr(explore_mod, "RECORD_SECONDS", 3600.0)
    calls = {"n": 0}
    if where in ("machine", "crash"):
        real = Runner.run

        def patched(self, *args, **kwargs):
            calls["n"] += 1
            if calls["n"] == 12:
                raise KeyboardInterrupt if where == "machine" else RuntimeError
            return real(self, *args, **kwargs)
        monkeypatch.setattr(Runner, "run", patched)
    else:
        real = work.judge

        def patched(*args, **kwargs):
            calls["n"] += 1
            if calls["n"] == 12:
                raise KeyboardInterrupt
            return real(*args, **kwargs)
        monkeypatch.setattr(work, "judge", patched)
    db = tmp_path / "x.db"
    if where == "crash":
        with pytest.raises(RuntimeError):
            explore(plan, db=db)
    else:
        cut = explore(plan, db=db, interruptible=True)
        assert cut.interrupted and not cut.exhausted
    monkeypatch.undo()
    con = sqlite3.connect(db)
    done = con.execute("SELECT COUNT(*) FROM schedules WHERE status = 'done'").fetchone()[0]
    assert done == (0 if where == "judge" else 11)  # none failed yet: all were waiting
    if where != "crash":
        assert done == len(cut.results)
    again = explore(plan, db=db, resume=True)
    assert again.exhausted and len(again.results) == len(whole.results)
    rows = con.execute("SELECT idx, verdict, token FROM schedules WHERE status = 'done' "
                       "ORDER BY idx").fetchall()
    assert rows == [(r.idx, r.verdict, r.token) for r in whole.results]


@pytest.mark.parametrize("stop", [KeyboardInterrupt, RuntimeError])
def test_what_ends_one_process_keeps_the_finished_random_schedules(tmp_path, monkeypatch,
                                                                   stop):
    """Random schedules waiting for their commit are whole results: Ctrl-C, or an error that
    ends the exploration (a crash: exit 3 on the command line), commits them first."""
    from harness.explore import explore as explore_mod
    monkeypatch.setattr(explore_mod, "RECORD_SECONDS", 3600.0)
    real, calls = Runner.run, {"n": 0}

    def patched(self, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 5:
            raise stop
        return real(self, *args, **kwargs)
    monkeypatch.setattr(Runner, "run", patched)
    db = tmp_path / "x.db"
    plan = Plan("z4_bytewise", "fixed", strategy="random", shrink=False)
    if stop is KeyboardInterrupt:
        cut = explore(plan, schedules=10, db=db, interruptible=True)
        assert cut.interrupted and [r.idx for r in cut.results] == [0, 1, 2, 3]
    else:
        with pytest.raises(RuntimeError):
            explore(plan, schedules=10, db=db)
    monkeypatch.undo()
    con = sqlite3.connect(db)
    done = con.execute("SELECT idx FROM schedules WHERE status = 'done' ORDER BY idx").fetchall()
    assert done == [(0,), (1,), (2,), (3,)]


@pytest.mark.parametrize("scenario, strategy", [("z1_optprobe_shadow", "random"),
                                                ("z4_bytewise", "exhaustive")])
def test_a_summary_without_its_results_counts_and_fails_as_one_with_them(tmp_path, scenario,
                                                                         strategy):
    """`keep_results=False` (the command line) keeps the count and the failures only, also
    over a --resume whose earlier part holds failures: the same as every result kept."""
    plan = Plan(scenario, "buggy", strategy=strategy, preemptions=1, delays=0,
                interrupts=0, shrink=False)
    n = None if strategy == "exhaustive" else 16
    whole = explore(plan, n)
    assert 0 < len(whole.failures) < len(whole.results) == whole.schedules
    db = tmp_path / "x.db"
    part = explore(plan, 12 if n else 30, db=db, keep_results=False)
    assert part.results is None and 0 < part.schedules < whole.schedules and part.failed
    rest = explore(plan, n, db=db, resume=True, keep_results=False)
    assert rest.results is None and rest.skipped == part.schedules
    assert rest.schedules == whole.schedules and rest.failed == len(whole.failures)
    assert [(r.idx, r.verdict, r.token) for r in rest.failures] == \
        [(r.idx, r.verdict, r.token) for r in whole.failures]
