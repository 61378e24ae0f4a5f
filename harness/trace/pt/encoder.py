"""The per-CPU PT encoder: packets derived from what the CPU actually retired (ground truth)
and from the events delivered to it, as the hardware would emit them (SDM 3C, "Packet
Generation"; ../shared/reference/intel-pt.md §2):

- start: PSB TSC CBR PSBEND MODE.Exec TIP.PGE(first IP); end: FUP(next IP) TIP.PGD;
- PSB+ (PSB TSC CBR MODE.Exec FUP(IP) PSBEND) again every `psb_period` bytes, pending TNT
  flushed before it, last-IP and return compression restarted after it;
- Jcc: a TNT bit; direct JMP/CALL: nothing; indirect JMP/CALL, IRET, uncompressed RET: TIP;
  a RET whose CALL was traced since the last PSB: a TNT bit (when compression is on);
- INT3 and faults: FUP(the instruction's own IP) + TIP(handler); external interrupts and NMIs:
  FUP(next IP) + TIP(handler). The trapped INT3 itself is an event, not an instruction;
- TSC packets per timing.py, never between a FUP and its TIP.
"""

from __future__ import annotations

from dataclasses import dataclass

from .flow import AsyncEvent, FlowItem
from .insn import Cls, classify
from .last_ip import LastIp
from .packets import (
    Cbr,
    Fup,
    ModeExec,
    Psb,
    PsbEnd,
    Tip,
    TipPgd,
    TipPge,
    TscPacket,
)
from .timing import TscClock
from .tnt import TntBuffer

RET_STACK = 64  # libipt's return-compression stack depth


@dataclass(frozen=True)
class TraceConfig:
    tsc_period: int = 1  # virtual-TSC ticks between TSC packets (1: before every branch packet)
    psb_period: int = 4096  # bytes between PSB+
    ret_compression: bool = True
    long_tnt: bool = True
    cbr: int = 32  # core:bus ratio reported in CBR (must not be 0)

    def __post_init__(self) -> None:
        if self.tsc_period < 1 or self.psb_period < 64 or not 1 <= self.cbr <= 255:
            raise ValueError("bad trace configuration: tsc_period >= 1, psb_period >= 64, "
                             "cbr in 1..255")


class Encoder:
    def __init__(self, config: TraceConfig) -> None:
        self.cfg = config
        self.out = bytearray()
        self.last_ip = LastIp()
        self.tnt = TntBuffer(config.long_tnt)
        self.clock = TscClock(config.tsc_period)
        self.stack: list[int] = []
        self.last_psb = 0

    def _emit(self, pkt) -> None:
        self.out += pkt.encode()

    def _flush_tnt(self) -> None:
        pkt = self.tnt.flush()
        if pkt is not None:
            self._emit(pkt)

    def _time(self, now: int) -> None:
        """Before a packet with branch information: a TSC if one is due."""
        if self.clock.due(now):
            self._flush_tnt()
            self._emit(TscPacket(now))
            self.clock.stamp(now)

    def _ip(self, cls, ip: int | None):
        if ip is None:
            return cls(0, 0)
        return cls(*self.last_ip.compress(ip))

    def psb(self, now: int, ip: int | None) -> None:
        self._flush_tnt()
        self.last_psb = len(self.out)
        self._emit(Psb())
        self.last_ip.reset()
        self.stack.clear()
        self._emit(TscPacket(now))
        self.clock.stamp(now)
        self._emit(Cbr(self.cfg.cbr))
        if ip is not None:  # PacketEn: MODE.Exec and FUP(current IP) inside PSB+
            self._emit(ModeExec())
            self._emit(self._ip(Fup, ip))
        self._emit(PsbEnd())

    def event(self, ev: AsyncEvent) -> None:
        self._flush_tnt()
        self._time(ev.tick)
        self._emit(self._ip(Fup, ev.source))
        self._emit(self._ip(Tip, ev.handler))

    def branch_bit(self, now: int, taken: bool) -> None:
        self._time(now)
        pkt = self.tnt.add(taken)
        if pkt is not None:
            self._emit(pkt)

    def tip(self, now: int, target: int) -> None:
        self._flush_tnt()
        self._time(now)
        self._emit(self._ip(Tip, target))

    def instruction(self, tick: int, ip: int, code: bytes, cont: int) -> None:
        """One retired instruction; `cont` is the IP the flow continued at."""
        insn = classify(code)
        if insn is None:  # garbage a buggy sequence made the CPU execute: no branch packet;
            return  # the decoder cannot follow it either, and the verifier says where
        nlip = ip + insn.size
        c = insn.cls
        if c is Cls.COND:
            self.branch_bit(tick, cont != nlip)
        elif c is Cls.CALL:
            if insn.rel != 0:
                self._push(nlip)
        elif c in (Cls.ICALL, Cls.IJMP):
            if c is Cls.ICALL:
                self._push(nlip)
            self.tip(tick, cont)
        elif c is Cls.RET:
            if self.cfg.ret_compression and self.stack and self.stack[-1] == cont:
                self.stack.pop()
                self.branch_bit(tick, True)
            else:
                self.tip(tick, cont)
        elif c is Cls.IRET:
            self.tip(tick, cont)

    def _push(self, ret: int) -> None:
        self.stack.append(ret)
        if len(self.stack) > RET_STACK:
            del self.stack[0]


def encode_cpu(flow: list[FlowItem], final_rip: int, config: TraceConfig) -> bytes:
    """The PT stream of one CPU for one run, from its flow (flow.py)."""
    enc = Encoder(config)
    enc.psb(0, None)
    enc._emit(ModeExec())
    enc._emit(enc._ip(TipPge, flow[0].ip if flow else final_rip))
    for k, item in enumerate(flow):
        if k and len(enc.out) - enc.last_psb >= config.psb_period:
            enc.psb(item.tick if item.event is None else item.event.tick, item.ip)
        if item.event is not None:
            enc.event(item.event)
        else:
            enc.instruction(item.tick, item.ip, item.code, item.cont)
    enc._flush_tnt()
    enc._time(flow[-1].tick if flow else 0)
    enc._emit(enc._ip(Fup, final_rip))
    enc._emit(TipPgd(0, 0))
    return bytes(enc.out)
