"""One emulated CPU of the fast engine: emu/cpu.py's Cpu with its per-instruction hooks in C.

emu/_native.c does, per instruction, what Cpu._on_code and Cpu._on_rdtsc do (the tick, the
ground-truth record, the serializing / IRET / shadow / HLT / PAUSE effects, the event-mode
stops, a footprint's fetched text grains), what its memory hooks do (watched data, and the
footprints of data, text read as data, other CPUs' stacks) and its TLB fills
(Layout.translate; a miss, a #PF to make, is Python's), registered with Unicorn as C function
pointers taken from the library the binding loaded. In event mode text is fetched from copies
of the view's pages, one per contents seen (emu/fetch_pages.c), so a view change costs a TLB
flush rather than every translation of the bytes it touched; the OUT and INTR hooks also
serve the QUIESCENT hypercall and keep an INT3's #BP for the C loop to deliver (of the steps
static_key's runs handed back to Python, a fifth ended with the one, two fifths with the
other); every other hypercall and interrupt goes to Cpu.hypercall and _on_intr. Python runs
once at the start and once at the end of a run, and inside it only in the rare hooks Cpu
keeps (text stores, other hypercalls and interrupts, TLB misses) and for the spontaneous-NMI
decision before an instruction. The flags those hooks share with the code hook
(`_want_stop`, `_read_stop_in`, `_restarted`) live in the C object, so the rare hooks are
Cpu's own, unchanged.
"""

from __future__ import annotations

import ctypes
import dataclasses
from types import ModuleType

from unicorn import UcError
from unicorn import x86_const as X
from unicorn.unicorn_const import (
    UC_CTL_IO_WRITE,
    UC_CTL_TB_FLUSH,
    UC_CTL_TB_REMOVE_CACHE,
    UC_CTL_TLB_FLUSH,
    UC_HOOK_CODE,
    UC_HOOK_INSN,
    UC_HOOK_INTR,
    UC_HOOK_MEM_READ,
    UC_HOOK_MEM_WRITE,
    UC_HOOK_TLB_FILL,
    UC_PROT_EXEC,
    UC_PROT_READ,
)
from unicorn.unicorn_py3.unicorn import uclib

from . import hypercall, layout, x86
from .cpu import _RDTSCP, Cpu, HypercallRequest, Stop, StopKind, _leave_handler
from .events import ExceptionEvent, HypercallEvent, InterruptEvent, Serialize
from .fetch_view import FetchView
from .hypercall import Hypercall
from .layout import Access, Layout
from .memory import SharedMemory
from .retired import Retired
from .verdict import HandlerFrame


def _fn(name: str) -> int:
    """The address of a libunicorn function, in the library the binding loaded."""
    return ctypes.cast(getattr(uclib, name), ctypes.c_void_p).value


def _nmi_map(offsets: frozenset[int] | None, size: int) -> bytes | None:
    if offsets is None:
        return None
    out = bytearray(size)
    for o in offsets:
        if 0 <= o < size:
            out[o] = 1
    return bytes(out)


# Fetch-page slots beyond one per text page (emu/fetch_pages.c): the static_key search's 64 KiB
# text (16 pages) took 45-49 slots a CPU; a full pool is emptied with every translation.
FETCH_SLOTS_SPARE = 256

# what _native.c's make_delivery, make_serialize and make_frame write into a field when the
# C loop has no value for it: the field's default in its dataclass, which check_records checks
C_DEFAULTS = {"error_code": None, "ipi": None, "delivered": True, "symbol": ""}


def check_records(native: ModuleType) -> None:
    """The records the C loop makes without calling their __init__ (_native.c: make_record)
    have the fields it sets, in order, and nothing else to initialize: each class's fields
    are the module's RECORD_FIELDS, it is frozen, has no __post_init__, and the defaults C
    writes (C_DEFAULTS) are its own. A field added to one of them, or a default changed, is
    refused here, before any run, not left unset or stale by C."""
    for key, classes in (("delivery", (ExceptionEvent, InterruptEvent)),
                         ("serialize", (Serialize,)), ("frame", (HandlerFrame,))):
        want = native.RECORD_FIELDS[key]
        for cls in classes:
            fields = dataclasses.fields(cls)
            got = tuple(f.name for f in fields)
            if got != want or not cls.__dataclass_params__.frozen or \
                    hasattr(cls, "__post_init__"):
                raise RuntimeError(f"the native machine makes {cls.__name__} with the fields "
                                   f"{want}; the class has {got}: emu/_native.c's "
                                   f"{key.upper()}_FIELDS must follow it")
            for f in fields:
                if f.name in C_DEFAULTS and f.default != C_DEFAULTS[f.name]:
                    raise RuntimeError(f"the native machine makes {cls.__name__}.{f.name} "
                                       f"{C_DEFAULTS[f.name]!r} by default; the class says "
                                       f"{f.default!r}: emu/_native.c must follow it")


class NativeCpu(Cpu):
    """Cpu, run by emu/_native.c: the same state, hooks and Stops, no Python per instruction."""

    def __init__(self, native: ModuleType, index: int, lay: Layout, mem: SharedMemory,
                 view: FetchView, clock, truth: Retired | None, others: list[FetchView],
                 events: list) -> None:
        check_records(native)
        self._nat = native.Cpu(clock)  # first: Cpu.__init__ sets the flags it holds
        self._nmi_sent: object = None
        super().__init__(index, lay, mem, view, clock, truth, others, events)

    def _hook_instructions(self) -> None:
        self._nat.bind(self.uc._uch.value, _fn("uc_hook_add"), _fn("uc_emu_start"),
                       _fn("uc_emu_stop"), _fn("uc_reg_read"), _fn("uc_reg_write"),
                       ctypes.addressof(self.view.buf), len(self.view.buf), layout.TEXT_BASE,
                       UC_HOOK_CODE, UC_HOOK_INSN, X.UC_X86_INS_RDTSC, X.UC_X86_REG_RAX,
                       X.UC_X86_REG_RDX, X.UC_X86_REG_RIP)
        # text stores: Cpu._on_text_store, called from C (which marks the run: `stored`, or
        # `py_hooked` when it raised)
        self._nat.bind_store(_fn("uc_hook_add"), UC_HOOK_MEM_WRITE, layout.PHYS_TEXT_MEM,
                             layout.PHYS_TEXT_MEM + self.layout.text_size, self._on_text_store)
        # hypercalls: QUIESCENT served in C in event mode, every other one by Cpu.hypercall
        # with the registers C read (_on_out_c)
        self._nat.bind_out(_fn("uc_hook_add"), UC_HOOK_INSN, X.UC_X86_INS_OUT, X.UC_X86_REG_RDI,
                           X.UC_X86_REG_RSI, X.UC_X86_REG_RCX, hypercall.PORT,
                           Hypercall.QUIESCENT, HypercallEvent, Hypercall.QUIESCENT, self.index,
                           self._on_out_c)
        # interrupts: an INT3's #BP kept in C in event mode (the C loop delivers it), every
        # other one Cpu._on_intr's
        self._nat.bind_intr(_fn("uc_hook_add"), UC_HOOK_INTR, self._on_intr_c, HandlerFrame,
                            ExceptionEvent)
        # TLB fills: Layout.translate in C, a miss (a #PF to make) Python's
        lay = self.layout
        self._nat.bind_tlb(_fn("uc_hook_add"), UC_HOOK_TLB_FILL, layout.TEXT_BASE, lay.text_size,
                           layout.DATA_BASE, lay.data_size, layout.STACK_BASE, lay.stacks_size,
                           lay.stack_slot, layout.STACK_GUARD, layout.POKE_BASE,
                           layout.PHYS_TEXT_MEM, layout.PHYS_VIEW, layout.PHYS_DATA,
                           layout.PHYS_STACKS, self._tlb_miss)
        # uc_ctl's code, as the binding's Uc.ctl encodes it: (op << 30) | (nargs << 26) | ctl
        self._nat.bind_ctl(_fn("uc_ctl"), UC_CTL_IO_WRITE << 30 | 2 << 26 | UC_CTL_TB_REMOVE_CACHE)
        self._nat.bind_text(ctypes.addressof(self.mem.text))  # what a serialization copies from
        self._fetch_pool: ctypes.Array | None = None  # fetch_from_pages
        lay, mem = self.layout, self.mem
        self._nat.bind_frames(X.UC_X86_REG_IDTR, X.UC_X86_REG_CS, X.UC_X86_REG_SS,
                              X.UC_X86_REG_RSP, X.UC_X86_REG_RFLAGS,
                              layout.DATA_BASE, ctypes.addressof(mem.data), lay.data_size,
                              layout.STACK_BASE, ctypes.addressof(mem.stacks), lay.stacks_size,
                              lay.stack_slot, layout.STACK_GUARD, layout.KERNEL_CS)

    def push_frame(self, vector: int, rip: int, err: int | None) -> bool:
        return self._nat.push_frame(vector, rip, -1 if err is None else err) is not None

    def fetch_from_pages(self) -> None:
        """Event mode (Machine): text fetched from page slots that keep their translations
        (emu/fetch_pages.c), before any run. There views jump between recurring contents (a
        snapshot restored; static_key's exhaustive search, +14 %); quantum mode changes a view
        many times a run, each remap a TLB flush and its refills, where dropping the few
        translations a change touches costs less (static_key's random schedules: 7.4 ms a run
        with translations dropped, 9.2 with fetch pages)."""
        slots = self.layout.text_size // layout.PAGE + FETCH_SLOTS_SPARE
        self._fetch_pool = (ctypes.c_ubyte * (slots * layout.PAGE))()
        self.uc.mem_map_ptr(layout.PHYS_FETCH_POOL, len(self._fetch_pool), UC_PROT_READ
                            | UC_PROT_EXEC, ctypes.addressof(self._fetch_pool))
        self._nat.bind_pages(ctypes.addressof(self._fetch_pool), slots, layout.PHYS_FETCH_POOL,
                             UC_CTL_IO_WRITE << 30 | UC_CTL_TLB_FLUSH,
                             UC_CTL_IO_WRITE << 30 | UC_CTL_TB_FLUSH)

    def remove_cache(self, start: int, end: int) -> None:
        """The view's bytes in text [start, end) change: with fetch pages, the pages fetched
        there are synced with it before the next run (no translation dropped); else Cpu's."""
        self._nat.remove_cache(layout.TEXT_BASE + start, layout.TEXT_BASE + end)

    def view_takes(self, ranges: list[tuple[int, int]], coming: bytes) -> None:
        """Before the view takes `coming`: with fetch pages, its pages in `ranges` marked, to
        be synced with it before the next run (the sync compares whole pages); else Cpu's."""
        if self._fetch_pool is None:
            super().view_takes(ranges, coming)
        else:
            self._nat.mark_ranges(ranges)

    def fetch_pages(self) -> tuple[int, int, int, int, int, int] | None:
        """(slots, used, syncs, switches, made, emptied): what the fetch pages did; None
        without them."""
        return self._nat.pages()

    @property
    def events(self) -> list:
        """The run's event list (Machine._new_records), which the C OUT hook appends to."""
        return self._nat.events

    @events.setter
    def events(self, value: list) -> None:
        self._nat.events = value

    # the flags the rare Python hooks share with the C code hook
    @property
    def _want_stop(self) -> bool:
        return bool(self._nat.want_stop)

    @_want_stop.setter
    def _want_stop(self, value: bool) -> None:
        self._nat.want_stop = int(value)

    @property
    def _read_stop_in(self) -> int:
        return self._nat.read_stop_in

    @_read_stop_in.setter
    def _read_stop_in(self, value: int) -> None:
        self._nat.read_stop_in = value

    @property
    def _restarted(self) -> bool:
        return bool(self._nat.restarted)

    @_restarted.setter
    def _restarted(self, _value: bool) -> None:
        pass  # the C hook keeps it; each run starts with it clear

    def _note_mem_hook(self) -> None:
        self._nat.mem_hook()

    def _on_intr_c(self, intno: int) -> None:  # the C INTR hook's (which marks its run)
        self._on_intr(self.uc, intno, None)

    def _on_out_c(self, number: int, rdi: int, rsi: int, rdx: int, rcx: int, rip: int
                  ) -> None:
        """The OUT hook's hypercall, its registers read in C (Cpu._on_out reads them through
        the binding: six calls a hypercall, three hypercalls a schedule in Python)."""
        self.hypercall(HypercallRequest(number, (rdi, rsi, rdx, rcx), rip + 2, self.clock.tick))

    def _tlb_miss(self, vaddr: int, access: int) -> None:
        """The C fill hook (which marks its run) has no translation for this access: the
        fault Cpu._on_tlb_fill keeps, for Python to make the #PF of it."""
        acc = Access(access)
        if self.layout.translate(vaddr, acc) is not None:
            raise RuntimeError(f"the C TLB fill and Layout.translate disagree at {vaddr:#x} "
                               f"({acc.name})")
        self._fill_fault = (vaddr, acc)

    # footprint hooks in C (Cpu's record the same locations from Python)
    def watch_data(self, ranges: list[tuple[int, int]]) -> None:
        self._event_mode = True
        for start, end in ranges:  # Cpu._on_watched: a footprint, and a stop
            self._nat.hook_mem(3, start, end, 0, 0, UC_HOOK_MEM_READ | UC_HOOK_MEM_WRITE,
                               _fn("uc_hook_add"))

    def track_data(self, ranges: list[tuple[int, int]]) -> None:
        for start, end in ranges:
            self._nat.hook_mem(0, start, end, 0, 0, UC_HOOK_MEM_READ | UC_HOOK_MEM_WRITE,
                               _fn("uc_hook_add"))

    def track_text_reads(self) -> None:
        self._nat.hook_mem(1, layout.PHYS_TEXT_MEM, layout.PHYS_TEXT_MEM + self.layout.text_size,
                           layout.PHYS_TEXT_MEM, 0, UC_HOOK_MEM_READ, _fn("uc_hook_add"))

    def track_foreign_stacks(self, stacks: list[tuple[int, int, int]]) -> None:
        for start, end, owner in stacks:
            self._nat.hook_mem(2, start, end, 0, owner, UC_HOOK_MEM_READ | UC_HOOK_MEM_WRITE,
                               _fn("uc_hook_add"))

    def run(self, quantum: int, event: bool = False) -> Stop:
        self._event = event
        st = self.state
        nat = self._nat
        self.bind_nmi()
        self.clear_stops()
        st.yielded = False
        if event:
            view = self.view
            decided = self.fetch_decided
            fp = self.footprint
            # the NMI point asks only while the CPU has spontaneous NMIs left and none pending
            # (Machine._nmi_arrives answers False without a choice otherwise); within a run
            # neither comes back
            err = nat.run(quantum, True, st.last_ip, st.last_code, st.shadow,
                          view.pending if view.has_pending() else None,
                          decided[1] if decided else -1,
                          st.nmis_left > 0 and not st.pending_nmi, fp is not None,
                          self.truth, fp)
        else:
            err = nat.run(quantum, False, st.last_ip, st.last_code, st.shadow, None, -1, False,
                          False, self.truth, None)
        return self.finish(err)

    def bind_nmi(self) -> None:
        """The NMI point and where it is asked, to the native half (the machine sets both
        once, after __init__; the C loop reads them too)."""
        if self.nmi_point is not self._nmi_sent:
            self._nat.set_nmi(self.nmi_point, _nmi_map(self.nmi_offsets, len(self.view.buf)))
            self._nmi_sent = self.nmi_point

    def clear_stops(self) -> None:
        """What a run starts with clear on the Python side (before a batch of the C loop,
        emu/native_loop.py, which runs many without coming back)."""
        self._fill_fault = None
        self._exception = None
        self.uc._hook_exception = None  # what the binding's emu_start does around the C call

    def finish(self, err: int) -> Stop:
        """The end of a run the C code made (here, or in the C loop): its effects into the
        state, and its Stop. What the Python hooks left for it is cleared once read, so
        the next run, which the C loop may start without Python, starts clear."""
        self._end()
        try:
            return self._stop(err)
        finally:
            self.clear_stops()

    def _stop(self, err: int) -> Stop:
        u = self.uc
        nat = self._nat
        if nat.bp:  # the #BP the C INTR hook kept, as Cpu._on_intr keeps it
            self._exception = (x86.BP, nat.bp_rip)
        if u._hook_exception is not None:  # before err: a hook that raised fails the fill
            raise u._hook_exception
        if err:
            return self._failed(UcError(err))
        if nat.emulate:
            self._emulate_rdtscp(nat.emulate_addr, _RDTSCP)
            return self._stopped()
        if self._exception is not None:
            return self._stopped()
        return Stop(StopKind.QUANTUM, rip=nat.rip)

    def _end(self) -> None:
        """The run's effects into the state (what Cpu._on_code sets per instruction, set
        once)."""
        nat = self._nat
        st = self.state
        if nat.retired_run:
            self.retired += nat.retired_run
            st.last_ip = nat.last_ip
            st.last_code = nat.last_code
            st.shadow = bool(nat.shadow)
            if nat.iret:
                st.nmi_blocked = False  # IRET ends NMI blocking (SDM 6.7.1)
                st.left = _leave_handler(st.handling)
            if nat.serialize:
                st.need_serialize = True
            if nat.halted:
                st.halted = True
            if nat.yielded:
                st.yielded = True
