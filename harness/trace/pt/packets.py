"""Byte-exact PT packets (SDM 3C, "Packet Definitions"; libipt pt_opcodes.h, pt_packet.c):
one dataclass per kind, `encode()` to bytes, and `decode_packet()` from bytes, whose errors carry
the byte offset. IP-carrying packets hold the *compressed* form (IPBytes, payload): compression
against the last IP is the job of last_ip.py, as in libipt's packet layer.
"""

from __future__ import annotations

from dataclasses import dataclass

from .last_ip import PAYLOAD_BYTES

PSB_BYTES = bytes([0x02, 0x82] * 8)


class PacketError(Exception):
    """A malformed or truncated packet at a byte offset of the stream."""

    def __init__(self, offset: int, message: str) -> None:
        super().__init__(f"offset {offset:#x}: {message}")
        self.offset = offset
        self.message = message


@dataclass(frozen=True)
class Pad:
    def encode(self) -> bytes:
        return b"\x00"


@dataclass(frozen=True)
class Psb:
    def encode(self) -> bytes:
        return PSB_BYTES


@dataclass(frozen=True)
class PsbEnd:
    def encode(self) -> bytes:
        return b"\x02\x23"


@dataclass(frozen=True)
class Tnt:
    """Taken/not-taken bits, oldest first. Up to 6 fit the short form, 47 the long one."""

    bits: tuple[bool, ...]

    def encode(self) -> bytes:
        n = len(self.bits)
        if not 1 <= n <= 47:
            raise ValueError(f"TNT of {n} bits")
        payload = 1
        for b in self.bits:  # the stop bit ends up highest, the oldest bit just below it
            payload = payload << 1 | int(b)
        if n <= 6:
            return bytes([payload << 1])
        return b"\x02\xa3" + payload.to_bytes(6, "little")


@dataclass(frozen=True)
class _IpPacket:
    ipbytes: int
    payload: int
    OPCODE = 0

    def encode(self) -> bytes:
        return bytes([self.ipbytes << 5 | self.OPCODE]) + self.payload.to_bytes(
            PAYLOAD_BYTES[self.ipbytes], "little")


@dataclass(frozen=True)
class Tip(_IpPacket):
    OPCODE = 0x0D


@dataclass(frozen=True)
class TipPge(_IpPacket):
    OPCODE = 0x11


@dataclass(frozen=True)
class TipPgd(_IpPacket):
    OPCODE = 0x01


@dataclass(frozen=True)
class Fup(_IpPacket):
    OPCODE = 0x1D


@dataclass(frozen=True)
class TscPacket:
    tsc: int  # TSC[55:0]

    def encode(self) -> bytes:
        return b"\x19" + (self.tsc & ((1 << 56) - 1)).to_bytes(7, "little")


@dataclass(frozen=True)
class Cbr:
    ratio: int

    def encode(self) -> bytes:
        return bytes([0x02, 0x03, self.ratio, 0x00])


@dataclass(frozen=True)
class ModeExec:
    """MODE.Exec: bit0 CS.L, bit1 CS.D; 64-bit code is `99 01`."""

    csl: bool = True
    csd: bool = False

    def encode(self) -> bytes:
        return bytes([0x99, int(self.csl) | int(self.csd) << 1])


@dataclass(frozen=True)
class Ovf:
    def encode(self) -> bytes:
        return b"\x02\xf3"


Packet = Pad | Psb | PsbEnd | Tnt | Tip | TipPge | TipPgd | Fup | TscPacket | Cbr | ModeExec | Ovf
_IP_OPCODES = {0x0D: Tip, 0x11: TipPge, 0x01: TipPgd, 0x1D: Fup}


def _need(buf: bytes, pos: int, n: int, what: str) -> None:
    if pos + n > len(buf):
        raise PacketError(pos, f"truncated {what}: needs {n} bytes, {len(buf) - pos} left")


def decode_packet(buf: bytes, pos: int) -> tuple[Packet, int]:
    """The packet at `pos` and its size."""
    b0 = buf[pos]
    if b0 == 0x00:
        return Pad(), 1
    if b0 & 1 == 0 and b0 != 0x02:
        payload = b0 >> 1  # short TNT: stop bit + 1..6 bits
        n = payload.bit_length() - 1
        if n < 1:
            raise PacketError(pos, "TNT-8 without branch bits")
        return Tnt(tuple(bool(payload >> i & 1) for i in range(n - 1, -1, -1))), 1
    if b0 & 0x1F in _IP_OPCODES:
        ipbytes = b0 >> 5
        if ipbytes not in PAYLOAD_BYTES:
            raise PacketError(pos, f"reserved IPBytes {ipbytes:03b} in {b0:#04x}")
        n = PAYLOAD_BYTES[ipbytes]
        _need(buf, pos, 1 + n, "IP packet")
        cls = _IP_OPCODES[b0 & 0x1F]
        return cls(ipbytes, int.from_bytes(buf[pos + 1:pos + 1 + n], "little")), 1 + n
    if b0 == 0x19:
        _need(buf, pos, 8, "TSC")
        return TscPacket(int.from_bytes(buf[pos + 1:pos + 8], "little")), 8
    if b0 == 0x99:
        _need(buf, pos, 2, "MODE")
        leaf = buf[pos + 1]
        if leaf >> 5 != 0:
            raise PacketError(pos, f"MODE leaf {leaf >> 5} is not MODE.Exec")
        return ModeExec(bool(leaf & 1), bool(leaf & 2)), 2
    if b0 == 0x02:
        _need(buf, pos, 2, "extended packet")
        b1 = buf[pos + 1]
        if b1 == 0x82:
            _need(buf, pos, 16, "PSB")
            if buf[pos:pos + 16] != PSB_BYTES:
                raise PacketError(pos, "broken PSB pattern")
            return Psb(), 16
        if b1 == 0x23:
            return PsbEnd(), 2
        if b1 == 0xA3:
            _need(buf, pos, 8, "TNT-64")
            payload = int.from_bytes(buf[pos + 2:pos + 8], "little")
            n = payload.bit_length() - 1
            if n < 1:
                raise PacketError(pos, "TNT-64 without branch bits")
            return Tnt(tuple(bool(payload >> i & 1) for i in range(n - 1, -1, -1))), 8
        if b1 == 0x03:
            _need(buf, pos, 4, "CBR")
            return Cbr(buf[pos + 2]), 4
        if b1 == 0xF3:
            return Ovf(), 2
        raise PacketError(pos, f"unknown extended opcode 02 {b1:02x}")
    raise PacketError(pos, f"unknown opcode {b0:#04x}")


def iter_packets(buf: bytes):
    """(offset, packet) for the whole stream; a bad packet raises PacketError with its offset."""
    pos = 0
    while pos < len(buf):
        pkt, size = decode_packet(buf, pos)
        yield pos, pkt
        pos += size
