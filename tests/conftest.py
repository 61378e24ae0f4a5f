"""Shared helpers: tiny guest programs assembled at the text base."""

from __future__ import annotations

import pytest

from emu import hypercall, layout
from emu.asm import assemble
from emu.machine import CpuBoot, GuestImage, Machine, MachineConfig

VAR = layout.DATA_BASE + layout.GUEST_DATA_OFFSET


def machine(source: str, entries: list[str], idt: dict[int, str] | None = None,
            interrupts: bool = True, **config) -> Machine:
    prog = assemble(source, layout.TEXT_BASE, hypercall.EQUATES | {"V": VAR}, "test.S")
    image = GuestImage(programs=[prog], idt={v: prog.sym(h) for v, h in (idt or {}).items()},
                       boot=[CpuBoot(prog.sym(e), interrupts=interrupts) for e in entries])
    return Machine(MachineConfig(ncpus=len(entries), **config), image)


@pytest.fixture
def build():
    return machine


pytest_plugins = ["pytester"]
