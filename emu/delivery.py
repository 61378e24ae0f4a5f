"""Exceptions and interrupts: which become pending, when they are taken, how they are delivered.

An exception the CPU stops with, a pending NMI (SDM 6.7.1: taken regardless of IF, then blocked
until the next IRET) or a pending IPI (IF=1, no STI / MOV SS shadow) is delivered through the
guest IDT with the hardware frame (SS, RSP, RFLAGS, CS, RIP, error code), as the CPU would
(SDM 6.12). A delivery that fails escalates to #DF, and a failing #DF is a triple fault: the
run ends with a guest_fault verdict. Always between two runs of a CPU, never inside one.
On the fast engine a frame that succeeds with the IDT and the stack where the kernel keeps them
is pushed in C (Cpu.push_frame); every other case is this code's, the reference.
"""

from __future__ import annotations

import struct
from collections.abc import Callable

from . import layout, x86
from .config import MachineConfig
from .cpu import Cpu, Stop
from .decisions import Decisions
from .events import Delivery, ExceptionEvent, Faulted, InterruptEvent, NmiRaised
from .footprint import irq
from .memory import GuestMemoryError, SharedMemory
from .path import Kind, Request
from .truth import GroundTruth
from .verdict import HandlerFrame, Verdict, VerdictKind


def fault_verdict(cpu: Cpu, rip: int, detail: str, event: str,
                  chain: tuple[HandlerFrame, ...] = ()) -> Verdict:
    """The run ends here: the guest did something no handler could take (guest_fault). With
    two or more links, `chain` (outermost first) is a nested exception and is reported so."""
    return Verdict(VerdictKind.GUEST_FAULT, f"cpu{cpu.index}: {detail}", cpu=cpu.index, rip=rip,
                   fetched=cpu.fetched(rip), event=event,
                   nested=chain if len(chain) > 1 else ())


def _overflow(cpu: Cpu, lay: layout.Layout, va: int, what: str, rip: int,
              chain: tuple[HandlerFrame, ...]) -> Verdict | None:
    """A fault on a guard page is that CPU's stack overflowing: say so, rather than the
    triple fault that delivering anything on that stack would end in."""
    owner = lay.guard_owner(va)
    if owner is None:
        return None
    return fault_verdict(cpu, rip, f"stack overflow on cpu{owner} ({what} {va:#x}, in the guard "
                         f"page below its stack, rsp {cpu.reg('rsp'):#x})", "stack_overflow",
                         chain)


class InterruptDelivery:
    """Mixin of Machine (emu/machine.py): its scheduling loop asks, at the start of every CPU
    step, whether an interrupt arrives and is taken, and hands it every exception a run of the
    CPU stopped with."""

    config: MachineConfig
    layout: layout.Layout
    mem: SharedMemory
    truth: GroundTruth
    _decisions: Decisions | None
    _escalation: dict[int, str]  # cpu -> the deliveries that failed on the way to its #DF
    _nmi_requests: tuple[Request, ...]  # each CPU's NMI_RAISE request, made once (_nmi_arrives)

    _event: Callable[..., None]  # Machine._event(cpu, kind, **fields): the record of it
    _serialize: Callable[..., None]  # Machine._serialize(cpu, ipi): the IPI serializes

    def _deliverable(self, cpu: Cpu) -> bool:
        st = cpu.state
        if st.pending_nmi and not st.nmi_blocked:
            return True
        return bool(st.pending_ipis) and not st.shadow and bool(cpu.reg("rflags") & x86.RFLAGS_IF)

    def _nmi_arrives(self, cpu: Cpu, dec: Decisions) -> bool:
        """Whether a spontaneous NMI becomes pending on `cpu` now (an NMI_RAISE choice while
        it has some left and none pending). Asked at the start of each step and, in event
        mode, before instructions of a run too (Cpu.nmi_point; every one unless
        MachineConfig.nmi_text narrows them): an external interrupt may arrive between any
        two instructions, so its timing is the search's to choose."""
        st = cpu.state
        if not st.nmis_left or st.pending_nmi:
            return False
        if not dec.choose(self._nmi_requests[cpu.index]):
            return False
        self._raise_nmi(cpu)
        return True

    def _raise_nmi(self, cpu: Cpu) -> None:
        """The NMI_RAISE choice said yes: the NMI is pending on `cpu` (also where the C loop
        made the choice, emu/native_loop.py)."""
        st = cpu.state
        st.pending_nmi = True
        st.nmis_left -= 1
        if cpu.footprint is not None:
            cpu.footprint.write(irq(cpu.index, nmi=True))
        self._event(cpu, NmiRaised)

    def _nmi_point(self, cpu: Cpu) -> bool:
        """Event mode, before an instruction inside a run: True stops the run there, with an
        NMI pending that the CPU's next step takes."""
        return self._nmi_arrives(cpu, self._decisions)

    def _maybe_interrupt(self, cpu: Cpu, dec: Decisions) -> Verdict | None:
        st = cpu.state
        if st.pending_nmi and not st.nmi_blocked:
            if st.halted or dec.choose(Request(Kind.NMI, 2, cpu.index)):
                st.pending_nmi = False
                st.nmi_blocked = True  # until the next IRET (SDM 6.7.1)
                return self._deliver(cpu, x86.NMI, cpu.reg("rip"), None, InterruptEvent)
        elif st.pending_ipis and not st.shadow and cpu.reg("rflags") & x86.RFLAGS_IF:
            if st.halted or dec.choose(Request(Kind.IPI, 2, cpu.index)):
                return self._take_ipi(cpu)
        return None

    def _take_ipi(self, cpu: Cpu) -> Verdict | None:
        """Deliver the highest pending IPI now (the IPI choice said so)."""
        st = cpu.state
        vector = max(st.pending_ipis)
        st.pending_ipis.discard(vector)
        verdict = self._deliver(cpu, vector, cpu.reg("rip"), None, InterruptEvent)
        if verdict is None and vector in self.config.serializing_vectors:
            self._serialize(cpu, ipi=vector)
        return verdict

    def _exception(self, cpu: Cpu, stop: Stop) -> Verdict | None:
        vector = stop.vector
        trap = vector == x86.BP or (x86.is_trap_instruction(cpu.state.last_code)
                                    and stop.rip == cpu.state.last_ip + len(cpu.state.last_code))
        if not trap:
            retired = self.truth.retired[cpu.index] if self.config.truth else None
            if retired and retired[-1][1] == stop.rip:
                _tick, ip, code = retired.pop()  # a fault: the instruction did not retire
                self._event(cpu, Faulted, ip=ip, code=code)
        source = cpu.state.last_ip if trap else stop.rip
        st = cpu.state
        if not trap and stop.rip == st.last_ip and x86.is_iret(st.last_code) and st.left:
            st.handling += st.left  # the IRET faulted: its handler has not returned
            st.left = []
        if stop.cr2 is not None:
            cpu.set_reg("cr2", stop.cr2)
            chain = (*cpu.state.handling, HandlerFrame(vector, source))
            overflow = _overflow(cpu, self.layout, stop.cr2, "access to", source, chain)
            if overflow is not None:
                return overflow
        return self._deliver(cpu, vector, stop.rip, stop.error_code, ExceptionEvent,
                             fault_rip=source, source=source)

    def _deliver(self, cpu: Cpu, vector: int, return_rip: int, error_code: int | None,
                 kind: type[Delivery], fault_rip: int | None = None, source: int | None = None
                 ) -> Verdict | None:
        """Deliver through the guest IDT; a failure escalates to #DF, then a triple fault."""
        chain: list[str] = []
        v, err = vector, error_code
        raised = fault_rip if fault_rip is not None else return_rip
        handling = cpu.state.handling
        while True:
            problem = self._push_frame(cpu, v, return_rip, err)
            if isinstance(problem, int):  # the frame's address: a guard page?
                links = (*handling, HandlerFrame(v, raised, delivered=False))
                overflow = _overflow(cpu, self.layout, problem, "pushing the frame of "
                                     f"{x86.vector_name(v)} at", raised, links)
                if overflow is not None:
                    return overflow
                problem = f"stack push faults at {problem:#x}"
            if problem is None:
                handling.append(HandlerFrame(v, raised))
                # `source`: the IP a trace reports for the event (Intel SDM vol. 3C, FUP IP:
                # the INT3 / faulting instruction itself, the next IP for external events)
                self._event(cpu, kind, vector=v, rip=return_rip, handler=cpu.reg("rip"),
                            source=return_rip if source is None else source, error_code=err)
                if chain:
                    self._escalation[cpu.index] = "; ".join(chain)
                return None
            chain.append(f"delivering {x86.vector_name(v)}: {problem}")
            if v == x86.DF:
                return fault_verdict(cpu, raised, "triple fault (" + "; ".join(chain) + ")",
                                     "triple_fault", tuple(handling))
            handling.append(HandlerFrame(v, raised, delivered=False))
            v, err = x86.DF, 0

    def _push_frame(self, cpu: Cpu, vector: int, rip: int, err: int | None
                    ) -> str | int | None:
        """None when delivered; else why not, or (an int) the stack address the push
        faulted at."""
        if cpu.push_frame(vector, rip, err):  # the common case, in C on the fast engine
            cpu.state.halted = False
            return None
        _sel, base, limit, _flags = cpu.table_reg("idtr")
        if 16 * vector + 15 > limit:
            return f"vector {vector} is beyond the IDT limit"
        try:
            gate = x86.Gate.decode(self.mem.read(base + 16 * vector, 16))
        except GuestMemoryError as e:
            return f"IDT unreadable ({e})"
        if not gate.present:
            return "no usable handler (gate not present)"
        if gate.type not in (x86.GATE_INTERRUPT, x86.GATE_TRAP) or gate.selector != \
                layout.KERNEL_CS:
            return f"unusable gate (type {gate.type:#x}, selector {gate.selector:#x})"
        rsp, rflags = cpu.reg("rsp"), cpu.reg("rflags")
        frame = struct.pack("<5Q", rip, cpu.reg("cs"), rflags, rsp, cpu.reg("ss"))
        if err is not None:
            frame = struct.pack("<Q", err) + frame
        new_rsp = (rsp & ~0xF) - len(frame)
        if not all(self.layout.present(a) for a in (new_rsp, new_rsp + len(frame) - 1)):
            return new_rsp if self.layout.present(new_rsp + len(frame) - 1) else \
                new_rsp + len(frame) - 1
        try:
            self.mem.write(new_rsp, frame)
        except GuestMemoryError as e:
            return f"stack push faults ({e})"
        flags = rflags & ~(x86.RFLAGS_TF | x86.RFLAGS_NT | x86.RFLAGS_RF | x86.RFLAGS_VM)
        if gate.type == x86.GATE_INTERRUPT:
            flags &= ~x86.RFLAGS_IF
        cpu.set_reg("rsp", new_rsp)
        cpu.set_reg("rflags", flags)
        cpu.set_reg("rip", gate.offset)
        cpu.state.halted = False
        return None

