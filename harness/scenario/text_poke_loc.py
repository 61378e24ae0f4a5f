"""text_poke_loc_init()'s rules, checked on the host before a run (arch/x86/kernel/alternative.c).

The guest's own text_poke_loc_init() BUG()s on a bad entry; checking the same rules here turns a
bad scenario into a clear error before anything runs.
"""

from __future__ import annotations

import capstone

from emu.asm import KERNEL_NOPS, Program

from .guest_abi import POKE_MAX_OPCODE_SIZE, Insn

INT3, RET, CALL, JMP32, JMP8 = Insn.INT3, Insn.RET, Insn.CALL, Insn.JMP32, Insn.JMP8


class ScenarioError(ValueError):
    """A scenario, variant or patch that cannot be built as asked."""


_md = capstone.Cs(capstone.CS_ARCH_X86, capstone.CS_MODE_64)


def text_poke_loc_init(addr: int, opcode: bytes, emulate: bytes | None = None,
                       name: str = "poke") -> tuple[int, int]:
    """(opcode class, disp) the kernel would record for this poke, or ScenarioError."""
    where = f"{name} at {addr:#x}: text_poke_loc_init({opcode.hex()})"
    if not 1 <= len(opcode) <= POKE_MAX_OPCODE_SIZE:
        raise ScenarioError(f"{where}: len {len(opcode)} not in 1..{POKE_MAX_OPCODE_SIZE}")
    emulate = emulate or opcode
    insn = next(_md.disasm(emulate + b"\x90" * 15, addr, 1), None)
    if insn is None:
        raise ScenarioError(f"{where}: the instruction does not decode (BUG_ON(ret < 0))")
    op = emulate[0]
    if op in (RET, JMP32, JMP8):
        if insn.size > len(opcode) or any(b != INT3 for b in opcode[insn.size:]):
            raise ScenarioError(f"{where}: a {insn.mnemonic} may only be padded with INT3")
    elif insn.size != len(opcode):
        raise ScenarioError(f"{where}: len {len(opcode)} != instruction length {insn.size}")
    if op in (INT3, RET):
        return op, 0
    if op in (CALL, JMP32):
        return op, int.from_bytes(emulate[1:5], "little", signed=True)
    if op == JMP8:
        return op, int.from_bytes(emulate[1:2], "little", signed=True)
    if len(opcode) == 2 and emulate[:2] == KERNEL_NOPS[2]:
        return JMP8, 0
    if len(opcode) == 5 and emulate[:5] == KERNEL_NOPS[5]:
        return JMP32, 0
    raise ScenarioError(f"{where}: {insn.mnemonic} {insn.op_str} is none of the instructions "
                        "the INT3 handler can emulate (INT3, RET, CALL, JMP, NOP2, NOP5)")


def check_boundary(prog: Program, addr: int, name: str) -> None:
    """A patch site must start an instruction of the text as assembled."""
    if addr not in prog.starts:
        raise ScenarioError(f"site {name} at {addr:#x} is not an instruction boundary of "
                            f"{prog.name}")
