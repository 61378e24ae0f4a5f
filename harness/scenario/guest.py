"""The guest kernel image: alternative.S + users.S + a scenario's own code, and the shared data
they use (struct layouts, tables, counters), assembled together so every label resolves."""

from __future__ import annotations

import enum
import struct
from dataclasses import dataclass, field

from emu import hypercall, layout, x86
from emu.asm import Program, assemble, load_source
from emu.config import MachineConfig

from . import guest_abi as abi
from .text_poke_loc import ScenarioError

TP_VEC_MAX = layout.PAGE // abi.TEXT_POKE_LOC.size  # tp_vec[PAGE_SIZE / sizeof(...)]
OUTCOMES_PER_SITE = 8  # V_OUTCOMES[site][outcome]: outcomes 0..6, and 7 for anything above
IDLE_STACK_SIZE = 4096  # Z1: the idle task's stack, per CPU
PREEMPT_SPIN = 300  # idle-task iterations while a task is preempted (Z1)


class Cfg(enum.IntFlag):
    """Variant bits: each drops or moves one step of the kernel's sequence (V_CFG)."""

    NO_SYNC1 = 1 << 0  # no text_poke_sync() after the INT3 phase
    RECORD_EARLY = 1 << 1  # text-poke record emitted before the INT3 is synced
    RECORD_LATE = 1 << 2  # text-poke record emitted after the first byte is written
    NO_REFWAIT = 1 << 3  # no wait for the handlers' references at the end
    NO_INT3 = 1 << 4  # plain byte-by-byte writes, no INT3 (text_poke_early on a live system)
    NO_QS_WAIT = 1 << 5  # no synchronize_rcu_tasks() before optimizing a kprobe
    NO_GAP = 1 << 6  # #BP entry without the stack gap needed to emulate CALL
    UNSORTED = 1 << 7  # text_poke_queue() without the ordering flush
    CALL_AS_NOP = 1 << 8  # the INT3 handler skips a CALL instead of emulating it
    NO_SYNC3 = 1 << 9  # no text_poke_sync() after the first byte
    FREE_EARLY = 1 << 10  # a trampoline is freed without waiting for its users (Z7)
    NO_SYNC2 = 1 << 11  # no text_poke_sync() after the tail
    NO_TEXT_MUTEX = 1 << 12  # several patchers: the ops run without text_mutex


ASSERT_LOC_INIT = 0x100
ASSERT_INT3_OPCODE = 0x101


@dataclass
class DataLayout:
    """Named variables in the guest data region, allocated in order, and the per-scenario
    dimensions of its tables (equates too: the assembly indexes the tables with them)."""

    cursor: int = layout.DATA_BASE + layout.GUEST_DATA_OFFSET
    vars: dict[str, int] = field(default_factory=dict)
    dims: dict[str, int] = field(default_factory=dict)

    def alloc(self, name: str, size: int, align: int = 8) -> int:
        self.cursor += -self.cursor % align
        self.vars[name] = self.cursor
        self.cursor += size
        return self.vars[name]

    def __getitem__(self, name: str) -> int:
        return self.vars[name]


SCRATCH_SIZE = 256  # V_SCRATCH: shipped scenarios' own shared words (Z7)


def kernel_data(ncpus: int, nsites: int = 0, nkprobes: int = 0, njumps: int = 0,
                nsc: int = 0, *, ngen: int = 1, nkeys: int = 0) -> DataLayout:
    """The guest's variables and tables, each table sized from the scenario: `nsites` sites
    in `ngen` generations (states), `nkeys` keys, and the jump, static-call and kprobe
    entries. Nothing here caps a count; region_sizes() says whether it all fits."""
    d = DataLayout(dims={"NSITES": nsites, "NGEN": ngen})
    for name in ("V_CFG", "V_ONLINE"):
        d.alloc(name, 8)
    desc = d.alloc("V_BP_DESC", abi.BP_PATCHING_DESC.size)
    d.vars["V_BP_VEC"] = desc + abi.BP_PATCHING_DESC.offset("vec")
    d.vars["V_BP_NR"] = desc + abi.BP_PATCHING_DESC.offset("nr_entries")
    for name in ("V_TP_NR", "V_DONE_GEN", "V_STOP", "V_JUMP_NR", "V_SC_NR",
                 "V_KPROBES_NR"):
        d.alloc(name, 8)
    d.alloc("V_KEYS", abi.KEY_SLOT * max(nkeys, 1))
    d.alloc("V_CSD", 8 * layout.MAX_CPUS)
    d.alloc("V_BP_REFS", 8 * layout.MAX_CPUS)  # DEFINE_PER_CPU(atomic_t, bp_refs)
    d.alloc("V_QS", 8 * layout.MAX_CPUS)
    d.alloc("V_PASSES", 8 * layout.MAX_CPUS)
    d.alloc("V_TP_VEC", abi.TEXT_POKE_LOC.size * TP_VEC_MAX, 16)
    d.alloc("V_STATE_OUT", 8 * max(nsites, 1) * ngen)  # u64 [nsites][NGEN]
    d.alloc("V_OUTCOMES", 8 * OUTCOMES_PER_SITE * max(nsites, 1))  # u64 [nsites][8]
    d.alloc("V_JUMP_TABLE", abi.JUMP_ENTRY.size * max(njumps, 1))
    d.alloc("V_SC_SITES", abi.STATIC_CALL_SITE.size * max(nsc, 1))
    d.alloc("V_KPROBES", abi.KPROBE.size * max(nkprobes, 1), 64)
    d.alloc("V_TASK", abi.TASK_SLOT.size * ncpus, 64)
    d.alloc("V_SCRATCH", SCRATCH_SIZE, 64)
    d.alloc("V_IDLE_STACKS", IDLE_STACK_SIZE * (ncpus + 1), IDLE_STACK_SIZE)
    return d


def region_sizes(what: str, text_bytes: int, data: DataLayout) -> tuple[int, int]:
    """The machine's text and data sizes for this guest: the machine's defaults, grown by whole
    pages as far as the guest needs, or a ScenarioError naming `what` and what does not fit in
    the address space's regions (emu/layout.py)."""
    need_data = data.cursor - layout.DATA_BASE
    if need_data > layout.MAX_DATA_SIZE:
        raise ScenarioError(f"{what}: its data ({need_data:#x} bytes: {data.dims['NSITES']} "
                            f"sites) does not fit in the data region ({layout.MAX_DATA_SIZE:#x})")
    if text_bytes > layout.MAX_TEXT_SIZE:
        raise ScenarioError(f"{what}: its text ({text_bytes:#x} bytes) does not fit in the "
                            f"text region ({layout.MAX_TEXT_SIZE:#x})")
    base = MachineConfig()

    def pages(n: int) -> int:
        return n + -n % layout.PAGE

    return max(base.text_size, pages(text_bytes)), max(base.data_size, pages(need_data))


def equates(ncpus: int, data: DataLayout) -> dict[str, int]:
    return (hypercall.EQUATES | abi.equates() | data.vars | data.dims
            | {f"CFG_{c.name}": int(c) for c in Cfg}
            | {"STEXT": layout.TEXT_BASE, "POKE_DELTA": layout.POKE_BASE - layout.TEXT_BASE,
               "TP_VEC_MAX": TP_VEC_MAX, "OLDS_BYTES": 8 * TP_VEC_MAX,
               "CPUS_BYTES": 8 * layout.MAX_CPUS,
               "CALL_FUNCTION_VECTOR": x86.CALL_FUNCTION_VECTOR, "NCPUS": ncpus,
               "MAX_CPUS": layout.MAX_CPUS, "OUTCOMES_PER_SITE": OUTCOMES_PER_SITE,
               "IDLE_STACK_SIZE": IDLE_STACK_SIZE, "PREEMPT_SPIN": PREEMPT_SPIN,
               "POKE_STEPS_STACK": abi.POKE_STEPS.size + -abi.POKE_STEPS.size % 16,
               "ASSERT_LOC_INIT": ASSERT_LOC_INIT, "ASSERT_INT3_OPCODE": ASSERT_INT3_OPCODE})


def kernel_program(scenario_text: str, ncpus: int, data: DataLayout,
                   name: str = "scenario", extra: tuple[str, ...] = ()) -> Program:
    """alternative.S + users.S (+ the `extra` guest sources, e.g. patchers.S) + the
    scenario's code, one program at the text base."""
    source = "\n".join((load_source("alternative.S"), load_source("users.S"),
                        *map(load_source, extra), scenario_text))
    return assemble(source, layout.TEXT_BASE, equates(ncpus, data), name)


def kernel_idt(prog: Program, own: dict[int, str] | None = None) -> dict[int, int]:
    """The kernel's gates (int3_entry for #BP, sync_core_ipi for the call-function IPI, fatal
    handlers for #DF, #GP, #PF, #UD), with a scenario's `own` vector -> label on top."""
    idt = {x86.BP: "int3_entry", x86.CALL_FUNCTION_VECTOR: "sync_core_ipi", x86.DF: "fatal_df",
           x86.GP: "fatal_gp", x86.PF: "fatal_pf", x86.UD: "fatal_ud"} | (own or {})
    return {vector: prog.sym(label) for vector, label in idt.items()}


def u64s(*values: int) -> bytes:
    return struct.pack(f"<{len(values)}Q", *(v & (2**64 - 1) for v in values))
