"""`textpoke dump`: the packets of a stream as text, one line each, as they are parsed."""

from __future__ import annotations

from collections.abc import Iterator

from .last_ip import LastIp
from .packets import Cbr, ModeExec, PacketError, Psb, Tnt, TscPacket, iter_packets


def dump(stream: bytes) -> list[str]:
    """One line per packet: offset, name, fields (IPs decompressed)."""
    return list(dump_lines(stream))


def dump_lines(stream: bytes) -> Iterator[str]:
    """`dump`'s lines as each packet is parsed, so that a reader sees the packets before a
    malformed one (PacketError) and a long stream is never held as text."""
    last_ip = LastIp()
    names = {"TscPacket": "TSC", "TipPge": "TIP.PGE", "TipPgd": "TIP.PGD", "ModeExec": "MODE.Exec",
             "PsbEnd": "PSBEND"}
    for off, pkt in iter_packets(stream):
        name = names.get(type(pkt).__name__, type(pkt).__name__.upper())
        if isinstance(pkt, Tnt):
            body = "".join("T" if b else "N" for b in pkt.bits)
        elif isinstance(pkt, TscPacket):
            body = f"{pkt.tsc}"
        elif isinstance(pkt, Cbr):
            body = f"{pkt.ratio}"
        elif isinstance(pkt, ModeExec):
            body = "64" if pkt.csl else ("32" if pkt.csd else "16")
        elif isinstance(pkt, Psb):
            last_ip.reset()
            body = ""
        elif hasattr(pkt, "ipbytes"):
            try:
                ip = last_ip.decompress(pkt.ipbytes, pkt.payload)
            except ValueError as e:  # as the query layer reports it
                raise PacketError(off, str(e)) from None
            body = "suppressed" if ip is None else f"{ip:#x} (ipbytes {pkt.ipbytes:03b})"
        else:
            body = ""
        yield f"{off:#010x}  {name:9} {body}".rstrip()
