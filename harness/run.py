"""Running scenarios: one schedule, its verdict, and its artifacts on disk."""

from __future__ import annotations

import functools
import json
import re
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TypeVar

from emu import layout
from emu.decisions import DecisionSource, RandomSource, ReplayError
from emu.engine import Engine, native_module
from emu.engine import resolve as resolve_engine
from emu.machine import Machine, RunResult
from emu.snapshot import SnapshotCache
from emu.verdict import Verdict
from harness.scenario import guest
from harness.scenario.build import Built, build, machine_for
from harness.scenario.scenario import Scenario
from harness.trace import kcore, perf_data, sideband, verify
from harness.trace.pt.encoder import TraceConfig
from harness.trace.pt.flow import AsyncEvent, async_events_per_cpu
from harness.trace.pt.packed_flow import Flow

from .check_memo import CheckMemo, CpuPart, cpu_key, shared_key, times_key
from .oracles import earliest, faulted_fetches, first_torn, site_map, torn_execution, torn_verdict

T = TypeVar("T")


@dataclass
class Outcome:
    """A run and its verdict. Its flows and PT streams are made when first read where the
    check did not need them (a part the runner's CheckMemo had): the same bytes either way."""

    verdict: Verdict
    result: RunResult
    built: Built
    decode: list[verify.DecodeReport] = field(default_factory=list)
    trace: TraceConfig = field(default_factory=TraceConfig, repr=False)
    engine: Engine = Engine.REFERENCE
    made_flows: list[Flow | None] = field(default_factory=list, repr=False)
    made_streams: list[bytes | None] = field(default_factory=list, repr=False)

    @property
    def ok(self) -> bool:
        return self.verdict.ok

    @property
    def flows(self) -> list[Flow]:
        """Each CPU's flow (packed under the fast engine)."""
        rips = self.result.final_rips
        return _all_made(self.made_flows, len(rips), lambda cpu: verify.flow_of(
            self.result.truth, cpu, rips[cpu], self.engine))

    @property
    def streams(self) -> list[bytes]:
        """Each CPU's PT stream."""
        rips = self.result.final_rips
        return _all_made(self.made_streams, len(rips), lambda cpu: verify.encode_flow(
            self.flows[cpu], rips[cpu], self.trace, self.engine))


def _all_made(made: list[T | None], n: int, make: Callable[[int], T]) -> list[T]:
    """`made` with its n entries, each missing one (None) made now, in place."""
    made += [None] * (n - len(made))
    for cpu, x in enumerate(made):
        if x is None:
            made[cpu] = make(cpu)
    return made  # type: ignore[return-value]  # every one made


class Runner:
    """One scenario/variant/CPU count on one machine, reset between schedules. Under the fast
    engine it remembers the CPUs' parts of its checks (check_memo.py; `memo`)."""

    def __init__(self, scn: Scenario, variant: str | None = None, cpus: int | None = None,
                 trace: TraceConfig | None = None, decode: bool = True,
                 event_mode: bool = False, engine: Engine | None = None,
                 memo: bool | None = None):
        self.engine = resolve_engine(engine)
        self.built = build(scn, variant, cpus, event_mode)
        self.machine: Machine = machine_for(self.built, self.engine)
        self.trace = trace or TraceConfig()
        self.decode = decode
        # the exhaustive explorer's runs continue from snapshots of earlier ones on the fast
        # engine (emu/snapshot.py); the reference engine runs each from the start
        self.snapshots = SnapshotCache(native=native_module("machine")) \
            if event_mode and self.engine is Engine.FAST else None
        if memo is None:
            memo = self.engine is Engine.FAST
        # parts keyed by their times' order where the stream compares times alone
        self.memo = CheckMemo(by_order=self.trace.tsc_period == 1) if memo else None
        self._sites = site_map(self.built.sites)  # the torn oracle's, per CPU part

    def run(self, source: DecisionSource) -> Outcome:
        """One schedule, run and verified."""
        return self.check(self.machine.run(source, cache=self.snapshots))

    def check(self, result: RunResult) -> Outcome:
        """A run of this runner's machine, verified: the machine's verdict, then the
        ground-truth oracles, then the trace: encoded per CPU and decoded forward and
        backward. The first failure is the verdict."""
        out = Outcome(result.verdict, result, self.built, trace=self.trace, engine=self.engine)
        if self.memo is not None:
            self._check_parts(out)
        else:
            torn = torn_execution(result.truth, self.built.sites, self.engine)
            if torn is not None:  # the root cause of whatever followed
                out.verdict = torn
            out.made_flows = list(verify.flows(result.truth, result.final_rips, self.engine))
            out.made_streams = list(verify.encode_all(out.flows, result.final_rips, self.trace,
                                                      self.engine))
            if self.decode:
                out.decode = verify.check_both(out.streams, out.flows, result.text_start,
                                               result.text_end, result.sideband, self.engine)
        failed = next((r.verdict for r in out.decode if r.verdict is not None), None)
        if failed is not None and out.verdict.ok:
            out.verdict = failed
        out.verdict = symbolized(out.verdict, self.built)
        return out

    def _check_parts(self, out: Outcome) -> None:
        """`check`'s oracles and decoding, CPU by CPU, each CPU's part taken from the memo
        where it has it (check_memo.py): the same verdict and reports as computed."""
        result, memo = out.result, self.memo
        assert memo is not None
        truth, rips = result.truth, result.final_rips
        faulted = faulted_fetches(truth)
        events = async_events_per_cpu(truth.events, len(rips))
        shared = shared_key(result.text_start, result.text_end, result.sideband)
        record_ticks = [r.tick for r in result.sideband]
        out.made_flows = [None] * len(rips)
        out.made_streams = [None] * len(rips)
        parts: list[CpuPart] = []
        for cpu, retired in enumerate(truth.retired):
            key = cpu_key(cpu, retired, events[cpu], faulted[cpu], rips[cpu], shared,
                          record_ticks)
            times = functools.partial(times_key, retired, events[cpu], faulted[cpu],
                                      record_ticks)
            part = memo.get(key, times)
            if part is None:
                part = self._check_cpu(out, cpu, events[cpu], faulted[cpu])
                memo.put(key, times, part)
            parts.append(part)
        torn = torn_verdict(earliest(p.torn for p in parts))
        if torn is not None:
            out.verdict = torn
        if self.decode:
            out.decode = [verify.DecodeReport("forward", [p.forward for p in parts]),
                          verify.DecodeReport("backward", [p.backward for p in parts])]

    def _check_cpu(self, out: Outcome, cpu: int, events: list[AsyncEvent],
                   faulted: list[tuple[int, int, bytes]]) -> CpuPart:
        """One CPU's part of `check`, computed; its flow and stream go to `out`."""
        result = out.result
        torn = first_torn(cpu, result.truth.retired[cpu], faulted, self._sites, self.engine)
        if not self.decode:
            return CpuPart(torn, None, None)
        flow = verify.flow_of(result.truth, cpu, result.final_rips[cpu], self.engine, events)
        stream = verify.encode_flow(flow, result.final_rips[cpu], self.trace, self.engine)
        out.made_flows[cpu], out.made_streams[cpu] = flow, stream
        return CpuPart(torn, *(verify.check_cpu(cpu, stream, flow, text, result.sideband,
                                                backward, None, self.engine)
                               for text, backward in ((result.text_start, False),
                                                      (result.text_end, True))))

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
