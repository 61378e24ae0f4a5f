"""Cross-modifying-code litmus tests on the machine model, in the spirit of herdtools'
aarch64-ifetch catalogue, for x86 with our fetch model: each is a small program, explored
exhaustively (event mode, bounded preemptions and delayed view updates); it passes when the
set of outcomes observed equals the set its model allows.

The executor (CPU 1, or CPU 0 for self-modification) runs `site` once, which leaves a value in
eax: 1 = the old instruction, 2 = the new one, 3 = it trapped on an INT3, 4 = anything else
(a torn fetch: bytes of both, which faults or goes astray)."""

from __future__ import annotations

from dataclasses import dataclass

from emu import hypercall, layout, x86
from emu.asm import assemble
from emu.config import MachineConfig
from emu.loader import CpuBoot, GuestImage
from emu.machine import Machine
from emu.path import Cost
from harness.explore.exhaustive import explore_exhaustive

OUTCOMES = {1: "old", 2: "new", 3: "int3", 4: "torn"}
V = layout.DATA_BASE + layout.GUEST_DATA_OFFSET  # result, flag, ack, done

# The site: old = `mov eax, 1` behind a NOP5 that a poke turns into `jmp new_path`.
COMMON = """
site:
    KNOP 5                       # old: fall through; new: e9 <new_path>
    mov eax, 1
    ret
new_path:
    mov eax, 2
    ret
finish:
    mov dword ptr [V], eax
    mov qword ptr [V + 24], 1    # done: a sync need not wait for us any more
    mov eax, HC_FINISH
    out HC_PORT, eax
bp:                              # the INT3 at the site: outcome 3
    mov eax, 3
    jmp finish
bad:                             # #UD, #PF, #GP: a torn fetch went astray
    mov eax, 4
    jmp finish
sync_ipi:                        # do_sync_core: serialize, acknowledge
    push rax
    push rbx
    push rcx
    push rdx
    xor eax, eax
    cpuid
    mov qword ptr [V + 16], 1
    pop rdx
    pop rcx
    pop rbx
    pop rax
    iretq
sync:                            # IPI the executor; wait for its ack (or its end)
    mov qword ptr [V + 16], 0
    mov edi, 2
    mov esi, 0xfc
    mov eax, HC_SEND_IPI
    out HC_PORT, eax
sync_wait:
    pause
    cmp qword ptr [V + 16], 0
    jne sync_done
    cmp qword ptr [V + 24], 0
    je sync_wait
sync_done:
    ret
poke_byte:                       # poke_byte(offset=rdi, byte=sil) through the alias
    lea rax, [rip + site]
    add rdi, rax
    mov rax, POKE_DELTA
    add rdi, rax
    mov byte ptr [rdi], sil
    ret
jmp_bytes:                       # eax = the 4 rel32 bytes of jmp new_path at site
    lea rax, [rip + new_path]
    lea rcx, [rip + site]
    sub rax, rcx
    sub rax, 5
    ret
poke_tail:                       # the 4 tail bytes, one store each
    call jmp_bytes
    mov edx, eax
    mov rsi, rdx
    mov edi, 1
    call poke_byte
    shr edx, 8
    mov rsi, rdx
    mov edi, 2
    call poke_byte
    shr edx, 8
    mov rsi, rdx
    mov edi, 3
    call poke_byte
    shr edx, 8
    mov rsi, rdx
    mov edi, 4
    call poke_byte
    ret
executor:
    call site
    jmp finish
executor_flag:                   # wait for the writer's flag, then run the site
    pause
    cmp qword ptr [V + 8], 1
    jne executor_flag
    call site
    jmp finish
executor_flag_serialize:         # the SDM's XMC algorithm: flag, serialize, execute
    pause
    cmp qword ptr [V + 8], 1
    jne executor_flag_serialize
    xor eax, eax
    cpuid
    call site
    jmp finish
writer_done:
    mov eax, HC_FINISH
    out HC_PORT, eax
"""

WRITERS = {
    # self-modification: the executing CPU patches its own site, then runs it
    "self": """
self_modify:
    call poke_tail
    mov edi, 0
    mov esi, 0xe9
    call poke_byte
    call site
    jmp finish
self_modify_serialize:
    call poke_tail
    mov edi, 0
    mov esi, 0xe9
    call poke_byte
    xor eax, eax
    cpuid
    call site
    jmp finish
""",
    "writers": """
writer_flag:                     # new code as data, then the flag (SDM XMC, modifier side)
    call poke_tail
    mov edi, 0
    mov esi, 0xe9
    call poke_byte
    mov qword ptr [V + 8], 1
    jmp writer_done
writer_int3_flag:                # the INT3 guard's stores with no sync between, then the flag
    mov edi, 0
    mov esi, 0xcc
    call poke_byte
    jmp writer_flag
writer_guarded:                  # INT3, sync, tail, sync, first byte, sync
    mov edi, 0
    mov esi, 0xcc
    call poke_byte
    call sync
    call poke_tail
    call sync
    mov edi, 0
    mov esi, 0xe9
    call poke_byte
    call sync
    jmp writer_done
writer_unguarded:                # tail, then the first byte, no INT3
    call poke_tail
    mov edi, 0
    mov esi, 0xe9
    call poke_byte
    call sync
    jmp writer_done
writer_int3:                     # a single-byte INT3 swap, then sync
    mov edi, 0
    mov esi, 0xcc
    call poke_byte
    call sync
    jmp writer_done
""",
}


@dataclass(frozen=True)
class Litmus:
    name: str
    description: str
    entries: tuple[str, ...]
    allowed: frozenset[str]


CATALOGUE = (
    Litmus("SM", "self-modification, no serializing instruction (x86 snoops its own stores)",
           ("self_modify",), frozenset({"new"})),
    Litmus("SM+cpuid", "self-modification, then CPUID", ("self_modify_serialize",),
           frozenset({"new"})),
    Litmus("XMC", "new code stored as data, flag set; executor sees the flag and runs it "
           "without serializing: it may fetch the old code, or a mix", ("writer_flag",
                                                                      "executor_flag"),
           frozenset({"old", "new", "torn"})),
    Litmus("XMC+cpuid", "the SDM cross-modifying-code algorithm: the executor serializes "
           "after the flag", ("writer_flag", "executor_flag_serialize"), frozenset({"new"})),
    Litmus("XMC+INT3", "INT3, tail and first byte stored with no sync between, then the "
           "flag; the executor runs the site without serializing: besides old, new and a mix it "
           "may see the INT3 a later store overwrote (a line fetched in between)",
           ("writer_int3_flag", "executor_flag"), frozenset({"old", "new", "torn", "int3"})),
    Litmus("TAIL+INT3", "the tail written under an INT3 guard (INT3, sync, tail, sync, first "
           "byte, sync): never torn", ("writer_guarded", "executor"),
           frozenset({"old", "new", "int3"})),
    Litmus("TAIL", "tail then first byte, no INT3 guard: a fetch can mix them",
           ("writer_unguarded", "executor"), frozenset({"old", "new", "torn"})),
    Litmus("INT3", "a single-byte INT3 swap: old or INT3, never a mix", ("writer_int3",
                                                                        "executor"),
           frozenset({"old", "int3"})),
)


@dataclass
class LitmusResult:
    litmus: Litmus
    observed: frozenset[str]
    schedules: int
    exhausted: bool

    @property
    def ok(self) -> bool:
        return self.exhausted and self.observed == self.litmus.allowed


def machine(lit: Litmus) -> Machine:
    source = COMMON + WRITERS["self" if lit.entries[0].startswith("self") else "writers"]
    prog = assemble(source, layout.TEXT_BASE, hypercall.EQUATES | {
        "V": V, "POKE_DELTA": layout.POKE_BASE - layout.TEXT_BASE}, f"litmus {lit.name}")
    idt = {x86.BP: prog.sym("bp"), x86.UD: prog.sym("bad"), x86.PF: prog.sym("bad"),
           x86.GP: prog.sym("bad"), x86.DF: prog.sym("bad"),
           x86.CALL_FUNCTION_VECTOR: prog.sym("sync_ipi")}
    image = GuestImage(programs=[prog], idt=idt, boot=[CpuBoot(prog.sym(e)) for e in lit.entries])
    return Machine(MachineConfig(ncpus=len(lit.entries), grain="byte", max_quantum=2000,
                                 insn_budget=20000, event_mode=True,
                                 watch=((V + 8, V + 32),)), image)


class _Out:
    """The little an exhaustive run needs of a run: did it end well, and what was seen."""

    def __init__(self, ok: bool) -> None:
        self.ok = ok


def run(lit: Litmus, preemptions: int = 2, delays: int = 4, limit: int = 20000,
        interrupts: int = 1, reduce: bool = False) -> LitmusResult:
    m = machine(lit)
    observed: set[str] = set()

    def one(source):
        res = m.run(source)
        if not res.verdict.ok:
            observed.add(f"error: {res.verdict.kind}")
        else:
            observed.add(OUTCOMES.get(m.mem.read_u64(V) & 0xFFFFFFFF, "torn"))
        return _Out(True)

    res = explore_exhaustive(one, Cost(preemptions, delays, interrupts), limit, reduce=reduce)
    return LitmusResult(lit, frozenset(observed), res.schedules, res.exhausted)
