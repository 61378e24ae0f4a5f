"""The pytest plugin (entry point `pytest11`): explore a scenario inside a test.

    @pytest.mark.textpoke(strategy="pct", schedules=50, depth=3)
    def test_my_sequence(textpoke):
        textpoke.check(my_scenario)   # fails with the verdict, where, and a replay token

    @pytest.mark.textpoke(strategy="exhaustive", preemptions=1, delays=1)
    def test_my_sequence_exhaustively(textpoke):
        textpoke.check(my_scenario)   # every schedule of the bounded space (explore/exhaustive.py)
        assert textpoke.exhausted

Options: --textpoke-seed N (first seed), --textpoke-replay TOKEN (run just that schedule).
"""

from __future__ import annotations

import pytest

from emu.verdict import VerdictKind
from harness.explore.explore import (
    STRATEGIES,
    Plan,
    ScheduleResult,
    exhaustive_search,
    pct_steps,
    replay,
    run_one,
)
from harness.explore.strategies import DEFAULT_STRATEGY
from harness.explore.token import Token
from harness.scenario.scenario import Scenario

from .run import Runner


class TextpokeFailure(AssertionError):
    """A schedule of the scenario failed; the message carries what a user needs to act."""

    def __init__(self, scenario: str, verdict: VerdictKind, detail: str, token: str,
                 shrunk: str | None) -> None:
        self.verdict, self.detail, self.token, self.shrunk = verdict, detail, token, shrunk
        lines = [f"textpoke: scenario {scenario} failed: {verdict}", f"  {detail}",
                 f"  replay: textpoke replay {token}"]
        if shrunk:
            lines.append(f"  shrunk: textpoke replay {shrunk}")
        lines.append("  or: pytest --textpoke-replay <token>")
        super().__init__("\n".join(lines))


class Textpoke:
    """The `textpoke` fixture: settings from the marker and the command line."""

    def __init__(self, strategy: str, schedules: int | None, seed: int, depth: int,
                 replay: str | None, preemptions: int = 2, delays: int = 2,
                 dpor: bool = False, interrupts: int = 1) -> None:
        if strategy not in STRATEGIES:
            raise pytest.UsageError(f"textpoke marker: unknown strategy {strategy!r}; use "
                                    f"{'|'.join(STRATEGIES)}")
        self.strategy, self.schedules, self.seed, self.depth = strategy, schedules, seed, depth
        self.preemptions, self.delays, self.dpor = preemptions, delays, dpor
        self.interrupts = interrupts
        self.replay_token = replay
        self.ran = 0
        self.exhausted: bool | None = None  # exhaustive: was the bounded space exhausted

    def check(self, scenario: Scenario, variant: str | None = None,
              cpus: int | None = None) -> int:
        """Explore `scenario`; raise TextpokeFailure at the first failing schedule. Returns how
        many schedules passed."""
        if self.replay_token:
            _tok, out = replay(self.replay_token, scenario)
            self.ran = 1
            if not out.ok:
                raise TextpokeFailure(scenario.name, out.verdict.kind, str(out.verdict),
                                      self.replay_token, None)
            return 1
        if self.strategy == "exhaustive":
            return self._exhaustive(scenario, variant, cpus)
        runner = Runner(scenario, variant, cpus)
        steps = 0
        if self.strategy in ("pct", "portfolio"):  # PCT's k, as explore.estimate_steps has it
            steps = pct_steps(runner, self.seed)
        plan = Plan(scenario.name, variant, cpus, self.strategy, self.seed, self.depth, steps)
        n = 20 if self.schedules is None else self.schedules
        for i in range(n):
            self._verdict(scenario, run_one(runner, plan, i))
        return n

    def _exhaustive(self, scenario: Scenario, variant: str | None, cpus: int | None) -> int:
        """Depth-first over the bounded space until it is exhausted (or `schedules` ran)."""
        runner = Runner(scenario, variant, cpus, event_mode=True)
        plan = Plan(scenario.name, variant, cpus, "exhaustive", preemptions=self.preemptions,
                    delays=self.delays, dpor=self.dpor, interrupts=self.interrupts)
        ran = 0

        def record(res: ScheduleResult, _frontier: str | None) -> None:
            nonlocal ran
            ran += 1
            self._verdict(scenario, res)

        self.exhausted = exhaustive_search(
            plan, runner, lambda i: self.schedules is None or i < self.schedules, record)
        return ran

    def _verdict(self, scenario: Scenario, res: ScheduleResult) -> None:
        self.ran += 1  # over every check() of the test
        if res.failed:
            raise TextpokeFailure(scenario.name, VerdictKind(res.verdict), res.detail,
                                  res.token or "", res.shrunk)


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("textpoke")
    group.addoption("--textpoke-seed", type=int, default=0, help="first seed of explorations")
    group.addoption("--textpoke-replay", default=None, metavar="TOKEN",
                    help="run only the schedule of this replay token")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", f"textpoke(strategy='{DEFAULT_STRATEGY}', schedules=20, "
                                       "depth=3, preemptions=2, delays=2, interrupts=1, "
                                       "dpor=False): how the "
                                       "textpoke fixture explores (exhaustive: until the "
                                       "bounded space is exhausted unless schedules is given)")


@pytest.fixture
def textpoke(request: pytest.FixtureRequest) -> Textpoke:
    marker = request.node.get_closest_marker("textpoke")
    kw = dict(marker.kwargs) if marker else {}
    replay = request.config.getoption("--textpoke-replay")
    if replay:
        Token.decode(replay)  # a damaged token is a usage error, before the test runs
    schedules = kw.get("schedules")
    return Textpoke(kw.get("strategy", DEFAULT_STRATEGY),
                    None if schedules is None else int(schedules),
                    request.config.getoption("--textpoke-seed") + int(kw.get("seed", 0)),
                    int(kw.get("depth", 3)), replay, int(kw.get("preemptions", 2)),
                    int(kw.get("delays", 2)), bool(kw.get("dpor", False)),
                    int(kw.get("interrupts", 1)))


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    rep = outcome.get_result()
    if call.excinfo is not None and isinstance(call.excinfo.value, TextpokeFailure):
        e = call.excinfo.value
        rep.sections.append(("textpoke", f"verdict: {e.verdict}\nwhere: {e.detail}\n"
                                         f"replay token: {e.token}\n"
                                         f"shrunk token: {e.shrunk or '-'}"))
