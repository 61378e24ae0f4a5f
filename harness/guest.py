"""The guest kernel image: alternative.S + users.S + a scenario's own code, and the shared data
they use (struct layouts, tables, counters), assembled together so every label resolves."""

from __future__ import annotations

import enum
import struct
from dataclasses import dataclass, field

from emu import hypercall, layout, x86
from emu.asm import Program, assemble, load_source

TP_VEC_MAX = 256  # PAGE_SIZE / sizeof(struct text_poke_loc)
TPL_SIZE = 16
TPL_OFFSETS = {"TPL_REL": 0, "TPL_DISP": 4, "TPL_LEN": 8, "TPL_OPCODE": 9, "TPL_TEXT": 10,
               "TPL_OLD": 15}
MAX_GEN = 16  # patch generations a scenario may have
MAX_SITES = 32
KPROBE_SIZE = 64
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


ASSERT_LOC_INIT = 0x100
ASSERT_INT3_OPCODE = 0x101


@dataclass
class DataLayout:
    """Named variables in the guest data region, allocated in order."""

    cursor: int = layout.DATA_BASE + layout.GUEST_DATA_OFFSET
    vars: dict[str, int] = field(default_factory=dict)

    def alloc(self, name: str, size: int, align: int = 8) -> int:
        self.cursor += -self.cursor % align
        self.vars[name] = self.cursor
        self.cursor += size
        return self.vars[name]

    def __getitem__(self, name: str) -> int:
        return self.vars[name]


def kernel_data(ncpus: int, nsites: int, nkprobes: int, njumps: int, nsc: int) -> DataLayout:
    d = DataLayout()
    for name in ("V_CFG", "V_ONLINE", "V_BP_VEC", "V_BP_NR", "V_TP_NR",
                 "V_DONE_GEN", "V_STOP", "V_NGEN", "V_JUMP_NR", "V_SC_NR", "V_KPROBES_NR"):
        d.alloc(name, 8)
    d.alloc("V_KEYS", 8 * 16)
    d.alloc("V_CSD", 8 * layout.MAX_CPUS)
    d.alloc("V_BP_REFS", 8 * layout.MAX_CPUS)  # DEFINE_PER_CPU(atomic_t, bp_refs)
    d.alloc("V_QS", 8 * layout.MAX_CPUS)
    d.alloc("V_PASSES", 8 * layout.MAX_CPUS)
    d.alloc("V_TP_VEC", TPL_SIZE * TP_VEC_MAX, 16)
    d.alloc("V_STATE_OUT", 8 * MAX_SITES * MAX_GEN)
    d.alloc("V_OUTCOMES", 8 * 8 * MAX_SITES)
    d.alloc("V_JUMP_TABLE", 24 * max(njumps, 1))
    d.alloc("V_SC_SITES", 16 * max(nsc, 1))
    d.alloc("V_KPROBES", KPROBE_SIZE * max(nkprobes, 1), 64)
    d.alloc("V_TASK", 256 * ncpus, 256)
    d.alloc("V_SCRATCH", 256, 64)
    d.alloc("V_IDLE_STACKS", 4096 * (ncpus + 1), 4096)
    if nsites > MAX_SITES:
        raise ValueError(f"at most {MAX_SITES} patch sites")
    return d


def equates(ncpus: int, data: DataLayout) -> dict[str, int]:
    return (hypercall.EQUATES | TPL_OFFSETS | data.vars
            | {f"CFG_{c.name}": int(c) for c in Cfg}
            | {"STEXT": layout.TEXT_BASE, "POKE_DELTA": layout.POKE_BASE - layout.TEXT_BASE,
               "TP_VEC_MAX": TP_VEC_MAX, "OLDS_BYTES": 8 * TP_VEC_MAX,
               "CPUS_BYTES": 8 * layout.MAX_CPUS,
               "CALL_FUNCTION_VECTOR": x86.CALL_FUNCTION_VECTOR, "NCPUS": ncpus,
               "MAX_CPUS": layout.MAX_CPUS, "MAX_GEN": MAX_GEN, "PREEMPT_SPIN": PREEMPT_SPIN,
               "ASSERT_LOC_INIT": ASSERT_LOC_INIT, "ASSERT_INT3_OPCODE": ASSERT_INT3_OPCODE})


def kernel_program(scenario_text: str, ncpus: int, data: DataLayout,
                   name: str = "scenario") -> Program:
    """alternative.S + users.S + the scenario's code, one program at the text base."""
    source = "\n".join((load_source("alternative.S"), load_source("users.S"), scenario_text))
    return assemble(source, layout.TEXT_BASE, equates(ncpus, data), name)


def kernel_idt(prog: Program, nmi_handler: str | None = None) -> dict[int, int]:
    idt = {x86.BP: prog.sym("int3_entry"), x86.CALL_FUNCTION_VECTOR: prog.sym("sync_core_ipi"),
           x86.DF: prog.sym("fatal_df"), x86.GP: prog.sym("fatal_gp"),
           x86.PF: prog.sym("fatal_pf"), x86.UD: prog.sym("fatal_ud")}
    if nmi_handler:
        idt[x86.NMI] = prog.sym(nmi_handler)
    return idt


def u64s(*values: int) -> bytes:
    return struct.pack(f"<{len(values)}Q", *(v & (2**64 - 1) for v in values))
