"""What verifying one CPU's part of a run found, remembered by the bytes that part reads.

A run's check (harness/run.py: Runner.check) is, CPU by CPU, a function of that CPU's ground
truth alone and of what all CPUs share: the torn-fetch oracle reads the CPU's retired records
and the fetches that faulted on it (oracles.first_torn); its flow is built from the records,
its exceptions and interrupts and where it stopped (flow.cpu_flow), its PT stream is encoded
from the flow, and the stream is decoded over the start and end snapshots of the text and the
run's text-poke records (verify.check_cpu). The runner fixes the rest (the sites, the trace
configuration, the engine). In an exhaustive search most runs reorder steps that other CPUs'
parts do not see: in `static_key` 3 CPUs, P=2 V=2 I=1, 64 % of the CPU parts of the first
20,000 runs had been checked before, byte for byte (BENCHMARKS.md, tenth session).

`CheckMemo` keeps, by key, the part's result (`CpuPart`): the key is an XXH3-128 digest of
every byte the part reads, each field with its length, so two parts with one key read the same
bytes (a chance collision of two of the 10^7 parts of a long search: about 10^-25). The
Runner's reference path, with no memo, computes every part (tests/test_check_memo.py compares
the two on every scenario and variant)."""

from __future__ import annotations

import copy
from array import array
from collections import OrderedDict
from typing import NamedTuple

import xxhash

from emu.retired import Retired
from emu.text_poke_record import TextPokeRecord
from harness.trace.pt.flow import AsyncEvent
from harness.trace.verify import CpuCheck

from .oracles import TornFetch


class CpuPart(NamedTuple):
    """One CPU's part of a run's check: its first torn instruction, and its decode checks
    forward and backward (None when the runner does not decode)."""

    torn: TornFetch | None
    forward: CpuCheck | None
    backward: CpuCheck | None

    def copied(self) -> CpuPart:
        """The part for another run: its checks its own (a verdict is mutable)."""
        return CpuPart(self.torn, _own(self.forward), _own(self.backward))


def _own(check: CpuCheck | None) -> CpuCheck | None:
    if check is None:
        return None
    return CpuCheck(check.cpu, check.steps,
                    None if check.verdict is None else copy.deepcopy(check.verdict))


class CheckMemo:
    """Parts by key, the `most` used last (least recently used dropped first)."""

    def __init__(self, most: int = 1 << 16) -> None:
        self.most = most
        self._parts: OrderedDict[bytes, CpuPart] = OrderedDict()
        self.hits = self.misses = 0

    def get(self, key: bytes) -> CpuPart | None:
        part = self._parts.get(key)
        if part is None:
            self.misses += 1
            return None
        self.hits += 1
        self._parts.move_to_end(key)
        return part.copied()

    def put(self, key: bytes, part: CpuPart) -> None:
        self._parts[key] = part.copied()
        if len(self._parts) > self.most:
            self._parts.popitem(last=False)

    def __len__(self) -> int:
        return len(self._parts)


def shared_key(text_start: bytes, text_end: bytes, records: list[TextPokeRecord]) -> bytes:
    """The digest of what every CPU's decode reads besides its own: both snapshots of the
    text and the text-poke records, in their order (each whole: its CPU too)."""
    h = xxhash.xxh3_128()
    _field(h, text_start)
    _field(h, text_end)
    h.update(len(records).to_bytes(8, "little"))
    for r in records:
        h.update(array("Q", (r.tick, r.cpu, r.addr)).tobytes())
        _field(h, r.old)
        _field(h, r.new)
    return h.digest()


def cpu_key(cpu: int, retired: Retired, events: list[AsyncEvent],
            faulted: list[tuple[int, int, bytes]], final_rip: int, shared: bytes) -> bytes:
    """The key of one CPU's part: the CPU, its records, its exceptions and interrupts, the
    fetches that faulted on it, where it stopped, and `shared_key`."""
    h = xxhash.xxh3_128()
    h.update(array("Q", (cpu, final_rip, len(events), len(faulted))).tobytes())
    for a in (retired.ticks, retired.ips, retired.ends, retired.code):
        _field(h, a)
    h.update(array("Q", [x for e in events for x in e]).tobytes())
    for tick, ip, code in faulted:
        h.update(array("Q", (tick, ip)).tobytes())
        _field(h, code)
    h.update(shared)
    return h.digest()


def _field(h: xxhash.xxh3_128, data: bytes | bytearray | array) -> None:
    """`data` with its length first, so that no two sequences of fields read alike."""
    view = memoryview(data).cast("B")
    h.update(len(view).to_bytes(8, "little"))
    h.update(view)
