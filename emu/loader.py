"""Loading a guest image: what is in memory and where each CPU starts.

The image is data (programs, per-CPU boot state, IDT handlers, initial data words); loading it
writes text, GDT, IDT gates, data and per-CPU areas into shared memory and sets each CPU's
registers, as firmware and the kernel's early boot would have left them. The machine does this
once; every later run starts again from the snapshot taken after it (Machine.reset).
"""

from __future__ import annotations

import ctypes
import struct
from dataclasses import dataclass, field

from unicorn import UcError

from . import layout, x86
from .asm import Program
from .cpu import Cpu
from .fetch_view import FetchView
from .layout import Layout
from .memory import GuestMemoryError, SharedMemory
from .verdict import MachineConfigError


@dataclass
class CpuBoot:
    entry: int
    regs: dict[str, int] = field(default_factory=dict)
    interrupts: bool = True  # RFLAGS.IF at boot


@dataclass
class GuestImage:
    """What is in memory and where each CPU starts."""

    programs: list[Program]
    boot: list[CpuBoot]
    idt: dict[int, int] = field(default_factory=dict)  # vector -> handler (interrupt gate)
    data: list[tuple[int, bytes]] = field(default_factory=list)  # initial bytes at data VAs

    @property
    def symbols(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for p in self.programs:
            out.update(p.symbols)
        return out


def load(image: GuestImage, lay: Layout, mem: SharedMemory, views: list[FetchView],
         cpus: list[Cpu]) -> None:
    """The image into fresh memory, views and CPUs: text, GDT, IDT gates, initial data, each
    CPU's per-CPU area, stack, RFLAGS.IF, registers and entry. Anything that does not fit is
    the image's fault (MachineConfigError), found before a first instruction runs."""
    for prog in image.programs:
        off = prog.base - layout.TEXT_BASE
        if off < 0 or off + len(prog.code) > lay.text_size:
            raise MachineConfigError(f"{prog.name}: [{prog.base:#x}, {prog.end:#x}) is "
                                     "not inside the text")
        ctypes.memmove(ctypes.addressof(mem.text) + off, prog.code, len(prog.code))
    for view in views:
        view.reset(bytes(mem.text))
    for i, entry in enumerate(layout.GDT_ENTRIES):
        mem.write(layout.GDT_ADDR + 8 * i, struct.pack("<Q", entry))
    for vector, handler in image.idt.items():
        if not 0 <= vector < 256 or lay.region_of(handler) is None:
            raise MachineConfigError(f"IDT vector {vector}: bad handler {handler:#x}")
        gate = x86.Gate(handler, layout.KERNEL_CS, 0, x86.GATE_INTERRUPT, 0, True)
        mem.write(layout.IDT_ADDR + 16 * vector, gate.encode())
    for va, raw in image.data:
        try:
            mem.write(va, raw)
        except GuestMemoryError as e:
            raise MachineConfigError(f"initial data at {va:#x}: {e}") from None
    for cpu, boot in zip(cpus, image.boot, strict=True):
        if lay.region_of(boot.entry) is None or \
                lay.translate(boot.entry, layout.Access.FETCH) is None:
            raise MachineConfigError(f"cpu{cpu.index}: entry {boot.entry:#x} is not text")
        mem.write(lay.percpu(cpu.index), struct.pack("<QQ", cpu.index,
                                                     lay.stack_top(cpu.index)))
        cpu.set_reg("rsp", lay.stack_top(cpu.index))
        cpu.set_reg("rflags", 0x202 if boot.interrupts else 0x2)
        for name, value in boot.regs.items():
            try:
                cpu.set_reg(name, value)
            except (AttributeError, UcError):
                raise MachineConfigError(f"cpu{cpu.index}: bad register {name!r}") from None
        cpu.set_reg("rip", boot.entry)

