"""One emulated CPU: a Unicorn x86-64 instance in ring-0 long mode, and its hooks.

The rules from ../shared/reference/unicorn.md that shape this file:
- virtual-TLB mode with a harness fill hook, so fetches of text read this CPU's view and data
  accesses read memory (variant B); a failed fill surfaces as UC_ERR_EXCEPTION and becomes a #PF;
- `emu_start(rip, until=0, count=0)` always: `until` invalidates translations behind our back,
  and `count` would install a hook of its own and flush the cache when switched off;
- every run stops from the per-instruction code hook, which stops cleanly *before* the hooked
  instruction; other hooks only raise a flag that the next code hook acts on;
- the view is only ever changed between runs, followed by `remove_cache` over the range (here
  `ctl_remove_cache`; the fast engine syncs the page it fetches from instead: emu/fetch_pages.c);
- RDTSC is hooked through the C API (the Python binding refuses it) and returns the virtual TSC.

The code hook is registered raw (ctypes, no binding wrapper) because it runs per instruction.
"""

from __future__ import annotations

import ctypes
import enum
from collections.abc import Callable
from dataclasses import dataclass, field

from unicorn import Uc, UcError
from unicorn import x86_const as X
from unicorn.unicorn_const import (
    UC_ARCH_X86,
    UC_ERR_EXCEPTION,
    UC_ERR_INSN_INVALID,
    UC_HOOK_CODE,
    UC_HOOK_INSN,
    UC_HOOK_INTR,
    UC_HOOK_MEM_READ,
    UC_HOOK_MEM_WRITE,
    UC_HOOK_TLB_FILL,
    UC_MODE_64,
    UC_PROT_ALL,
    UC_PROT_EXEC,
    UC_PROT_READ,
    UC_PROT_WRITE,
    UC_TLB_VIRTUAL,
)
from unicorn.unicorn_py3.arch.intel import UcRegMMR
from unicorn.unicorn_py3.unicorn import uclib

from . import hypercall, layout, x86
from .events import TextStore
from .fetch_view import FetchView
from .footprint import TEXT, TEXT_SHIFT, Footprint, data_words, stack, text_grains
from .layout import Access, Layout
from .memory import SharedMemory
from .retired import Retired
from .verdict import HandlerFrame

_CODE_CB = ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.c_uint64, ctypes.c_uint32,
                            ctypes.c_void_p)
_RDTSC_CB = ctypes.CFUNCTYPE(ctypes.c_uint32, ctypes.c_void_p, ctypes.c_void_p)
_INVALID_INSN_SIZE = 16  # Unicorn reports an undecodable instruction with size 0xf1f1f1f1
_RDTSCP = b"\x0f\x01\xf9"
_READ_STOP_DELAY = 3  # instructions after a watched read before it becomes a stop
# Unicorn's translated-code buffer: 1 GiB per engine by default, filled and never reused until
# it is full. Patched text is retranslated after every poke, so a long exploration grew each
# process by up to 1 GiB per CPU. When the buffer fills, Unicorn flushes it and translates again
# the same bytes: what runs does not change (tests/test_machine.py), only the memory bound.
TCG_BUFFER = 32 << 20

# Registers that uc_reg_read stores as a full 64-bit value, read through the C API: the
# binding's reg_read picks a register class on every call and costs about four times as much.
_RAW64 = {name: getattr(X, f"UC_X86_REG_{name.upper()}") for name in (
    "rip", "rflags", "rsp", "rax", "rbx", "rcx", "rdx", "rsi", "rdi", "rbp", "r8", "r9", "r10",
    "r11", "r12", "r13", "r14", "r15")}

# Segment selectors: uc_reg_read stores 16 bits, so they are read into a cleared 64-bit value
# (what the binding's fresh c_uint64 gives); descriptor-table registers into a uc_x86_mmr.
_SELECTORS = {name: getattr(X, f"UC_X86_REG_{name.upper()}")
              for name in ("cs", "ss", "ds", "es", "fs", "gs")}
_MMR = {"idtr": X.UC_X86_REG_IDTR, "gdtr": X.UC_X86_REG_GDTR}

_PERMS = {Access.FETCH: UC_PROT_EXEC, Access.READ: UC_PROT_READ,
          Access.WRITE: UC_PROT_READ | UC_PROT_WRITE}


class Clock:
    """The global tick: one per retired instruction on any CPU. The virtual TSC is the tick."""

    __slots__ = ("tick",)

    def __init__(self) -> None:
        self.tick = 0


class StopKind(enum.Enum):
    QUANTUM = "quantum"  # ran the instructions it was given, or stopped for a flag below
    EXCEPTION = "exception"  # the CPU raised an exception (vector in Stop.vector)
    ERROR = "error"  # Unicorn failed in a way that is not an architectural event


@dataclass
class Stop:
    kind: StopKind
    vector: int = -1
    rip: int = 0
    error_code: int | None = None
    cr2: int | None = None
    message: str = ""


@dataclass
class HypercallRequest:
    number: int
    args: tuple[int, int, int, int]
    rip: int  # of the instruction after the hypercall
    tick: int


@dataclass
class CpuState:
    """Harness-side state of a CPU that Unicorn does not keep."""

    pending_ipis: set[int] = field(default_factory=set)
    pending_nmi: bool = False
    nmi_blocked: bool = False
    nmis_left: int = 0  # spontaneous NMIs the decision stream may still raise
    halted: bool = False
    finished: bool = False
    shadow: bool = False  # the last instruction was STI / MOV SS / POP SS
    yielded: bool = False  # executed PAUSE (a spin-wait) in its last run
    need_serialize: bool = False
    own_dirty: list[tuple[int, int]] = field(default_factory=list)
    view_touched: list[tuple[int, int]] = field(default_factory=list)  # since the last reset
    verdict: object = None  # set by a hypercall that ends the run
    last_ip: int = 0
    last_code: bytes = b""
    # the exceptions and interrupts being delivered or handled, outermost first (delivery.py)
    handling: list[HandlerFrame] = field(default_factory=list)
    left: list[HandlerFrame] = field(default_factory=list)  # what the last IRET left

    def copy(self) -> CpuState:
        """A copy sharing nothing mutable with this one (a machine snapshot, emu/snapshot.py):
        every set, list and dict field copied; frames and verdicts are immutable."""
        # the instance's dict copied, not CpuState(**...) over `fields`: a snapshot copies
        # one per CPU, and so does its restore (1.2 us each instead of 3.4)
        out = CpuState.__new__(CpuState)
        d = self.__dict__.copy()
        for k, v in d.items():
            if type(v) in _MUTABLE:
                d[k] = type(v)(v)
        out.__dict__ = d
        return out


_MUTABLE = (set, list, dict)


def merged(ranges: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """[start, end) ranges sorted, those that overlap or touch made one."""
    out: list[tuple[int, int]] = []
    for s, e in sorted(ranges):
        if out and s <= out[-1][1]:
            out[-1] = (out[-1][0], max(out[-1][1], e))
        else:
            out.append((s, e))
    return out


def _leave_handler(handling: list[HandlerFrame]) -> list[HandlerFrame]:
    """An IRET: the innermost delivered handler returns (with the failed deliveries that
    escalated to it). Returns what it left, for an IRET that faults after all (delivery.py)."""
    left: list[HandlerFrame] = []
    while handling:  # the delivered handler, innermost ...
        left.insert(0, handling.pop())
        if left[0].delivered:
            break
    while handling and not handling[-1].delivered:  # ... and the deliveries that failed into it
        left.insert(0, handling.pop())
    return left


class Cpu:
    def __init__(self, index: int, lay: Layout, mem: SharedMemory, view: FetchView,
                 clock: Clock, truth: Retired | None,
                 others: list[FetchView], events: list) -> None:
        self.index = index
        self.layout = lay
        self.mem = mem
        self.view = view
        self.clock = clock
        self.truth = truth
        self.others = others  # every other CPU's view, for pending stores
        self.events = events
        self.state = CpuState()
        self.on_hypercall: Callable[[Cpu, HypercallRequest], object] = lambda _c, _r: None
        self.retired = 0
        self._left = 0
        self._want_stop = False
        self._fill_fault: tuple[int, Access] | None = None
        self._exception: tuple[int, int] | None = None
        self._error: BaseException | None = None
        self._emulate: tuple[int, bytes] | None = None
        self._event = False
        self._event_mode = False
        self._skip_fetch: int | None = None
        self._read_stop_in = 0
        self._mem_hooked: int | None = None  # an instruction a memory hook saw (_on_code)
        self._last_store: tuple[int, int, bytes] | None = None
        self._restarted = False  # the current instruction was restarted
        # event mode, when asked for: what the current step touches (emu/footprint.py)
        self.footprint: Footprint | None = None
        # event mode: asked before each instruction of a run but its first, whether a
        # spontaneous NMI arrives there (Machine._nmi_point); True stops the run
        self.nmi_point: Callable[[], bool] | None = None
        self.nmi_offsets: frozenset[int] | None = None  # where it is asked (None: everywhere)
        # event mode: the text range [start, end) whose pending units the machine decided for
        # the instruction a step starts with (Machine._observe_pending); None if none pending
        self.fetch_decided: tuple[int, int] | None = None

        u = self.uc = Uc(UC_ARCH_X86, UC_MODE_64)
        u.ctl_set_tcg_buffer_size(TCG_BUFFER)  # first: the engine sizes it when it initialises
        u.ctl_set_tlb_mode(UC_TLB_VIRTUAL)
        for base, buf in mem.banks():
            u.mem_map_ptr(base, len(buf), UC_PROT_ALL, ctypes.addressof(buf))
        u.mem_map_ptr(layout.PHYS_VIEW, len(view.buf), UC_PROT_ALL, ctypes.addressof(view.buf))
        self._u64 = ctypes.c_uint64()
        self._mmr = UcRegMMR()
        self._u64_ref = ctypes.byref(self._u64)
        self._hook_instructions()
        self._boot_long_mode()

    def _hook_instructions(self) -> None:
        """The hooks of every instruction and access: text stores, code, RDTSC, OUT,
        interrupts and TLB fills (emu/native_cpu.py has them in C)."""
        self.uc.hook_add(UC_HOOK_MEM_WRITE, self._on_text_store, None, layout.PHYS_TEXT_MEM,
                         layout.PHYS_TEXT_MEM + self.layout.text_size - 1)
        self._code_cb = _CODE_CB(self._on_code)
        self._rdtsc_cb = _RDTSC_CB(self._on_rdtsc)
        add = self.uc._Uc__do_hook_add  # the binding's raw registration (a private name)
        add(UC_HOOK_CODE, self._code_cb, 1, 0)
        add(UC_HOOK_INSN, self._rdtsc_cb, 1, 0, ctypes.c_int(X.UC_X86_INS_RDTSC))
        self.uc.hook_add(UC_HOOK_INSN, self._on_out, None, 1, 0, X.UC_X86_INS_OUT)
        self.uc.hook_add(UC_HOOK_INTR, self._on_intr)
        self.uc.hook_add(UC_HOOK_TLB_FILL, self._on_tlb_fill)

    # ---------------------------------------------------------------- setup
    def _boot_long_mode(self) -> None:
        """Ring 0, 64-bit long mode, paging (virtual TLB), NX, GDT and IDT loaded."""
        u = self.uc
        u.reg_write(X.UC_X86_REG_GDTR, (0, layout.GDT_ADDR, 8 * len(layout.GDT_ENTRIES) - 1, 0))
        u.reg_write(X.UC_X86_REG_IDTR, (0, layout.IDT_ADDR, 256 * 16 - 1, 0))
        u.reg_write(X.UC_X86_REG_CR4, u.reg_read(X.UC_X86_REG_CR4) | 0x20)  # PAE
        u.reg_write(X.UC_X86_REG_MSR, (0xC0000080, 0xD01))  # EFER: SCE, LME, LMA, NXE
        u.reg_write(X.UC_X86_REG_CR0, 0x80050033)  # PG, AM, WP, NE, ET, MP, PE
        u.reg_write(X.UC_X86_REG_CS, layout.KERNEL_CS)
        for seg in (X.UC_X86_REG_SS, X.UC_X86_REG_DS, X.UC_X86_REG_ES):
            u.reg_write(seg, layout.KERNEL_DS)
        u.reg_write(X.UC_X86_REG_GS_BASE, self.layout.percpu(self.index))

    # ---------------------------------------------------------------- hooks
    def _on_tlb_fill(self, uc: Uc, vaddr: int, access: int, entry, _ud) -> bool:
        acc = Access(access)
        pa = self.layout.translate(vaddr, acc)
        if pa is None:
            self._fill_fault = (vaddr, acc)
            return False
        entry.paddr = pa & ~(layout.PAGE - 1)
        entry.perms = _PERMS[acc]
        return True

    def _on_code(self, _handle, address: int, size: int, _ud) -> None:
        try:
            if self._mem_hooked is not None:  # only after a memory hook: off the common path
                hooked, self._mem_hooked = self._mem_hooked, None
                if hooked == address:
                    # The instruction whose access a hook just saw is executed again from its
                    # start: QEMU restarts an instruction that reaches a hooked page in the
                    # middle of a block (cpu_io_recompile). It retired once; let it complete.
                    self._restarted = True
                    return
            if self._restarted:
                self._restarted = False
            if self._want_stop or self._left == 0:
                self.uc.emu_stop()
                return
            if size >= _INVALID_INSN_SIZE:  # Unicorn will report UC_ERR_INSN_INVALID: a #UD
                if self._event and address != self._skip_fetch and self._nmi_before(
                        address - layout.TEXT_BASE):
                    self.uc.emu_stop()  # an NMI arrived before it: taken, not the #UD
                return
            off = address - layout.TEXT_BASE
            if self._event:
                if self.footprint is not None:  # every grain it spans; mostly one or two
                    first, last = off >> TEXT_SHIFT, (off + size - 1) >> TEXT_SHIFT
                    fetched = self.footprint.added  # (read: no flag)
                    fetched.append(TEXT | first)
                    if last != first:
                        fetched.extend(range(TEXT | first + 1, (TEXT | last) + 1))
                if self._read_stop_in:
                    self._read_stop_in -= 1
                    if not self._read_stop_in:
                        self.uc.emu_stop()  # the visible read, a few local instructions ago
                        return
                if address == self._skip_fetch:
                    self._skip_fetch = None  # the instruction we stopped before: run it now
                    # Machine._observe_pending decided its pending units up to the end capstone
                    # decoded; a longer instruction here would fetch an undecided one
                    start = self.fetch_decided[1] if self.fetch_decided else off
                    if off + size > start and self.view.is_pending(start, off + size - start):
                        raise RuntimeError(
                            f"fetch model: the instruction at {address:#x} is {size} bytes to "
                            "Unicorn, longer than capstone decoded it for the fetch decision")
                elif self.view.has_pending() and self.view.is_pending(off, size):
                    self.uc.emu_stop()  # a fetch of bytes with a pending store: visible
                    return
                elif self._nmi_before(off):
                    self.uc.emu_stop()  # an NMI arrived before this instruction
                    return
            code = self.view.buf[off:off + size]
            if code == _RDTSCP:
                self._emulate = (address, _RDTSCP)  # Unicorn's RDTSCP reads host time
                self.uc.emu_stop()
                return
            self._left -= 1
            clock = self.clock
            clock.tick += 1
            self.retired += 1
            if self.truth is not None:
                self.truth.append(clock.tick, address, code)
            st = self.state
            st.last_ip = address
            st.last_code = code
            st.shadow = False
            eff = x86.effect(code)  # cached per encoding
            if eff:
                if eff in (x86.Effect.SERIALIZE, x86.Effect.IRET):
                    if eff is x86.Effect.IRET:
                        st.nmi_blocked = False  # IRET ends NMI blocking (SDM 6.7.1)
                        st.left = _leave_handler(st.handling)
                    st.need_serialize = True
                    self._want_stop = True
                elif eff is x86.Effect.SHADOW:
                    st.shadow = True
                    if self._event:  # IF may have just been set: the end of the shadow is
                        self._want_stop = True  # where a pending interrupt is taken
                elif eff is x86.Effect.HALT:
                    st.halted = True
                    self._want_stop = True
                else:  # PAUSE
                    st.yielded = True
                    if self._event:
                        self._want_stop = True  # a spin-wait: let the others run
        except BaseException as e:  # a harness bug must surface, not vanish in ctypes
            self._error = e
            self.uc.emu_stop()

    def _nmi_before(self, off: int) -> bool:
        """Event mode, inside a run: whether a spontaneous NMI arrives before the instruction
        at text offset `off` (asked where MachineConfig.nmi_text allows)."""
        return self.nmi_point is not None and (
            self.nmi_offsets is None or off in self.nmi_offsets) and self.nmi_point()

    def _on_rdtsc(self, _handle, _ud) -> int:
        tsc = self.clock.tick
        self.uc.reg_write(X.UC_X86_REG_RAX, tsc & 0xFFFFFFFF)
        self.uc.reg_write(X.UC_X86_REG_RDX, tsc >> 32)
        return 1  # skip Unicorn's own (host-time) RDTSC

    def _on_intr(self, uc: Uc, intno: int, _ud) -> None:
        self._exception = (intno, uc.reg_read(X.UC_X86_REG_RIP))
        uc.emu_stop()

    def _on_out(self, uc: Uc, port: int, _size: int, _value: int, _ud) -> None:
        if port != hypercall.PORT:
            return
        r = self._read64
        self.hypercall(HypercallRequest(
            number=r(X.UC_X86_REG_RAX),
            args=(r(X.UC_X86_REG_RDI), r(X.UC_X86_REG_RSI), r(X.UC_X86_REG_RDX),
                  r(X.UC_X86_REG_RCX)),
            rip=r(X.UC_X86_REG_RIP) + 2, tick=self.clock.tick))

    def hypercall(self, req: HypercallRequest) -> None:
        """The hypercall `req` (its registers read at the OUT), served inside this run."""
        verdict = self.on_hypercall(self, req)
        if verdict is not None:
            self.state.verdict = verdict
        if verdict is not None or self.state.finished:
            self._want_stop = True

    def _on_text_store(self, uc: Uc, _access: int, paddr: int, size: int, value: int,
                       _ud) -> None:
        """A guest store to text memory (through the poking alias), seen before it lands."""
        off = paddr - layout.PHYS_TEXT_MEM
        data = (value & ((1 << (8 * size)) - 1)).to_bytes(size, "little")
        self._note_mem_hook()
        if self._restarted and self._last_store == (self.clock.tick, off, data):
            return  # the same store of a restarted instruction (see _on_code)
        self._last_store = (self.clock.tick, off, data)
        if self.view.write_own(off, data):  # (translations of unchanged bytes stay good)
            self.state.own_dirty.append((off, off + size))
        memory = self.mem.text if self._event_mode else None  # (only event mode uses it)
        for other in self.others:  # memory still holds what the store overwrites
            other.note_store(off, size, memory)
        if self.footprint is not None:
            self.footprint.write_all(text_grains(off, size))
        self.events.append(TextStore(self.clock.tick, self.index, layout.TEXT_BASE + off, data))
        self._want_stop = True

    def _note_mem_hook(self) -> None:
        """A memory hook saw an access of the current instruction (see _on_code)."""
        self._mem_hooked = self.state.last_ip

    # ---------------------------------------------------------------- running
    def request_stop(self) -> None:
        """Stop before the next instruction (from a hook of this CPU's current run)."""
        self._want_stop = True

    def watch_data(self, ranges: list[tuple[int, int]]) -> None:
        """Event mode: stop after any access to these physical data ranges (shared protocol
        state). A memory hook slows every access, so it exists only when asked for."""
        self._event_mode = True
        for start, end in ranges:
            self.uc.hook_add(UC_HOOK_MEM_READ | UC_HOOK_MEM_WRITE, self._on_watched, None,
                             start, end - 1)

    def track_data(self, ranges: list[tuple[int, int]]) -> None:
        """Event mode: record (not stop at) accesses to these physical data ranges in the
        step's footprint: shared data that orders the CPUs without being a scheduling point."""
        for start, end in ranges:
            self.uc.hook_add(UC_HOOK_MEM_READ | UC_HOOK_MEM_WRITE, self._on_tracked, None,
                             start, end - 1)

    def track_text_reads(self) -> None:
        """Event mode: record data reads of text (the RX mapping or the poking alias) as reads
        of its grains: such a read sees what a store of another CPU wrote."""
        self.uc.hook_add(UC_HOOK_MEM_READ, self._on_text_read, None, layout.PHYS_TEXT_MEM,
                         layout.PHYS_TEXT_MEM + self.layout.text_size - 1)

    def track_foreign_stacks(self, stacks: list[tuple[int, int, int]]) -> None:
        """Event mode: record an access to another CPU's stack ([start, end) physical, owner)
        as an access to that stack's location (emu/footprint.stack)."""
        for start, end, owner in stacks:
            self.uc.hook_add(UC_HOOK_MEM_READ | UC_HOOK_MEM_WRITE, self._on_foreign_stack,
                             owner, start, end - 1)

    def _on_text_read(self, _uc: Uc, _access: int, addr: int, size: int, _value: int,
                      _ud) -> None:
        self._note_mem_hook()
        fp = self.footprint
        if self._event and fp is not None:
            fp.read_all(text_grains(addr - layout.PHYS_TEXT_MEM, size))

    def _on_foreign_stack(self, _uc: Uc, access: int, _addr: int, _size: int, _value: int,
                          owner: int) -> None:
        self._note_mem_hook()
        fp = self.footprint
        if self._event and fp is not None:
            (fp.write if access == Access.WRITE else fp.read)(stack(owner))

    def _on_tracked(self, _uc: Uc, access: int, addr: int, size: int, _value: int,
                    _ud) -> None:
        self._note_mem_hook()
        fp = self.footprint
        if self._event and fp is not None:
            (fp.write_all if access == Access.WRITE else fp.read_all)(data_words(addr, size))

    def _on_watched(self, uc: Uc, access: int, addr: int, size: int, value: int,
                    ud) -> None:
        if not self._event:
            return
        self._on_tracked(uc, access, addr, size, value, ud)
        if access == Access.WRITE:
            self._want_stop = True  # after this instruction: stopping here would abandon it
        elif not self._read_stop_in:
            # A read is visible too, but a spin-wait reads and then yields (PAUSE) a couple of
            # instructions later: let the yield be the scheduling point if one comes.
            self._read_stop_in = _READ_STOP_DELAY

    def run(self, quantum: int, event: bool = False) -> Stop:
        """Run up to `quantum` instructions from the current RIP; in event mode also stop at
        the next visible event (see MachineConfig.event_mode)."""
        self._event = event
        rip = self._read64(X.UC_X86_REG_RIP)
        self._skip_fetch = rip if event else None
        self._read_stop_in = 0
        self._left = quantum
        self._want_stop = False
        self._mem_hooked, self._restarted = None, False
        self._fill_fault = None
        self._exception = None
        self._emulate = None
        self.state.yielded = False
        u = self.uc
        try:
            u.emu_start(rip, 0, 0, 0)
        except UcError as e:
            if self._error is not None:
                raise self._error from None
            if u._hook_exception is not None:  # our hook failed, not the guest: raise it
                raise u._hook_exception from None
            return self._failed(e)
        if self._error is not None:
            raise self._error
        if self._emulate is not None:
            self._emulate_rdtscp(*self._emulate)
        return self._stopped()

    def _failed(self, e: UcError) -> Stop:
        """The Stop of a run Unicorn ended with an error: #UD, #PF / #GP of a failed fill."""
        rip = self.uc.reg_read(X.UC_X86_REG_RIP)
        if e.errno == UC_ERR_INSN_INVALID:
            return Stop(StopKind.EXCEPTION, vector=x86.UD, rip=rip)
        if e.errno == UC_ERR_EXCEPTION and self._fill_fault is not None:
            va, acc = self._fill_fault
            if not x86.is_canonical(va):  # SDM 3A 6.15: non-canonical -> #GP(0), not #PF
                return Stop(StopKind.EXCEPTION, vector=x86.GP, rip=rip, error_code=0)
            code = x86.PF_PRESENT if self.layout.present(va) else 0
            if acc is Access.WRITE:
                code |= x86.PF_WRITE
            elif acc is Access.FETCH:
                code |= x86.PF_FETCH
            return Stop(StopKind.EXCEPTION, vector=x86.PF, rip=rip, error_code=code, cr2=va)
        return Stop(StopKind.ERROR, rip=rip, message=f"unicorn: {e}")

    def _stopped(self) -> Stop:
        """The Stop of a run that ended normally: an exception a hook saw, or none."""
        if self._exception is not None:
            vector, rip = self._exception
            return Stop(StopKind.EXCEPTION, vector=vector, rip=rip,
                        error_code=0 if vector in x86.ERROR_CODE_VECTORS else None)
        return Stop(StopKind.QUANTUM, rip=self._read64(X.UC_X86_REG_RIP))

    def _emulate_rdtscp(self, address: int, code: bytes) -> None:
        """RDTSCP at an instruction boundary: EDX:EAX = virtual TSC, ECX = TSC_AUX, which
        Linux sets to (node << 12) | cpu (arch/x86/kernel/cpu/common.c, setup_getcpu)."""
        self._left -= 1
        self.clock.tick += 1
        self.retired += 1
        if self.truth is not None:
            self.truth.append(self.clock.tick, address, code)
        self.state.last_ip, self.state.last_code, self.state.shadow = address, code, False
        u = self.uc
        u.reg_write(X.UC_X86_REG_RAX, self.clock.tick & 0xFFFFFFFF)
        u.reg_write(X.UC_X86_REG_RDX, self.clock.tick >> 32)
        u.reg_write(X.UC_X86_REG_RCX, self.index)
        u.reg_write(X.UC_X86_REG_RIP, address + len(code))

    def invalidate(self, start: int, end: int) -> None:
        """Drop this CPU's translations of text [start, end) (offsets): the view changed."""
        self.remove_cache(start, end)
        self.state.view_touched.append((start, end))

    def remove_cache(self, start: int, end: int) -> None:
        """Unicorn's translations of text [start, end) (offsets) dropped."""
        self.uc.ctl_remove_cache(layout.TEXT_BASE + start, layout.TEXT_BASE + end)

    def view_takes(self, ranges: list[tuple[int, int]], coming: bytes) -> None:
        """Before the view takes the text `coming` (a reset's or a snapshot's): Unicorn's
        translations dropped in each of `ranges` (the text offsets where either may differ
        from the initial text) whose bytes change. Translations always match the view (a view
        change drops its own), so those of unchanged bytes stay good."""
        view = self.view.buf
        for s, e in merged(ranges):
            if view[s:e] != coming[s:e]:
                self.remove_cache(s, e)

    def push_frame(self, vector: int, rip: int, err: int | None) -> bool:
        """The fast engine's interrupt frame, pushed in C where the common case allows it
        (NativeCpu); False: delivery.py's own code, the reference, does it."""
        return False

    def fetched(self, rip: int, size: int = 15) -> bytes:
        """The bytes this CPU fetches at `rip` (its view), for verdicts."""
        off = rip - layout.TEXT_BASE
        if not 0 <= off < self.layout.text_size:
            return b""
        return self.view.read(off, min(size, self.layout.text_size - off))

    # ---------------------------------------------------------------- registers
    def reg(self, name: str) -> int:
        """A register's value (`table_reg` reads IDTR and GDTR)."""
        raw = _RAW64.get(name)
        if raw is not None:
            return self._read64(raw)
        raw = _SELECTORS.get(name)
        if raw is not None:
            self._u64.value = 0
            return self._read64(raw)
        if name in _MMR:
            raise ValueError(f"{name} is a descriptor-table register: use table_reg")
        value = self.uc.reg_read(getattr(X, f"UC_X86_REG_{name.upper()}"))
        assert isinstance(value, int), name
        return value

    def table_reg(self, name: str) -> tuple[int, int, int, int]:
        """IDTR or GDTR: (selector, base, limit, flags)."""
        mmr = self._mmr
        err = uclib.uc_reg_read(self.uc._uch, _MMR[name], ctypes.byref(mmr))
        if err:
            raise UcError(err)
        return mmr.selector, mmr.base, mmr.limit, mmr.flags

    def _read64(self, reg: int) -> int:
        """A register in _RAW64, through the C API."""
        err = uclib.uc_reg_read(self.uc._uch, reg, self._u64_ref)
        if err:
            raise UcError(err)
        return self._u64.value

    def set_reg(self, name: str, value: int) -> None:
        raw = _RAW64.get(name)
        if raw is not None:  # through the C API, as _read64
            self._u64.value = value
            err = uclib.uc_reg_write(self.uc._uch, raw, self._u64_ref)
            if err:
                raise UcError(err)
            return
        self.uc.reg_write(getattr(X, f"UC_X86_REG_{name.upper()}"), value)
