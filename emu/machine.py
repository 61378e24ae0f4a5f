"""The emulated SMP machine: N CPUs, shared memory, per-CPU fetch views, one decision stream.

A run is a loop of scheduling steps. Each step draws, from the decision stream and in this
order: which runnable CPU runs; whether a spontaneous NMI becomes pending on it (only when the
configuration allows some); whether a pending NMI / IPI is delivered now; whether one pending
unit of its fetch view becomes visible; how many instructions it runs. In event mode (for the
exhaustive explorer) a CPU instead runs to its next visible event, and a pending unit is decided
when a fetch reads it (`MachineConfig.event_mode`). Everything else is deterministic, so the
recorded choices (`RunResult.path`) reproduce the run exactly.

Between runs of a CPU (never inside one) the machine changes its view, delivers exceptions and
interrupts through the guest IDT with the hardware frame, and serves hypercalls.
"""

from __future__ import annotations

import ctypes
import struct
from dataclasses import dataclass, field

import capstone
from unicorn import UcError

from . import layout, x86
from .asm import Program
from .cpu import Clock, Cpu, CpuState, HypercallRequest, Stop, StopKind
from .decisions import Decisions, DecisionSource
from .events import (
    Delivery,
    Event,
    ExceptionEvent,
    Faulted,
    HypercallEvent,
    InterruptEvent,
    NmiRaised,
    Serialize,
    ViewUpdate,
)
from .fetch_view import FetchView, Grain
from .footprint import Footprint, irq, stack, text_grains
from .held_sigint import HeldSigint
from .hypercall import Hypercall
from .layout import Layout
from .memory import GuestMemoryError, SharedMemory
from .path import Choice, CpuContext, Kind, Request
from .text_poke_record import TextPokeRecord
from .truth import GroundTruth
from .verdict import MachineConfigError, Verdict, VerdictKind

# The event-mode fetch model, for what records a path of it (tokens, saved searches): a path
# of another model does not mean the same run. 1: every pending unit flushed at each step
# unless a FLUSH choice kept it; 2: a pending unit decided when a fetch reads it.
EVENT_MODEL = 2


@dataclass(frozen=True)
class MachineConfig:
    ncpus: int = 2
    grain: Grain = Grain.BYTE
    max_quantum: int = 32
    insn_budget: int = 200_000  # per CPU; exceeding it ends the run with `hang`
    truth: bool = True
    text_size: int = 0x10000
    data_size: int = 0x20000
    stack_size: int = 0x4000
    spontaneous_nmis: tuple[int, ...] = ()  # per CPU: NMIs the decision stream may raise
    nmi_rarity: int = 2  # a random source raises a spontaneous NMI one time in nmi_rarity
    serializing_vectors: frozenset[int] = frozenset({x86.CALL_FUNCTION_VECTOR})
    # Event mode (exhaustive exploration): a CPU runs until its next visible event -- a text
    # store, a fetch of bytes with a pending store, an access to `watch` (shared protocol
    # data), an exception or interrupt, an IRET -- or a spin-wait / quiescent point, instead of
    # for a chosen quantum; a pending view unit is decided when an instruction fetches it: its
    # latest content, or (a FLUSH choice, one delayed update) a stale one; a spontaneous NMI
    # may arrive before any instruction of a CPU that has some left. Footprints, when a
    # source wants them, cover every location another CPU can observe (emu/footprint.py).
    event_mode: bool = False
    watch: tuple[tuple[int, int], ...] = ()  # [start, end) data virtual addresses

    def __post_init__(self) -> None:
        if isinstance(self.grain, str | int) and not isinstance(self.grain, Grain):
            object.__setattr__(self, "grain", Grain.parse(self.grain))
        if not isinstance(self.ncpus, int) or not 1 <= self.ncpus <= layout.MAX_CPUS:
            raise MachineConfigError(f"ncpus must be 1..{layout.MAX_CPUS}, got {self.ncpus!r}")
        if self.max_quantum < 1:
            raise MachineConfigError(f"max_quantum must be >= 1, got {self.max_quantum}")
        if self.nmi_rarity < 2:
            raise MachineConfigError(f"nmi_rarity must be >= 2, got {self.nmi_rarity}")
        if self.insn_budget < 1:
            raise MachineConfigError(f"insn_budget must be >= 1, got {self.insn_budget}")
        if len(self.spontaneous_nmis) > self.ncpus or any(n < 0 for n in self.spontaneous_nmis):
            raise MachineConfigError("spontaneous_nmis: one non-negative count per CPU at most")
        try:
            self.layout()
        except ValueError as e:
            raise MachineConfigError(str(e)) from None

    def layout(self) -> Layout:
        return Layout(self.ncpus, self.text_size, self.data_size, self.stack_size)


@dataclass
class CpuBoot:
    entry: int
    regs: dict[str, int] = field(default_factory=dict)
    interrupts: bool = True  # RFLAGS.IF at boot


@dataclass
class GuestImage:
    """What is in memory and where each CPU starts."""

    programs: list[Program]
    boot: list[CpuBoot]
    idt: dict[int, int] = field(default_factory=dict)  # vector -> handler (interrupt gate)
    data: list[tuple[int, bytes]] = field(default_factory=list)  # initial bytes at data VAs

    @property
    def symbols(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for p in self.programs:
            out.update(p.symbols)
        return out


@dataclass
class RunResult:
    """One run, owning its records: the machine starts new ones at its next reset."""

    verdict: Verdict
    path: list[Choice]
    truth: GroundTruth
    sideband: list[TextPokeRecord]
    ticks: int
    steps: int
    final_rips: list[int] = field(default_factory=list)  # where each CPU would continue
    text_start: bytes = b""  # text memory at the start and at the end of the run
    text_end: bytes = b""


def _has(counts: tuple[int, ...], index: int) -> bool:
    return index < len(counts) and counts[index] > 0


def _merge(ranges: list[tuple[int, int]]) -> list[tuple[int, int]]:
    out: list[tuple[int, int]] = []
    for s, e in sorted(ranges):
        if out and s <= out[-1][1]:
            out[-1] = (out[-1][0], max(out[-1][1], e))
        else:
            out.append((s, e))
    return out


def _subtract(ranges: list[tuple[int, int]], cut: list[tuple[int, int]]
              ) -> list[tuple[int, int]]:
    """`ranges` minus `cut`, both lists of [start, end)."""
    out = _merge(ranges)
    for cs, ce in cut:
        out = [piece for s, e in out
               for piece in ((s, min(e, cs)), (max(s, ce), e)) if piece[0] < piece[1]]
    return out


class Machine:
    def __init__(self, config: MachineConfig, image: GuestImage) -> None:
        self.config = config
        self.layout = lay = config.layout()
        self.image = image
        self.symbols = image.symbols
        if len(image.boot) != config.ncpus:
            raise MachineConfigError(f"image boots {len(image.boot)} CPUs, machine has "
                                     f"{config.ncpus}")
        self.mem = SharedMemory(lay)
        self.clock = Clock()
        self.truth = GroundTruth(config.ncpus)  # this run's; a fresh one at every reset
        self.sideband: list[TextPokeRecord] = []
        self.views = [FetchView(ctypes.create_string_buffer(lay.text_size), config.grain)
                      for _ in range(config.ncpus)]
        self.cpus = [
            Cpu(i, lay, self.mem, self.views[i], self.clock,
                self.truth.retired[i] if config.truth else None,
                [v for j, v in enumerate(self.views) if j != i], self.truth.events)
            for i in range(config.ncpus)]
        for cpu in self.cpus:
            cpu.on_hypercall = self._hypercall
            if config.event_mode:
                cpu.watch_data(self._physical(config.watch))
            if config.event_mode and _has(config.spontaneous_nmis, cpu.index):
                cpu.nmi_point = lambda rip, c=cpu: self._nmi_point(c, rip)
        # footprints get their (costly) hooks when a source first asks for them
        self._tracking = False
        self._decisions: Decisions | None = None
        self._written: set[int] = set()
        self._load(image)
        self._initial_mem = self.mem.snapshot()
        self._initial_ctx = [c.uc.context_save() for c in self.cpus]
        self._dirty = False
        self._last: int | None = None
        self._escalation: dict[int, str] = {}
        self._md = capstone.Cs(capstone.CS_ARCH_X86, capstone.CS_MODE_64)

    # ------------------------------------------------------------ building
    def _load(self, image: GuestImage) -> None:
        lay = self.layout
        for prog in image.programs:
            off = prog.base - layout.TEXT_BASE
            if off < 0 or off + len(prog.code) > lay.text_size:
                raise MachineConfigError(f"{prog.name}: [{prog.base:#x}, {prog.end:#x}) is "
                                         "not inside the text")
            ctypes.memmove(ctypes.addressof(self.mem.text) + off, prog.code, len(prog.code))
        for view in self.views:
            view.reset(bytes(self.mem.text))
        for i, entry in enumerate(layout.GDT_ENTRIES):
            self.mem.write(layout.GDT_ADDR + 8 * i, struct.pack("<Q", entry))
        for vector, handler in image.idt.items():
            if not 0 <= vector < 256 or lay.region_of(handler) is None:
                raise MachineConfigError(f"IDT vector {vector}: bad handler {handler:#x}")
            gate = x86.Gate(handler, layout.KERNEL_CS, 0, x86.GATE_INTERRUPT, 0, True)
            self.mem.write(layout.IDT_ADDR + 16 * vector, gate.encode())
        for va, raw in image.data:
            try:
                self.mem.write(va, raw)
            except GuestMemoryError as e:
                raise MachineConfigError(f"initial data at {va:#x}: {e}") from None
        for cpu, boot in zip(self.cpus, image.boot, strict=True):
            if lay.region_of(boot.entry) is None or \
                    lay.translate(boot.entry, layout.Access.FETCH) is None:
                raise MachineConfigError(f"cpu{cpu.index}: entry {boot.entry:#x} is not text")
            self.mem.write(lay.percpu(cpu.index), struct.pack("<QQ", cpu.index,
                                                               lay.stack_top(cpu.index)))
            cpu.set_reg("rsp", lay.stack_top(cpu.index))
            cpu.set_reg("rflags", 0x202 if boot.interrupts else 0x2)
            for name, value in boot.regs.items():
                try:
                    cpu.set_reg(name, value)
                except (AttributeError, UcError):
                    raise MachineConfigError(f"cpu{cpu.index}: bad register {name!r}") from None
            cpu.set_reg("rip", boot.entry)
            cpu.state = self._fresh_state(cpu.index)

    def _physical(self, ranges: tuple[tuple[int, int], ...]) -> list[tuple[int, int]]:
        out = []
        for a, b in ranges:
            pa = self.layout.translate(a, layout.Access.READ)
            pb = self.layout.translate(b - 1, layout.Access.READ)
            if pa is None or pb is None or pb - pa != b - 1 - a:
                raise MachineConfigError(f"watched or tracked range [{a:#x}, {b:#x}) is not "
                                         "mapped data")
            out.append((pa, pb + 1))
        return out

    def _track_footprints(self) -> None:
        """Hooks for every location another CPU can observe (emu/footprint.py): all shared
        data (guest variables, per-CPU areas, the GDT and IDT) by word, text read as data by
        grain, and the other CPUs' stacks, each as one location that every step of its owner
        writes. Watched data has hooks already. Unicorn cannot remove hooks, so once on."""
        self._tracking = True
        lay = self.layout
        data = [(layout.PHYS_DATA, layout.PHYS_DATA + lay.data_size)]
        shared = _subtract(data, self._physical(self.config.watch))
        for cpu in self.cpus:
            cpu.track_data(shared)
            cpu.track_text_reads()
            cpu.track_foreign_stacks([
                (layout.PHYS_STACKS + other * lay.stack_size,
                 layout.PHYS_STACKS + (other + 1) * lay.stack_size, other)
                for other in range(self.config.ncpus) if other != cpu.index])

    def _fresh_state(self, index: int) -> CpuState:
        nmis = self.config.spontaneous_nmis
        return CpuState(nmis_left=nmis[index] if index < len(nmis) else 0)

    def reset(self) -> None:
        """Back to the initial state without rebuilding any Unicorn instance."""
        self.mem.restore(self._initial_mem)
        initial_text = self._initial_mem[0]
        for cpu, ctx in zip(self.cpus, self._initial_ctx, strict=True):
            cpu.view.reset(initial_text)
            for s, e in _merge(cpu.state.view_touched):
                cpu.uc.ctl_remove_cache(layout.TEXT_BASE + s, layout.TEXT_BASE + e)
            cpu.uc.context_restore(ctx)
            cpu.state = self._fresh_state(cpu.index)
            cpu.retired = 0
        self.clock.tick = 0
        self._new_records()
        self._escalation.clear()
        self._dirty = False
        self._last = None

    def _new_records(self) -> None:
        """Fresh ground truth and sideband for the next run: the last RunResult keeps its own
        (clearing them instead would rewrite every earlier result; handing the CPUs new lists
        costs microseconds, copying a run's record at its end tens of them)."""
        self.truth = GroundTruth(self.config.ncpus)
        self.sideband = []
        for cpu in self.cpus:
            cpu.truth = self.truth.retired[cpu.index] if self.config.truth else None
            cpu.events = self.truth.events

    def symbol(self, name: str) -> int:
        try:
            return self.symbols[name]
        except KeyError:
            raise MachineConfigError(f"no guest symbol {name!r}") from None

    # ------------------------------------------------------------ running
    def run(self, source: DecisionSource) -> RunResult:
        """One schedule, fully determined by the choices `source` makes."""
        if self._dirty:
            self.reset()
        self._dirty = True
        decisions = Decisions(source)
        if source.wants_footprints and self.config.event_mode and not self._tracking:
            self._track_footprints()
        self._decisions = decisions
        self._written = set()  # text grains stored to in this run
        steps = 0
        verdict: Verdict | None = None
        with HeldSigint() as ctrl_c:  # Ctrl-C inside Unicorn would be lost (held_sigint.py)
            while verdict is None:
                verdict = self._step(decisions)
                steps += 1
                ctrl_c.check()
        decisions.close(frozenset(self._written))
        return RunResult(verdict=verdict, path=decisions.path, truth=self.truth,
                         sideband=self.sideband, ticks=self.clock.tick, steps=steps,
                         final_rips=[c.reg("rip") for c in self.cpus],
                         text_start=self._initial_mem[0], text_end=bytes(self.mem.text))

    def _deliverable(self, cpu: Cpu) -> bool:
        st = cpu.state
        if st.pending_nmi and not st.nmi_blocked:
            return True
        return bool(st.pending_ipis) and not st.shadow and bool(cpu.reg("rflags") & x86.RFLAGS_IF)

    def _step(self, dec: Decisions) -> Verdict | None:
        runnable = [c for c in self.cpus if not c.state.finished
                    and (not c.state.halted or self._deliverable(c))]
        if not runnable:
            stuck = [c.index for c in self.cpus if not c.state.finished]
            if not stuck:
                return Verdict(VerdictKind.PASS, "every CPU finished")
            c = self.cpus[stuck[0]]
            return Verdict(VerdictKind.HANG, f"CPUs {stuck} are halted with nothing to wake them",
                           cpu=c.index, rip=c.reg("rip"), event="deadlock")
        ctx = CpuContext(tuple(c.index for c in runnable), self._last,
                         frozenset(c.index for c in runnable if c.state.yielded))
        cpu = runnable[dec.choose(Request(Kind.CPU, len(runnable), context=ctx))]
        self._last = cpu.index
        if not (self.config.event_mode and dec.source.wants_footprints):
            return self._cpu_step(cpu, dec)
        # record what the step touches for the explorer's reduction (emu/footprint.py); its
        # own stack, which another CPU's footprint names only when it reaches into it
        fp = cpu.footprint = Footprint(cpu.index, writes={stack(cpu.index)})
        st = cpu.state
        if st.halted or (not st.shadow and cpu.reg("rflags") & x86.RFLAGS_IF):
            fp.reads.add(irq(cpu.index))  # a pending IPI would be taken now
        if not st.nmi_blocked:
            fp.reads.add(irq(cpu.index, nmi=True))
        try:
            return self._cpu_step(cpu, dec)
        finally:
            cpu.footprint = None
            dec.source.step_done(fp)

    def _cpu_step(self, cpu: Cpu, dec: Decisions) -> Verdict | None:
        st = cpu.state
        self._nmi_arrives(cpu, dec)
        verdict = self._maybe_interrupt(cpu, dec)
        if verdict is not None:
            return verdict
        if self.config.event_mode:
            self._observe_pending(cpu, dec)
            # after STI / MOV SS only the shadowed instruction runs: a pending interrupt may
            # be taken right after it (SDM 6.8.3), so that boundary is a scheduling point
            quantum = 1 if st.shadow else self.config.max_quantum
            return self._after_run(cpu, cpu.run(quantum, event=True))
        if cpu.view.has_pending():
            pick = dec.choose(Request(Kind.VIEW, len(cpu.view.pending) + 1, cpu.index))
            if pick:
                self._refresh(cpu, pick - 1)
        quantum = dec.choose(Request(Kind.QUANTUM, self.config.max_quantum, cpu.index)) + 1
        return self._after_run(cpu, cpu.run(quantum))

    def _nmi_arrives(self, cpu: Cpu, dec: Decisions, rip: int | None = None) -> bool:
        """Whether a spontaneous NMI becomes pending on `cpu` now (an NMI_RAISE choice while
        it has some left and none pending). Asked at the start of each step and, in event
        mode, before every instruction of a run too (Cpu.nmi_point): an external interrupt
        may arrive between any two instructions, so its timing is the search's to choose."""
        st = cpu.state
        if not st.nmis_left or st.pending_nmi:
            return False
        weight = 1 / self.config.nmi_rarity
        if not dec.choose(Request(Kind.NMI_RAISE, 2, cpu.index, weight=weight, rip=rip)):
            return False
        st.pending_nmi = True
        st.nmis_left -= 1
        if cpu.footprint is not None:
            cpu.footprint.writes.add(irq(cpu.index, nmi=True))
        self._event(cpu, NmiRaised)
        return True

    def _nmi_point(self, cpu: Cpu, rip: int) -> bool:
        """Event mode, before the instruction at `rip` inside a run: True stops the run there,
        with an NMI pending that the CPU's next step takes."""
        return self._nmi_arrives(cpu, self._decisions, rip)

    def _observe_pending(self, cpu: Cpu, dec: Decisions) -> None:
        """Event mode: the instruction this step starts with is fetched now. Its pending units
        are decided first bytes first (they decide the length, so it is decoded again after
        each), each by a FLUSH choice: 0 the fetch sees memory's latest content and the unit
        is visible; i in 1..k stale content i-1 of FetchView.stale_contents (the view's own,
        then intermediate ones); k+1, offered when two or more of the instruction's pending
        units have something stale to show, this unit and the rest of the instruction as the
        view holds them (a line fetched earlier and held). Any choice but 0 is one delayed
        view update. Units no fetch reads stay pending at no cost, so the explorer's delay
        bound counts stale observations, not the steps between them."""
        view = cpu.view
        cpu.fetch_decided = None
        if not view.has_pending():
            return
        off = cpu.reg("rip") - layout.TEXT_BASE
        if not 0 <= off < len(view.buf):
            return
        if not view.is_pending(off, x86.MAX_INSN_LENGTH):  # most steps: nothing to decode
            cpu.fetch_decided = (off, off + x86.MAX_INSN_LENGTH)
            return
        mem = self.mem.text
        seen: set[tuple[int, int]] = set()
        while True:
            end = off + self._insn_length(view.buf, off)
            todo = sorted((u, i) for i, u in enumerate(view.pending)
                          if u[0] < end and off < u[1] and u not in seen)
            if not todo:
                cpu.fetch_decided = (off, end)  # the length Unicorn must agree with
                return
            (s, e), index = todo[0]
            if cpu.footprint is not None:  # what the choice's arity and outcome depend on
                for u, _i in todo:
                    cpu.footprint.reads.update(text_grains(u[0], u[1] - u[0]))
            stales = [view.stale_contents(i, mem) for _u, i in todo]
            stale, rest = stales[0], sum(map(bool, stales)) >= 2
            pick = dec.choose(Request(Kind.FLUSH, 1 + len(stale) + rest, cpu.index))
            seen.update(u for u, _i in (todo if pick > len(stale) else todo[:1]))
            if pick == 0:
                self._refresh(cpu, index)
            elif pick <= len(stale) and view.see(index, stale[pick - 1]):  # intermediate
                cpu.invalidate(s, e)
                self._event(cpu, ViewUpdate, start=layout.TEXT_BASE + s, size=e - s,
                            stale=True)

    def _insn_length(self, buf: ctypes.Array, off: int) -> int:
        code = bytes(buf[off:off + x86.MAX_INSN_LENGTH])
        insn = next(self._md.disasm(code, layout.TEXT_BASE + off, 1), None)
        return insn.size if insn is not None else len(code)

    def _refresh(self, cpu: Cpu, index: int) -> None:
        s, e = cpu.view.refresh(index, self.mem.text)
        cpu.invalidate(s, e)
        self._event(cpu, ViewUpdate, start=layout.TEXT_BASE + s, size=e - s)

    def _maybe_interrupt(self, cpu: Cpu, dec: Decisions) -> Verdict | None:
        st = cpu.state
        if st.pending_nmi and not st.nmi_blocked:
            if st.halted or dec.choose(Request(Kind.NMI, 2, cpu.index)):
                st.pending_nmi = False
                st.nmi_blocked = True  # until the next IRET (SDM 6.7.1)
                return self._deliver(cpu, x86.NMI, cpu.reg("rip"), None, InterruptEvent)
        elif st.pending_ipis and not st.shadow and cpu.reg("rflags") & x86.RFLAGS_IF:
            if st.halted or dec.choose(Request(Kind.IPI, 2, cpu.index)):
                vector = max(st.pending_ipis)
                st.pending_ipis.discard(vector)
                verdict = self._deliver(cpu, vector, cpu.reg("rip"), None, InterruptEvent)
                if verdict is None and vector in self.config.serializing_vectors:
                    self._serialize(cpu, ipi=vector)
                return verdict
        return None

    def _after_run(self, cpu: Cpu, stop: Stop) -> Verdict | None:
        st = cpu.state
        if st.own_dirty:
            for s, e in _merge(st.own_dirty):
                cpu.invalidate(s, e)
                self._written.update(text_grains(s, e - s))
            st.own_dirty.clear()
        if st.need_serialize:
            st.need_serialize = False
            self._serialize(cpu)
        verdict: Verdict | None = None
        if stop.kind is StopKind.ERROR:
            verdict = self._fault_verdict(cpu, stop.rip, stop.message, "emulation error")
        elif stop.kind is StopKind.EXCEPTION:
            verdict = self._exception(cpu, stop)
        if st.verdict is not None:
            verdict = verdict or st.verdict
        if verdict is None and cpu.retired >= self.config.insn_budget:
            verdict = Verdict(VerdictKind.HANG, f"cpu{cpu.index} exceeded its budget of "
                                    f"{self.config.insn_budget} instructions",
                              cpu=cpu.index, rip=cpu.reg("rip"),
                              fetched=cpu.fetched(cpu.reg("rip")), event="budget")
        return verdict

    def _serialize(self, cpu: Cpu, ipi: int | None = None) -> None:
        """Every pending unit of the view visible: a serializing instruction, or taking the
        IPI `ipi` at a vector the configuration says serializes."""
        done = cpu.view.serialize(self.mem.text)
        if cpu.footprint is not None:  # the view now holds what memory held then
            for s, e in done:
                cpu.footprint.reads.update(text_grains(s, e - s))
        for s, e in _merge(done):
            cpu.invalidate(s, e)
        self._event(cpu, Serialize, units=len(done), ipi=ipi)

    # ------------------------------------------------------------ exceptions
    def _exception(self, cpu: Cpu, stop: Stop) -> Verdict | None:
        vector = stop.vector
        trap = vector == x86.BP or (x86.is_trap_instruction(cpu.state.last_code)
                                    and stop.rip == cpu.state.last_ip + len(cpu.state.last_code))
        if not trap:
            retired = self.truth.retired[cpu.index] if self.config.truth else None
            if retired and retired[-1][1] == stop.rip:
                _tick, ip, code = retired.pop()  # a fault: the instruction did not retire
                self._event(cpu, Faulted, ip=ip, code=code)
        if stop.cr2 is not None:
            cpu.set_reg("cr2", stop.cr2)
        source = cpu.state.last_ip if trap else stop.rip
        return self._deliver(cpu, vector, stop.rip, stop.error_code, ExceptionEvent,
                             fault_rip=source, source=source)

    def _deliver(self, cpu: Cpu, vector: int, return_rip: int, error_code: int | None,
                 kind: type[Delivery], fault_rip: int | None = None, source: int | None = None
                 ) -> Verdict | None:
        """Deliver through the guest IDT; a failure escalates to #DF, then a triple fault."""
        chain: list[str] = []
        v, err = vector, error_code
        while True:
            problem = self._push_frame(cpu, v, return_rip, err)
            if problem is None:
                # `source`: the IP a trace reports for the event (Intel SDM vol. 3C, FUP IP:
                # the INT3 / faulting instruction itself, the next IP for external events)
                self._event(cpu, kind, vector=v, rip=return_rip, handler=cpu.reg("rip"),
                            source=return_rip if source is None else source, error_code=err)
                if chain:
                    self._escalation[cpu.index] = "; ".join(chain)
                return None
            chain.append(f"delivering {x86.vector_name(v)}: {problem}")
            if v == x86.DF:
                rip = fault_rip if fault_rip is not None else return_rip
                return self._fault_verdict(cpu, rip, "triple fault (" + "; ".join(chain) + ")",
                                           "triple_fault")
            v, err = x86.DF, 0

    def _push_frame(self, cpu: Cpu, vector: int, rip: int, err: int | None) -> str | None:
        _sel, base, limit, _flags = cpu.reg("idtr")
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

    def _fault_verdict(self, cpu: Cpu, rip: int, detail: str, event: str) -> Verdict:
        return Verdict(VerdictKind.GUEST_FAULT, f"cpu{cpu.index}: {detail}", cpu=cpu.index, rip=rip,
                       fetched=cpu.fetched(rip), event=event)

    # ------------------------------------------------------------ hypercalls
    def _hypercall(self, cpu: Cpu, hc: HypercallRequest) -> Verdict | None:
        a0, a1, a2, a3 = hc.args
        try:
            number = Hypercall(hc.number)
        except ValueError:
            return self._fault_verdict(cpu, hc.rip - 2, f"unknown hypercall {hc.number}",
                                       "hypercall")
        self._event(cpu, HypercallEvent, number=number, args=(a0, a1))
        try:
            return self._serve(cpu, number, hc, a0, a1, a2, a3)
        except GuestMemoryError as e:
            return self._fault_verdict(cpu, hc.rip - 2, f"hypercall {number.name}: {e}",
                                       "hypercall")

    def _serve(self, cpu: Cpu, number: Hypercall, hc: HypercallRequest, a0: int, a1: int,
               a2: int, a3: int) -> Verdict | None:
        if number is Hypercall.FINISH:
            cpu.state.finished = True
        elif number is Hypercall.SEND_IPI:
            if a1 != x86.NMI and not 32 <= a1 <= 255:
                return self._fault_verdict(cpu, hc.rip - 2, f"IPI with vector {a1}",
                                           "hypercall")
            for target in self.cpus:
                if a0 >> target.index & 1:
                    if cpu.footprint is not None:
                        cpu.footprint.writes.add(irq(target.index, nmi=a1 == x86.NMI))
                    if a1 == x86.NMI:
                        target.state.pending_nmi = True
                    else:
                        target.state.pending_ipis.add(a1)
        elif number is Hypercall.SIDEBAND:
            if not 1 <= a3 <= 64:
                return self._fault_verdict(cpu, hc.rip - 2, f"sideband record of {a3} bytes",
                                           "hypercall")
            self.sideband.append(TextPokeRecord(hc.tick, cpu.index, a0, self.mem.read(a1, a3),
                                                self.mem.read(a2, a3)))
            if cpu.footprint is not None and 0 <= a0 - layout.TEXT_BASE < self.layout.text_size:
                # the decoder's image of those bytes changes here (emu/footprint.py)
                cpu.footprint.writes.update(text_grains(a0 - layout.TEXT_BASE, a3))
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
            return self._fault_verdict(cpu, frame_rip, detail,
                                       "double_fault" if a0 == x86.DF else "fatal_exception")
        elif number is Hypercall.QUIESCENT:
            cpu.state.yielded = True  # a voluntary schedule point: schedulers may switch
            if self.config.event_mode:
                cpu.request_stop()
        return None  # MARK is recorded as an event only

    def _event(self, cpu: Cpu, kind: type[Event], **fields: object) -> None:
        self.truth.events.append(kind(self.clock.tick, cpu.index, **fields))
