"""Exhaustive exploration and the litmus catalogue."""

import json
import subprocess
import sys

import pytest

from emu.decisions import Kind
from harness import litmus
from harness.exhaustive import explore_exhaustive, next_prefix
from harness.explore import Plan, explore, replay


def test_next_prefix_respects_the_bounds():
    rec = [(Kind.CPU, 3, 0, 0), (Kind.FLUSH, 4, 0, 0), (Kind.CPU, 3, 1, 1)]
    assert next_prefix(rec, 1, 1) == [0, 0, 0]  # deepest first: preempt at the last point
    assert next_prefix(rec, 0, 1) == [0, 1]  # no preemption left: delay a view update
    assert next_prefix(rec, 0, 0) is None  # nothing within the bounds: exhausted
    assert next_prefix([(Kind.CPU, 1, 0, 0)], 5, 5) is None  # a forced choice never branches


def test_exhaustive_enumerates_each_bounded_path_once():
    seen = []

    class Out:
        ok = True

    def run(src):
        for kind, arity in [(Kind.CPU, 2), (Kind.CPU, 3), (Kind.FLUSH, 2)]:
            src.pick(kind, arity, len(src.record))
        seen.append(tuple(r[2] for r in src.record))
        return Out()

    res = explore_exhaustive(run, preemptions=1, delays=1)
    assert res.exhausted and len(seen) == len(set(seen))
    # defaults (0,0,0); one preemption at either CPU choice (1 + 2 ways), each with or without
    # the one delayed flush: (1 + 3) * 2 = 8
    assert res.schedules == 8


def test_exhaustive_scenario_exhausts_and_finds_the_bug():
    ok = explore(Plan("z4_bytewise", "fixed", strategy="exhaustive", preemptions=1, delays=1),
                 schedules=5000)
    assert ok.exhausted and not ok.failures and len(ok.results) > 50
    bad = explore(Plan("z4_bytewise", "buggy", strategy="exhaustive", preemptions=1, delays=0),
                  schedules=5000, stop_at_first=True)
    assert bad.failures
    _tok, out = replay(bad.failures[0].token)  # event-mode tokens replay too
    assert out.verdict.kind == bad.failures[0].verdict


@pytest.mark.parametrize("lit", litmus.CATALOGUE, ids=[t.name for t in litmus.CATALOGUE])
def test_litmus_observed_equals_allowed(lit):
    r = litmus.run(lit)
    assert r.exhausted and r.observed == lit.allowed, (sorted(r.observed), sorted(lit.allowed))


def test_litmus_catalogue_covers_the_cases():
    names = {t.name for t in litmus.CATALOGUE}
    assert {"SM", "SM+cpuid", "XMC", "XMC+cpuid", "TAIL+INT3", "TAIL", "INT3"} <= names
    torn = {t.name for t in litmus.CATALOGUE if "torn" in t.allowed}
    assert "TAIL" in torn and "TAIL+INT3" not in torn and "INT3" not in torn


def test_litmus_cli_json():
    out = subprocess.run([sys.executable, "-m", "harness", "litmus", "--json"],
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0
    doc = json.loads(out.stdout)
    assert all(t["ok"] and t["observed"] == t["allowed"] for t in doc["tests"])


def test_cli_exhaustive_reports_exhaustion_and_count():
    out = subprocess.run([sys.executable, "-m", "harness", "explore", "z4_bytewise", "--variant",
                          "fixed", "--strategy", "exhaustive", "--preemptions", "1", "--delays",
                          "0", "--schedules", "2000", "--json"], capture_output=True, text=True,
                         timeout=600)
    doc = json.loads(out.stdout)
    assert out.returncode == 0 and doc["exhausted"] is True and doc["failures"] == 0
    assert doc["schedules"] > 10
    text = subprocess.run([sys.executable, "-m", "harness", "explore", "z4_bytewise",
                           "--variant", "fixed", "--strategy", "exhaustive", "--preemptions",
                           "0", "--delays", "0"], capture_output=True, text=True, timeout=600)
    assert "space exhausted after 1 schedules" in text.stdout
