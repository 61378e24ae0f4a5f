"""Exit codes that mean what they say (issue 14, section 6): 0 no failure found, 1 a failure
found, 2 bad input named with what and where, 3 a bug in textpoke with its traceback; never
exit 1 for a crash. Each probe of the issue is a test here; most call `main` in-process."""

from __future__ import annotations

import contextlib
import io
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from emu.text_poke_record import TextPokeRecord
from emu.verdict import VerdictKind
from harness import cli, zoo
from harness.cli import main
from harness.explore import explore, schedule
from harness.trace.pt.packets import Pad, TscPacket, iter_packets
from harness.trace.sideband import decode as decode_sideband
from harness.trace.sideband import encode as encode_record


def _poke(addr: int, old: bytes, new: bytes, tick: int, cpu: int) -> TextPokeRecord:
    return TextPokeRecord(tick, cpu, addr, old, new)


def run_cli(*args: str) -> tuple[int, str, str]:
    """(exit code, stdout, stderr) of `textpoke ARGS`, in this process."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            rc = main([str(a) for a in args])
        except SystemExit as e:  # argparse
            rc = e.code
    return rc, out.getvalue(), err.getvalue()


def bad_input(rc: int, err: str, *names: str) -> None:
    assert rc == 2, (rc, err)
    assert "Traceback" not in err, err
    for name in names:
        assert name in err, (name, err)


@pytest.fixture(scope="module")
def saved(tmp_path_factory) -> Path:
    """A small saved run: z4_bytewise, 2 CPUs (fast to decode)."""
    d = tmp_path_factory.mktemp("run") / "r"
    assert run_cli("run", "z4_bytewise", "--cpus", "2", "--out", d)[0] == 0
    return d


def copy_run(src: Path, dst: Path) -> Path:
    dst.mkdir()
    for f in src.iterdir():
        (dst / f.name).write_bytes(f.read_bytes())
    return dst


# --- internal errors: exit 3 with the traceback, never 1 ---------------------------------

def test_an_internal_error_exits_3_with_its_traceback(monkeypatch, saved):
    def boom(*a, **k):
        raise RuntimeError("a harness bug")
    monkeypatch.setattr("harness.trace.verify.check", boom)
    rc, _out, err = run_cli("decode", saved)
    assert rc == 3 and "Traceback" in err and "RuntimeError: a harness bug" in err
    assert "internal error: this is a bug in textpoke" in err


# --- --db ------------------------------------------------------------------------------------

def _explore(db, *extra):
    return run_cli("explore", "z4_bytewise", "--schedules", "2", "--no-shrink", "--db", db,
                   *extra)


def test_db_that_cannot_be_used_is_bad_input(tmp_path):
    not_sqlite = tmp_path / "notes.txt"
    not_sqlite.write_text("hello, not a database\n" * 100)
    foreign = tmp_path / "foreign.db"
    con = sqlite3.connect(foreign)
    con.execute("CREATE TABLE accounts (id INTEGER, balance REAL)")
    con.commit()
    con.close()
    for db, why in [(tmp_path / "missing" / "x.db", "unable to open"),
                    (tmp_path, "is a directory"),
                    (not_sqlite, "file is not a database"),
                    (foreign, "another schema")]:
        rc, _out, err = _explore(db)
        bad_input(rc, err, f"--db {db}", why)
    assert not_sqlite.read_text().startswith("hello")  # nothing written into others' files
    assert sqlite3.connect(foreign).execute("SELECT name FROM sqlite_master").fetchall() == [
        ("accounts",)]


def test_db_of_an_older_textpoke_is_ours(tmp_path):
    """A results file from before the frontiers table is still ours: the table is added."""
    from harness.explore.results_db import SCHEMA

    db = tmp_path / "old.db"
    con = sqlite3.connect(db)
    con.executescript(SCHEMA.split("CREATE TABLE IF NOT EXISTS frontiers")[0])
    con.close()
    assert _explore(db)[0] == 0


def test_seed_too_large_for_sqlite_is_bad_input_before_any_work(tmp_path):
    db = tmp_path / "x.db"
    rc, _out, err = _explore(db, "--seed", str(2**63 - 1))  # seed + 1 does not fit
    bad_input(rc, err, "--seed", str(2**63 - 1))
    assert _explore(db, "--seed", str(2**63 - 2))[0] == 0  # the largest that fits


def test_resume_without_db_is_bad_input():
    rc, _out, err = run_cli("explore", "z4_bytewise", "--schedules", "2", "--resume")
    bad_input(rc, err, "--resume", "--db")


def test_resume_of_another_exploration_is_refused_naming_the_differences(tmp_path):
    db = tmp_path / "x.db"
    assert _explore(db)[0] == 0
    con = sqlite3.connect(db)
    for extra, names in [(["--seed", "7"], ["seed: saved 0, now 7"]),
                         (["--variant", "buggy"], ['variant: saved null, now "buggy"']),
                         (["--strategy", "pct", "--depth", "2"], ["strategy", "depth"]),
                         (["--cpus", "3"], ["cpus: saved null, now 3"])]:
        rc, _out, err = _explore(db, "--resume", *extra)
        bad_input(rc, err, "--resume", *names)
        assert con.execute("SELECT COUNT(*) FROM explorations").fetchone()[0] == 1
        assert con.execute("SELECT COUNT(*) FROM schedules").fetchone()[0] == 2
    rc, out, _err = _explore(db, "--resume", "--json")  # the same options: it goes on
    assert rc == 0 and json.loads(out)["resumed"] == 2
    rc, _out, err = _explore(tmp_path / "new.db", "--resume")
    bad_input(rc, err, "holds no exploration")


# --- numeric options ---------------------------------------------------------------------------

@pytest.mark.parametrize("option,value", [
    ("--schedules", "0"), ("--schedules", "-3"), ("--time", "0"), ("--time", "-1"),
    ("--time", "nan"), ("--time", "inf"), ("--jobs", "0"),
    ("--preemptions", "-1"), ("--delays", "-2"), ("--schedules", "many"),
        ("--seed", "-1")])
def test_numeric_options_that_mean_no_work_are_bad_input(option, value):
    rc, _out, err = run_cli("explore", "z4_bytewise", option, value)
    bad_input(rc, err, f"argument {option}", repr(value))


def test_cpus_out_of_range_is_bad_input_naming_the_range():
    rc, _out, err = run_cli("explore", "z4_bytewise", "--cpus", "0", "--schedules", "1")
    bad_input(rc, err, "needs 2..")


def test_pct_depth_0_names_option_and_value():
    rc, _out, err = run_cli("explore", "z4_bytewise", "--strategy", "pct", "--depth", "0")
    bad_input(rc, err, "--depth", "'0'")


def test_library_explore_refuses_no_work():
    plan = schedule.Plan("z4_bytewise")
    for kw in ({"schedules": 0}, {"seconds": float("nan")}, {"schedules": 1, "jobs": 0},
               {"schedules": 1, "resume": True}):
        with pytest.raises(cli.BadInput):
            explore.explore(plan, **kw)


# --- --out -------------------------------------------------------------------------------------

def test_out_that_cannot_be_written_is_refused_before_the_run(tmp_path, monkeypatch):
    ran = []
    monkeypatch.setattr("harness.run.Runner.run_seed", lambda *a: ran.append(a))
    afile = tmp_path / "f"
    afile.write_text("x")
    for out, why in [(afile, "is not a directory"),
                     (tmp_path / "no" / "such" / "dir", "does not exist")]:
        rc, _o, err = run_cli("run", "z4_bytewise", "--out", out)
        bad_input(rc, err, f"--out {out}", why)
        rc, _o, err = run_cli("replay", "tp1.garbage.0", "--out", out)
        bad_input(rc, err, f"--out {out}", why)
    assert ran == [] and afile.read_text() == "x"


def test_a_reused_out_directory_keeps_no_stale_cpu_files(tmp_path):
    d = tmp_path / "r"
    assert run_cli("run", "z4_bytewise", "--cpus", "3", "--out", d)[0] == 0
    (d / "mine.txt").write_text("not ours")
    assert (d / "cpu2.pt").exists()
    assert run_cli("run", "z4_bytewise", "--cpus", "2", "--out", d)[0] == 0
    assert not (d / "cpu2.pt").exists() and not (d / "cpu2.truth.jsonl").exists()
    assert (d / "mine.txt").read_text() == "not ours"
    assert run_cli("decode", d)[0] == 0
    before = {f.name: f.read_bytes() for f in d.iterdir()}
    rc, _o, err = run_cli("run", "no_such_scenario", "--out", d)  # bad input loses nothing
    bad_input(rc, err, "no_such_scenario")
    assert {f.name: f.read_bytes() for f in d.iterdir()} == before


# --- decode: a malformed trace is a decode error with its position ------------------------------

def _records(d: Path) -> list[TextPokeRecord]:
    return decode_sideband((d / "sideband.bin").read_bytes())


def _write_records(d: Path, recs: list[TextPokeRecord]) -> None:
    (d / "sideband.bin").write_bytes(b"".join(encode_record(r) for r in recs))


def _again(r: TextPokeRecord, dt: int) -> TextPokeRecord:
    """A record that writes again what `r` wrote, `dt` later: harmless in time order."""
    return _poke(r.addr, r.new, r.new, r.tick + dt, r.cpu)


def _moved(r: TextPokeRecord, **k) -> TextPokeRecord:
    return _poke(**{"addr": r.addr, "old": r.old, "new": r.new, "tick": r.tick,
                       "cpu": r.cpu} | k)


SIDEBAND_DAMAGE = {
    "outside the text": lambda rs: [_moved(rs[0], addr=0x1000)] + rs[1:],
    "old bytes": lambda rs: [_moved(rs[0], old=bytes(b ^ 0xFF for b in rs[0].old))] + rs[1:],
    "is not the end snapshot": lambda rs: rs[:-1],
    "time runs backwards": lambda rs: [rs[0], _again(rs[0], -1)] + rs[1:],
}


def test_the_sideband_checks_accept_the_undamaged_variants(saved, tmp_path):
    """The same edits, made harmless, decode exactly: each check below tests what it says."""
    d = copy_run(saved, tmp_path / "d")
    rs = _records(d)
    assert rs
    _write_records(d, [rs[0], _again(rs[0], 0), _again(rs[0], 1)] + rs[1:])
    assert run_cli("decode", d)[0] == 0
    assert run_cli("decode", d, "--backward")[0] == 0


@pytest.mark.parametrize("why", list(SIDEBAND_DAMAGE))
@pytest.mark.parametrize("backward", [False, True])
def test_sideband_that_does_not_fit_the_text_is_a_decode_error(saved, tmp_path, why, backward):
    d = copy_run(saved, tmp_path / "d")
    _write_records(d, SIDEBAND_DAMAGE[why](_records(d)))
    rc, out, err = run_cli("decode", d, *(["--backward"] if backward else []))
    bad_input(rc, err, "sideband", why)
    rc, out, err = run_cli("decode", d, "--json", *(["--backward"] if backward else []))
    assert rc == 2 and json.loads(out)["result"] == "decode_error"


def test_tsc_running_backwards_is_a_decode_error(saved, tmp_path):
    d = copy_run(saved, tmp_path / "d")
    stream = (d / "cpu1.pt").read_bytes()
    tscs = [(off, p) for off, p in iter_packets(stream) if isinstance(p, TscPacket)]
    (_, before), (off, pkt) = next(pair for pair in zip(tscs, tscs[1:], strict=False)
                                   if pair[0][1].tsc > 0)
    back = TscPacket(before.tsc - 1).encode()  # one tick before the TSC before it
    assert len(back) == len(pkt.encode())
    (d / "cpu1.pt").write_bytes(stream[:off] + back + stream[off + len(back):])
    rc, _out, err = run_cli("decode", d)
    bad_input(rc, err, f"offset {off:#x}", "runs backwards")


# --- stdout: only JSON with --json; dump streams and stops quietly --------------------------

def test_decode_json_prints_only_json(saved):
    rc, out, _err = run_cli("decode", saved, "--json")
    assert rc == 0 and json.loads(out)["result"] == "exact"


def test_explore_json_log_prints_only_json():
    rc, out, err = run_cli("explore", "z4_bytewise", "--schedules", "2", "--no-shrink",
                           "--json", "--log")
    assert rc == 0 and json.loads(out)["schedules"] == 2
    assert "schedule 0 seed 0 pass" in err


def test_dump_streams_its_lines(tmp_path, monkeypatch):
    """A reader that stops at once (a closed pipe) stops the parse, not the other way round."""
    big = tmp_path / "big.pt"
    big.write_bytes(Pad().encode() * 100_000)
    parsed = []

    def counting(stream):
        for item in iter_packets(stream):
            parsed.append(item)
            yield item
    monkeypatch.setattr("harness.trace.pt.dump.iter_packets", counting)

    class ClosedPipe(io.StringIO):
        def write(self, s):
            raise BrokenPipeError(32, "Broken pipe")
    with contextlib.redirect_stdout(ClosedPipe()):
        rc = main(["dump", str(big)])
    assert rc == cli.BROKEN_PIPE and len(parsed) < 10


def test_dump_into_head_prints_no_traceback(tmp_path):
    big = tmp_path / "big.pt"
    big.write_bytes(Pad().encode() * 200_000)
    proc = subprocess.run(f"{sys.executable} -m harness dump {big} | head -n 1", shell=True,
                          capture_output=True, text=True, timeout=60)
    assert proc.stdout == "0x00000000  PAD\n"
    assert proc.stderr == "", proc.stderr


# --- workers die with their parent --------------------------------------------------------------

def _children(pid: int) -> list[int]:
    """The children of every thread of `pid` (Dask's LocalCluster starts its workers from
    its event loop's thread, not the main one)."""
    out = []
    try:
        for task in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{task}/children") as f:
                out += [int(c) for c in f.read().split()]
    except FileNotFoundError:
        pass
    return out


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] != "Z"
    except FileNotFoundError:
        return False


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="/proc and PR_SET_PDEATHSIG")
@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM])
def test_killing_the_parent_of_jobs_workers_ends_them(sig):
    proc = subprocess.Popen([sys.executable, "-m", "harness", "explore", "z4_bytewise",
                             "--schedules", "100000", "--no-shrink", "--jobs", "2", "--log"],
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    workers: list[int] = []
    try:
        proc.stdout.readline()  # a schedule finished: the workers run
        workers = _children(proc.pid)
        assert len(workers) >= 2
        proc.send_signal(sig)
        proc.wait(timeout=30)
        deadline = time.monotonic() + 10
        while any(map(_alive, workers)) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not any(map(_alive, workers)), workers
    finally:  # leave nothing running, whatever happened
        proc.kill()
        proc.wait()
        for w in filter(_alive, workers):
            os.kill(w, signal.SIGKILL)


# --- zoo: seconds to the first failure ----------------------------------------------------------

def test_zoo_seconds_to_first_is_time_to_the_failure_not_to_its_shrinking(monkeypatch):
    """Shrinking a failure (here made slow) comes after finding it."""
    scn = zoo.SCENARIOS["z4_bytewise"]
    monkeypatch.setattr(zoo, "SCENARIOS", {"z4_bytewise": scn})
    real = schedule.shrink

    def slow_shrink(*a, **k):
        time.sleep(1.0)
        return real(*a, **k)
    monkeypatch.setattr(schedule, "shrink", slow_shrink)
    (row,) = zoo.zoo(buggy_budget=20, fixed_budget=1)
    assert row.found and row.shrunk_deviations is not None
    assert row.seconds_to_first < 1.0, row


def test_a_live_runs_record_outside_the_text_is_a_decode_error_not_a_crash(saved):
    """A guest may emit any record: the live check (both directions) reports it as a decode
    error; it does not check the records against the snapshots (its verdict is the place
    where a misleading record makes the decoded flow leave the executed one)."""
    from harness.trace import verify
    from harness.trace.saved_run import load

    run = load(saved)
    outside = _poke(0x1000, b"\x90", b"\xcc", 100, 0)
    for report in verify.check_both(run.streams, run.flows, run.text_start, run.text_end,
                                    [*run.records, outside]):
        assert report.verdict.kind is VerdictKind.DECODE_ERROR, report
        assert "outside the image" in report.verdict.detail
    assert [r.verdict for r in verify.check_both(run.streams, run.flows, run.text_start,
                                                 run.text_end, run.records)] == [None, None]
