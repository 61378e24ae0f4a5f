"""The machine's configuration: CPUs, region sizes, the fetch-view grain, budgets, spontaneous
NMIs and event mode. Checked when made, so a machine is never built from one it cannot honour
(MachineConfigError names the field)."""

from __future__ import annotations

from dataclasses import dataclass

from . import layout, x86
from .fetch_view import Grain
from .layout import Layout
from .verdict import MachineConfigError


@dataclass(frozen=True)
class MachineConfig:
    ncpus: int = 2
    grain: Grain = Grain.BYTE
    max_quantum: int = 32
    insn_budget: int = 200_000  # per CPU; exceeding it ends the run with `hang`
    truth: bool = True
    text_size: int = 0x10000
    data_size: int = 0x20000
    stack_size: int = 0x4000
    spontaneous_nmis: tuple[int, ...] = ()  # per CPU: NMIs the decision stream may raise
    # Event mode: inside a run, a spontaneous NMI may arrive before every instruction (None),
    # or only before instructions whose 15 bytes reach into these text ranges [start, end)
    # (offsets), for a scenario that declares arrival elsewhere equivalent to the step's start
    nmi_text: tuple[tuple[int, int], ...] | None = None
    nmi_rarity: int = 2  # a random source raises a spontaneous NMI one time in nmi_rarity
    serializing_vectors: frozenset[int] = frozenset({x86.CALL_FUNCTION_VECTOR})
    # Event mode (exhaustive exploration): a CPU runs until its next visible event -- a text
    # store, a fetch of bytes with a pending store, an access to `watch` (shared protocol
    # data), an exception or interrupt, an IRET -- or a spin-wait / quiescent point, instead of
    # for a chosen quantum; a pending view unit is decided when an instruction fetches it: its
    # latest content, or (a FLUSH choice, one delayed update) a stale one; a spontaneous NMI
    # may arrive before any instruction of a CPU that has some left. Footprints, when a
    # source wants them, cover every location another CPU can observe (emu/footprint.py).
    event_mode: bool = False
    watch: tuple[tuple[int, int], ...] = ()  # [start, end) data virtual addresses

    def __post_init__(self) -> None:
        if isinstance(self.grain, str | int) and not isinstance(self.grain, Grain):
            object.__setattr__(self, "grain", Grain.parse(self.grain))
        if not isinstance(self.ncpus, int) or not 1 <= self.ncpus <= layout.MAX_CPUS:
            raise MachineConfigError(f"ncpus must be 1..{layout.MAX_CPUS}, got {self.ncpus!r}")
        if self.max_quantum < 1:
            raise MachineConfigError(f"max_quantum must be >= 1, got {self.max_quantum}")
        if self.nmi_rarity < 2:
            raise MachineConfigError(f"nmi_rarity must be >= 2, got {self.nmi_rarity}")
        if self.insn_budget < 1:
            raise MachineConfigError(f"insn_budget must be >= 1, got {self.insn_budget}")
        if len(self.spontaneous_nmis) > self.ncpus or any(n < 0 for n in self.spontaneous_nmis):
            raise MachineConfigError("spontaneous_nmis: one non-negative count per CPU at most")
        try:
            self.layout()
        except ValueError as e:
            raise MachineConfigError(str(e)) from None

    def layout(self) -> Layout:
        return Layout(self.ncpus, self.text_size, self.data_size, self.stack_size)


@dataclass(frozen=True)
class RunBudget:
    """A bound on one run, below the configuration's `insn_budget`: the run is cut once more
    than `ticks` instructions retired (on all CPUs). A shrinker gives each candidate one from
    the failing run's own length, so a candidate that wanders into a spin-wait costs about as
    much as the failure did, not the whole instruction budget; a cut run is no verdict
    (`RunResult.cut`), never a hang."""

    ticks: int

    def __post_init__(self) -> None:
        if not isinstance(self.ticks, int) or self.ticks < 1:
            raise MachineConfigError(f"RunBudget.ticks must be >= 1, got {self.ticks!r}")
