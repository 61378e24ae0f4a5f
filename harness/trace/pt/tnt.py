"""TNT buffering on the encoder side: bits wait until the packet is full or something else must
be emitted first (SDM 3C: a TNT may be forced out by any other packet)."""

from __future__ import annotations

from .packets import Tnt

SHORT_MAX = 6
LONG_MAX = 47


class TntBuffer:
    def __init__(self, long_tnt: bool = True) -> None:
        self.bits: list[bool] = []
        self.limit = LONG_MAX if long_tnt else SHORT_MAX

    def add(self, taken: bool) -> Tnt | None:
        """Buffer one branch; returns a full packet when the buffer fills."""
        self.bits.append(taken)
        if len(self.bits) == self.limit:
            return self.flush()
        return None

    def flush(self) -> Tnt | None:
        if not self.bits:
            return None
        pkt = Tnt(tuple(self.bits))
        self.bits = []
        return pkt
