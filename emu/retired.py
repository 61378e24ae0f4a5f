"""One CPU's retired instructions, packed: parallel arrays, no Python object per instruction.

Record i is (tick, ip, bytes fetched) = (ticks[i], ips[i], code[ends[i-1]:ends[i]]). The
reference engine appends one record at a time; the native engine (emu/engine.py) appends
whole runs of records it collected in C (emu/_native.c: flush_truth), and the native trace
pipeline reads the arrays through the buffer protocol. Iterating or indexing yields
(tick, ip, bytes) tuples made on the fly, as the former list of tuples did, so readers need
not care which engine ran.
A packed log keeps the garbage collector out of a run's cost (it made verification
superlinear in CPUs and sites while every instruction was a tuple)."""

from __future__ import annotations

from array import array
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import overload


@dataclass(frozen=True, slots=True)
class RecordsCopy:
    """The first `count` records of a Retired as immutable bytes: its `parent`'s, then this
    segment's (Retired.copy)."""

    parent: RecordsCopy | None
    count: int
    last_tick: int  # of record count - 1 (0 when there is none)
    ticks: bytes
    ips: bytes
    ends: bytes
    code: bytes


class Retired:
    """See the module. The native engine appends lazily: a CPU's records stay in its C
    buffers, which grow by doubling, until Python reads this log (`pending`, the native CPU
    holding them, is then asked for them); appending each batch's few hundred records to
    the arrays as it ended reallocated and copied them tens of times a run."""

    __slots__ = ("_ticks", "_ips", "_ends", "_code", "pending")

    def __init__(self, records: list[tuple[int, int, bytes]] | None = None) -> None:
        self._ticks = array("Q")
        self._ips = array("Q")
        self._ends = array("I")  # end offset of each record's bytes in `code`
        self._code = bytearray()
        self.pending = None  # the native CPU (emu/_native.c: Cpu) holding records for it
        for tick, ip, code in records or ():
            self.append(tick, ip, code)

    def _sync(self) -> None:
        if self.pending is not None:
            self.pending.flush_truth(self)  # appends them, and sets `pending` to None

    @property
    def ticks(self) -> array:
        self._sync()
        return self._ticks

    @property
    def ips(self) -> array:
        self._sync()
        return self._ips

    @property
    def ends(self) -> array:
        self._sync()
        return self._ends

    @property
    def code(self) -> bytearray:
        self._sync()
        return self._code

    def append(self, tick: int, ip: int, code: bytes) -> None:
        self._sync()
        self._ticks.append(tick)
        self._ips.append(ip)
        self._code += code
        self._ends.append(len(self._code))

    def pop(self) -> tuple[int, int, bytes]:
        """Take back the last record (an instruction that faulted did not retire)."""
        last = self[-1]
        self._ticks.pop()
        self._ips.pop()
        self._ends.pop()
        del self._code[len(self._code) - len(last[2]):]
        return last

    def __len__(self) -> int:
        return len(self.ticks)

    def copy(self, since: RecordsCopy | None = None) -> RecordsCopy:
        """The records as immutable bytes (a machine snapshot): those after `since`, an
        earlier copy of this log's first records, as a segment of their own that shares
        `since`'s. A snapshot copies only what its run retired since the one before
        (each of a run's records once, not once per snapshot). `since` is not shared when
        its last record is no longer this log's (taken back by `pop`)."""
        self._sync()
        n = len(self._ticks)
        if since is not None and (since.count > n or since.count and
                                  self._ticks[since.count - 1] != since.last_tick):
            since = None
        lo = since.count if since is not None else 0
        code_lo = self._ends[lo - 1] if lo else 0
        return RecordsCopy(since, n, self._ticks[n - 1] if n else 0,
                           memoryview(self._ticks)[lo:].tobytes(),
                           memoryview(self._ips)[lo:].tobytes(),
                           memoryview(self._ends)[lo:].tobytes(),
                           bytes(memoryview(self._code)[code_lo:]))

    def extend_copy(self, copy: RecordsCopy) -> None:
        """Append the records `copy` holds, to an empty Retired (the ends are offsets in
        code)."""
        if len(self):
            raise ValueError("extend_copy: the records' code offsets need an empty Retired")
        segments = []
        while copy is not None:
            segments.append(copy)
            copy = copy.parent
        for seg in reversed(segments):
            self._ticks.frombytes(seg.ticks)
            self._ips.frombytes(seg.ips)
            self._ends.frombytes(seg.ends)
            self._code += seg.code

    @overload
    def __getitem__(self, i: int) -> tuple[int, int, bytes]: ...
    @overload
    def __getitem__(self, i: slice) -> list[tuple[int, int, bytes]]: ...

    def __getitem__(self, i):
        if isinstance(i, slice):
            return self.at(range(*i.indices(len(self))))
        n = len(self)
        if i < 0:
            i += n
        if not 0 <= i < n:
            raise IndexError("retired record index out of range")
        ends = self._ends
        return self._ticks[i], self._ips[i], bytes(self._code[ends[i - 1] if i else 0:ends[i]])

    def at(self, indices: Iterable[int]) -> list[tuple[int, int, bytes]]:
        """The records at `indices` (each 0 <= i < len), in their order."""
        self._sync()
        ticks, ips, ends, code = self._ticks, self._ips, self._ends, self._code
        return [(ticks[i], ips[i], bytes(code[ends[i - 1] if i else 0:ends[i]]))
                for i in indices]

    def __iter__(self) -> Iterator[tuple[int, int, bytes]]:
        start = 0
        code = self.code
        for tick, ip, end in zip(self._ticks, self._ips, self._ends, strict=True):
            yield tick, ip, bytes(code[start:end])
            start = end

    def __eq__(self, other: object) -> bool:
        if isinstance(other, Retired):
            return (self.ticks == other.ticks and self.ips == other.ips
                    and self.ends == other.ends and self.code == other.code)
        if isinstance(other, list):
            return list(self) == other
        return NotImplemented

    __hash__ = None  # type: ignore[assignment]  # mutable

    def __getstate__(self) -> tuple:  # (a native CPU is not pickled: its records are)
        self._sync()
        return self._ticks, self._ips, self._ends, self._code

    def __setstate__(self, state: tuple) -> None:
        self._ticks, self._ips, self._ends, self._code = state
        self.pending = None

    def __repr__(self) -> str:
        return f"Retired({len(self)} records)"
