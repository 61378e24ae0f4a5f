"""Patch sites: where the observers' path holds patchable text, and what it can hold.

A site is a few bytes of observer code at a label (`site_<name>`) and, per state (a key off or
on, a static call's target, a kprobe plain, armed or optimized), the instructions it holds then:
the kernel's NOP5 or a JMP32 (jump labels, arch/x86/kernel/jump_label.c), a CALL (static calls,
arch/x86/kernel/static_call.c), a prologue, an INT3 or a JMP32 to the detour (kprobes,
arch/x86/kernel/kprobes/opt.c). The torn-execution oracle allows exactly these, and the
INT3 on the first byte (build.py).
"""

from __future__ import annotations

import abc
import struct
from collections.abc import Sequence
from dataclasses import dataclass

from emu.asm import KERNEL_NOPS, Program


def _rel32(frm: int, to: int) -> bytes:
    return struct.pack("<i", to - (frm + 5))


class Site(abc.ABC):
    """A patch site in the observers' path and the instructions it can hold."""

    name: str

    @abc.abstractmethod
    def observer_asm(self) -> str:
        """Code at the site in the observer loop; leaves the outcome in ebx."""

    def support_asm(self) -> str:
        return ""

    @property
    def label(self) -> str:
        return f"site_{self.name}"

    @abc.abstractmethod
    def instructions(self, prog: Program, state: object) -> list[tuple[int, bytes]]:
        """(offset, bytes) of every instruction in the site when it is in `state`."""

    @abc.abstractmethod
    def outcome(self, state: object) -> int:
        """What an execution reports (ebx) in `state`."""

    @abc.abstractmethod
    def initial(self) -> object:
        """The state before any op."""


@dataclass
class JumpLabel(Site):
    """A static branch: the kernel's NOP5 while the key is off, a JMP32 to `yes` when on."""

    name: str
    key: str
    offset: int = 0  # where the patch goes relative to the label (validated: a boundary)

    def observer_asm(self) -> str:
        n = self.name
        return (f"{self.label}:\n    KNOP 5\n    mov ebx, 1\n    jmp {n}_out\n"
                f"{n}_yes:\n    mov ebx, 2\n{n}_out:\n")

    def instructions(self, prog: Program, state: object) -> list[tuple[int, bytes]]:
        site = prog.sym(self.label)
        if state:
            return [(0, b"\xe9" + _rel32(site, prog.sym(f"{self.name}_yes")))]
        return [(0, KERNEL_NOPS[5])]

    def outcome(self, state: object) -> int:
        return 2 if state else 1

    def initial(self) -> object:
        return False


@dataclass
class CallSite(Site):
    """A direct CALL whose target is one of `funcs` (static_call, or a promoted indirect call
    when `promoted` is set: the observer then also makes the indirect call it stands for)."""

    name: str
    key: str
    funcs: Sequence[str]
    promoted: bool = False
    offset: int = 0

    def observer_asm(self) -> str:
        pre = post = ""
        if self.promoted:  # the promotion RFC: compare the target, direct call if it matches
            pre = (f"    mov rax, qword ptr [KEY_{self.key}]\n"
                   f"    lea rcx, [rip + {self.funcs[0]}]\n"
                   f"    cmp rax, rcx\n    jne {self.name}_miss\n")
            post = (f"    jmp {self.name}_out\n{self.name}_miss:\n    push rbx\n    call rax\n"
                    f"    pop rbx\n    mov ebx, 0\n    jmp {self.label}\n{self.name}_out:\n")
        return f"{pre}{self.label}:\n    call {self.funcs[0]}\n{post}"

    def instructions(self, prog: Program, state: object) -> list[tuple[int, bytes]]:
        site = prog.sym(self.label)
        return [(0, b"\xe8" + _rel32(site, prog.sym(self.funcs[int(state)])))]

    def outcome(self, state: object) -> int:
        return int(state) + 1

    def initial(self) -> object:
        return 0


KPROBE_REGION = (b"\x55", b"\x48\x89\xe5", b"\x53")  # push rbp; mov rbp, rsp; push rbx


@dataclass
class KprobeSite(Site):
    """A probed function prologue: `push rbp; mov rbp, rsp; push rbx`, 5 bytes in 3
    instructions. States: plain, armed (INT3 on the first byte), optimized (JMP32 to the
    detour)."""

    name: str
    offset: int = 0

    def observer_asm(self) -> str:
        n = self.name
        return (f"{self.label}:\n    push rbp\n    mov rbp, rsp\n    push rbx\n{n}_after:\n"
                f"    pop rbx\n    pop rbp\n    mov ebx, 1\n")

    def support_asm(self) -> str:
        n = self.name
        body = "    push rbp\n    mov rbp, rsp\n    push rbx\n    jmp " + f"{n}_after\n"
        return (f"{n}_slot:\n{body}"
                f"{n}_detour:\n    lock inc qword ptr [KPROBE_{n} + KPROBE_HITS]\n{body}")

    def instructions(self, prog: Program, state: object) -> list[tuple[int, bytes]]:
        if state == "optimized":
            site = prog.sym(self.label)
            return [(0, b"\xe9" + _rel32(site, prog.sym(f"{self.name}_detour")))]
        first = b"\xcc" if state == "armed" else KPROBE_REGION[0]
        return [(0, first), (1, KPROBE_REGION[1]), (4, KPROBE_REGION[2])]

    def outcome(self, state: object) -> int:
        return 1

    def initial(self) -> object:
        return "plain"


@dataclass
class ObserverCode(Site):
    """Observer code that no op patches: a user's own check in the observers' loop (it reads
    shared state and reports through a hypercall, e.g. ASSERT). Its first instruction is all
    the torn-execution oracle looks at, and it always reports outcome 1."""

    name: str
    code: str

    def observer_asm(self) -> str:
        return f"{self.label}:\n{self.code.rstrip()}\n    mov ebx, 1\n"

    def instructions(self, prog: Program, state: object) -> list[tuple[int, bytes]]:
        addr = prog.sym(self.label)
        end = min(a for a in prog.starts if a > addr)
        return [(0, prog.code[addr - prog.base:end - prog.base])]

    def outcome(self, state: object) -> int:
        return 1

    def initial(self) -> object:
        return 0

