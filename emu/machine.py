"""The emulated SMP machine: N CPUs, shared memory, per-CPU fetch views, one decision stream.

A run is a loop of scheduling steps. Each step draws, from the decision stream and in this
order: which runnable CPU runs; whether a spontaneous NMI becomes pending on it (only when the
configuration allows some); whether a pending NMI / IPI is delivered now; whether one pending
unit of its fetch view becomes visible; how many instructions it runs. In event mode (for the
exhaustive explorer) a CPU instead runs to its next visible event, and a pending unit is decided
when a fetch reads it (`MachineConfig.event_mode`). Everything else is deterministic, so the
recorded choices (`RunResult.path`) reproduce the run exactly. On the fast engine the common
steps of quantum mode run in C (emu/native_loop.py), which hands every other step back to this
code where it stands (`_step`, `_cpu_step`, `_quantum_step`, `_run_quantum`, `_after_run`).

Between runs of a CPU (never inside one) the machine changes its view and delivers exceptions
and interrupts through the guest IDT with the hardware frame (emu/delivery.py); a hypercall is
served where the guest makes it (emu/hypercall_service.py). The image is loaded once
(emu/loader.py) and every run starts again from the state it left.
"""

from __future__ import annotations

import ctypes
import operator
from dataclasses import dataclass, field

import capstone

from . import engine as engines
from . import layout, x86
from .config import MachineConfig, RunBudget
from .cpu import Clock, Cpu, CpuState, Stop, StopKind, merged
from .decisions import Decisions, DecisionSource
from .delivery import InterruptDelivery, fault_verdict
from .engine import Engine
from .events import (
    Event,
    Serialize,
    ViewUpdate,
)
from .fetch_view import FetchView
from .footprint import Footprint, irq, stack, text_grains
from .held_sigint import HeldSigint
from .hypercall_service import HypercallService
from .loader import GuestImage, load
from .memory import SharedMemory
from .native_cpu import NativeCpu
from .native_loop import NativeLoop, usable
from .path import Choice, CpuContext, Kind, Request
from .retired import RecordsCopy
from .snapshot import CpuCopy, Snapshot, SnapshotCache, packed
from .text_poke_record import TextPokeRecord
from .truth import GroundTruth
from .verdict import MachineConfigError, Verdict, VerdictKind

# The event-mode fetch model, for what records a path of it (tokens, saved searches): a path
# of another model does not mean the same run. 1: every pending unit flushed at each step
# unless a FLUSH choice kept it; 2: a pending unit decided when a fetch reads it.
EVENT_MODEL = 2


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
    cut: bool = False  # stopped by the caller's RunBudget: how it would have ended is unknown


_VALUE = operator.attrgetter("value")
INSN_LENGTHS_KEPT = 1 << 16  # instruction lengths a machine remembers (then it starts again)


def _has(counts: tuple[int, ...], index: int) -> bool:
    return index < len(counts) and counts[index] > 0


def _subtract(ranges: list[tuple[int, int]], cut: list[tuple[int, int]]
              ) -> list[tuple[int, int]]:
    """`ranges` minus `cut`, both lists of [start, end)."""
    out = merged(ranges)
    for cs, ce in cut:
        out = [piece for s, e in out
               for piece in ((s, min(e, cs)), (max(s, ce), e)) if piece[0] < piece[1]]
    return out


def _nmi_offsets(ranges: tuple[tuple[int, int], ...] | None) -> frozenset[int] | None:
    """The text offsets of instructions before which an NMI may arrive inside a run: those
    whose 15 bytes reach into `ranges` (MachineConfig.nmi_text); None: every instruction."""
    if ranges is None:
        return None
    return frozenset(o for s, e in ranges
                     for o in range(max(0, s - x86.MAX_INSN_LENGTH + 1), e))


class Machine(InterruptDelivery, HypercallService):
    def __init__(self, config: MachineConfig, image: GuestImage,
                 engine: Engine = Engine.REFERENCE) -> None:
        self.config = config
        self.engine = engine  # FAST: native_cpu.py where emu._native is installed; else cpu.py
        self.layout = lay = config.layout()
        self.image = image
        self.symbols = image.symbols
        if len(image.boot) != config.ncpus:
            raise MachineConfigError(f"image boots {len(image.boot)} CPUs, machine has "
                                     f"{config.ncpus}")
        self.mem = SharedMemory(lay)
        # the fast engine's CPUs have their per-instruction hooks in C (emu/native_cpu.py),
        # where the native module is installed
        native = engines.native_module("machine") if engine is Engine.FAST else None
        self.clock = native.Clock() if native is not None else Clock()
        self.truth = GroundTruth(config.ncpus)  # this run's; a fresh one at every reset
        self.sideband: list[TextPokeRecord] = []
        self._copied: list[RecordsCopy | None] = [None] * config.ncpus  # _new_records
        self._keyed: tuple[int, bytes] = (0, b"")
        self.views = [FetchView(ctypes.create_string_buffer(lay.text_size), config.grain)
                      for _ in range(config.ncpus)]
        def make_cpu(i: int) -> Cpu:
            args = (i, lay, self.mem, self.views[i], self.clock,
                    self.truth.retired[i] if config.truth else None,
                    [v for j, v in enumerate(self.views) if j != i], self.truth.events)
            return Cpu(*args) if native is None else NativeCpu(native, *args)

        self.cpus = [make_cpu(i) for i in range(config.ncpus)]
        for cpu in self.cpus:
            cpu.on_hypercall = self._hypercall
            if config.event_mode:
                cpu.watch_data(self._physical(config.watch))
                if isinstance(cpu, NativeCpu):
                    cpu.fetch_from_pages()
            if config.event_mode and _has(config.spontaneous_nmis, cpu.index):
                cpu.nmi_point = lambda c=cpu: self._nmi_point(c)
                cpu.nmi_offsets = _nmi_offsets(config.nmi_text)
        # footprints get their (costly) hooks when a source first asks for them
        self._tracking = False
        self._decisions: Decisions | None = None
        load(image, lay, self.mem, self.views, self.cpus)
        for cpu in self.cpus:
            cpu.state = self._fresh_state(cpu.index)
        self._initial_mem = self.mem.snapshot()
        self._initial_ctx = [c.uc.context_save() for c in self.cpus]
        self._dirty = False
        self._last: int | None = None
        self._escalation: dict[int, str] = {}
        self._md = capstone.Cs(capstone.CS_ARCH_X86, capstone.CS_MODE_64)
        self._lengths: dict[bytes, int] = {}  # _insn_length's, by the instruction's bytes
        self._cpu_requests: dict[tuple, Request] = {}
        self._quantum_requests = [Request(Kind.QUANTUM, config.max_quantum, i)
                                  for i in range(config.ncpus)]
        self._nmi_requests = tuple(Request(Kind.NMI_RAISE, 2, i, weight=1 / config.nmi_rarity)
                                   for i in range(config.ncpus))
        # the fast engine's scheduling loop (emu/native_loop.py), where it applies
        self._loop = NativeLoop(native, self) if usable(self, native) else None

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
                (layout.PHYS_STACKS + lay.stack_range(other)[0] - layout.STACK_BASE,
                 layout.PHYS_STACKS + lay.stack_range(other)[1] - layout.STACK_BASE, other)
                for other in range(self.config.ncpus) if other != cpu.index])

    def _fresh_state(self, index: int) -> CpuState:
        nmis = self.config.spontaneous_nmis
        return CpuState(nmis_left=nmis[index] if index < len(nmis) else 0)

    def reset(self) -> None:
        """Back to the initial state without rebuilding any Unicorn instance."""
        self.mem.restore(self._initial_mem)
        initial_text = self._initial_mem[0]
        for cpu, ctx in zip(self.cpus, self._initial_ctx, strict=True):
            cpu.view_takes(cpu.state.view_touched, initial_text)
            cpu.view.reset(initial_text)
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
        # per CPU, the last copy of its new records a snapshot took (or the restored one's):
        # the next snapshot copies only the records after it (Retired.copy); and the choices
        # the last snapshot's key holds, with that key (snapshot.packed)
        self._copied: list[RecordsCopy | None] = [None] * self.config.ncpus
        self._keyed: tuple[int, bytes] = (0, b"")
        for cpu in self.cpus:
            cpu.truth = self.truth.retired[cpu.index] if self.config.truth else None
            cpu.events = self.truth.events

    def symbol(self, name: str) -> int:
        try:
            return self.symbols[name]
        except KeyError:
            raise MachineConfigError(f"no guest symbol {name!r}") from None

    # ------------------------------------------------------------ running
    def run(self, source: DecisionSource, budget: RunBudget | None = None,
            cache: SnapshotCache | None = None) -> RunResult:
        """One schedule, fully determined by the choices `source` makes; cut (`RunResult.cut`,
        a `hang` verdict with event `run_budget`) once it retires more than `budget.ticks`.
        With a `cache` and a resumable source, the run starts from the snapshot of an earlier
        run that made the same first choices, and leaves snapshots of its own
        (emu/snapshot.py); the same run either way."""
        if not (cache is not None and source.resumable):
            cache = None
        snap = cache.best(source.planned(), source.kind()) if cache is not None else None
        decisions = Decisions(source)
        if snap is not None:
            self._restore(snap, decisions)
        elif self._dirty:
            self.reset()
        self._dirty = True
        if source.wants_footprints and self.config.event_mode and not self._tracking:
            self._track_footprints()
        self._decisions = decisions
        steps = 0 if snap is None else snap.steps
        cut = False
        verdict: Verdict | None = None
        loop = self._loop
        if loop is not None:
            loop.start(decisions, budget)
        due = steps + cache.every if cache is not None else 0  # the next snapshot's step
        # the snapshot taken at the last due step: kept once the source says a choice made
        # since could be deviated at (it is the latest state before that choice)
        pending: Snapshot | None = None
        with HeldSigint() as ctrl_c:  # Ctrl-C inside Unicorn would be lost (held_sigint.py)
            while verdict is None:
                if loop is not None:  # the fast engine: the common steps in C
                    done, verdict = loop.steps(decisions,
                                               None if cache is None else due - steps)
                    steps += done
                else:
                    verdict = self._step(decisions)
                    steps += 1
                if verdict is None and budget is not None and self.clock.tick > budget.ticks:
                    cut = True
                    verdict = Verdict(VerdictKind.HANG, f"cut after {self.clock.tick} "
                                      f"instructions: over the run's budget of {budget.ticks}",
                                      event="run_budget")
                if verdict is None and cache is not None and steps >= due:
                    if source.wants_snapshot() and pending is not None:
                        cache.add(pending)
                    pending = self._snapshot(decisions, steps) \
                        if source.may_want_snapshot() else None
                    due = steps + cache.every
                ctrl_c.check()
        if pending is not None and source.wants_snapshot():
            cache.add(pending)
        decisions.close()
        return RunResult(verdict=verdict, path=decisions.path, truth=self.truth,
                         sideband=self.sideband, ticks=self.clock.tick, steps=steps,
                         final_rips=[c.reg("rip") for c in self.cpus],
                         text_start=self._initial_mem[0], text_end=bytes(self.mem.text),
                         cut=cut)

    def _snapshot(self, dec: Decisions, steps: int) -> Snapshot:
        """The machine now, between two steps, with copies of everything (emu/snapshot.py)."""
        copied = self._copied
        if self.config.truth:
            copied[:] = [cpu.truth.copy(since)
                         for cpu, since in zip(self.cpus, copied, strict=True)]
        cpus = tuple(CpuCopy(cpu.uc.context_save(), cpu.state.copy(), cpu.retired, records)
                     for cpu, records in zip(self.cpus, copied, strict=True))
        path = dec.path
        keyed, key = self._keyed
        if keyed > len(path):  # (a path is only ever appended to during a run)
            keyed, key = 0, b""
        key += packed(map(_VALUE, path[keyed:]))
        self._keyed = (len(path), key)
        return Snapshot(key, tuple(path), steps,
                        self.clock.tick, self._last, self.mem.snapshot(),
                        tuple(cpu.view.saved(cpu.state.view_touched) for cpu in self.cpus),
                        cpus,
                        tuple(self.truth.events), tuple(self.sideband),
                        tuple(self._escalation.items()), dec.source.mark(),
                        dec.source.kind())

    def _restore(self, snap: Snapshot, dec: Decisions) -> None:
        """The machine as `snap` was taken, from whatever state it is in; fresh records
        holding copies of the snapshot's. Unicorn's translations of every text range the
        views changed since the last reset are dropped (the snapshot's views may hold other
        bytes there) and of every range the snapshot's run had changed by then (this run may
        hold translations of memory's first bytes there)."""
        self.mem.restore(snap.mem)
        self._new_records()
        self.truth.events.extend(snap.events)
        self.sideband.extend(snap.sideband)
        first = self._initial_mem[0]
        for cpu, vc, cc in zip(self.cpus, snap.views, snap.cpus, strict=True):
            coming = vc.text(first)
            cpu.view_takes(cpu.state.view_touched + cc.state.view_touched, coming)
            cpu.view.restore(vc, coming)
            cpu.uc.context_restore(cc.context)
            cpu.state = cc.state.copy()
            cpu.retired = cc.retired_count
            if cc.records is not None:
                self.truth.retired[cpu.index].extend_copy(cc.records)
                self._copied[cpu.index] = cc.records
        self.clock.tick = snap.tick
        self._escalation = dict(snap.escalation)
        self._last = snap.last
        dec.path.extend(snap.path)
        self._keyed = (len(snap.path), snap.key)
        dec.source.resume(snap.source)

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
        request = self._cpu_request(tuple(c.index for c in runnable), self._last,
                                    frozenset(c.index for c in runnable if c.state.yielded))
        cpu = runnable[dec.choose(request)]
        self._last = cpu.index
        return self._chosen_step(cpu, dec)

    def _chosen_step(self, cpu: Cpu, dec: Decisions) -> Verdict | None:
        """The step of the CPU just chosen (where the C loop hands back a CPU with an NMI to
        consider)."""
        if not (self.config.event_mode and dec.source.wants_footprints):
            return self._cpu_step(cpu, dec)
        # record what the step touches for the explorer's reduction (emu/footprint.py); its
        # own stack, which another CPU's footprint names only when it reaches into it
        fp = cpu.footprint = Footprint(cpu.index, writes=(stack(cpu.index),))
        st = cpu.state
        if st.halted or (not st.shadow and cpu.reg("rflags") & x86.RFLAGS_IF):
            fp.read(irq(cpu.index))  # a pending IPI would be taken now
        if not st.nmi_blocked:
            fp.read(irq(cpu.index, nmi=True))
        try:
            return self._cpu_step(cpu, dec)
        finally:
            self._footprint_done(cpu, dec, fp)

    @staticmethod
    def _footprint_done(cpu: Cpu, dec: Decisions, fp: Footprint) -> None:
        """A step's footprint is complete: off the CPU, to the source (also where the C loop
        hands a step back with its footprint, emu/native_loop.py)."""
        cpu.footprint = None
        dec.source.step_done(fp)

    def _cpu_request(self, runnable: tuple[int, ...], last: int | None,
                     yielded: frozenset[int]) -> Request:
        """The CPU choice's request in this context (requests are immutable: one per
        context, made once, shared by both scheduling loops)."""
        key = (runnable, last, yielded)
        request = self._cpu_requests.get(key)
        if request is None:
            request = self._cpu_requests[key] = Request(Kind.CPU, len(runnable),
                                                        context=CpuContext(*key))
        return request

    def _cpu_step(self, cpu: Cpu, dec: Decisions) -> Verdict | None:
        self._nmi_arrives(cpu, dec)
        return self._arrived_step(cpu, dec)

    def _raised_step(self, cpu: Cpu, dec: Decisions) -> Verdict | None:
        """The step whose NMI_RAISE choice the C loop made, and said yes to."""
        self._raise_nmi(cpu)
        return self._arrived_step(cpu, dec)

    def _arrived_step(self, cpu: Cpu, dec: Decisions) -> Verdict | None:
        """The CPU's step once a spontaneous NMI arrived or not."""
        verdict = self._maybe_interrupt(cpu, dec)
        if verdict is not None:
            return verdict
        if self.config.event_mode:
            return self._event_run(cpu, dec)
        return self._quantum_step(cpu, dec)

    def _event_run(self, cpu: Cpu, dec: Decisions) -> Verdict | None:
        """Event mode, after the interrupts: the fetch of the instruction the step starts
        with, then the run to the CPU's next visible event."""
        self._observe_pending(cpu, dec)
        # after STI / MOV SS only the shadowed instruction runs: a pending interrupt may be
        # taken right after it (SDM 6.8.3), so that boundary is a scheduling point
        quantum = 1 if cpu.state.shadow else self.config.max_quantum
        return self._after_run(cpu, cpu.run(quantum, event=True))

    def _quantum_step(self, cpu: Cpu, dec: Decisions) -> Verdict | None:
        """Quantum mode, after the interrupts: whether a pending unit of the CPU's view
        becomes visible, then its run."""
        if cpu.view.has_pending():
            pick = dec.choose(Request(Kind.VIEW, cpu.view.pending_count + 1, cpu.index))
            if pick:
                self._refresh(cpu, pick - 1)
        return self._run_quantum(cpu, dec)

    def _run_quantum(self, cpu: Cpu, dec: Decisions) -> Verdict | None:
        quantum = dec.choose(self._quantum_requests[cpu.index]) + 1
        return self._after_run(cpu, cpu.run(quantum))

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
                    cpu.footprint.read_all(text_grains(u[0], u[1] - u[0]))
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
        """The length of the instruction at `off`: a function of its bytes alone (in 64-bit
        mode), remembered by them (capstone took 1.3 % of an exhaustive search)."""
        code = bytes(buf[off:off + x86.MAX_INSN_LENGTH])
        n = self._lengths.get(code)
        if n is None:
            insn = next(self._md.disasm(code, layout.TEXT_BASE + off, 1), None)
            n = insn.size if insn is not None else len(code)
            if len(self._lengths) >= INSN_LENGTHS_KEPT:
                self._lengths.clear()
            self._lengths[code] = n
        return n

    def _refresh(self, cpu: Cpu, index: int) -> None:
        s, e = cpu.view.refresh(index, self.mem.text)
        cpu.invalidate(s, e)
        self._event(cpu, ViewUpdate, start=layout.TEXT_BASE + s, size=e - s)

    def _after_run(self, cpu: Cpu, stop: Stop) -> Verdict | None:
        st = cpu.state
        if st.own_dirty:
            for s, e in merged(st.own_dirty):
                cpu.invalidate(s, e)
            st.own_dirty.clear()
        if st.need_serialize:
            st.need_serialize = False
            self._serialize(cpu)
        verdict: Verdict | None = None
        if stop.kind is StopKind.ERROR:
            verdict = fault_verdict(cpu, stop.rip, stop.message, "emulation error")
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
        done, changed = cpu.view.serialize(self.mem.text)
        if cpu.footprint is not None:  # the view now holds what memory held then
            for s, e in done:
                cpu.footprint.read_all(text_grains(s, e - s))
        for s, e in merged(changed):  # (translations of unchanged bytes stay good)
            cpu.invalidate(s, e)
        self._event(cpu, Serialize, units=len(done), ipi=ipi)

    def _event(self, cpu: Cpu, kind: type[Event], **fields: object) -> None:
        self.truth.events.append(kind(self.clock.tick, cpu.index, **fields))
