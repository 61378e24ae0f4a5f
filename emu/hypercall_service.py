"""Serving the guest's hypercalls (the ABI is emu/hypercall.py).

A hypercall is `out 0x7e, eax`. The CPU's OUT hook hands it here inside the CPU's run (Cpu
calls `on_hypercall`), so what it does (an IPI made pending, a text-poke record stamped with the
tick of that instruction, a verdict) happens exactly where the guest asked; a verdict or FINISH
stops the run there.
"""

from __future__ import annotations

from collections.abc import Callable

from . import layout, x86
from .config import MachineConfig
from .cpu import Cpu, HypercallRequest
from .delivery import fault_verdict
from .events import HypercallEvent
from .footprint import irq, text_grains
from .hypercall import Hypercall
from .layout import Layout
from .memory import GuestMemoryError, SharedMemory
from .text_poke_record import TextPokeRecord
from .verdict import Verdict, VerdictKind


class HypercallService:
    """Mixin of Machine (emu/machine.py): Cpu.on_hypercall is bound to `_hypercall`."""

    config: MachineConfig
    layout: Layout
    mem: SharedMemory
    cpus: list[Cpu]
    sideband: list[TextPokeRecord]
    _escalation: dict[int, str]

    _event: Callable[..., None]  # Machine._event(cpu, kind, **fields)

    def _hypercall(self, cpu: Cpu, hc: HypercallRequest) -> Verdict | None:
        a0, a1, a2, a3 = hc.args
        try:
            number = Hypercall(hc.number)
        except ValueError:
            return fault_verdict(cpu, hc.rip - 2, f"unknown hypercall {hc.number}",
                                       "hypercall")
        self._event(cpu, HypercallEvent, number=number, args=(a0, a1))
        try:
            return self._serve(cpu, number, hc, a0, a1, a2, a3)
        except GuestMemoryError as e:
            return fault_verdict(cpu, hc.rip - 2, f"hypercall {number.name}: {e}",
                                       "hypercall")

    def _serve(self, cpu: Cpu, number: Hypercall, hc: HypercallRequest, a0: int, a1: int,
               a2: int, a3: int) -> Verdict | None:
        if number is Hypercall.FINISH:
            cpu.state.finished = True
        elif number is Hypercall.SEND_IPI:
            if a1 != x86.NMI and not 32 <= a1 <= 255:
                return fault_verdict(cpu, hc.rip - 2, f"IPI with vector {a1}",
                                           "hypercall")
            for target in self.cpus:
                if a0 >> target.index & 1:
                    if cpu.footprint is not None:
                        cpu.footprint.write(irq(target.index, nmi=a1 == x86.NMI))
                    if a1 == x86.NMI:
                        target.state.pending_nmi = True
                    else:
                        target.state.pending_ipis.add(a1)
        elif number is Hypercall.SIDEBAND:
            if not 1 <= a3 <= 64:
                return fault_verdict(cpu, hc.rip - 2, f"sideband record of {a3} bytes",
                                           "hypercall")
            self.sideband.append(TextPokeRecord(hc.tick, cpu.index, a0, self.mem.read(a1, a3),
                                                self.mem.read(a2, a3)))
            if cpu.footprint is not None and 0 <= a0 - layout.TEXT_BASE < self.layout.text_size:
                # the decoder's image of those bytes changes here (emu/footprint.py)
                cpu.footprint.write_all(text_grains(a0 - layout.TEXT_BASE, a3))
        elif number is Hypercall.ASSERT:
            message = self.mem.read_cstring(a1) if a1 else ""
            return Verdict(VerdictKind.GUEST_ASSERT,
                           f"cpu{cpu.index}: guest assertion {a0}: {message}", cpu=cpu.index,
                           rip=hc.rip - 2, fetched=cpu.fetched(hc.rip - 2),
                           event="assert", extra={"code": a0})
        elif number is Hypercall.TRAP:
            return Verdict(VerdictKind.UNEXPECTED_TRAP,
                           f"cpu{cpu.index}: INT3 at {a0:#x} claimed by no handler",
                           cpu=cpu.index, rip=a0, fetched=cpu.fetched(a0), event="int3")
        elif number is Hypercall.SEMANTICS:
            return Verdict(VerdictKind.SEMANTICS, f"cpu{cpu.index}: patch site {a0} behaved as "
                           f"outcome {a1}, which no state it could be in has", cpu=cpu.index,
                           rip=hc.rip - 2, event="semantics", extra={"site": a0, "outcome": a1})
        elif number is Hypercall.FAULT:
            frame_rip = self.mem.read_u64(a1) if a1 else 0
            detail = f"fatal {x86.vector_name(a0)} reported by the guest handler"
            if cpu.index in self._escalation:
                detail += f" ({self._escalation[cpu.index]})"
            return fault_verdict(cpu, frame_rip, detail,
                                 "double_fault" if a0 == x86.DF else "fatal_exception",
                                 tuple(cpu.state.handling))
        elif number is Hypercall.QUIESCENT:
            cpu.state.yielded = True  # a voluntary schedule point: schedulers may switch
            if self.config.event_mode:
                cpu.request_stop()
        return None  # MARK is recorded as an event only
