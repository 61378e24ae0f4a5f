"""When the encoder emits a TSC packet: before a packet that carries branch information (TNT,
TIP, FUP), once `period` virtual-TSC ticks have passed since the last TSC. period=1 puts one
before every such packet; a larger period gives the decoder coarser time. Never between a FUP
and its TIP: the encoder asks only before a FUP, not before the TIP that completes it."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class TscClock:
    period: int = 1
    last: int = -1

    def __post_init__(self) -> None:
        if self.period < 1:
            raise ValueError(f"TSC period must be >= 1, got {self.period}")

    def due(self, now: int) -> bool:
        return self.last < 0 or now - self.last >= self.period

    def stamp(self, now: int) -> None:
        self.last = now
