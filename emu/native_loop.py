"""The fast engine's scheduling loop: Machine._step's common case, step after step, in C.

Machine.run's reference loop spends about 15 µs of Python per scheduling step (two decisions,
each a request, a `random` draw and a recorded Choice, then the run and its bookkeeping) on
top of the few µs a run of ~8 instructions costs in Unicorn. emu/_native.c `steps` does the
steps that need nothing else: the CPU choice, an IPI or view choice that changes nothing, the
quantum choice and a run that ends with nothing to handle, or in event mode with a serializing
instruction or IRET and nothing pending in the CPU's view (the IRET's handler bookkeeping and
the Serialize event, all that Python would do), with a QUIESCENT hypercall (NativeCpu), or
with an INT3 whose #BP frame C can push (the handler frame and the ExceptionEvent): in a
static_key search, three of four runs it used to hand back. It hands the step it stops at
back to the machine's own code where it stands (`Machine._step`, `_cpu_step`, `_take_ipi`,
`_refresh`, `_after_run`), and takes an IPI's or a view unit's step back once Python has done
that part, so every other interrupt, fetch-view unit, hypercall, text store, exception and
verdict goes through the one implementation.

What makes the two loops equal, choice for choice (tests/test_engines.py checks it):
- a RandomSource's choices are drawn from its own `random.Random` in C exactly as
  `randrange` draws them (`_randbelow_with_getrandbits`); from the position a source says it
  answers every choice with its simplest value (`DecisionSource.simplest_from`: the exhaustive
  search's runs past their prefix) the C loop answers with it, and before it where the
  source's planned value is the simplest (`DecisionSource.follows`: the prefix itself, but
  for its deviations); any other choice is asked through `Decisions.choose`, as the
  reference asks it;
- choices are recorded as interned Choice objects (one per request and value; they are
  immutable) with the same requests the reference loop makes (`Machine._cpu_request`);
- each batch reads the CPUs' Python state and writes back what its trivial runs changed
  (retired count, last instruction, shadow, yielded) before any Python code runs again;
  a Python hook inside a run (text store, hypercall, interrupt) ends the batch after that
  run, whose end is then Python's (NativeCpu.finish).
"""

from __future__ import annotations

import random
from types import ModuleType
from typing import TYPE_CHECKING

from unicorn import x86_const

from .decisions import Decisions, RandomSource
from .events import InterruptEvent, Serialize
from .footprint import Footprint
from .path import Choice, Kind, Request, simplest

if TYPE_CHECKING:
    from .config import RunBudget
    from .cpu import Cpu
    from .machine import Machine
    from .verdict import Verdict

MAX_CPUS = 20  # emu/_native.c: LOOP_MAX_CPUS (a CPU choice's context fits one 64-bit key)
BATCH = 4096  # steps between two Ctrl-C checks
NO_LIMIT = 2**64 - 1
_RFLAGS = x86_const.UC_X86_REG_RFLAGS

# emu/_native.c: enum loop_status
STEP, CHOSEN, RAN, BUDGET, CAP, IPI, VIEWED, FETCH, RAISED = range(9)


def entry(request: Request) -> tuple:
    """A request, its simplest value and the Choice of each of its values: what the C loop
    answers and records."""
    return (request, simplest(request), *(Choice(request.kind, request.arity, v, request)
                                          for v in range(request.arity)))


def usable(machine: Machine, native: ModuleType | None) -> bool:
    """Whether the machine's runs can take the C loop: a fast engine's CPUs, and few enough
    CPUs for the key."""
    return native is not None and machine.config.ncpus <= MAX_CPUS


def _draws(source: object) -> tuple[object, object]:
    """A RandomSource's `getrandbits` and `random`, when randrange on its generator is what
    the C loop reproduces (CPython's Random, with its own `_randbelow`; `random() < weight`
    for a spontaneous NMI, RandomSource.pick); else None twice."""
    if type(source) is not RandomSource:
        return None, None
    rng = source._rng  # the source's own generator, drawn in its own order
    if type(rng) is not random.Random or \
            random.Random._randbelow is not random.Random._randbelow_with_getrandbits:
        return None, None
    return rng.getrandbits, rng.random


class NativeLoop:
    """The C loop of one machine: its CPUs, and the tables of interned choices it records."""

    def __init__(self, native: ModuleType, machine: Machine) -> None:
        self._steps = native.steps
        self._m = machine
        self._cpus = tuple(machine.cpus)
        self._nats = tuple(c._nat for c in machine.cpus)
        self._cpu_table: dict[int, tuple] = {}
        self._quantum_table = (tuple(entry(r) for r in machine._quantum_requests)
                               if machine.config.max_quantum > 1 else ())
        n = machine.config.ncpus
        self._ipi_table = tuple(entry(Request(Kind.IPI, 2, i)) for i in range(n))
        # each CPU's NMI_RAISE entry (C draws it with its request's weight), and what raises
        # the NMI when the choice says so inside a run (Machine._nmi_arrives, its choice in C)
        self._nmi = (tuple(entry(r) for r in machine._nmi_requests),
                     tuple(lambda c=c: machine._raise_nmi(c) for c in machine.cpus))
        self._view_entries: list[dict[int, tuple]] = [{} for _ in range(n)]
        self._truths: tuple = ()  # start(): this run's records, source and tables
        self._run: tuple = ()
        self._limits: tuple[int, int] = (0, 0)
        self._event: tuple = ()  # event mode: (max_quantum, Footprint, step_done)

    def _view_entry(self, cpu: int, pending: int) -> tuple:
        made = self._view_entries[cpu].get(pending)
        if made is None:
            made = self._view_entries[cpu][pending] = entry(Request(Kind.VIEW, pending + 1, cpu))
        return made

    def _cpu_entry(self, key: int) -> tuple:
        """The entry of a CPU choice's context (CpuContext) as the C loop keys it: a bit per
        runnable CPU, a bit per yielded one from bit MAX_CPUS, the last CPU plus one (0:
        none) from bit 2 * MAX_CPUS."""
        n = self._m.config.ncpus
        runnable = tuple(i for i in range(n) if key >> i & 1)
        yielded = frozenset(i for i in range(n) if key >> (MAX_CPUS + i) & 1)
        last = (key >> (2 * MAX_CPUS)) - 1
        return entry(self._m._cpu_request(runnable, None if last < 0 else last, yielded))

    def start(self, dec: Decisions, budget: RunBudget | None) -> None:
        """A run begins: what stays the same for all its batches."""
        m = self._m
        for c in m.cpus:
            c.clear_stops()  # NativeCpu.finish clears them again after each run it ends
            c._event = m.config.event_mode  # what NativeCpu.run sets for the Python hooks
            c.bind_nmi()  # the C loop asks the NMI points of its runs
        self._truths = tuple(c.truth for c in m.cpus)
        simple_from = dec.source.simplest_from()
        self._run = (*_draws(dec.source), -1 if simple_from is None else simple_from,
                     tuple(dec.source.follows()), dec.choose,
                     self._cpu_table, self._cpu_entry,
                     self._quantum_table, self._ipi_table, tuple(self._view_entries),
                     self._view_entry, self._nmi)
        self._limits = (m.config.insn_budget, NO_LIMIT if budget is None else budget.ticks)
        self._event = ()
        if m.config.event_mode:  # footprints as Machine._chosen_step measures them
            fp = dec.source.wants_footprints
            self._event = (m.config.max_quantum, Footprint if fp else None,
                           dec.source.step_done if fp else None, Serialize, InterruptEvent,
                           frozenset(m.config.serializing_vectors))

    def steps(self, dec: Decisions, most: int | None = None) -> tuple[int, Verdict | None]:
        """Steps until one ends the run, needs Python or the batch (or `most` steps) is over:
        how many, and the verdict of the last (None: the run goes on). In quantum mode a step
        the C loop hands back for an IPI to deliver or a view unit to make visible goes back
        to it once Python has done so; in event mode Python ends every step handed back."""
        m = self._m
        cpus = m.cpus
        done = 0
        resume = (-1, 0)
        most = BATCH if most is None else min(most, BATCH)
        while True:
            n, status, who, value = self._batch(dec, resume, most - done)
            done += n
            if self._event and status in (IPI, FETCH, RAN, RAISED):
                return done + 1, self._event_rest(cpus[who], dec, status, value)
            if status == RAISED:  # Machine._nmi_arrives said yes, then the rest of the step
                return done + 1, m._raised_step(cpus[who], dec)
            if status == VIEWED:  # Machine._quantum_step, then its quantum in C
                m._refresh(cpus[who], value - 1)
                resume = (who, 2)
            elif status == IPI:  # Machine._maybe_interrupt, then the rest of the step in C
                verdict = m._take_ipi(cpus[who])
                if verdict is not None:
                    return done + 1, verdict
                resume = (who, 1)
            elif status == RAN:
                cpu = cpus[who]
                return done + 1, m._after_run(cpu, cpu.finish(value))
            elif status == CHOSEN:
                return done + 1, m._chosen_step(cpus[who], dec)
            elif status == STEP:
                return done + 1, m._step(dec)
            else:  # BUDGET, CAP
                return done, None

    def _event_rest(self, cpu: Cpu, dec: Decisions, status: int, value: int) -> Verdict | None:
        """The rest of an event-mode step the C loop handed back after making its footprint
        (cpu.footprint, None without footprints), which then goes to the source as
        Machine._chosen_step hands it over: IPI, the pending IPI delivered, then the run;
        FETCH, the run (its first instruction's fetch decided); RAN, the run's end; RAISED,
        the NMI its NMI_RAISE choice raised, then the rest of the step."""
        m = self._m
        fp = cpu.footprint
        try:
            if status == RAN:
                return m._after_run(cpu, cpu.finish(value))
            if status == RAISED:
                return m._raised_step(cpu, dec)
            if status == IPI:
                verdict = m._take_ipi(cpu)
                if verdict is not None:
                    return verdict
            return m._event_run(cpu, dec)
        finally:
            if fp is not None:
                m._footprint_done(cpu, dec, fp)

    def _batch(self, dec: Decisions, resume: tuple[int, int], most: int
               ) -> tuple[int, int, int, int]:
        """One call of the C loop, which reads the CPUs' Python state and writes it back:
        steps done, why it stopped, the CPU of the step in progress and the value."""
        m = self._m
        n, status, who, value, last = self._steps(
            self._cpus, self._nats, self._truths, -1 if m._last is None else m._last, *self._run,
            dec.path, self._limits, _RFLAGS, resume, max(most, 1), self._event)
        m._last = None if last < 0 else last
        return n, status, who, value
