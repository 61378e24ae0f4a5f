"""Running scenarios: one schedule, its verdict, and its artifacts on disk."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field, replace
from pathlib import Path

from emu import layout
from emu.decisions import DecisionSource, RandomSource, ReplayError
from emu.engine import Engine
from emu.engine import resolve as resolve_engine
from emu.machine import Machine, RunResult
from emu.snapshot import SnapshotCache
from emu.verdict import Verdict
from harness.scenario import guest
from harness.scenario.build import Built, build, machine_for
from harness.scenario.scenario import Scenario
from harness.trace import kcore, perf_data, sideband, verify
from harness.trace.pt.encoder import TraceConfig
from harness.trace.pt.packed_flow import Flow

from .oracles import torn_execution


@dataclass
class Outcome:
    verdict: Verdict
    result: RunResult
    built: Built
    flows: list[Flow] = field(default_factory=list)  # packed under the fast engine
    streams: list[bytes] = field(default_factory=list)
    decode: list[verify.DecodeReport] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.verdict.ok


class Runner:
    """One scenario/variant/CPU count on one machine, reset between schedules."""

    def __init__(self, scn: Scenario, variant: str | None = None, cpus: int | None = None,
                 trace: TraceConfig | None = None, decode: bool = True,
                 event_mode: bool = False, engine: Engine | None = None):
        self.engine = resolve_engine(engine)
        self.built = build(scn, variant, cpus, event_mode)
        self.machine: Machine = machine_for(self.built, self.engine)
        self.trace = trace or TraceConfig()
        self.decode = decode
        # the exhaustive explorer's runs continue from snapshots of earlier ones on the fast
        # engine (emu/snapshot.py); the reference engine runs each from the start
        self.snapshots = SnapshotCache() if event_mode and self.engine is Engine.FAST \
            else None

    def run(self, source: DecisionSource) -> Outcome:
        """One schedule, run and verified."""
        return self.check(self.machine.run(source, cache=self.snapshots))

    def check(self, result: RunResult) -> Outcome:
        """A run of this runner's machine, verified: the machine's verdict, then the
        ground-truth oracles, then the trace: encoded per CPU and decoded forward and
        backward. The first failure is the verdict."""
        out = Outcome(result.verdict, result, self.built)
        torn = torn_execution(result.truth, self.built.sites, self.engine)
        if torn is not None:  # the root cause of whatever followed
            out.verdict = torn
        out.flows = verify.flows(result.truth, result.final_rips, self.engine)
        out.streams = verify.encode_all(out.flows, result.final_rips, self.trace, self.engine)
        if self.decode:
            out.decode = verify.check_both(out.streams, out.flows, result.text_start,
                                           result.text_end, result.sideband, self.engine)
            failed = next((r.verdict for r in out.decode if r.verdict is not None), None)
            if failed is not None and out.verdict.ok:
                out.verdict = failed
        out.verdict = symbolized(out.verdict, self.built)
        return out

    def run_seed(self, seed: int) -> Outcome:
        return self.run(RandomSource(seed))


_TEXT_ADDRESS = re.compile(r"0x[0-9a-f]{9,16}")


def where(built: Built, address: int) -> tuple[str, str]:
    """(`symbol+off`, site name) of a guest address; "" for what is outside the program or
    outside every site."""
    site = next((name for name, addr, length, _ in built.sites
                 if addr <= address < addr + length), "")
    return built.program.symbolize(address), site


def symbolized(verdict: Verdict, built: Built) -> Verdict:
    """The verdict with its addresses named: rip as `symbol+off` and its site, each link of
    a nested exception, and every text address in the detail followed by `(symbol+off)`.
    The machine and the oracles know addresses only; the program has the symbols."""
    if verdict.ok:
        return verdict
    symbol, site = where(built, verdict.rip) if verdict.rip is not None else ("", "")

    def name(m: re.Match[str]) -> str:
        sym, at = where(built, int(m.group(0), 16))
        if not sym or f"{m.group(0)} ({sym}" in verdict.detail:
            return m.group(0)
        return f"{m.group(0)} ({sym}{', site ' + at if at else ''})"

    detail = _TEXT_ADDRESS.sub(name, verdict.detail)
    nested = tuple(replace(f, symbol=where(built, f.rip)[0]) for f in verdict.nested)
    return replace(verdict, symbol=symbol, site=site, detail=detail, nested=nested)


def outcome_counts(runner: Runner) -> dict[str, dict[int, int]]:
    """How often each site behaved as each outcome (V_OUTCOMES), for functional checks."""
    m, b = runner.machine, runner.built
    base = b.data["V_OUTCOMES"]
    out: dict[str, dict[int, int]] = {}
    for i, s in enumerate(b.scenario.sites):
        n = guest.OUTCOMES_PER_SITE  # V_OUTCOMES: u64 [site][n]
        counts = {k: m.mem.read_u64(base + 8 * (n * i + k)) for k in range(n)}
        out[s.name] = {k: n for k, n in counts.items() if n}
    return out


def write_artifacts(out: Outcome, seed: int | None, directory: Path) -> None:
    """verdict.json; per CPU the PT stream cpu<N>.pt and the ground truth cpu<N>.truth.jsonl;
    events.jsonl; sideband.bin (PERF_RECORD_TEXT_POKE records); text-start.elf, text-end.elf
    (with the program's symbols); vmlinux and perf.data, for `perf script`."""
    directory.mkdir(parents=True, exist_ok=True)
    truth = out.result.truth
    for cpu in range(truth.ncpus):
        (directory / f"cpu{cpu}.truth.jsonl").write_text(truth.cpu_jsonl(cpu))
        (directory / f"cpu{cpu}.pt").write_bytes(out.streams[cpu])
    (directory / "events.jsonl").write_text(truth.events_jsonl())
    (directory / "sideband.bin").write_bytes(b"".join(map(sideband.encode,
                                                              out.result.sideband)))
    symbols = out.built.program.symbols
    start = kcore.write([(layout.TEXT_BASE, out.result.text_start)], symbols)
    (directory / "text-start.elf").write_bytes(start)
    (directory / "text-end.elf").write_bytes(
        kcore.write([(layout.TEXT_BASE, out.result.text_end)], symbols))
    (directory / "vmlinux").write_bytes(start)  # perf applies the records forward from it
    (directory / "perf.data").write_bytes(perf_data.write(perf_data.Trace(
        out.streams, out.result.sideband, len(out.result.text_start), out.result.ticks)))
    (directory / "final-rips.json").write_text(json.dumps([f"{r:#x}" for r in
                                                           out.result.final_rips]) + "\n")
    doc = {"scenario": out.built.scenario.name, "variant": out.built.variant, "seed": seed,
           "verdict": out.verdict.kind, "detail": str(out.verdict),
           "decisions": len(out.result.path), "cpus": out.built.cpus,
           "ticks": out.result.ticks, "where": out.verdict.to_json(),
           "sites": [{"name": n, "addr": f"{a:#x}", "length": ln,
                      "allowed": sorted([o, b.hex()] for o, b in allowed)}
                     for n, a, ln, allowed in out.built.sites],
           "decode": [r.to_json() for r in out.decode]}
    (directory / "verdict.json").write_text(json.dumps(doc, indent=2) + "\n")


__all__ = ["Outcome", "Runner", "ReplayError", "write_artifacts", "outcome_counts"]
