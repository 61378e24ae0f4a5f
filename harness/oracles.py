"""Oracles on the ground truth of a run."""

from __future__ import annotations

from collections.abc import Iterable
from typing import NamedTuple

from emu.engine import Engine
from emu.events import Faulted
from emu.retired import Retired
from emu.truth import GroundTruth
from emu.verdict import Verdict, VerdictKind
from harness.trace.pt import native

SiteTable = list[tuple[str, int, int, frozenset[tuple[int, bytes]]]]


class TornFetch(NamedTuple):
    """An instruction a CPU executed inside a patch site that is none of the site's."""

    tick: int
    cpu: int
    ip: int
    code: bytes
    site: str
    site_addr: int


def torn_execution(truth: GroundTruth, sites: SiteTable,
                   engine: Engine = Engine.REFERENCE) -> Verdict | None:
    """The first instruction, in global time, that a CPU executed inside a patch site although
    it is none of the site's instructions in any of its states (nor the INT3 on its first
    byte): bytes fetched half old and half new, or a jump into the middle of an instruction.
    Under the fast engine C picks the instructions inside a site (the few this looks at)."""
    faulted, where = faulted_fetches(truth), site_map(sites)
    return torn_verdict(earliest(first_torn(cpu, retired, faulted[cpu], where, engine)
                                 for cpu, retired in enumerate(truth.retired)))


class SiteMap(NamedTuple):
    """The sites as the torn oracle looks them up: per address inside one, (site name, its
    address, its allowed instructions); and the sites' [start, end) ranges."""

    by_address: dict[int, tuple[str, int, frozenset[tuple[int, bytes]]]]
    ranges: list[tuple[int, int]]


def site_map(sites: SiteTable) -> SiteMap:
    by_address: dict[int, tuple[str, int, frozenset[tuple[int, bytes]]]] = {}
    for name, addr, length, allowed in sites:
        for a in range(addr, addr + length):
            by_address[a] = (name, addr, allowed)
    return SiteMap(by_address, [(addr, addr + length) for _, addr, length, _ in sites])


def faulted_fetches(truth: GroundTruth) -> list[list[tuple[int, int, bytes]]]:
    """Per CPU, (tick, ip, code) of what it fetched and decoded but did not retire (it
    faulted): executed as far as a torn fetch goes."""
    faulted: list[list[tuple[int, int, bytes]]] = [[] for _ in truth.retired]
    for e in truth.events:
        if isinstance(e, Faulted):
            faulted[e.cpu].append((e.tick, e.ip, e.code))
    return faulted


def first_torn(cpu: int, retired: Retired, faulted: list[tuple[int, int, bytes]],
               sites: SiteMap, engine: Engine = Engine.REFERENCE) -> TornFetch | None:
    """One CPU's part of `torn_execution`: its first torn instruction in its own time."""
    records: Iterable[tuple[int, int, bytes]] = retired
    if native.available(engine):  # only those inside a site: the others are skipped below
        records = retired.at(native.inside(retired.ips, sites.ranges))
    inside = sites.by_address
    for tick, ip, code in sorted([*records, *faulted]) if faulted else records:
        hit = inside.get(ip)
        if hit is None:
            continue
        name, addr, allowed = hit
        if (ip - addr, code) not in allowed:
            return TornFetch(tick, cpu, ip, code, name, addr)
    return None


def earliest(torn: Iterable[TornFetch | None]) -> TornFetch | None:
    """The first of the CPUs' torn instructions in global time (the lowest CPU of a tie)."""
    first: TornFetch | None = None
    for t in torn:
        if t is not None and (first is None or t.tick < first.tick):
            first = t
    return first


def torn_verdict(first: TornFetch | None) -> Verdict | None:
    if first is None:
        return None
    tick, cpu, ip, code, name, addr = first
    return Verdict(VerdictKind.TORN_EXECUTION, f"cpu{cpu} executed {code.hex(' ')} at "
                   f"{name}+{ip - addr} (tick {tick}): neither the old nor the new instruction",
                   cpu=cpu, rip=ip,
                   fetched=code, event="torn_fetch", extra={"tick": tick, "site": name})
