"""A CPU's instruction-fetch view of the text, and the stores still pending in it.

Model (see issue 2, "Per-CPU instruction-fetch views"): text memory is the truth; each CPU
fetches from its own copy. A text store updates memory and the storing CPU's view at once; for
every other CPU the stored range becomes *pending*. A pending unit becomes visible when the
decision stream says so (one unit at a time, at the configured grain) and all of them when the
CPU serializes. Making a unit visible copies the unit's *current* memory into the view, the way a
refetched line brings in whatever memory holds now; so a view never goes backwards in time, may
skip intermediate values, and at a grain finer than the store shows a torn mix of old and new.

The event-driven machine decides a unit only when an instruction fetches it, so a view also
keeps each intermediate content a pending unit had (`note_store` with the memory): a fetch may
see any content from the view's own up to the latest, as a line fetched between two stores and
held until the fetch would show it.
"""

from __future__ import annotations

import ctypes
import enum
from dataclasses import dataclass


class Grain(enum.Enum):
    BYTE = 1
    FETCH_BLOCK = 16
    LINE = 64
    STORE = 0  # the whole store, whatever its size

    @classmethod
    def parse(cls, text: str | int) -> Grain:
        names = {"byte": cls.BYTE, "1": cls.BYTE, "block": cls.FETCH_BLOCK,
                 "16": cls.FETCH_BLOCK, "line": cls.LINE, "64": cls.LINE, "store": cls.STORE}
        key = str(text).strip().lower()
        if key not in names:
            raise ValueError(f"unknown fetch grain {text!r}: use byte|block|line|store "
                             "(or 1|16|64)")
        return names[key]


@dataclass(frozen=True)
class ViewCopy:
    """A FetchView's bytes where they may differ from the text a reset gives it (`changed`:
    each range's offset and bytes), its pending units and their intermediate contents
    (`saved`)."""

    changed: tuple[tuple[int, bytes], ...]
    pending: tuple[tuple[int, int], ...]
    versions: tuple[tuple[tuple[int, int], tuple[bytes, ...]], ...]

    def text(self, first: bytes) -> bytes:
        """The view's whole bytes, given `first`, the text a reset gives it."""
        if not self.changed:
            return first
        out = bytearray(first)
        for off, data in self.changed:
            out[off:off + len(data)] = data
        return bytes(out)


class FetchView:
    """The bytes one CPU fetches instructions from, with its pending units in arrival order."""

    def __init__(self, buf: ctypes.Array, grain: Grain) -> None:
        self.buf = buf
        self.grain = grain
        # the buffer's bytes as a memoryview: slices read and assigned without ctypes calls
        # (a text store reaches every view: two ctypes calls were a fifth of its hook's time)
        self._bytes = memoryview(buf).cast("B")
        self._g = grain.value  # (0: the store grain)
        self._pending: list[tuple[int, int]] = []
        self._pending_set: set[tuple[int, int]] = set()
        self._versions: dict[tuple[int, int], list[bytes]] = {}  # intermediate, oldest first

    def _units(self, off: int, size: int) -> list[tuple[int, int]]:
        g = self._g
        if not g:  # Grain.STORE
            return [(off, off + size)]
        first = off - off % g
        limit = len(self._bytes)
        if off + size - first <= g:  # one unit (a byte store, most often)
            return [(first, min(first + g, limit))]
        return [(u, min(u + g, limit)) for u in range(first, off + size, g)]

    def note_store(self, off: int, size: int, memory: ctypes.Array | None = None) -> None:
        """Another CPU stored to [off, off+size): those units are pending here. With `memory`
        (as it is before the store lands), a unit already pending keeps its content then as an
        intermediate one."""
        for unit in self._units(off, size):
            if unit not in self._pending_set:
                self._pending_set.add(unit)
                self._pending.append(unit)
            elif memory is not None:
                self._versions.setdefault(unit, []).append(bytes(memory[unit[0]:unit[1]]))

    def write_own(self, off: int, data: bytes) -> bool:
        """This CPU's own store: visible to its own fetches at once, also in every stale
        content a fetch of a pending unit could still see (x86 snoops its own stores). True
        when that changed the view."""
        end = off + len(data)
        view = self._bytes
        changed = view[off:end] != data
        view[off:end] = data
        for (s, e), versions in self._versions.items():
            lo, hi = max(s, off), min(e, end)
            if lo < hi:
                for k, content in enumerate(versions):
                    patched = bytearray(content)
                    patched[lo - s:hi - s] = data[lo - off:hi - off]
                    versions[k] = bytes(patched)
        return changed

    @property
    def pending(self) -> list[tuple[int, int]]:
        return list(self._pending)

    @property
    def pending_count(self) -> int:
        return len(self._pending)

    def has_pending(self) -> bool:
        return bool(self._pending)

    def is_pending(self, off: int, size: int) -> bool:
        end = off + size
        return any(s < end and off < e for s, e in self._pending)

    def refresh(self, index: int, memory: ctypes.Array) -> tuple[int, int]:
        """Make pending unit `index` visible: copy it from memory. Returns its range."""
        unit = self._pending.pop(index)
        self._pending_set.discard(unit)
        self._versions.pop(unit, None)
        self._copy(unit, memory)
        return unit

    def stale_contents(self, index: int, memory: ctypes.Array) -> list[bytes]:
        """What a fetch may see of pending unit `index` besides memory's latest content: the
        view's own, then each intermediate one oldest first, without repeats. Empty when the
        stores left the unit as the view holds it (nothing stale to see)."""
        s, e = unit = self._pending[index]
        latest = bytes(memory[s:e])
        out: list[bytes] = []
        for content in (bytes(self.buf[s:e]), *self._versions.get(unit, ())):
            if content != latest and content not in out:
                out.append(content)
        return out

    def see(self, index: int, content: bytes) -> bool:
        """A fetch sees `content` (one of `stale_contents`) of pending unit `index`: the view
        holds it from now on and the unit stays pending; contents older than it are gone, as a
        view never goes backwards. True when that changed the view. (At the store grain,
        pending units can overlap, and a content seen for one can cover bytes a refresh of
        another made newer: the one case where a view can step back.)"""
        s, e = unit = self._pending[index]
        if content == bytes(self.buf[s:e]):
            return False
        versions = self._versions[unit]  # any other stale content is an intermediate one
        del versions[:versions.index(content) + 1]
        self._bytes[s:e] = content
        return True

    def serialize(self, memory: ctypes.Array
                  ) -> tuple[list[tuple[int, int]], list[tuple[int, int]]]:
        """A serializing event: every pending unit becomes visible. Returns the ranges, and
        those whose bytes changed (a unit stored back to what the view held, or seen
        at its latest content already, does not)."""
        done = self._pending
        changed = [unit for unit in done if self._copy(unit, memory)]
        self._pending = []
        self._pending_set = set()
        self._versions = {}
        return done, changed

    def _copy(self, unit: tuple[int, int], memory: ctypes.Array) -> bool:
        """Memory's bytes of `unit` into the view; whether they changed it."""
        start, end = unit
        latest = memory[start:end]
        if self._bytes[start:end] == latest:
            return False
        self._bytes[start:end] = latest
        return True

    def read(self, off: int, size: int) -> bytes:
        return bytes(self.buf[off:off + size])

    def saved(self, touched: list[tuple[int, int]]) -> ViewCopy:
        """The view's bytes from the first to the end of the last of `touched` (the ranges
        outside which it holds the text a reset gave it: CpuState.view_touched) and its
        pending units, copied (a machine snapshot): a few hundred bytes where the whole view
        is 64 KiB (one slice: the bytes between the ranges are the first text's)."""
        changed: tuple[tuple[int, bytes], ...] = ()
        if touched:
            lo, hi = min(s for s, _ in touched), max(e for _, e in touched)
            changed = ((lo, self.buf[lo:hi]),)
        return ViewCopy(changed, tuple(self._pending),
                        tuple((u, tuple(c)) for u, c in self._versions.items()))

    def restore(self, saved: ViewCopy, text: bytes) -> None:
        """The view as `saved` was taken; `text` is its whole bytes (ViewCopy.text)."""
        ctypes.memmove(self.buf, text, len(text))
        self._pending = list(saved.pending)
        self._pending_set = set(saved.pending)
        self._versions = {u: list(c) for u, c in saved.versions}

    def reset(self, initial: bytes) -> None:
        ctypes.memmove(self.buf, initial, len(initial))
        self._pending = []
        self._pending_set = set()
        self._versions = {}
