"""IP compression against the last IP (SDM 3C, "IP Compression"; libipt pt_last_ip.c).

IPBytes 000 suppressed; 001 last[63:16]:ip[15:0]; 010 last[63:32]:ip[31:0]; 011 sign-extended
ip[47:0]; 100 last[63:48]:ip[47:0]; 110 the full ip. PSB resets the last IP to 0.
"""

from __future__ import annotations

from dataclasses import dataclass

SUPPRESSED, UPDATE16, UPDATE32, SEXT48, UPDATE48, FULL = 0, 1, 2, 3, 4, 6
PAYLOAD_BYTES = {SUPPRESSED: 0, UPDATE16: 2, UPDATE32: 4, SEXT48: 6, UPDATE48: 6, FULL: 8}
MASK64 = (1 << 64) - 1


def _canonical48(ip: int) -> bool:
    top = ip >> 47
    return top == 0 or top == (1 << 17) - 1


@dataclass
class LastIp:
    ip: int = 0

    def reset(self) -> None:
        self.ip = 0

    def compress(self, ip: int) -> tuple[int, int]:
        """(IPBytes, payload) of the smallest legal encoding; updates the last IP."""
        last, self.ip = self.ip, ip
        if ip >> 16 == last >> 16:
            return UPDATE16, ip & 0xFFFF
        if ip >> 32 == last >> 32:
            return UPDATE32, ip & 0xFFFFFFFF
        if _canonical48(ip):
            return SEXT48, ip & ((1 << 48) - 1)
        if ip >> 48 == last >> 48:
            return UPDATE48, ip & ((1 << 48) - 1)
        return FULL, ip

    def decompress(self, ipbytes: int, payload: int) -> int | None:
        """The IP a packet stands for (None if suppressed); updates the last IP."""
        last = self.ip
        if ipbytes == SUPPRESSED:
            return None
        if ipbytes == UPDATE16:
            ip = (last & ~0xFFFF & MASK64) | payload
        elif ipbytes == UPDATE32:
            ip = (last & ~0xFFFFFFFF & MASK64) | payload
        elif ipbytes == SEXT48:
            ip = payload | (MASK64 ^ ((1 << 48) - 1)) if payload >> 47 else payload
        elif ipbytes == UPDATE48:
            ip = (last & ~((1 << 48) - 1) & MASK64) | payload
        elif ipbytes == FULL:
            ip = payload
        else:
            raise ValueError(f"reserved IPBytes {ipbytes:03b}")
        self.ip = ip
        return ip
