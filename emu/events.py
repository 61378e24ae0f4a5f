"""Machine events: what happened to a CPU besides retiring an instruction, one typed record per
kind, with addresses as ints and bytes as bytes.

They are rendered to JSON only for artifacts (`events.jsonl`: `to_json`, with addresses in hex
as before) and parsed back from there (`from_json`); the oracles, the trace flow and the
self-checks read the typed fields."""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Any, ClassVar

from . import x86
from .hypercall import Hypercall


class EventKind(enum.StrEnum):
    EXCEPTION = "exception"
    INTERRUPT = "interrupt"
    VIEW_UPDATE = "view_update"
    SERIALIZE = "serialize"
    HYPERCALL = "hypercall"
    TEXT_STORE = "text_store"
    NMI_RAISED = "nmi_raised"
    FAULTED = "faulted"


@dataclass(frozen=True, slots=True)
class Event:
    """An event on `cpu` at global tick `tick` (after the instructions retired by then)."""

    tick: int
    cpu: int
    kind: ClassVar[EventKind]

    def to_json(self) -> dict[str, Any]:
        return {"t": self.tick, "cpu": self.cpu, "kind": str(self.kind), **self._fields()}

    def _fields(self) -> dict[str, Any]:
        return {}

    @classmethod
    def _parse(cls, tick: int, cpu: int, doc: dict[str, Any]) -> Event:
        return cls(tick, cpu)


@dataclass(frozen=True, slots=True)
class Delivery(Event):
    """An exception or interrupt delivered through the guest IDT."""

    vector: int
    rip: int  # the frame's RIP: where the interrupted flow continues
    handler: int
    # the IP a trace reports for it (Intel SDM vol. 3C, FUP IP): the INT3 or faulting
    # instruction itself, the next IP for external events
    source: int
    error_code: int | None = None

    def _fields(self) -> dict[str, Any]:
        out = {"vector": self.vector, "name": x86.vector_name(self.vector),
               "rip": f"{self.rip:#x}", "handler": f"{self.handler:#x}",
               "source": f"{self.source:#x}"}
        if self.error_code is not None:
            out["error_code"] = self.error_code
        return out

    @classmethod
    def _parse(cls, tick: int, cpu: int, doc: dict[str, Any]) -> Event:
        return cls(tick, cpu, _int(doc["vector"]), _hex(doc["rip"]), _hex(doc["handler"]),
                   _hex(doc["source"]),
                   None if doc.get("error_code") is None else _int(doc["error_code"]))


@dataclass(frozen=True, slots=True)
class ExceptionEvent(Delivery):
    kind = EventKind.EXCEPTION


@dataclass(frozen=True, slots=True)
class InterruptEvent(Delivery):
    """An IPI or NMI."""

    kind = EventKind.INTERRUPT


@dataclass(frozen=True, slots=True)
class ViewUpdate(Event):
    """A pending unit of the CPU's fetch view became visible, or (stale) showed a content
    memory no longer holds."""

    kind = EventKind.VIEW_UPDATE
    start: int  # text virtual address
    size: int
    stale: bool = False

    def _fields(self) -> dict[str, Any]:
        out: dict[str, Any] = {"start": f"{self.start:#x}", "size": self.size}
        if self.stale:
            out["stale"] = True
        return out

    @classmethod
    def _parse(cls, tick: int, cpu: int, doc: dict[str, Any]) -> Event:
        return cls(tick, cpu, _hex(doc["start"]), _int(doc["size"]), doc.get("stale") is True)


@dataclass(frozen=True, slots=True)
class Serialize(Event):
    """The CPU serialized: every pending unit of its view became visible."""

    kind = EventKind.SERIALIZE
    units: int
    ipi: int | None = None  # the vector whose delivery serialized; None: an instruction

    def _fields(self) -> dict[str, Any]:
        cause = "instruction" if self.ipi is None else f"ipi {self.ipi:#x}"
        return {"cause": cause, "units": self.units}

    @classmethod
    def _parse(cls, tick: int, cpu: int, doc: dict[str, Any]) -> Event:
        cause = doc["cause"]
        if cause == "instruction":
            return cls(tick, cpu, _int(doc["units"]))
        word, _, vector = str(cause).partition(" ")
        if word != "ipi":
            raise ValueError(f"serialize cause {cause!r}")
        return cls(tick, cpu, _int(doc["units"]), _hex(vector))


@dataclass(frozen=True, slots=True)
class HypercallEvent(Event):
    kind = EventKind.HYPERCALL
    number: Hypercall
    args: tuple[int, int]  # its first two arguments (RDI, RSI)

    def _fields(self) -> dict[str, Any]:
        return {"name": self.number.name.lower(), "args": [f"{a:#x}" for a in self.args]}

    @classmethod
    def _parse(cls, tick: int, cpu: int, doc: dict[str, Any]) -> Event:
        a0, a1 = doc["args"]
        return cls(tick, cpu, Hypercall[str(doc["name"]).upper()], (_hex(a0), _hex(a1)))


@dataclass(frozen=True, slots=True)
class TextStore(Event):
    """A guest store to text (through the poking alias), as it lands in memory."""

    kind = EventKind.TEXT_STORE
    addr: int  # text virtual address
    data: bytes

    def _fields(self) -> dict[str, Any]:
        return {"addr": f"{self.addr:#x}", "bytes": self.data.hex()}

    @classmethod
    def _parse(cls, tick: int, cpu: int, doc: dict[str, Any]) -> Event:
        return cls(tick, cpu, _hex(doc["addr"]), bytes.fromhex(doc["bytes"]))


@dataclass(frozen=True, slots=True)
class NmiRaised(Event):
    """The decision stream made a spontaneous NMI pending on the CPU."""

    kind = EventKind.NMI_RAISED


@dataclass(frozen=True, slots=True)
class Faulted(Event):
    """An instruction was fetched and decoded but faulted: it did not retire."""

    kind = EventKind.FAULTED
    ip: int
    code: bytes

    def _fields(self) -> dict[str, Any]:
        return {"ip": f"{self.ip:#x}", "bytes": self.code.hex()}

    @classmethod
    def _parse(cls, tick: int, cpu: int, doc: dict[str, Any]) -> Event:
        return cls(tick, cpu, _hex(doc["ip"]), bytes.fromhex(doc["bytes"]))


_BY_KIND: dict[EventKind, type[Event]] = {
    c.kind: c for c in (ExceptionEvent, InterruptEvent, ViewUpdate, Serialize, HypercallEvent,
                        TextStore, NmiRaised, Faulted)}


def from_json(doc: dict[str, Any]) -> Event:
    """An event as `to_json` rendered it; a malformed one is a KeyError, ValueError or
    TypeError naming what."""
    try:
        kind = EventKind(doc["kind"])
    except ValueError:
        raise ValueError(f"unknown event kind {doc['kind']!r}") from None
    return _BY_KIND[kind]._parse(_int(doc["t"]), _int(doc["cpu"]), doc)


def _int(x: object) -> int:
    if type(x) is not int:
        raise TypeError(f"{x!r} is not an integer")
    return x


def _hex(x: object) -> int:
    if not isinstance(x, str) or not x.startswith("0x"):
        raise ValueError(f"{x!r} is not a hex address")
    return int(x, 16)
