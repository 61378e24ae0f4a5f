"""How a run ended: a verdict kind plus where and why."""

from __future__ import annotations

import enum
from dataclasses import asdict, dataclass, field

from .x86 import vector_name


class VerdictKind(enum.StrEnum):
    """How a run ended. A StrEnum: artifacts and the results database hold the plain value."""

    PASS = "pass"
    GUEST_FAULT = "guest_fault"
    HANG = "hang"
    GUEST_ASSERT = "guest_assert"
    UNEXPECTED_TRAP = "unexpected_trap"
    SEMANTICS = "semantics"
    TORN_EXECUTION = "torn_execution"
    DECODE_DIVERGENCE = "decode_divergence"  # the decoded flow left the executed one
    DECODE_ERROR = "decode_error"  # the trace is malformed or does not fit the image
    AMBIGUOUS = "ambiguous"  # the trace cannot place a text poke relative to an instruction


@dataclass(frozen=True)
class HandlerFrame:
    """One exception or interrupt a CPU was delivering or handling (raised, not yet IRETed):
    a link in a nested exception's chain. `delivered` is False for a delivery that failed
    (and escalated to #DF); `symbol` is filled in by the harness, which has the symbols."""

    vector: int
    rip: int  # where it was raised (the faulting or trapping instruction, or the interrupted IP)
    delivered: bool = True
    symbol: str = ""

    def to_json(self) -> dict:
        return {"vector": self.vector, "name": vector_name(self.vector), "rip": f"{self.rip:#x}",
                "delivered": self.delivered, "symbol": self.symbol}

    def __str__(self) -> str:
        where = f"{self.rip:#x}" + (f" ({self.symbol})" if self.symbol else "")
        return f"{vector_name(self.vector)} at {where}" + ("" if self.delivered else
                                                          " (delivery failed)")


@dataclass
class Verdict:
    kind: VerdictKind
    detail: str = ""
    cpu: int | None = None
    rip: int | None = None
    fetched: bytes = b""  # the bytes that CPU fetched at rip, from its own view
    event: str = ""
    extra: dict = field(default_factory=dict)
    # A nested exception: what the CPU was delivering or handling when this one came, outermost
    # first and this one last (two or more links), so the cause shows, not only the #DF.
    nested: tuple[HandlerFrame, ...] = ()
    symbol: str = ""  # rip as the nearest guest symbol at or below it, `name+0xoff`
    site: str = ""  # the patch site rip lies in, if any

    @property
    def ok(self) -> bool:
        return self.kind is VerdictKind.PASS

    def to_json(self) -> dict:
        out = asdict(self)
        out["rip"] = None if self.rip is None else f"{self.rip:#x}"
        out["fetched"] = self.fetched.hex()
        out["nested"] = [f.to_json() for f in self.nested]
        return out

    def __str__(self) -> str:
        where = "" if self.cpu is None else f" on cpu{self.cpu}"
        if self.rip is not None:
            where += f" at {self.rip:#x}"
            if self.symbol:
                where += f" ({self.symbol}{', site ' + self.site if self.site else ''})"
            where += f" [{self.fetched.hex(' ')}]"
        text = f"{self.kind}{where}: {self.detail}"
        if self.nested:
            text += (f"; nested exception, depth {len(self.nested)}: "
                     + " -> ".join(map(str, self.nested)))
        return text


class MachineConfigError(ValueError):
    """A machine or image configuration that cannot be built."""
