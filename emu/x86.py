"""x86-64 architectural facts the machine needs: vectors, gates, serializing instructions."""

from __future__ import annotations

import enum
import struct
from dataclasses import dataclass
from functools import lru_cache

DE, DB, NMI, BP, OF, BR, UD, NM, DF = 0, 1, 2, 3, 4, 5, 6, 7, 8
TS, NP, SS, GP, PF, MF, AC, MC, XM = 10, 11, 12, 13, 14, 16, 17, 18, 19
CP = 21

VECTOR_NAMES = {DE: "#DE", DB: "#DB", NMI: "NMI", BP: "#BP", OF: "#OF", BR: "#BR", UD: "#UD",
                NM: "#NM", DF: "#DF", TS: "#TS", NP: "#NP", SS: "#SS", GP: "#GP", PF: "#PF",
                MF: "#MF", AC: "#AC", MC: "#MC", XM: "#XM", CP: "#CP"}
# Exceptions for which the processor pushes an error code (SDM vol. 3A, table 6-1).
ERROR_CODE_VECTORS = frozenset({DF, TS, NP, SS, GP, PF, AC, CP})

MAX_INSN_LENGTH = 15  # SDM vol. 2, 2.3.11: a longer instruction is #GP

# Linux's CALL_FUNCTION_VECTOR: on_each_cpu() IPIs arrive here (arch/x86/include/asm/irq_vectors.h).
CALL_FUNCTION_VECTOR = 0xFC

# #PF error code bits (SDM vol. 3A, "Interrupt 14").
PF_PRESENT, PF_WRITE, PF_USER, PF_RSVD, PF_FETCH = 1, 2, 4, 8, 16

RFLAGS_TF = 1 << 8
RFLAGS_IF = 1 << 9
RFLAGS_NT = 1 << 14
RFLAGS_RF = 1 << 16
RFLAGS_VM = 1 << 17

GATE_INTERRUPT = 0xE
GATE_TRAP = 0xF


def is_canonical(va: int) -> bool:
    """48-bit canonical: bits 63..47 all equal."""
    top = va >> 47
    return top == 0 or top == (1 << 17) - 1


def vector_name(vector: int) -> str:
    return VECTOR_NAMES.get(vector, f"vector {vector:#x}")


@dataclass(frozen=True)
class Gate:
    """A 64-bit IDT gate descriptor (16 bytes)."""

    offset: int
    selector: int
    ist: int
    type: int
    dpl: int
    present: bool

    def encode(self) -> bytes:
        low = ((self.offset & 0xFFFF) | (self.selector << 16)
               | ((self.ist & 7) << 32) | (self.type << 40) | (self.dpl << 45)
               | (int(self.present) << 47) | (((self.offset >> 16) & 0xFFFF) << 48))
        return struct.pack("<QQ", low, (self.offset >> 32) & 0xFFFFFFFF)

    @classmethod
    def decode(cls, raw: bytes) -> Gate:
        low, high = struct.unpack("<QQ", raw)
        offset = (low & 0xFFFF) | (((low >> 48) & 0xFFFF) << 16) | ((high & 0xFFFFFFFF) << 32)
        return cls(offset=offset, selector=(low >> 16) & 0xFFFF, ist=(low >> 32) & 7,
                   type=(low >> 40) & 0xF, dpl=(low >> 45) & 3, present=bool(low >> 47 & 1))


def _strip_prefixes(code: bytes) -> bytes:
    i = 0
    while i < len(code) and code[i] in (0x66, 0x67, 0xF2, 0xF3, 0x2E, 0x3E, 0x26, 0x36,
                                          0x64, 0x65, 0xF0):
        i += 1
    if i < len(code) and 0x40 <= code[i] <= 0x4F:  # REX
        i += 1
    return code[i:]


def is_serializing(code: bytes) -> bool:
    """IRET/IRETQ, CPUID, MOV to CRn: the serializing instructions the model honours."""
    op = _strip_prefixes(code)
    if not op:
        return False
    if op[0] == 0xCF:
        return True
    return len(op) >= 2 and op[0] == 0x0F and op[1] in (0xA2, 0x22)


def is_iret(code: bytes) -> bool:
    op = _strip_prefixes(code)
    return bool(op) and op[0] == 0xCF


def blocks_interrupts_after(code: bytes) -> bool:
    """STI, MOV SS and POP SS open an interrupt shadow over the next instruction."""
    op = _strip_prefixes(code)
    if not op:
        return False
    if op[0] in (0xFB, 0x17):
        return True
    return op[0] == 0x8E and len(op) > 1 and (op[1] >> 3) & 7 == 2


def is_trap_instruction(code: bytes) -> bool:
    """INT3 and INT n report RIP after themselves (traps), unlike faults."""
    op = _strip_prefixes(code)
    return bool(op) and op[0] in (0xCC, 0xCD, 0xF1)


class Effect(enum.IntEnum):
    """What retiring an instruction does to the state the CPU model keeps."""

    NONE = 0
    SERIALIZE = 1  # need_serialize (is_serializing)
    IRET = 2  # serializes and ends NMI blocking
    SHADOW = 3  # interrupt shadow over the next instruction
    HALT = 4
    PAUSE = 5  # a spin-wait


@lru_cache(maxsize=4096)
def effect(code: bytes) -> Effect:
    """The effect of retiring `code`; cached, as a kernel's text is a few hundred distinct
    instructions retired millions of times."""
    if is_serializing(code):
        return Effect.IRET if is_iret(code) else Effect.SERIALIZE
    if blocks_interrupts_after(code):
        return Effect.SHADOW
    if code == b"\xf4":
        return Effect.HALT
    if code == b"\xf3\x90":
        return Effect.PAUSE
    return Effect.NONE
