"""The pytest plugin, run through pytester: the README's example, a failing sequence whose
report carries the verdict and a replay token, and --textpoke-replay."""

import re
from pathlib import Path

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
