"""What an instruction means to PT: its class and, for direct branches, its displacement.
Classified with capstone once per distinct byte string (a dict lookup after that)."""

from __future__ import annotations

import enum
from dataclasses import dataclass
from functools import lru_cache

import capstone
from capstone import x86_const as cx


class Cls(enum.Enum):
    OTHER = "other"
    COND = "cond"  # Jcc, LOOPcc, JrCXZ: one TNT bit
    JMP = "jmp"  # direct: no packet
    CALL = "call"  # direct: no packet, pushed for RET compression (unless disp 0)
    IJMP = "ijmp"  # indirect: TIP
    ICALL = "icall"  # indirect: TIP, pushed
    RET = "ret"  # TNT bit 1 if compressed, else TIP
    IRET = "iret"  # far transfer: TIP
    INT = "int"  # INT3 / INT n: FUP(CLIP) + TIP(handler) when taken


@dataclass(frozen=True)
class Insn:
    size: int
    cls: Cls
    rel: int = 0  # direct branches: target = ip + size + rel
    text: str = ""


_md = capstone.Cs(capstone.CS_ARCH_X86, capstone.CS_MODE_64)
_md.detail = True
_BASE = 0x1000_0000


@lru_cache(maxsize=65536)
def classify(code: bytes) -> Insn | None:
    """The first instruction in `code` (up to 15 bytes), or None if it does not decode."""
    insn = next(_md.disasm(code, _BASE, 1), None)
    if insn is None:
        return None
    groups = set(insn.groups)
    text = f"{insn.mnemonic} {insn.op_str}".strip()
    direct = capstone.CS_GRP_BRANCH_RELATIVE in groups
    rel = 0
    if direct:
        rel = insn.operands[0].imm - (_BASE + insn.size)
    if cx.X86_GRP_IRET in groups or insn.mnemonic.startswith("iret"):
        cls = Cls.IRET
    elif capstone.CS_GRP_RET in groups:
        cls = Cls.RET
    elif capstone.CS_GRP_INT in groups or insn.mnemonic in ("int3", "int", "int1", "into"):
        cls = Cls.INT
    elif capstone.CS_GRP_CALL in groups:
        cls = Cls.CALL if direct else Cls.ICALL
    elif capstone.CS_GRP_JUMP in groups:
        if insn.mnemonic == "jmp":
            cls = Cls.JMP if direct else Cls.IJMP
        else:
            cls = Cls.COND
    else:
        cls = Cls.OTHER
    return Insn(insn.size, cls, rel, text)
