"""A machine between two steps of a run, kept so that a later run with the same first choices
continues from there instead of from the reset state.

The exhaustive explorer's runs share long prefixes: each deviates from an earlier run at one
choice and replays the choices before it, on average half of a run (BENCHMARKS.md). A run
that has a `SnapshotCache` takes a snapshot every `every` steps, and keeps it if its source
then says a choice made since could serve a later run as the one it deviates at
(DecisionSource.wants_snapshot): the kept snapshot is the latest state before that choice,
which the later run replays from. A run whose source plans its first choices
(DecisionSource.planned) starts from the snapshot with the most choices that are all its
first ones, taken by a source of the same kind (DecisionSource.kind). The machine is
deterministic, so the state after the same choices is the same state; the snapshot owns
copies of everything (memory, fetch views, each CPU's registers, harness state and records,
the machine's records and the source's own), never views of a later run's objects: what
does not change once made is shared (the records a snapshot before it copied,
Retired.copy), and a view is kept as its bytes over the ranges where it may differ from
the first text (FetchView.saved).
Running from the reset state is the reference (tests/test_snapshot.py compares whole
searches run both ways, footprints included).
"""

from __future__ import annotations

from array import array
from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass
from types import ModuleType

from .cpu import CpuState
from .events import Event
from .fetch_view import ViewCopy
from .path import Choice
from .retired import RecordsCopy
from .text_poke_record import TextPokeRecord

# steps between two snapshots of a run (a run of static_key has about 580). A snapshot is
# taken at each, and kept once the run makes a choice a later run may deviate at before the
# next (Machine.run): at 48 a run took four for 0.3 kept; 160 was the fastest of 96 to 400,
# 2.5 % faster than keeping (every 48 or 24 steps) the snapshot taken after such a choice
# (BENCHMARKS.md, eleventh session)
EVERY = 160
KEEP = 128  # snapshots kept, least recently used dropped first (about 0.3 MB each)


@dataclass(frozen=True)
class CpuCopy:
    """One CPU: Unicorn's context (registers), the harness state, the retired count and
    records (emu/retired.py's arrays, as immutable segments)."""

    context: object  # unicorn.UcContext
    state: CpuState  # CpuState.copy()
    retired_count: int
    records: RecordsCopy | None  # Retired.copy(): shares the segments of earlier copies


@dataclass(frozen=True)
class Snapshot:
    """The machine after `len(path)` choices and `steps` steps of a run."""

    # the choices' values (`packed`), the cache's key with `source_kind`: made from the key
    # of the run's snapshot before it and the values since (Machine._snapshot)
    key: bytes
    path: tuple[Choice, ...]
    steps: int
    tick: int
    last: int | None  # Machine._last: the CPU of the last step
    mem: tuple[bytes, bytes, bytes]
    views: tuple[ViewCopy, ...]  # FetchView.saved()
    cpus: tuple[CpuCopy, ...]
    events: tuple[Event, ...]
    sideband: tuple[TextPokeRecord, ...]
    escalation: tuple[tuple[int, str], ...]
    source: object  # DecisionSource.mark(): what the source recorded until then
    source_kind: object  # DecisionSource.kind(): only a source of the same kind resumes it

    @property
    def values(self) -> tuple[int, ...]:
        return tuple(array("I", self.key))


def packed(values: Iterable[int]) -> bytes:
    """Choice values as bytes, four per value: a prefix of values is a prefix of bytes."""
    return array("I", values).tobytes()


class SnapshotCache:
    """The snapshots of recent runs of one machine, found by the choices a run plans."""

    def __init__(self, every: int = EVERY, keep: int = KEEP,
                 native: ModuleType | None = None) -> None:
        if every < 1 or keep < 1:
            raise ValueError("a snapshot cache takes snapshots every >= 1 steps, keeps >= 1")
        self.every = every
        # the fast engine's machine module: `best`'s pass over the keys in C (best_key); the
        # loop in `best` is the reference
        self._best_key = native.best_key if native is not None else None
        self.keep = keep
        # (source kind, values packed (`packed`)) -> the snapshot. Packed, not the values'
        # tuple: the ordered dict hashes its keys as it iterates, and a tuple of hundreds of
        # values hashes anew each time (a bytes object once), which took 170 us a lookup
        self._snaps: OrderedDict[tuple[object, bytes], Snapshot] = OrderedDict()
        self.hits = 0  # runs that started from a snapshot, and the choices they skipped
        self.skipped = 0

    def add(self, snap: Snapshot) -> None:
        key = (snap.source_kind, snap.key)
        self._snaps[key] = snap
        self._snaps.move_to_end(key)
        while len(self._snaps) > self.keep:
            self._snaps.popitem(last=False)

    def best(self, planned: tuple[int, ...], source_kind: object) -> Snapshot | None:
        """The snapshot of a source of `source_kind` with the most choices, all of them the
        first of `planned`."""
        plan = packed(planned)
        best: tuple[object, bytes] | None = None
        if self._best_key is not None:
            best = self._best_key(self._snaps, plan, source_kind)
        else:
            most = -1  # the length of best's values
            for key in self._snaps:  # one pass, a memcmp per snapshot longer than the best
                values = key[1]
                if len(values) > most and plan.startswith(values) and key[0] == source_kind:
                    best, most = key, len(values)
        if best is None:
            return None
        found = self._snaps[best]
        self._snaps.move_to_end(best)
        self.hits += 1
        self.skipped += len(found.key) // 4
        return found

    def __len__(self) -> int:
        return len(self._snaps)
