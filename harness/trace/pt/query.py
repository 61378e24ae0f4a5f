"""The query layer: the packet stream -> the branch items the instruction flow consumes.

Like libipt's query decoder, it turns the packet stream into what the flow needs, in order: TNT
bits, TIP targets, FUP sources, TIP.PGE/PGD, PSB+ status, each stamped with the time of the last
TSC before it and of the first TSC after it. IP decompression is sequential over packets, so it
is done here once; the walk over the image (decoder.py) only reads the items.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from .last_ip import LastIp
from .packets import (
    Cbr,
    Fup,
    ModeExec,
    Ovf,
    PacketError,
    Pad,
    Psb,
    PsbEnd,
    Tip,
    TipPgd,
    TipPge,
    Tnt,
    TscPacket,
    iter_packets,
)

INFINITY = 1 << 64


class ItemKind(enum.Enum):
    BIT = "tnt"
    TIP = "tip"
    FUP = "fup"
    PGE = "tip.pge"
    PGD = "tip.pgd"
    PSB = "psb"  # a PSB+: last-IP reset (done here) and return-compression restart
    STATUS_FUP = "psb.fup"  # the FUP inside PSB+: where the flow is, not a branch


@dataclass
class Item:
    kind: ItemKind
    offset: int
    ip: int | None = None
    bit: bool = False
    time: int = 0  # last TSC before this item
    next_tsc: int = INFINITY  # first TSC after it


class DecodeError(Exception):
    def __init__(self, offset: int, message: str, ip: int | None = None) -> None:
        where = f"offset {offset:#x}" + ("" if ip is None else f", ip {ip:#x}")
        super().__init__(f"{where}: {message}")
        self.offset, self.message, self.ip = offset, message, ip


def items(stream: bytes) -> list[Item]:
    """The query layer. Malformed packets raise PacketError; misplaced ones DecodeError."""
    out, error = items_until_error(stream)
    if error is not None:
        raise error
    return out


def items_until_error(stream: bytes) -> tuple[list[Item], Exception | None]:
    """The items before the first malformed or misplaced packet, and that error if any."""
    out: list[Item] = []
    try:
        _items(stream, out)
    except (PacketError, DecodeError) as e:
        return out, e
    return out, None


def _items(stream: bytes, out: list[Item]) -> None:
    last_ip = LastIp()
    time = 0
    in_psb = False
    waiting: list[Item] = []  # items whose next TSC is not known yet
    for off, pkt in iter_packets(stream):
        if isinstance(pkt, TscPacket):
            if pkt.tsc < time:  # the TSC never runs backwards on one CPU
                raise DecodeError(off, f"TSC {pkt.tsc} runs backwards (the last TSC was {time})")
            time = pkt.tsc
            for it in waiting:
                it.next_tsc = time
            waiting = []
            continue
        if isinstance(pkt, Pad | Cbr | ModeExec):
            continue
        if isinstance(pkt, Psb):
            if in_psb:
                raise DecodeError(off, "PSB inside PSB+")
            in_psb = True
            last_ip.reset()
            new = [Item(ItemKind.PSB, off, time=time)]
        elif isinstance(pkt, PsbEnd):
            if not in_psb:
                raise DecodeError(off, "PSBEND without PSB")
            in_psb = False
            continue
        elif isinstance(pkt, Ovf):
            raise DecodeError(off, "internal buffer overflow (OVF) in the trace")
        elif isinstance(pkt, Tnt):
            if in_psb:
                raise DecodeError(off, "TNT inside PSB+")
            new = [Item(ItemKind.BIT, off, bit=b, time=time) for b in pkt.bits]
        else:
            try:
                ip = last_ip.decompress(pkt.ipbytes, pkt.payload)
            except ValueError as e:
                raise DecodeError(off, str(e)) from None
            if isinstance(pkt, Fup):
                kind = ItemKind.STATUS_FUP if in_psb else ItemKind.FUP
            elif in_psb:
                raise DecodeError(off, f"{type(pkt).__name__} inside PSB+")
            else:
                kind = {Tip: ItemKind.TIP, TipPge: ItemKind.PGE, TipPgd: ItemKind.PGD}[type(pkt)]
            if ip is None and kind is not ItemKind.PGD:
                raise DecodeError(off, f"{kind.value} with a suppressed IP")
            new = [Item(kind, off, ip=ip, time=time)]
        out += new
        waiting += new
    if in_psb:
        raise DecodeError(len(stream), "trace ends inside PSB+")
