"""How a run ended: a verdict kind plus where and why."""

from __future__ import annotations

import enum
from dataclasses import asdict, dataclass, field


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


@dataclass
class Verdict:
    kind: VerdictKind
    detail: str = ""
    cpu: int | None = None
    rip: int | None = None
    fetched: bytes = b""  # the bytes that CPU fetched at rip, from its own view
    event: str = ""
    extra: dict = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.kind is VerdictKind.PASS

    def to_json(self) -> dict:
        out = asdict(self)
        out["rip"] = None if self.rip is None else f"{self.rip:#x}"
        out["fetched"] = self.fetched.hex()
        return out

    def __str__(self) -> str:
        where = "" if self.cpu is None else f" on cpu{self.cpu}"
        if self.rip is not None:
            where += f" at {self.rip:#x} [{self.fetched.hex(' ')}]"
        return f"{self.kind}{where}: {self.detail}"


class MachineConfigError(ValueError):
    """A machine or image configuration that cannot be built."""
