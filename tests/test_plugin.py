"""The pytest plugin, run through pytester: the README's example, a failing sequence whose
report carries the verdict and a replay token, and --textpoke-replay."""

import re
from pathlib import Path

import pytest

from emu.verdict import VerdictKind

EXAMPLE = (Path(__file__).parent.parent / "examples" / "test_my_sequence.py").read_text()


def test_example_sequence_passes(pytester):
    pytester.makepyfile(test_mine=EXAMPLE.replace("schedules=10", "schedules=4"))
    result = pytester.runpytest("-p", "no:cacheprovider")
    result.assert_outcomes(passed=1)


def test_failing_sequence_reports_verdict_and_token(pytester):
    broken = EXAMPLE.replace('"record", ', "")
    assert broken != EXAMPLE  # the record is gone: the trace decoder must notice
    pytester.makepyfile(test_mine=broken.replace("schedules=10", "schedules=3"))
    result = pytester.runpytest("-p", "no:cacheprovider")
    result.assert_outcomes(failed=1)
    out = result.stdout.str()
    assert "verdict: decode_divergence" in out and "packet offset" in out
    token = re.search(r"replay token: (tp2\.\S+)", out).group(1)
    again = pytester.runpytest("-p", "no:cacheprovider", f"--textpoke-replay={token}")
    again.assert_outcomes(failed=1)
    assert "verdict: decode_divergence" in again.stdout.str()


def test_damaged_replay_token_is_an_error(pytester):
    pytester.makepyfile(test_mine=EXAMPLE)
    result = pytester.runpytest("-p", "no:cacheprovider", "--textpoke-replay=tp2.abc.00000000")
    result.assert_outcomes(errors=1)
    assert "checksum mismatch" in result.stdout.str()


def test_marker_and_seed_option_are_honoured(pytester):
    pytester.makepyfile(test_count="""
        import pytest
        from harness.scenario.shipped import SCENARIOS

        @pytest.mark.textpoke(strategy="random", schedules=2, seed=5)
        def test_it(textpoke):
            assert textpoke.check(SCENARIOS["z4_bytewise"], "fixed") == 2
            assert textpoke.seed == 105 and textpoke.ran == 2
    """)
    pytester.runpytest("-p", "no:cacheprovider", "--textpoke-seed=100").assert_outcomes(passed=1)


def test_exhaustive_marker_exhausts_the_bounded_space(pytester):
    mine = (EXAMPLE.replace("cpus=3", "cpus=2")
            .replace('strategy="pct", schedules=10',
                     'strategy="exhaustive", preemptions=1, delays=1')
            .replace("    textpoke.check(scenario)",
                     "    assert textpoke.check(scenario) > 50 and textpoke.exhausted"))
    assert "exhaustive" in mine and "textpoke.exhausted" in mine and "cpus=2" in mine
    pytester.makepyfile(test_mine=mine)
    pytester.runpytest("-p", "no:cacheprovider").assert_outcomes(passed=1)
    pytester.makepyfile(test_mine=mine.replace('"record", ', ""))
    result = pytester.runpytest("-p", "no:cacheprovider")
    result.assert_outcomes(failed=1)
    assert "verdict: decode_divergence" in result.stdout.str()


def test_unknown_strategy_in_the_marker_is_an_error(pytester):
    pytester.makepyfile(test_mine=EXAMPLE.replace('strategy="pct"', 'strategy="nope"'))
    result = pytester.runpytest("-p", "no:cacheprovider")
    result.assert_outcomes(errors=1)
    assert "unknown strategy 'nope'" in result.stdout.str()


def test_each_check_runs_its_own_budget():
    from harness.pytest_plugin import Textpoke
    from harness.scenario.shipped import SCENARIOS

    for strategy in ("exhaustive", "random"):
        t = Textpoke(strategy, 3, 0, 3, None, preemptions=1, delays=0)
        scn = SCENARIOS["z4_bytewise"]
        assert t.check(scn, "fixed") == 3 and t.check(scn, "fixed") == 3 and t.ran == 6


EXPECTING = """
    from dataclasses import replace

    import pytest
    from harness.scenario.guest import Cfg
    from harness.scenario.scenario import Variant
    from harness.scenario.shipped import SCENARIOS

    z4 = SCENARIOS["z4_bytewise"]
    # a variant that claims a race it does not have, and one expecting the wrong verdict
    claims = replace(z4, name="z4_claims", variants={**z4.variants,
                     "phantom": Variant(Cfg(0), "torn_execution"),
                     "wrong": Variant(z4.variants["buggy"].cfg, "hang")})

    @pytest.mark.textpoke(strategy="random", schedules=3)
    def test_buggy_is_found(textpoke):
        assert textpoke.check(z4, "buggy") == 1  # z4's race shows in its first schedule

    @pytest.mark.textpoke(strategy="random", schedules=3)
    def test_phantom_is_not_found(textpoke):
        textpoke.check(claims, "phantom")

    @pytest.mark.textpoke(strategy="random", schedules=3)
    def test_wrong_verdict(textpoke):
        textpoke.check(claims, "wrong")

    @pytest.mark.textpoke(strategy="exhaustive", preemptions=0, delays=0, interrupts=0)
    def test_phantom_exhaustively(textpoke):
        textpoke.check(claims, "phantom")

    @pytest.mark.textpoke(strategy="random", schedules=2)
    def test_fixed(textpoke):
        textpoke.check(z4, "fixed")
"""


def test_expected_verdicts_pass_when_found_and_fail_saying_so(pytester, monkeypatch):
    monkeypatch.setenv("COLUMNS", "400")  # the short summary whole
    pytester.makepyfile(test_expect=EXPECTING)
    result = pytester.runpytest("-p", "no:cacheprovider", "-rA")
    result.assert_outcomes(passed=2, failed=3)
    out = result.stdout.str()
    assert re.search(r"FAILED test_expect.py::test_phantom_is_not_found - expected "
                     r"torn_execution not found: z4_claims \[phantom\] in 3 random", out)
    assert re.search(r"FAILED test_expect.py::test_wrong_verdict - torn_execution: scenario "
                     r"z4_claims \[wrong\] failed, expected hang", out)
    assert re.search(r"FAILED test_expect.py::test_phantom_exhaustively - expected "
                     r"torn_execution not found: .* space exhausted", out)


def test_replay_token_applies_only_to_the_test_it_names(pytester):
    from harness.explore.schedule import Plan, run_schedule

    token = run_schedule(Plan("z4_bytewise", "buggy", shrink=False), 0).token
    assert token
    pytester.makepyfile(test_expect=EXPECTING)
    result = pytester.runpytest("-p", "no:cacheprovider", "-rA", f"--textpoke-replay={token}")
    # the buggy test replays the token and sees its expected failure; every other is skipped
    result.assert_outcomes(passed=1, skipped=4)
    out = result.stdout.str()
    assert re.search(r"PASSED test_expect.py::test_buggy_is_found", out)
    assert re.search(r"SKIPPED \[1\] test_expect.py:\d+: --textpoke-replay names another "
                     r"scenario or variant than this test's checks \(z4_bytewise \[fixed\]\)",
                     out)


def test_short_summary_shows_the_verdict(pytester, monkeypatch):
    monkeypatch.setenv("COLUMNS", "400")
    pytester.makepyfile(test_mine=EXAMPLE.replace('"record", ', "")
                        .replace("schedules=10", "schedules=1"))
    result = pytester.runpytest("-p", "no:cacheprovider", "-rf")
    result.assert_outcomes(failed=1)
    assert re.search(r"FAILED test_mine.py::test_my_sequence_is_safe - decode_divergence: "
                     r"scenario my_jump_flip \[correct\] failed", result.stdout.str())


def test_the_same_checks_on_a_cluster(pytester, monkeypatch, dask_client):
    """--textpoke-cluster: the checks explore on the cluster (the test module's own scenario
    loaded there from its file) and pass and fail as they do in this process."""
    monkeypatch.setenv("COLUMNS", "400")
    pytester.makepyfile(test_expect=EXPECTING)
    result = pytester.runpytest("-p", "no:cacheprovider", "-rA",
                                f"--textpoke-cluster={dask_client.scheduler.address}")
    result.assert_outcomes(passed=2, failed=3)
    out = result.stdout.str()
    assert re.search(r"FAILED test_expect.py::test_phantom_is_not_found - expected "
                     r"torn_execution not found: z4_claims \[phantom\] in 3 random schedules "
                     r"on tcp://", out)
    assert re.search(r"FAILED test_expect.py::test_phantom_exhaustively - expected "
                     r"torn_execution not found: .* on tcp://.* space exhausted", out)


def test_a_cluster_check_keeps_the_failures_only_and_judges_the_first(monkeypatch):
    """On a cluster the check asks the exploration for its failures only (an exhaustive
    search there may run millions of schedules), judges the first in schedule order, and
    counts every schedule as run."""
    from harness import pytest_plugin
    from harness.explore.explore import Summary
    from harness.explore.schedule import ScheduleResult
    from harness.scenario.shipped import SCENARIOS

    scn = SCENARIOS["z4_bytewise"]
    expected = scn.variant("buggy").expected
    assert expected
    kind = next(iter(expected)).value
    asked = []

    def explore(plan, n, stop_at_first, cluster, keep_results):
        asked.append(keep_results)
        summary = Summary(plan, None, results=None)
        for i in range(1000):
            failing = i in (700, 400)  # recorded out of their order, as a cluster may
            summary.add(ScheduleResult(1100 - i if failing else i, 0,
                                       kind if failing else "pass", "", 1))
        return summary

    monkeypatch.setattr(pytest_plugin, "explore", explore)
    t = pytest_plugin.Textpoke("random", 1000, 0, 3, None, cluster="tcp://nowhere:1")
    assert t.check(scn, "buggy") == 401  # 1100 - 700: the first failure by its index
    assert asked == [False] and t.ran == 1000
    other = next(k for k in VerdictKind if k.value not in (kind, "pass"))

    def failing_otherwise(plan, n, stop_at_first, cluster, keep_results):
        summary = Summary(plan, None, results=None)
        summary.add(ScheduleResult(0, 0, other.value, "boom", 1))
        return summary

    monkeypatch.setattr(pytest_plugin, "explore", failing_otherwise)
    with pytest.raises(pytest_plugin.TextpokeFailure):
        t.check(scn, "buggy")
