"""Knuth's estimate of a bounded space (harness/explore/estimate.py) against the exhaustive
search's own count: exact where every path has at most one deviation, within its standard
error on deeper spaces, and off once its probes stop choosing uniformly."""

from __future__ import annotations

import json
import random
from types import SimpleNamespace

import pytest

from emu.path import Cost
from harness import cli, litmus
from harness.explore import estimate as estimate_module
from harness.explore import explore as explore_module
from harness.explore.estimate import estimate_space
from harness.explore.exhaustive import explore_exhaustive
from harness.explore.explore import estimate
from harness.explore.schedule import Plan, plan_runner


class _First(random.Random):
    def choice(self, seq):
        return seq[0]


class _Ran:
    ok = True  # explore_exhaustive's run result: the search only counts here


def _litmus_run(name: str):
    m = litmus.machine(next(t for t in litmus.CATALOGUE if t.name == name))
    return lambda src: (m.run(src), _Ran())[1]


def _exact(run, bound: Cost) -> int:
    res = explore_exhaustive(run, bound)
    assert res.exhausted
    return res.schedules


def test_a_space_of_single_deviations_is_counted_exactly():
    """With one deviation at most, every probe sees the first run's children alone: each
    probe's estimate is the search's count."""
    plan = Plan("z4_bytewise", "fixed", strategy="exhaustive", preemptions=1, delays=0,
                interrupts=0)
    runner = plan_runner(plan, event_mode=True)
    exact = _exact(lambda src: (runner.machine.run(src), _Ran())[1], plan.bound)
    est = estimate(plan, 4)
    assert (est.paths, est.stderr, est.runs, est.deepest) == (exact, 0, 1 + 4, 1)


@pytest.mark.parametrize("name, bound", [("XMC+INT3", Cost(2, 2, 0)), ("TAIL", Cost(3, 1, 0)),
                                         ("XMC", Cost(1, 1, 1))])
def test_the_estimate_of_a_deeper_space_is_within_its_error(name: str, bound: Cost):
    run = _litmus_run(name)
    exact = _exact(run, bound)
    est = estimate_space(run, bound, 300, seed=1)
    assert est.deepest >= 2 and est.stderr > 0
    assert abs(est.paths - exact) <= 3 * est.stderr, (est.paths, est.stderr, exact)
    assert abs(est.paths - exact) <= 0.15 * exact


def test_probes_that_do_not_choose_uniformly_are_caught(monkeypatch):
    """Perturbed: every probe takes the first child (the search's own order). The estimate
    then misses the space by far more than its error says."""
    run, bound = _litmus_run("XMC+INT3"), Cost(2, 2, 0)
    exact = _exact(run, bound)
    monkeypatch.setattr(estimate_module, "random", SimpleNamespace(Random=_First))
    est = estimate_space(run, bound, 50, seed=1)
    assert abs(est.paths - exact) > 3 * est.stderr


def test_estimate_from_the_command_line(capsys):
    args = ["explore", "z4_bytewise", "--variant", "fixed", "--strategy", "exhaustive",
            "--preemptions", "1", "--delays", "0", "--interrupts", "0", "--dpor"]
    assert cli.main([*args, "--estimate", "2", "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert (doc["paths"], doc["stderr"], doc["probes"], doc["dpor"]) == (258, 0, 2, True)
    assert cli.main([*args, "--estimate", "2"]) == 0
    assert "about 258 paths" in capsys.readouterr().out
    for bad in (["--jobs", "2"], ["--strategy", "random"], ["--db", "x.db"],
                ["--schedules", "5"], ["--log"]):
        assert cli.main([*args, "--estimate", "2", *bad]) == 2
        err = capsys.readouterr().err
        assert "--estimate" in err and "Traceback" not in err
    with pytest.raises(SystemExit) as refused:  # argparse's own: usage and exit status 2
        cli.main([*args, "--estimate", "0"])
    assert refused.value.code == 2 and "not a positive integer" in capsys.readouterr().err


def test_the_time_limit_ends_the_probes():
    """With time for none, one probe runs (an estimate needs one) and the estimate is over it
    alone; without a limit every probe runs. Perturbed by hand: a limit that let two probes
    run fails here."""
    run, bound = _litmus_run("XMC+INT3"), Cost(2, 2, 0)
    cut = estimate_space(run, bound, 20, seed=1, seconds=0)
    whole = estimate_space(run, bound, 20, seed=1)
    assert (cut.probes, whole.probes) == (1, 20)
    assert cut.stderr == 0 and cut.runs == 1 + cut.deepest


def test_the_command_lines_time_limit_reaches_the_probes(monkeypatch, capsys):
    asked = []

    def fake(plan, probes, seconds=None):
        asked.append((probes, seconds))
        return estimate(plan, 1)

    monkeypatch.setattr(explore_module, "estimate", fake)
    args = ["explore", "z4_bytewise", "--variant", "fixed", "--strategy", "exhaustive",
            "--preemptions", "1", "--delays", "0", "--interrupts", "0"]
    assert cli.main([*args, "--estimate", "50", "--time", "7.5"]) == 0
    assert cli.main([*args, "--estimate", "50"]) == 0
    assert asked == [(50, 7.5), (50, None)]
    assert "about 258 paths" in capsys.readouterr().out
