"""The int3_selftest() analogue: a CALL emulated through INT3 returns to the right place with
the frame intact (guest_code/int3_selftest.S)."""

from __future__ import annotations

from emu.asm import load_source
from emu.config import MachineConfig
from emu.loader import CpuBoot, GuestImage
from emu.machine import Machine
from emu.selftest import Scripted
from emu.verdict import Verdict

from . import guest
from .guest import Cfg


def run(cfg: Cfg | None = None) -> tuple[Verdict, Machine]:
    data = guest.kernel_data(1, 0, 0, 0, 0)
    prog = guest.kernel_program(load_source("int3_selftest.S"), 1, data, "int3_selftest.S")
    image = GuestImage(programs=[prog], idt=guest.kernel_idt(prog),
                       boot=[CpuBoot(prog.sym("int3_selftest"))],
                       data=[(data["V_CFG"], guest.u64s(int(cfg or 0))),
                             (data["V_ONLINE"], guest.u64s(1))])
    m = Machine(MachineConfig(ncpus=1), image)
    return m.run(Scripted()).verdict, m
