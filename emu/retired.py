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
from collections.abc import Iterator
from typing import overload


class Retired:
    __slots__ = ("ticks", "ips", "ends", "code")

    def __init__(self, records: list[tuple[int, int, bytes]] | None = None) -> None:
        self.ticks = array("Q")
        self.ips = array("Q")
        self.ends = array("I")  # end offset of each record's bytes in `code`
        self.code = bytearray()
        for tick, ip, code in records or ():
            self.append(tick, ip, code)

    def append(self, tick: int, ip: int, code: bytes) -> None:
        self.ticks.append(tick)
        self.ips.append(ip)
        self.code += code
        self.ends.append(len(self.code))

    def pop(self) -> tuple[int, int, bytes]:
        """Take back the last record (an instruction that faulted did not retire)."""
        last = self[-1]
        self.ticks.pop()
        self.ips.pop()
        self.ends.pop()
        del self.code[len(self.code) - len(last[2]):]
        return last

    def __len__(self) -> int:
        return len(self.ticks)

    def packed(self) -> tuple[bytes, bytes, bytes, bytes]:
        """The records as bytes (ticks, ips, ends, code): a copy for a machine snapshot."""
        return self.ticks.tobytes(), self.ips.tobytes(), self.ends.tobytes(), bytes(self.code)

    def extend_packed(self, packed: tuple[bytes, bytes, bytes, bytes]) -> None:
        """Append records `packed` gave, to an empty Retired (the ends are offsets in code)."""
        if len(self):
            raise ValueError("extend_packed: the records' code offsets need an empty Retired")
        ticks, ips, ends, code = packed
        self.ticks.frombytes(ticks)
        self.ips.frombytes(ips)
        self.ends.frombytes(ends)
        self.code += code

    @overload
    def __getitem__(self, i: int) -> tuple[int, int, bytes]: ...
    @overload
    def __getitem__(self, i: slice) -> list[tuple[int, int, bytes]]: ...

    def __getitem__(self, i):
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(len(self)))]
        if i < 0:
            i += len(self)
        if not 0 <= i < len(self):
            raise IndexError("retired record index out of range")
        start = self.ends[i - 1] if i else 0
        return self.ticks[i], self.ips[i], bytes(self.code[start:self.ends[i]])

    def __iter__(self) -> Iterator[tuple[int, int, bytes]]:
        start = 0
        code = self.code
        for tick, ip, end in zip(self.ticks, self.ips, self.ends, strict=True):
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

    def __repr__(self) -> str:
        return f"Retired({len(self)} records)"
