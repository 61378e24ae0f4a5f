"""Running scenarios: one schedule, its verdict, and its artifacts on disk."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from emu.decisions import DecisionSource, RandomSource, ReplayError
from emu.machine import Machine, RunResult
from emu.verdict import PASS, Verdict

from .oracles import torn_execution
from .scenario import Built, Scenario, build, machine_for


@dataclass
class Outcome:
    verdict: Verdict
    result: RunResult
    built: Built

    @property
    def ok(self) -> bool:
        return self.verdict.kind == PASS


class Runner:
    """One scenario/variant/CPU count on one machine, reset between schedules."""

    def __init__(self, scn: Scenario, variant: str | None = None, cpus: int | None = None):
        self.built = build(scn, variant, cpus)
        self.machine: Machine = machine_for(self.built)

    def run(self, source: DecisionSource) -> Outcome:
        result = self.machine.run(source)
        verdict = result.verdict
        torn = torn_execution(result.truth, self.built.sites)
        if torn is not None:  # the root cause of whatever followed
            verdict = torn
        return Outcome(verdict, result, self.built)

    def run_seed(self, seed: int) -> Outcome:
        return self.run(RandomSource(seed))


def outcome_counts(runner: Runner) -> dict[str, dict[int, int]]:
    """How often each site behaved as each outcome (V_OUTCOMES), for functional checks."""
    m, b = runner.machine, runner.built
    base = b.data["V_OUTCOMES"]
    out: dict[str, dict[int, int]] = {}
    for i, s in enumerate(b.scenario.sites):
        counts = {k: m.mem.read_u64(base + 8 * (8 * i + k)) for k in range(8)}
        out[s.name] = {k: n for k, n in counts.items() if n}
    return out


def write_artifacts(out: Outcome, seed: int | None, directory: Path) -> None:
    """verdict.json, cpu<N>.truth.jsonl, events.jsonl."""
    directory.mkdir(parents=True, exist_ok=True)
    truth = out.result.truth
    for cpu in range(truth.ncpus):
        (directory / f"cpu{cpu}.truth.jsonl").write_text(truth.cpu_jsonl(cpu))
    (directory / "events.jsonl").write_text(truth.events_jsonl())
    doc = {"scenario": out.built.scenario.name, "variant": out.built.variant, "seed": seed,
           "verdict": out.verdict.kind, "detail": str(out.verdict),
           "decisions": len(out.result.path), "cpus": out.built.cpus,
           "ticks": out.result.ticks, "where": out.verdict.to_json()}
    (directory / "verdict.json").write_text(json.dumps(doc, indent=2) + "\n")


__all__ = ["Outcome", "Runner", "ReplayError", "write_artifacts", "outcome_counts"]
