"""Oracles on the ground truth of a run."""

from __future__ import annotations

from emu.engine import Engine
from emu.events import Faulted
from emu.truth import GroundTruth
from emu.verdict import Verdict, VerdictKind
from harness.trace.pt import native

SiteTable = list[tuple[str, int, int, frozenset[tuple[int, bytes]]]]


def torn_execution(truth: GroundTruth, sites: SiteTable,
                   engine: Engine = Engine.REFERENCE) -> Verdict | None:
    """The first instruction, in global time, that a CPU executed inside a patch site although
    it is none of the site's instructions in any of its states (nor the INT3 on its first
    byte): bytes fetched half old and half new, or a jump into the middle of an instruction.
    Under the fast engine C picks the instructions inside a site (the few this looks at)."""
    inside: dict[int, tuple[str, int, frozenset[tuple[int, bytes]]]] = {}
    for name, addr, length, allowed in sites:
        for a in range(addr, addr + length):
            inside[a] = (name, addr, allowed)
    first: tuple[int, int, int, bytes, str, int] | None = None
    faulted = [[] for _ in truth.retired]  # fetched and decoded, but faulted: not retired
    for e in truth.events:
        if isinstance(e, Faulted):
            faulted[e.cpu].append((e.tick, e.ip, e.code))
    fast = native.available(engine)
    ranges = [(addr, addr + length) for _, addr, length, _ in sites]
    for cpu, retired in enumerate(truth.retired):
        if fast:  # only those inside a site: the others are skipped below
            retired = retired.at(native.inside(retired.ips, ranges))
        for tick, ip, code in sorted([*retired, *faulted[cpu]]) if faulted[cpu] else retired:
            hit = inside.get(ip)
            if hit is None:
                continue
            name, addr, allowed = hit
            if (ip - addr, code) not in allowed and (first is None or tick < first[0]):
                first = (tick, cpu, ip, code, name, addr)
                break
    if first is None:
        return None
    tick, cpu, ip, code, name, addr = first
    return Verdict(VerdictKind.TORN_EXECUTION, f"cpu{cpu} executed {code.hex(' ')} at "
                   f"{name}+{ip - addr} (tick {tick}): neither the old nor the new instruction",
                   cpu=cpu, rip=ip,
                   fetched=code, event="torn_fetch", extra={"tick": tick, "site": name})
