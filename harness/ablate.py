"""Which steps of a poking sequence are load-bearing: drop each step, swap each adjacent pair,
and explore every mutant, randomly and with a bounded exhaustive search.

For a user's sequence written as steps (`PokeSteps`), the mutants are edited step lists. For
the kernel's own sequence (text_poke_bp_batch, guest_code/alternative.S) a step is dropped or
moved by its variant bit (`KERNEL_STEPS`): the INT3 guard, the sync after the INT3, the sync
after the tail (which Linux's comment calls "very likely not necessary" on Intel), the record's
place, the sync after the first byte, and the wait for the INT3 handlers' references.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

from emu.path import Cost

from .explore.exhaustive import check_bound
from .explore.explore import Frontier, exhaustive_search
from .explore.schedule import Plan, ScheduleResult, pct_steps, run_one
from .explore.strategies import DEFAULT_STRATEGY
from .run import Runner
from .scenario.guest import Cfg
from .scenario.load import Origin
from .scenario.mutation import kernel_variant, mutate, step_edits
from .scenario.op import Kprobe, PokeSteps, StaticCallUpdate, StaticKey
from .scenario.scenario import GENERIC_VARIANTS, Scenario
from .scenario.text_poke_loc import ScenarioError

# The kernel's sequence, one row per step: what the mutant does, and the bit that does it.
KERNEL_STEPS: tuple[tuple[str, Cfg], ...] = (
    ("drop the INT3 guard (bytes written in place)", Cfg.NO_INT3),
    ("drop the sync after the INT3", Cfg.NO_SYNC1),
    ("drop the sync after the tail", Cfg.NO_SYNC2),
    ("move the record before the INT3 sync", Cfg.RECORD_EARLY),
    ("move the record after the first byte", Cfg.RECORD_LATE),
    ("drop the sync after the first byte", Cfg.NO_SYNC3),
    ("drop the wait for the handlers' references", Cfg.NO_REFWAIT),
)


@dataclass(frozen=True)
class Mutant:
    """One mutation of the sequence, as a scenario and variant to explore."""

    mutation: str
    scenario: Scenario
    variant: str


@dataclass
class AblationRow:
    mutation: str
    verdict: str | None  # the first failure's kind; None: none found
    finding: str  # where it was found, or what "no failure" covers
    token: str | None = None  # the shrunk witness (or the witness if not shrunk)


def mutants(scn: Scenario, variant: str | None = None) -> Iterator[Mutant]:
    """The unmutated sequence first, then each drop and each adjacent swap. A mutant is a
    scenario named `NAME~ID` (harness/scenario/mutation.py), so its tokens replay as is."""
    base = variant or scn.default_variant
    ops = scn.patcher_ops()
    steps_at = [(p, j) for p, pops in enumerate(ops) for j, op in enumerate(pops)
                if isinstance(op, PokeSteps)]
    if not steps_at and not any(isinstance(op, StaticKey | StaticCallUpdate | Kprobe)
                                for op in scn.all_ops()):
        raise ScenarioError(f"ablate: scenario {scn.name} has no PokeSteps op and no op that "
                            "runs the kernel's sequence (StaticKey, StaticCallUpdate, Kprobe): "
                            "nothing to mutate")
    yield Mutant("none (the sequence as written)", scn, base)
    if not steps_at:
        cfg = scn.variant(base)
        generic = {bit: name for name, bit in GENERIC_VARIANTS.items()}
        for what, bit in KERNEL_STEPS:
            if not cfg.cfg and not cfg.flags and generic[bit] not in scn.variants:
                yield Mutant(what, scn, generic[bit])  # a generic variant of the scenario
            else:
                yield Mutant(what, mutate(scn, f"k.{bit.name.lower()}.{base}"),
                             kernel_variant(bit))
        return
    for p, j in steps_at:
        op: PokeSteps = ops[p][j]  # type: ignore[assignment]
        for suffix, what, _steps in step_edits(list(op.steps)):
            yield Mutant(what, mutate(scn, f"p{p}.op{j}.{suffix}"), base)


DEFAULT_BOUND = Cost(preemptions=1, delays=1, interrupts=0)


def ablate(scn: Scenario, variant: str | None = None, schedules: int = 40,
           bound: Cost = DEFAULT_BOUND, limit: int = 300, cpus: int | None = None,
           origin: Origin | None = None) -> list[AblationRow]:
    """Every mutant explored with the default strategy (`schedules`) until its first failure,
    then, if none, with the exhaustive search within `bound` (at most `limit` schedules).
    `origin`: where a user's scenario was loaded from, recorded in the tokens."""
    check_bound(bound)
    rows = []
    for m in mutants(scn, variant):
        rows.append(_explore(m, schedules, bound, limit, cpus, origin))
    return rows


def _explore(m: Mutant, schedules: int, bound: Cost, limit: int, cpus: int | None,
             origin: Origin | None) -> AblationRow:
    runner = Runner(m.scenario, m.variant, cpus)
    plan = Plan(m.scenario.name, m.variant, cpus, DEFAULT_STRATEGY,
                steps=pct_steps(runner, 0), shrink_budget=40, origin=origin)
    for i in range(schedules):
        res = run_one(runner, plan, i)
        if res.failed:
            return _found(m, res, f"{DEFAULT_STRATEGY} schedule {i}")
    search = Plan(m.scenario.name, m.variant, cpus, "exhaustive",
                  preemptions=bound.preemptions, delays=bound.delays,
                  interrupts=bound.interrupts, shrink_budget=40, origin=origin)
    found: list[ScheduleResult] = []
    ran = 0

    def record(res: ScheduleResult, _frontier: Frontier | None) -> None:
        nonlocal ran
        ran += 1
        if res.failed and not found:
            found.append(res)

    exhausted = exhaustive_search(search, Runner(m.scenario, m.variant, cpus, event_mode=True),
                                  lambda i: i < limit and not found, record)
    if found:
        return _found(m, found[0], f"exhaustive schedule {found[0].idx} ({bound})")
    if exhausted:
        return AblationRow(m.mutation, None, f"no failure; exhausted at {bound} ({ran} "
                                             f"schedules) and {schedules} {DEFAULT_STRATEGY}")
    return AblationRow(m.mutation, None, f"no failure within budget ({schedules} "
                                         f"{DEFAULT_STRATEGY}, {ran} exhaustive at {bound})")


def _found(m: Mutant, res: ScheduleResult, where: str) -> AblationRow:
    return AblationRow(m.mutation, str(res.verdict), where, res.shrunk or res.token)


def table(rows: list[AblationRow]) -> str:
    lines = ["| mutation | verdict | found | shrunk token |", "|---|---|---|---|"]
    for r in rows:
        token = "-" if r.token is None else f"`{r.token[:24]}…`"
        lines.append(f"| {r.mutation} | {r.verdict or 'pass'} | {r.finding} | {token} |")
    return "\n".join(lines)
