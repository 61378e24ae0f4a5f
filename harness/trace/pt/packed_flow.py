"""A CPU's flow (flow.py), packed: parallel arrays, no Python object per instruction.

The native trace pipeline (native.py) builds it from the packed retired log (emu/retired.py)
and reads it through the buffer protocol; indexing or iterating yields the reference's
`FlowItem`s made on the fly, so every reader of a flow (the reference encoder and verifier,
the tests, bench/) works on either. Item i is (ticks[i], ips[i], code[starts[i]:ends[i]],
conts[i], events[evs[i]] if evs[i] >= 0 else None); `code` is the retired log's own buffer.
"""

from __future__ import annotations

from array import array
from collections.abc import Iterator
from typing import overload

from .flow import AsyncEvent, FlowItem


class PackedFlow:
    __slots__ = ("ticks", "ips", "conts", "starts", "ends", "evs", "code", "events")

    def __init__(self, ticks: array, ips: array, conts: array, starts: array, ends: array,
                 evs: array, code: bytes | bytearray, events: list[AsyncEvent]) -> None:
        self.ticks, self.ips, self.conts = ticks, ips, conts  # 'Q'
        self.starts, self.ends, self.evs = starts, ends, evs  # 'I', 'I', 'i'
        self.code, self.events = code, events

    @classmethod
    def from_items(cls, items: list[FlowItem]) -> PackedFlow:
        """A reference flow, packed (a saved run's flow, decoded by the fast engine)."""
        code = bytearray()
        starts, ends, evs = array("I"), array("I"), array("i")
        events: list[AsyncEvent] = []
        for it in items:
            starts.append(len(code))
            code += it.code
            ends.append(len(code))
            if it.event is not None:
                evs.append(len(events))
                events.append(it.event)
            else:
                evs.append(-1)
        return cls(array("Q", (it.tick for it in items)), array("Q", (it.ip for it in items)),
                   array("Q", (it.cont for it in items)), starts, ends, evs, code, events)

    def arrays(self) -> tuple:
        """What the native functions take."""
        return (self.ticks, self.ips, self.conts, self.starts, self.ends, self.evs, self.code)

    def __len__(self) -> int:
        return len(self.ticks)

    def _item(self, i: int) -> FlowItem:
        ev = self.evs[i]
        return FlowItem(self.ticks[i], self.ips[i], bytes(self.code[self.starts[i]:self.ends[i]]),
                        self.conts[i], self.events[ev] if ev >= 0 else None)

    @overload
    def __getitem__(self, i: int) -> FlowItem: ...
    @overload
    def __getitem__(self, i: slice) -> list[FlowItem]: ...

    def __getitem__(self, i):
        if isinstance(i, slice):
            return [self._item(j) for j in range(*i.indices(len(self)))]
        if i < 0:
            i += len(self)
        if not 0 <= i < len(self):
            raise IndexError("flow index out of range")
        return self._item(i)

    def __iter__(self) -> Iterator[FlowItem]:
        return (self._item(i) for i in range(len(self)))

    def __eq__(self, other: object) -> bool:
        if isinstance(other, PackedFlow | list):
            return len(self) == len(other) and all(a == b for a, b in zip(self, other,
                                                                          strict=True))
        return NotImplemented

    __hash__ = None  # type: ignore[assignment]  # mutable

    def __repr__(self) -> str:
        return f"PackedFlow({len(self)} items)"


Flow = list[FlowItem] | PackedFlow  # a CPU's flow under either engine
