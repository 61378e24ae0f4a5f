"""Decision sources: who answers the machine's requests (emu/path.py), and the recorder.

The machine asks every choice through `Decisions.choose(request)`; the source answers it and
the recorder appends the answer, with its request, to the run's path. A source sees each
request's kind, arity and context and nothing else; in event mode a source that wants them
also gets each scheduling step's footprint (`step_done`), which is a result, not a choice.
"""

from __future__ import annotations

import abc
import random
from collections.abc import Callable, Sequence

from .footprint import Footprint
from .path import Choice, Kind, ReplayError, Request, simplest

__all__ = ["Decisions", "DecisionSource", "RandomSource", "ReplaySource", "SimplestSource",
           "PolicySource", "ReplayError"]


class DecisionSource(abc.ABC):
    """Answers requests. Subclasses implement `pick`; recording is done by `Decisions`."""

    # Event mode: whether the machine should measure each step's footprint and pass it to
    # `step_done` (emu/footprint.py). It costs time, so only a source that uses it asks.
    wants_footprints = False

    @abc.abstractmethod
    def pick(self, request: Request, position: int) -> int:
        """The value, 0 <= value < request.arity, of the choice at `position` of the path."""

    def attach(self, path: Sequence[Choice]) -> None:  # noqa: B027 - optional
        """The path the recorder fills for this run, to read (never to change): a source
        that records something per choice reads it there, the choices the machine answered
        itself (`simplest_from`) included."""

    def simplest_from(self) -> int | None:
        """The position from which this source answers every choice with its simplest value
        (emu/path.simplest) and does nothing else per choice, so the machine may answer those
        itself, recording the same Choices (the fast engine's C loop does); None: it is asked
        every choice."""
        return None

    def follows(self) -> Sequence[int]:
        """Values this source answers at positions 0, 1, ... before `simplest_from`: where
        one is its request's simplest value the source answers it and does nothing else, so
        the machine may answer it itself (the fast engine's C loop does); at the others it is
        asked. Empty: asked at every position before `simplest_from`."""
        return ()

    def step_done(self, footprint: Footprint) -> None:  # noqa: B027 - optional
        """Event mode, if `wants_footprints`: what the scheduling step just run touched."""

    def close(self, length: int) -> None:  # noqa: B027 - optional
        """The run ended after `length` choices (a replay checks nothing is left over)."""

    # Whether a run may start from a snapshot of an earlier run (emu/snapshot.py): the source
    # knows its first choices before the run (`planned`) and can be put back to what it had
    # recorded when the snapshot was taken (`mark`, `resume`).
    resumable = False

    def planned(self) -> tuple[int, ...]:
        """The values of the first choices this source will make, known before the run."""
        return ()

    def kind(self) -> object:
        """What a source resuming from this one's snapshots must be the same as: its class
        and what it records (a source that records footprints needs the snapshot's)."""
        return type(self), self.wants_footprints

    def mark(self) -> object:
        """What this source has recorded so far, owned by the caller (a snapshot)."""
        return None

    def resume(self, mark: object) -> None:
        """The source as it was when `mark` was taken, its planned choices unchanged."""
        raise NotImplementedError(f"{type(self).__name__} cannot resume from a snapshot")

    def wants_snapshot(self) -> bool:
        """Whether a choice made since it was last asked could serve a later run as the
        choice it deviates at: then the snapshot the machine took when it last asked (the
        latest state before that choice) is kept. A snapshot only ever saves replaying:
        asking never changes a run."""
        return True

    def may_want_snapshot(self) -> bool:
        """False when no choice this source makes from now on can be deviated at (every
        later `wants_snapshot` says no): the machine then takes no snapshot to drop."""
        return True


class SimplestSource(DecisionSource):
    """Every choice its simplest value: the run the machine makes with no deviation."""

    def pick(self, request: Request, position: int) -> int:
        return simplest(request)

    def simplest_from(self) -> int | None:
        return 0


class RandomSource(DecisionSource):
    """Seeded random choices: the same seed gives the same path on any machine. Uniform over
    the arity, except a spontaneous NMI, raised with its request's weight."""

    def __init__(self, seed: int) -> None:
        self.seed = seed
        self._rng = random.Random(seed)

    def pick(self, request: Request, position: int) -> int:
        if request.kind is Kind.NMI_RAISE:
            return int(self._rng.random() < request.weight)
        return self._rng.randrange(request.arity)


class ReplaySource(DecisionSource):
    """Replays a recorded path exactly: every request must be the recorded one's kind and
    arity, the path must not end before the run does, and nothing may be left when it ends.
    Each violation is a ReplayError naming the position."""

    def __init__(self, path: Sequence[Choice]) -> None:
        self.path = list(path)

    def pick(self, request: Request, position: int) -> int:
        if position >= len(self.path):
            raise ReplayError(position, f"the path ended ({len(self.path)} choices) but the run "
                                        f"asks a {request.kind.value} choice of {request.arity}")
        want = self.path[position]
        if want.kind is not request.kind or want.arity != request.arity:
            raise ReplayError(position, f"the path has {want.kind.value}/{want.arity}, the run "
                                        f"asks {request.kind.value}/{request.arity}")
        return want.value

    def close(self, length: int) -> None:
        if length < len(self.path):
            raise ReplayError(length, f"the run ended after {length} choices; the path has "
                                      f"{len(self.path) - length} more")


class PolicySource(DecisionSource):
    """Answers with a function of the request: a scripted schedule for checks."""

    def __init__(self, policy: Callable[[Request], int]) -> None:
        self.policy = policy

    def pick(self, request: Request, position: int) -> int:
        return self.policy(request)


class Decisions:
    """The recorder every component of the machine draws its choices from."""

    def __init__(self, source: DecisionSource) -> None:
        self.source = source
        self.path: list[Choice] = []
        source.attach(self.path)

    def choose(self, request: Request) -> int:
        arity = request.arity
        if arity < 1:
            raise ValueError(f"{request.kind.value} choice needs arity >= 1")
        if arity == 1:
            return 0
        position = len(self.path)
        value = self.source.pick(request, position)
        if not isinstance(value, int) or not 0 <= value < arity:
            raise ReplayError(position, f"source answered {value!r} for "
                                        f"{request.kind.value}/{arity}")
        self.path.append(Choice(request.kind, arity, value, request))
        return value

    def close(self) -> None:
        self.source.close(len(self.path))

    def __len__(self) -> int:
        return len(self.path)
