"""The race-zoo table: for every zoo card, explore its buggy variant until the first failure
(within a budget) and its fixed variant for a fixed budget."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

from emu.verdict import VerdictKind
from harness.explore.explore import explore
from harness.explore.schedule import Plan, run_schedule
from harness.explore.strategies import DEFAULT_STRATEGY
from harness.scenario.load import ScenarioRef, resolve
from harness.scenario.shipped import SCENARIOS


@dataclass
class ZooRow:
    card: str
    scenario: str
    found: bool
    kind: VerdictKind | None
    expected: str
    schedules_to_first: int | None
    seconds_to_first: float | None  # when the first failure was recorded, not the whole run
    decisions: int | None
    deviations: int | None  # of the failing path from the simplest run (emu/path.py)
    shrunk_deviations: int | None
    token: str | None
    shrunk: str | None
    fixed_passed: int
    fixed_schedules: int


def zoo(strategy: str = DEFAULT_STRATEGY, buggy_budget: int = 300, fixed_budget: int = 40,
        jobs: int = 1, seed: int = 0, extra: Sequence[ScenarioRef] = ()) -> list[ZooRow]:
    """The shipped cards, then the `extra` (a user's) scenarios that have an expected verdict.
    With `jobs` > 1, one LocalCluster of `jobs` processes serves every card
    (harness/explore/cluster.py)."""
    if jobs > 1:
        from harness.explore.cluster import ClusterSpec, connect

        with connect(ClusterSpec(jobs)) as cl:
            return _zoo(strategy, buggy_budget, fixed_budget, seed, extra, cl.client)
    return _zoo(strategy, buggy_budget, fixed_budget, seed, extra, None)


def _zoo(strategy: str, buggy_budget: int, fixed_budget: int, seed: int,
         extra: Sequence[ScenarioRef], client: object | None) -> list[ZooRow]:
    rows = []
    cards = sorted((s for s in SCENARIOS.values() if s.card), key=lambda s: s.card)
    for origin, scn in [(None, s) for s in cards] + [(r.origin, resolve(r)) for r in extra]:
        fixed_name = "fixed" if "fixed" in scn.variants else scn.default_variant
        for vname, var in scn.variants.items():
            if var.expect is None:
                continue
            # Time to the first failure is time to find it: shrinking comes after, apart
            # (schedule i is a pure function of the plan and i, so it is the same schedule).
            bug = explore(Plan(scn.name, vname, strategy=strategy, seed=seed, shrink=False,
                               origin=origin),
                          schedules=buggy_budget, client=client, stop_at_first=True)
            first = bug.failures[0] if bug.failures else None
            if first is not None:
                first = run_schedule(replace(bug.plan, shrink=True), first.idx)
            fixed = explore(Plan(scn.name, fixed_name, strategy=strategy, seed=seed,
                                 shrink=False, origin=origin),
                            schedules=fixed_budget, client=client)
            rows.append(ZooRow(
                card=(scn.card or scn.name) + ("" if vname == "buggy" else f" ({vname})"),
                scenario=scn.name,
                found=first is not None and var.accepts(first.verdict),
                kind=VerdictKind(first.verdict) if first else None, expected=var.expect,
                schedules_to_first=first.idx + 1 if first else None,
                seconds_to_first=round(bug.first_failure_seconds, 2)
                if first and bug.first_failure_seconds is not None else None,
                decisions=first.decisions if first else None,
                deviations=first.deviations if first else None,
                shrunk_deviations=first.shrunk_deviations if first else None,
                token=first.token if first else None, shrunk=first.shrunk if first else None,
                fixed_passed=fixed.schedules - fixed.failed,
                fixed_schedules=fixed.schedules))
    return rows


def _n(x: int | None) -> str:
    return "-" if x is None else str(x)


def table(rows: list[ZooRow]) -> str:
    head = ("| card | scenario | buggy found | verdict | schedules to 1st | seconds to 1st | "
            "decisions | deviations | shrunk | fixed passed |")
    lines = [head, "|" + "---|" * 10]
    for r in rows:
        lines.append(f"| {r.card} | {r.scenario} | {'yes' if r.found else 'NO'} | "
                     f"{r.kind or '-'} | {r.schedules_to_first or '-'} | "
                     f"{r.seconds_to_first if r.seconds_to_first is not None else '-'} | "
                     f"{_n(r.decisions)} | {_n(r.deviations)} | {_n(r.shrunk_deviations)} | "
                     f"{r.fixed_passed}/{r.fixed_schedules} |")
    return "\n".join(lines)
