"""The one Path of a run: every nondeterministic choice, with the request that asked for it.

Like loom's `Path` (src/rt/path.rs) and Hypothesis' choice sequence, a run is a pure function
of its configuration and the list of choices it made. The machine asks each choice as a
`Request` (its kind, its arity and the context the choice is made in); the answer is a bounded
integer `0 <= value < arity`. A request of arity 1 is no choice and is never asked nor recorded.

Replay, the exhaustive search's bounds, DPOR and shrinking all work on this one object, and
"simplest" is defined once, here (`simplest`): the choice that changes nothing about how the
run would go on by itself -- keep running the same CPU (round-robin after a yield), run the
longest quantum, deliver a pending interrupt at once, raise no spontaneous NMI, let a fetch
see the latest text. Every other value is a deviation, and `cost` says which bound it spends:
a preemption (CPU, quantum), a delayed fetch-view update (view, flush) or an interrupt
(delivering late, raising an NMI). A shrunk path is measured by its deviations, not its length.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass, field


class Kind(enum.Enum):
    """What a choice decides. The value's meaning depends on the kind."""

    CPU = "cpu"  # index into CpuContext.runnable
    QUANTUM = "quantum"  # instructions to run, minus one
    VIEW = "view"  # 0: no fetch-view update; i: make pending unit i-1 visible
    IPI = "ipi"  # 1: deliver the highest pending IPI now; 0: not yet
    NMI = "nmi"  # 1: deliver the pending NMI now; 0: not yet
    NMI_RAISE = "nmi_raise"  # 1: a spontaneous NMI becomes pending on this CPU now
    FLUSH = "flush"  # event mode, a fetch of a pending unit: 0 latest; i: stale; last: the rest


@dataclass(frozen=True, slots=True)
class CpuContext:
    """What is known before a CPU choice: the runnable CPUs (the value indexes this tuple),
    the CPU that ran last, and which CPUs yielded (spun, or passed a quiescent point) in
    their last run."""

    runnable: tuple[int, ...]
    last: int | None
    yielded: frozenset[int]


@dataclass(frozen=True, slots=True)
class Request:
    """One choice the machine asks for. `cpu`: the CPU it concerns (None for a CPU choice);
    `weight`: for NMI_RAISE, the probability that a random source raises one (a probability
    is not an arity: the choice has two values, and only random sources use the weight)."""

    kind: Kind
    arity: int
    cpu: int | None = None
    context: CpuContext | None = None
    weight: float = 0.5


@dataclass(frozen=True, slots=True)
class Cost:
    """What a deviation spends of the exhaustive search's bounds."""

    preemptions: int = 0
    delays: int = 0
    interrupts: int = 0

    def __add__(self, other: Cost) -> Cost:
        if not (other.preemptions or other.delays or other.interrupts):
            return self  # (a search adds FREE far more often than not: no new object)
        return Cost(self.preemptions + other.preemptions, self.delays + other.delays,
                    self.interrupts + other.interrupts)

    def within(self, bound: Cost) -> bool:
        return (self.preemptions <= bound.preemptions and self.delays <= bound.delays
                and self.interrupts <= bound.interrupts)

    def __str__(self) -> str:
        return f"P={self.preemptions} V={self.delays} I={self.interrupts}"


FREE = Cost()
_DEVIATION = {Kind.CPU: Cost(preemptions=1), Kind.QUANTUM: Cost(preemptions=1),
              Kind.VIEW: Cost(delays=1), Kind.FLUSH: Cost(delays=1),
              Kind.IPI: Cost(interrupts=1), Kind.NMI: Cost(interrupts=1),
              Kind.NMI_RAISE: Cost(interrupts=1)}


def simplest(req: Request) -> int:
    """The value that deviates from nothing (see the module). Defined here only."""
    kind = req.kind
    if kind is Kind.CPU:
        ctx = req.context
        if ctx is None:
            return 0
        if ctx.last in ctx.runnable and ctx.last not in ctx.yielded:
            return ctx.runnable.index(ctx.last)  # no preemption
        last = -1 if ctx.last is None else ctx.last
        after = [i for i, c in enumerate(ctx.runnable) if c > last]
        return after[0] if after else 0  # round-robin after a yield or when `last` stopped
    if kind is Kind.QUANTUM:
        return req.arity - 1
    if kind in (Kind.VIEW, Kind.IPI, Kind.NMI):
        return 1  # the oldest pending view unit visible; the interrupt delivered now
    return 0  # NMI_RAISE: none; FLUSH: the latest text


def deviation(kind: Kind) -> Cost:
    """What any non-simplest value of a choice of this kind spends."""
    return _DEVIATION[kind]


def cost(req: Request, value: int) -> Cost:
    """What taking `value` at `req` spends: nothing for the simplest value."""
    return FREE if value == simplest(req) else _DEVIATION[req.kind]


@dataclass(frozen=True, slots=True)
class Choice:
    """One answered request. `request` (the context) is there for a path recorded by a run,
    not for one decoded from text; it takes no part in comparisons."""

    kind: Kind
    arity: int
    value: int
    request: Request | None = field(default=None, compare=False, repr=False)

    def __post_init__(self) -> None:
        if not 0 <= self.value < self.arity:
            raise ValueError(f"choice {self.kind.value}: {self.value} not in [0, {self.arity})")

    @property
    def simplest(self) -> bool:
        """Whether this is the simplest value (needs the recorded request)."""
        return self.request is not None and self.value == simplest(self.request)


def path_cost(path: Sequence[Choice]) -> Cost:
    """The bounds a recorded path spends."""
    total = FREE
    for c in path:
        if c.request is not None and c.value != simplest(c.request):
            total = total + _DEVIATION[c.kind]
    return total


def deviations(path: Sequence[Choice]) -> int:
    """How far a recorded path is from the simplest run: its non-simplest choices."""
    return sum(1 for c in path if c.request is not None and c.value != simplest(c.request))


class ReplayError(Exception):
    """A replayed path does not fit the run it is replayed into, at `position`."""

    def __init__(self, position: int, message: str) -> None:
        super().__init__(f"decision {position}: {message}")
        self.position = position


_LETTERS = {Kind.CPU: "c", Kind.QUANTUM: "q", Kind.VIEW: "v", Kind.IPI: "i", Kind.NMI: "n",
            Kind.NMI_RAISE: "r", Kind.FLUSH: "f"}
_KINDS = {v: k for k, v in _LETTERS.items()}


def encode_path(path: Sequence[Choice]) -> str:
    """A compact text form of a path: `c4.1,q16.3,...` (kind letter, arity, '.', value)."""
    return ",".join(f"{_LETTERS[c.kind]}{c.arity}.{c.value}" for c in path)


def decode_path(text: str) -> list[Choice]:
    """The inverse of encode_path; a malformed item is a ValueError naming its position."""
    out: list[Choice] = []
    if not isinstance(text, str):
        raise ValueError(f"a path is text, not {type(text).__name__}")
    if not text:
        return out
    for i, item in enumerate(text.split(",")):
        kind = _KINDS.get(item[:1])
        arity, dot, value = item[1:].partition(".")
        if kind is None or not dot or not arity.isdigit() or not value.isdigit() \
                or not arity.isascii() or not value.isascii() or len(arity) > 9 \
                or len(value) > 9 or int(arity) < 2:
            raise ValueError(f"decision {i}: malformed item {item[:20]!r}")
        try:
            out.append(Choice(kind, int(arity), int(value)))
        except ValueError as e:
            raise ValueError(f"decision {i}: {e}") from None
    return out
