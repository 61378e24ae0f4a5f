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

Most of the others differ from an earlier part in their times alone: the same instructions,
events and records, each a few ticks later because another CPU ran longer first. A part uses
its times only to compare them: the flow places an event after the instructions retired by its
tick, the encoder stamps a TSC packet before a branch packet once a tick has passed since the
last (`TraceConfig.tsc_period` 1; a longer period subtracts times) and the first PSB+ at time
0, the decoder applies a record when its time passes the record's. So at tsc_period 1 a part
that found nothing is remembered by the *order* of its times (`cpu_key`): where each record's,
event's and faulted fetch's time, and 0, falls among the CPU's own ticks (which strictly
increase: the machine's clock counts every retired instruction), and their order among
themselves. A part that found something names times in its report (a torn instruction's tick,
a record's time): it is remembered with its times as well (`times_key`), as is every part at a
longer TSC period. 95 % of the parts of the first 8,000 runs of that search are then
remembered (BENCHMARKS.md, fifteenth session).

`CheckMemo` keeps, by key, the part's result (`CpuPart`): the key is an XXH3-128 digest of
the bytes the part reads, each field with its length, so two parts with one key read the same
bytes up to their times' order (a chance collision of two of the 10^7 parts of a long search:
about 10^-25). The Runner's reference path, with no memo, computes every part
(tests/test_check_memo.py compares the two on every scenario and variant)."""

from __future__ import annotations

import copy
from array import array
from bisect import bisect_left, bisect_right
from collections import OrderedDict
from collections.abc import Callable
from typing import NamedTuple

import xxhash

from emu.engine import native_module
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

    @property
    def found(self) -> bool:
        """Whether the part found anything (a report that names times)."""
        return self.torn is not None or any(
            c is not None and c.verdict is not None for c in (self.forward, self.backward))

    def copied(self) -> CpuPart:
        """The part for another run: its checks its own (a verdict is mutable)."""
        return CpuPart(self.torn, _own(self.forward), _own(self.backward))


def _own(check: CpuCheck | None) -> CpuCheck | None:
    if check is None:
        return None
    return CpuCheck(check.cpu, check.steps,
                    None if check.verdict is None else copy.deepcopy(check.verdict))


class _Timed:
    """What the memo holds under a key whose parts found something: look again with the
    part's times (`times_key`)."""


TIMED = _Timed()


class CheckMemo:
    """Parts by key, the `most` used last (least recently used dropped first). `by_order`:
    keys are `cpu_key`s (the trace's TSC period is 1); else each is looked up with its
    times too."""

    def __init__(self, most: int = 1 << 16, by_order: bool = True) -> None:
        self.most = most
        self.by_order = by_order
        self._parts: OrderedDict[bytes, CpuPart | _Timed] = OrderedDict()
        self.hits = self.misses = 0

    def get(self, key: bytes, times: Callable[[], bytes]) -> CpuPart | None:
        """The part remembered for `key` (a cpu_key); `times()` gives the part's times_key,
        asked for only when the part's times count."""
        part = self._parts.get(key) if self.by_order else TIMED
        if part is TIMED:
            key += times()
            part = self._parts.get(key)
        if part is None:
            self.misses += 1
            return None
        assert isinstance(part, CpuPart)
        self.hits += 1
        self._parts.move_to_end(key)
        return part.copied()

    def put(self, key: bytes, times: Callable[[], bytes], part: CpuPart) -> None:
        if not self.by_order or part.found:
            if self.by_order:
                self._keep(key, TIMED)
            key += times()
        self._keep(key, part.copied())

    def _keep(self, key: bytes, value: CpuPart | _Timed) -> None:
        self._parts[key] = value
        self._parts.move_to_end(key)
        if len(self._parts) > self.most:
            self._parts.popitem(last=False)

    def __len__(self) -> int:
        return len(self._parts)


def shared_key(text_start: bytes, text_end: bytes, records: list[TextPokeRecord]) -> bytes:
    """The digest of what every CPU's decode reads besides its own: both snapshots of the
    text and the text-poke records, in their order, each whole but its time (its CPU too;
    `cpu_key` places the times)."""
    h = xxhash.xxh3_128()
    _field(h, text_start)
    _field(h, text_end)
    h.update(len(records).to_bytes(8, "little"))
    for r in records:
        h.update(array("Q", (r.cpu, r.addr)).tobytes())
        _field(h, r.old)
        _field(h, r.new)
    return h.digest()


def cpu_key(cpu: int, retired: Retired, events: list[AsyncEvent],
            faulted: list[tuple[int, int, bytes]], final_rip: int, shared: bytes,
            record_ticks: list[int]) -> bytes:
    """The key of one CPU's part: the CPU, its records, its exceptions and interrupts, the
    fetches that faulted on it, where it stopped, `shared_key`, and the order of all their
    times (`record_ticks`: the records', in their order)."""
    h = xxhash.xxh3_128()
    h.update(array("Q", (cpu, final_rip, len(events), len(faulted))).tobytes())
    for a in (retired.ips, retired.ends, retired.code):
        _field(h, a)
    h.update(array("Q", [x for e in events for x in e[1:]]).tobytes())
    for _tick, ip, code in faulted:
        h.update(ip.to_bytes(8, "little"))
        _field(h, code)
    times = [0, *record_ticks, *(e.tick for e in events), *(t for t, _, _ in faulted)]
    native = native_module("trace")
    if native is not None:  # (the memo is the fast engine's; _order is the reference)
        _field(h, native.order(retired.ticks, array("Q", times)))
    else:
        _field(h, _order(retired.ticks, times))
    h.update(shared)
    return h.digest()


def times_key(retired: Retired, events: list[AsyncEvent],
              faulted: list[tuple[int, int, bytes]], record_ticks: list[int]) -> bytes:
    """The times themselves of what `cpu_key` keys by their order."""
    h = xxhash.xxh3_128()
    _field(h, retired.ticks)
    _field(h, array("Q", [e.tick for e in events]))
    _field(h, array("Q", [t for t, _, _ in faulted]))
    _field(h, array("Q", record_ticks))
    return h.digest()


def _order(own: array, times: list[int]) -> array:
    """Where each of `times` falls among the CPU's own ticks (`own`, strictly increasing):
    before how many and up to how many of them, and its rank among `times`. With these,
    every comparison between two of all the times is known."""
    rank = {t: i for i, t in enumerate(sorted(set(times)))}
    out = array("Q")
    for t in times:
        out.extend((rank[t], bisect_left(own, t), bisect_right(own, t)))
    return out


def _field(h: xxhash.xxh3_128, data: bytes | bytearray | array) -> None:
    """`data` with its length first, so that no two sequences of fields read alike."""
    view = memoryview(data).cast("B")
    h.update(len(view).to_bytes(8, "little"))
    h.update(view)
