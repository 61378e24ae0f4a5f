"""The pytest plugin (entry point `pytest11`): explore a scenario inside a test.

    @pytest.mark.textpoke(strategy="pct", schedules=50, depth=3)
    def test_my_sequence(textpoke):
        textpoke.check(my_scenario)   # fails with the verdict, where, and a replay token

    @pytest.mark.textpoke(strategy="exhaustive", preemptions=1, delays=1)
    def test_my_sequence_exhaustively(textpoke):
        textpoke.check(my_scenario)   # every schedule of the bounded space (explore/exhaustive.py)
        assert textpoke.exhausted

A variant with an expected verdict (`Variant(cfg, expect="torn_execution")`, a buggy one)
passes when that failure is found within the budget. Options: --textpoke-seed N (first seed),
--textpoke-replay TOKEN (in the test whose check names the token's scenario and variant, run
just that schedule; every other test is skipped), --textpoke-out DIR (a failing check writes its
schedule's artifacts, shrunk if it was, and their timeline.svg to DIR/<test name>/, and the
report names the picture), --textpoke-cluster tcp://HOST:PORT (or TEXTPOKE_CLUSTER: explore
on that Dask cluster, harness/explore/cluster.py; the scenario must be importable there: a
shipped one, or a test module's by its file).
"""

from __future__ import annotations

import os
import re
import warnings
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

import pytest

from emu.engine import Engine
from emu.verdict import VerdictKind
from harness.explore.explore import Frontier, exhaustive_search, explore, replay
from harness.explore.schedule import Plan, ScheduleResult, pct_steps, run_one
from harness.explore.strategies import DEFAULT_STRATEGY, STRATEGIES
from harness.explore.token import Token
from harness.scenario.load import Origin, origin_of
from harness.scenario.scenario import Scenario

from .errors import BadInput
from .run import Runner


class TextpokeFailure(AssertionError):
    """A schedule of the scenario failed, or an expected failure was not found; the message
    carries what a user needs to act, and its first line (pytest's short summary) is the
    verdict."""

    def __init__(self, scenario: str, verdict: VerdictKind | None, detail: str,
                 token: str | None, shrunk: str | None, headline: str | None = None,
                 picture: Path | None = None) -> None:
        self.verdict, self.detail, self.token, self.shrunk = verdict, detail, token, shrunk
        self.picture = picture
        lines = [headline or f"{verdict}: scenario {scenario} failed", f"  {detail}"]
        if token:
            lines.append(f"  replay: textpoke replay {token}")
        if shrunk:
            lines.append(f"  shrunk: textpoke replay {shrunk}")
        if token:
            lines.append("  or: pytest --textpoke-replay <token>")
        if picture:
            lines.append(f"  timeline: {picture}")
        super().__init__("\n".join(lines))


@dataclass(frozen=True)
class _Check:
    """One check(): the scenario, its variant (resolved) and what it is expected to show."""

    scenario: Scenario
    variant: str
    expected: frozenset[VerdictKind]  # empty: every schedule must pass
    origin: Origin | None  # where a user's scenario is defined, for its replay tokens

    @property
    def label(self) -> str:
        return f"{self.scenario.name} [{self.variant}]"


class Textpoke:
    """The `textpoke` fixture: settings from the marker and the command line."""

    def __init__(self, strategy: str, schedules: int | None, seed: int, depth: int,
                 replay: str | None, preemptions: int = 2, delays: int = 2,
                 dpor: bool = False, interrupts: int = 1,
                 module: ModuleType | None = None, engine: Engine | None = None,
                 out: Path | None = None, cluster: str | None = None) -> None:
        if strategy not in STRATEGIES:
            raise pytest.UsageError(f"textpoke marker: unknown strategy {strategy!r}; use "
                                    f"{'|'.join(STRATEGIES)}")
        self.strategy, self.schedules, self.seed, self.depth = strategy, schedules, seed, depth
        self.preemptions, self.delays, self.dpor = preemptions, delays, dpor
        self.interrupts = interrupts
        self.replay_token = replay
        self.module = module  # the test's module: where its scenarios are looked for first
        self.engine = engine  # None: the fast engine where its native code is installed
        self.out = out  # --textpoke-out: where a failing check's artifacts and picture go
        self.cluster = cluster  # a Dask scheduler's address (None: this process)
        self.ran = 0
        self.replayed = 0  # checks the --textpoke-replay token named
        self.not_replayed: list[str] = []  # checks it did not name (scenario [variant])
        self.exhausted: bool | None = None  # exhaustive: was the bounded space exhausted

    def ablate(self, scenario: Scenario, variant: str | None = None, cpus: int | None = None,
               limit: int = 300) -> list:
        """harness/ablate.py: every drop and adjacent swap of the sequence's steps, explored
        with `schedules` (default 40) schedules of the default strategy, then exhaustively
        within the marker's preemptions, delays and interrupts (at most `limit` schedules).
        Returns the rows; asserting on them is the test's."""
        from emu.path import Cost

        from .ablate import ablate

        return ablate(scenario, variant, self.schedules or 40,
                      Cost(self.preemptions, self.delays, self.interrupts), limit, cpus,
                      origin_of(scenario, self.module))

    def check(self, scenario: Scenario, variant: str | None = None,
              cpus: int | None = None) -> int:
        """Explore `scenario`'s `variant` (default: the scenario's own). A variant that must
        pass: raise TextpokeFailure at the first failing schedule. A variant with an expected
        verdict (`Variant.expect`): return once a schedule shows it, raise TextpokeFailure if
        another failure shows or none within the budget. Returns how many schedules ran.
        Under --textpoke-replay, only the check the token names runs (the token's schedule);
        another returns 0 without running (the test is reported skipped if none ran)."""
        name = variant or scenario.default_variant
        chk = _Check(scenario, name, scenario.variant(name).expected,
                     origin_of(scenario, self.module))
        if self.replay_token:
            return self._replay(chk, cpus)
        if self.cluster:
            return self._on_cluster(chk, cpus)
        if self.strategy == "exhaustive":
            return self._exhaustive(chk, cpus)
        runner = Runner(scenario, name, cpus, engine=self.engine)
        steps = 0
        if self.strategy in ("pct", "portfolio"):  # PCT's k, as schedule.estimate_steps has it
            steps = pct_steps(runner, self.seed)
        plan = Plan(scenario.name, name, cpus, self.strategy, self.seed, self.depth, steps,
                    shrink=not chk.expected, origin=chk.origin, engine=self.engine)
        n = 20 if self.schedules is None else self.schedules
        for i in range(n):
            if self._verdict(chk, run_one(runner, plan, i)):
                return i + 1
        self._not_found(chk, f"in {n} {self.strategy} schedules")
        return n

    def _on_cluster(self, chk: _Check, cpus: int | None) -> int:
        """The same check on the --textpoke-cluster (cluster.py): the exploration stops at
        the first failure; its failures are judged in their schedules' order, as a local
        check judges them. Only the failures are kept: an exhaustive search there may run
        millions of schedules (explore's `keep_results`), and every one counts as run."""
        exhaustive = self.strategy == "exhaustive"
        plan = Plan(chk.scenario.name, chk.variant, cpus, self.strategy, self.seed, self.depth,
                    shrink=not chk.expected, preemptions=self.preemptions, delays=self.delays,
                    dpor=self.dpor, interrupts=self.interrupts, origin=chk.origin,
                    engine=self.engine)
        n = self.schedules if self.schedules is not None or exhaustive else 20
        summary = explore(plan, n, stop_at_first=True, cluster=self.cluster,
                          keep_results=False)
        budget = f"in {summary.schedules} {self.strategy} schedules on {self.cluster}"
        if exhaustive:
            self.exhausted = summary.exhausted
            budget += (f" ({plan.bound}; space "
                       f"{'exhausted' if self.exhausted else 'NOT exhausted'})")
        first = summary.failures[:1]  # judged (_verdict counts it), and passes or raises
        self.ran += summary.schedules - len(first)
        if first and self._verdict(chk, first[0]):
            return first[0].idx + 1
        self._not_found(chk, budget)
        return summary.schedules

    def _replay(self, chk: _Check, cpus: int | None) -> int:
        tok = Token.decode(str(self.replay_token))
        if (tok.scenario, tok.variant) != (chk.scenario.name, chk.variant):
            self.not_replayed.append(chk.label)
            return 0
        _tok, out = replay(str(self.replay_token), chk.scenario, self.engine)
        self.ran += 1
        self.replayed += 1
        kind = out.verdict.kind
        if chk.expected and kind in chk.expected:
            return 1
        if not out.ok:
            picture = self._picture(chk, str(self.replay_token))
            raise TextpokeFailure(chk.scenario.name, kind, str(out.verdict), self.replay_token,
                                  None, _headline(chk, kind), picture)
        if chk.expected:
            raise TextpokeFailure(chk.scenario.name, None, f"the token's schedule passed; "
                                  f"expected {_kinds(chk.expected)}", None, None,
                                  f"expected {_kinds(chk.expected)} not shown: {chk.label}")
        return 1

    def _exhaustive(self, chk: _Check, cpus: int | None) -> int:
        """Depth-first over the bounded space until it is exhausted (or `schedules` ran, or
        the expected failure showed)."""
        runner = Runner(chk.scenario, chk.variant, cpus, event_mode=True, engine=self.engine)
        plan = Plan(chk.scenario.name, chk.variant, cpus, "exhaustive",
                    preemptions=self.preemptions, delays=self.delays, dpor=self.dpor,
                    interrupts=self.interrupts, shrink=not chk.expected, origin=chk.origin)
        ran, found = 0, False

        def record(res: ScheduleResult, _frontier: Frontier | None) -> None:
            nonlocal ran, found
            ran += 1
            found = self._verdict(chk, res) or found

        self.exhausted = exhaustive_search(
            plan, runner,
            lambda i: not found and (self.schedules is None or i < self.schedules), record)
        if not found and chk.expected:
            self._not_found(chk, f"in {ran} exhaustive schedules ({plan.bound}; space "
                                 f"{'exhausted' if self.exhausted else 'NOT exhausted'})")
        return ran

    def _verdict(self, chk: _Check, res: ScheduleResult) -> bool:
        """True if `res` is the expected failure; raise TextpokeFailure on any other."""
        self.ran += 1  # over every check() of the test
        if not res.failed:
            return False
        kind = VerdictKind(res.verdict)
        if kind in chk.expected:
            return True
        picture = self._picture(chk, res.shrunk or res.token)
        raise TextpokeFailure(chk.scenario.name, kind, res.detail, res.token, res.shrunk,
                              _headline(chk, kind), picture)

    def _picture(self, chk: _Check, token: str | None) -> Path | None:
        """With --textpoke-out, the failing schedule run again from its token, its artifacts
        and timeline written to the test's directory; the picture's path."""
        if self.out is None or not token:
            return None
        from .timeline_draw import write_run

        tok, out = replay(token, chk.scenario, self.engine)
        try:
            self.out.parent.mkdir(parents=True, exist_ok=True)
            return write_run(out, tok.seed, self.out)
        except (OSError, BadInput) as e:  # the failure is reported all the same
            warnings.warn(f"--textpoke-out: {e}", stacklevel=2)
            return None

    def _not_found(self, chk: _Check, budget: str) -> None:
        if chk.expected:
            raise TextpokeFailure(chk.scenario.name, None, f"every schedule passed {budget}",
                                  None, None, f"expected {_kinds(chk.expected)} not found: "
                                              f"{chk.label} {budget}")


def _kinds(kinds: frozenset[VerdictKind]) -> str:
    return "|".join(sorted(kinds))


def _headline(chk: _Check, kind: VerdictKind) -> str:
    """The failure's first line: the verdict first (what pytest's short summary shows)."""
    if chk.expected:
        return f"{kind}: scenario {chk.label} failed, expected {_kinds(chk.expected)}"
    return f"{kind}: scenario {chk.label} failed"


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("textpoke")
    group.addoption("--textpoke-seed", type=int, default=0, help="first seed of explorations")
    group.addoption("--textpoke-replay", default=None, metavar="TOKEN",
                    help="run only the schedule of this replay token")
    group.addoption("--textpoke-out", default=None, metavar="DIR",
                    help="a failing check writes its schedule's artifacts and timeline.svg to "
                         "DIR/<test name>/")
    group.addoption("--textpoke-engine", choices=[e.value for e in Engine], default=None,
                    help="fast (default: native code) or reference (pure Python)")
    group.addoption("--textpoke-cluster", default=None, metavar="tcp://HOST:PORT",
                    help="explore on this Dask scheduler (default $TEXTPOKE_CLUSTER)")


def pytest_report_header(config: pytest.Config) -> str | None:
    from emu.engine import fallback_notice

    notice = fallback_notice(_engine(config.getoption("--textpoke-engine")))
    return f"textpoke: {notice}" if notice else None


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
                    int(kw.get("interrupts", 1)), getattr(request, "module", None),
                    _engine(request.config.getoption("--textpoke-engine")),
                    _out(request),
                    request.config.getoption("--textpoke-cluster")
                    or os.environ.get("TEXTPOKE_CLUSTER") or None)


def _out(request: pytest.FixtureRequest) -> Path | None:
    """--textpoke-out DIR: DIR/<test name>, the name made a file name (a parametrized id may
    hold anything); None without the option."""
    directory = request.config.getoption("--textpoke-out")
    if not directory:
        return None
    return Path(directory) / re.sub(r"[^A-Za-z0-9_.-]+", "_", request.node.name)


def _engine(value: str | None) -> Engine | None:
    return Engine(value) if value else None


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    rep = outcome.get_result()
    if call.excinfo is not None and isinstance(call.excinfo.value, TextpokeFailure):
        e = call.excinfo.value
        rep.sections.append(("textpoke", f"verdict: {e.verdict or '-'}\nwhere: {e.detail}\n"
                                         f"replay token: {e.token or '-'}\n"
                                         f"shrunk token: {e.shrunk or '-'}\n"
                                         f"timeline: {e.picture or '-'}"))
        crash = getattr(rep.longrepr, "reprcrash", None)
        if crash is not None:  # the short summary: the verdict, not the exception's class
            crash.message = str(e).splitlines()[0]
    if call.when == "call" and rep.passed:
        tp = getattr(item, "funcargs", {}).get("textpoke")
        if isinstance(tp, Textpoke) and tp.replay_token and not tp.replayed:
            why = (f"--textpoke-replay names another scenario or variant than this test's "
                   f"checks ({', '.join(tp.not_replayed) or 'none'})")
            rep.outcome = "skipped"
            rep.longrepr = (str(item.path), item.location[1] or 0, f"Skipped: {why}")
