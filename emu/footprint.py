"""What one scheduling step touched, so that the explorer can tell which steps commute.

In event mode every step (one CPU choice and the run that follows it) records the shared
locations it read and wrote. Two steps of different CPUs are dependent when one writes a
location the other reads or writes; a partial-order reduction (harness/explore/exhaustive.py) only
reorders dependent steps. The locations, each an int:

- a word of tracked shared data (MachineConfig.track and .watch): read or written by the guest,
  a locked read-modify-write being both;
- an 8-byte grain of text: *read* by every instruction fetched from it, by the decision of what
  a fetch sees of a pending unit on it, and by a serialization that makes one visible;
  *written* by a store to it, and by a
  text-poke record for it, because the record changes the image a trace decoder uses for those
  bytes from its tick on;
- a CPU's pending IPIs, and its pending NMI: read by a step of that CPU that could take one
  at its start (IF set and no STI/MOV SS shadow, or halted; NMIs unless blocked), written by
  an IPI or NMI sent to it (or a spontaneous NMI raised on it);
- a CPU's stack, as one location: *written* by every step of its owner (a CPU's own stack
  accesses are too many to hook), read or written by any access of another CPU to it.

Every data word is a location, the per-CPU areas, the GDT and the IDT included, so a race
through any shared memory orders the steps; only registers are no location. Steps are coarse,
so a footprint over-approximates, which only costs schedules.
"""

from __future__ import annotations

from array import array
from collections.abc import Iterable, Iterator
from itertools import chain

TEXT_SHIFT = 3  # 8 bytes of text per location: small enough to keep patch sites apart
TEXT_GRAIN = 1 << TEXT_SHIFT
TEXT = 1 << 60  # a text grain's location is TEXT | offset >> TEXT_SHIFT (the code hook's form)
_DATA = 2 << 60
_IRQ = 3 << 60
_TAG = 3 << 60


def text_grains(offset: int, size: int) -> range:
    """The text-grain locations of [offset, offset + size) (text offsets)."""
    return range(TEXT | offset // TEXT_GRAIN, (TEXT | (offset + size - 1) // TEXT_GRAIN) + 1)


def is_text(loc: int) -> bool:
    """Whether `loc` is a text grain's location."""
    return loc & _TAG == TEXT


def data_words(addr: int, size: int) -> range:
    """The data-word locations of [addr, addr + size) (any one address space, consistently)."""
    return range(_DATA | addr >> 3, (_DATA | (addr + size - 1) >> 3) + 1)


_STACK = 1 << 40  # within the _IRQ tag: a CPU's whole stack


def irq(cpu: int, nmi: bool = False) -> int:
    return _IRQ | cpu << 1 | nmi


def stack(cpu: int) -> int:
    return _IRQ | _STACK | cpu


def describe(loc: int) -> str:
    tag, value = loc & _TAG, loc & ~_TAG
    if tag == TEXT:
        return f"text+{value * TEXT_GRAIN:#x}"
    if tag == _DATA:
        return f"data@{value << 3:#x}"
    if value & _STACK:
        return f"stack(cpu{value & ~_STACK})"
    return f"{'nmi' if value & 1 else 'irq'}(cpu{value >> 1})"


WRITTEN = 1 << 63  # in Footprint.packed and .added: the location was written, not read


class Footprint:
    """One step of one CPU: the locations it read and wrote (a written one counts as both).

    Kept as the machine records them, not as sets: `packed`, what the native machine added
    (uint64 locations in the machine's byte order, WRITTEN flagged, each once per run), and
    `added`, what Python added (ints, the same form). A run's footprint has hundreds of
    locations and is read once, by the race finder (harness/explore/_dpor.c reads both
    directly); `reads` and `writes` build the sets for the Python readers. The native loop
    makes its footprints without calling __init__ (emu/_native.c: make_footprint): these
    three slots are the whole of one."""

    __slots__ = ("cpu", "packed", "added")

    def __init__(self, cpu: int, reads: Iterable[int] = (), writes: Iterable[int] = ()):
        self.cpu = cpu
        self.packed = b""
        self.added: list[int] = [*reads, *(w | WRITTEN for w in writes)]

    def read(self, loc: int) -> None:
        self.added.append(loc)

    def read_all(self, locs: Iterable[int]) -> None:
        self.added.extend(locs)

    def write(self, loc: int) -> None:
        self.added.append(loc | WRITTEN)

    def write_all(self, locs: Iterable[int]) -> None:
        self.added.extend(loc | WRITTEN for loc in locs)

    def _entries(self) -> Iterator[int]:
        return chain(array("Q", self.packed), self.added)

    @property
    def reads(self) -> frozenset[int]:
        return frozenset(e for e in self._entries() if not e & WRITTEN)

    @property
    def writes(self) -> frozenset[int]:
        return frozenset(e & ~WRITTEN for e in self._entries() if e & WRITTEN)

    def dependent(self, other: Footprint) -> bool:
        mine, theirs = self.writes, other.writes
        return self.cpu != other.cpu and bool(
            mine & (other.reads | theirs) or theirs & self.reads)
