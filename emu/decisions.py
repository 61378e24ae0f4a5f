"""The one decision stream: every nondeterministic choice of a run, recorded as a path.

Like loom's `Path` (src/rt/path.rs) and Hypothesis' choice sequence, a run is a pure function
of its configuration and the list of choices it made. Each choice is a bounded integer
`0 <= value < arity` tagged with its kind; a choice with arity 1 is not a choice and is never
asked nor recorded. Replay, exhaustive search and shrinking all operate on that list.
"""

from __future__ import annotations

import abc
import enum
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass


class Kind(enum.Enum):
    """What a choice decides. The value's meaning depends on the kind."""

    CPU = "cpu"  # index into the runnable CPUs, in CPU-number order
    QUANTUM = "quantum"  # instructions to run, minus one
    VIEW = "view"  # 0: no fetch-view update; i: make pending unit i-1 visible
    IPI = "ipi"  # 1: deliver the highest pending IPI now
    NMI = "nmi"  # 1: deliver the pending NMI now
    NMI_RAISE = "nmi_raise"  # 1: a spontaneous NMI becomes pending on this CPU now
    FLUSH = "flush"  # event mode, a fetch of a pending unit: 0 latest; i: stale; last: the rest


@dataclass(frozen=True)
class Choice:
    kind: Kind
    arity: int
    value: int

    def __post_init__(self) -> None:
        if not 0 <= self.value < self.arity:
            raise ValueError(f"choice {self.kind.value}: {self.value} not in [0, {self.arity})")


class ReplayError(Exception):
    """A replayed path does not fit the run it is replayed into."""

    def __init__(self, position: int, message: str) -> None:
        super().__init__(f"decision {position}: {message}")
        self.position = position


class DecisionSource(abc.ABC):
    """Answers choices. Subclasses implement `pick`; recording is done by `Decisions`."""

    # Event mode: whether the machine should measure each step's footprint and pass it to
    # `observe` (emu/footprint.py). It costs time, so only a source that uses it asks.
    wants_footprints = False

    @abc.abstractmethod
    def pick(self, kind: Kind, arity: int, position: int) -> int:
        """The value, 0 <= value < arity, of the choice at `position` of the path."""

    def observe(self, context: object) -> None:  # noqa: B027 - optional hook
        """What the machine knows before the next CPU choice (machine.StepContext) and, in
        event mode if `wants_footprints`, what the step then touched (footprint.Footprint);
        schedulers that need it (PCT, the exhaustive explorer) keep it, the others ignore it."""


class RandomSource(DecisionSource):
    """Seeded uniform choices: the same seed gives the same path on any machine."""

    def __init__(self, seed: int) -> None:
        self.seed = seed
        self._rng = random.Random(seed)

    def pick(self, kind: Kind, arity: int, position: int) -> int:
        return self._rng.randrange(arity)


class ReplaySource(DecisionSource):
    """Replays a recorded path exactly; past its end, asks `then` or fails. `lenient` (for
    shrinking) reinterprets a choice that no longer fits instead of failing, as Hypothesis
    reinterprets its choice sequence."""

    def __init__(self, path: Sequence[Choice], then: DecisionSource | None = None,
                 lenient: bool = False) -> None:
        self.path = list(path)
        self.then = then
        self.lenient = lenient

    def pick(self, kind: Kind, arity: int, position: int) -> int:
        if position >= len(self.path):
            if self.then is None:
                raise ReplayError(position, f"path ended ({len(self.path)} choices); run wants "
                                            f"a {kind.value} choice of {arity}")
            return self.then.pick(kind, arity, position)
        want = self.path[position]
        if want.kind is not kind or want.arity != arity:
            if self.lenient:
                return want.value % arity if want.kind is kind else \
                    (self.then.pick(kind, arity, position) if self.then else 0)
            raise ReplayError(position, f"path has {want.kind.value}/{want.arity}, run wants "
                                        f"{kind.value}/{arity}")
        return want.value

    def observe(self, context: object) -> None:
        if self.then is not None:
            self.then.observe(context)


class PolicySource(DecisionSource):
    """Answers with a function of (kind, arity); used to script a schedule in checks."""

    def __init__(self, policy: Callable[[Kind, int], int]) -> None:
        self.policy = policy

    def pick(self, kind: Kind, arity: int, position: int) -> int:
        return self.policy(kind, arity)


class Decisions:
    """The recorder every component of the machine draws its choices from."""

    def __init__(self, source: DecisionSource) -> None:
        self.source = source
        self.path: list[Choice] = []

    def choose(self, kind: Kind, arity: int) -> int:
        if arity < 1:
            raise ValueError(f"{kind.value} choice needs arity >= 1")
        if arity == 1:
            return 0
        position = len(self.path)
        value = self.source.pick(kind, arity, position)
        if not isinstance(value, int) or not 0 <= value < arity:
            raise ReplayError(position, f"source answered {value!r} for {kind.value}/{arity}")
        self.path.append(Choice(kind, arity, value))
        return value

    def __len__(self) -> int:
        return len(self.path)


_LETTERS = {Kind.CPU: "c", Kind.QUANTUM: "q", Kind.VIEW: "v", Kind.IPI: "i", Kind.NMI: "n",
            Kind.NMI_RAISE: "r", Kind.FLUSH: "f"}
_KINDS = {v: k for k, v in _LETTERS.items()}


def encode_path(path: Sequence[Choice]) -> str:
    """A compact text form of a path: `c4.1,q16.3,...` (kind letter, arity, '.', value)."""
    return ",".join(f"{_LETTERS[c.kind]}{c.arity}.{c.value}" for c in path)


def decode_path(text: str) -> list[Choice]:
    """The inverse of encode_path; a malformed item is a ValueError naming its position."""
    out: list[Choice] = []
    if not text:
        return out
    for i, item in enumerate(text.split(",")):
        kind = _KINDS.get(item[:1])
        arity, dot, value = item[1:].partition(".")
        if kind is None or not dot or not arity.isdigit() or not value.isdigit():
            raise ValueError(f"decision {i}: malformed item {item[:20]!r}")
        try:
            out.append(Choice(kind, int(arity), int(value)))
        except ValueError as e:
            raise ValueError(f"decision {i}: {e}") from None
    return out
