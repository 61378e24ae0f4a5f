"""Ground truth: what each CPU really retired, and every machine event, in global tick order."""

from __future__ import annotations

import json
from dataclasses import dataclass, field

from .events import Event
from .retired import Retired


@dataclass
class GroundTruth:
    """Per CPU, retired instructions as (tick, ip, bytes fetched), packed (emu/retired.py);
    plus all events (typed records, emu/events.py)."""

    ncpus: int
    retired: list[Retired] = field(default_factory=list)
    events: list[Event] = field(default_factory=list)

    def __post_init__(self) -> None:
        if not self.retired:
            self.retired = [Retired() for _ in range(self.ncpus)]

    def ips(self, cpu: int) -> list[int]:
        return [ip for _, ip, _ in self.retired[cpu]]

    def cpu_jsonl(self, cpu: int) -> str:
        return "".join(json.dumps({"t": t, "ip": f"{ip:#x}", "bytes": b.hex()}) + "\n"
                       for t, ip, b in self.retired[cpu])

    def events_jsonl(self) -> str:
        return "".join(json.dumps(e.to_json(), sort_keys=True) + "\n" for e in self.events)

    def digest(self) -> str:
        """A hash of everything recorded, for byte-for-byte determinism checks."""
        import hashlib

        h = hashlib.sha256()
        for cpu in range(self.ncpus):
            h.update(self.cpu_jsonl(cpu).encode())
        h.update(self.events_jsonl().encode())
        return h.hexdigest()
