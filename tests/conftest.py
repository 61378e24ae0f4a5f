"""Shared helpers: tiny guest programs assembled at the text base."""

from __future__ import annotations

import pytest

from emu import hypercall, layout
from emu.asm import assemble
from emu.decisions import Choice, Kind, ReplaySource
from emu.machine import CpuBoot, GuestImage, Machine, MachineConfig
from harness.strategies import DefaultSource

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


def one_changed(path: list[Choice], kind: Kind = Kind.CPU) -> ReplaySource:
    """A replay of `path` with its first `kind` choice changed, continued leniently by the
    default policy: a second run that differs from the first in one decision, for showing
    that a determinism check fails when the runs it compares differ."""
    i = next(i for i, c in enumerate(path) if c.kind is kind)
    changed = Choice(kind, path[i].arity, (path[i].value + 1) % path[i].arity)
    return ReplaySource(path[:i] + [changed] + path[i + 1:], then=DefaultSource(), lenient=True)
