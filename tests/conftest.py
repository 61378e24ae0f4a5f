"""Shared helpers: tiny guest programs assembled at the text base."""

from __future__ import annotations

import functools

import pytest

from emu import hypercall, layout
from emu.asm import assemble
from emu.config import MachineConfig
from emu.engine import Engine, native_module
from emu.loader import CpuBoot, GuestImage
from emu.machine import Machine
from emu.path import Choice, Kind
from harness.explore.shrink import ShrinkSource

VAR = layout.DATA_BASE + layout.GUEST_DATA_OFFSET


def machine(source: str, entries: list[str], idt: dict[int, str] | None = None,
            interrupts: bool = True, engine: Engine = Engine.REFERENCE, **config) -> Machine:
    prog = assemble(source, layout.TEXT_BASE, hypercall.EQUATES | {"V": VAR}, "test.S")
    image = GuestImage(programs=[prog], idt={v: prog.sym(h) for v, h in (idt or {}).items()},
                       boot=[CpuBoot(prog.sym(e), interrupts=interrupts) for e in entries])
    return Machine(MachineConfig(ncpus=len(entries), **config), image, engine)


@pytest.fixture(params=list(Engine), ids=[e.value for e in Engine])
def build(request):
    """`machine`, once on each engine: every behaviour test holds for the native hooks too
    (the fast case is skipped, not run as the reference, where they are not installed)."""
    if request.param is Engine.FAST and native_module("machine") is None:
        pytest.skip("emu._native is not installed: the fast engine would run the reference")
    return functools.partial(machine, engine=request.param)


pytest_plugins = ["pytester"]


def one_changed(path: list[Choice], kind: Kind = Kind.CPU) -> ShrinkSource:
    """A replay of `path` with its first `kind` choice changed, continued leniently (as the
    shrinker does): a second run that differs from the first in one decision, for showing
    that a determinism check fails when the runs it compares differ."""
    i = next(i for i, c in enumerate(path) if c.kind is kind)
    old = path[i]
    changed = Choice(kind, old.arity, (old.value + 1) % old.arity, old.request)
    return ShrinkSource(path[:i] + [changed] + path[i + 1:])


@pytest.fixture(scope="session")
def dask_client():
    """One LocalCluster of 2 worker processes on 127.0.0.1 for the whole session (started
    only if a test asks for it: about 3 s), shared by the cluster tests."""
    import logging

    from distributed import Client, LocalCluster

    cluster = LocalCluster(n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1",
                           dashboard_address=None, silence_logs=logging.ERROR)
    client = Client(cluster)
    client.wait_for_workers(2, timeout=60)
    yield client
    client.close()
    cluster.close()
