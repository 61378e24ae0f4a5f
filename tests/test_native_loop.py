"""The fast engine's scheduling loop in C (emu/native_loop.py, emu/_native.c `steps`) against
the reference loop (Machine._step): the same choices, records and verdicts, whichever source
answers, wherever the C loop hands a step back, and whatever bound ends the run. Each check is
shown to fail once on a perturbed loop."""

from __future__ import annotations

import collections
import random
from array import array
from dataclasses import replace

import pytest

from emu import native_loop
from emu.config import RunBudget
from emu.decisions import PolicySource, RandomSource, ReplaySource
from emu.engine import Engine, native_module
from emu.footprint import Footprint, irq
from emu.path import FREE, Cost, Kind, ReplayError
from harness.explore.exhaustive import ExhaustiveSource
from harness.explore.strategies import PctSource
from harness.run import Runner
from harness.scenario.shipped import SCENARIOS
from tests.test_engines import differences

pytestmark = pytest.mark.skipif(native_module("machine") is None,
                                reason="emu._native was not compiled (setup.py)")


def _runners(name: str = "static_key", variant: str | None = None, **changes
             ) -> dict[Engine, Runner]:
    scn = replace(SCENARIOS[name], **changes) if changes else SCENARIOS[name]
    return {e: Runner(scn, variant, engine=e, decode=False) for e in Engine}


def _statuses(monkeypatch, runner: Runner) -> collections.Counter:
    """Count how each call of the C loop ended, on `runner`'s machine."""
    seen: collections.Counter = collections.Counter()
    loop = runner.machine._loop
    steps = loop._steps

    def counted(*args):
        out = steps(*args)
        seen[out[1]] += 1
        seen["steps in C"] += out[0]
        return out

    monkeypatch.setattr(loop, "_steps", counted)
    return seen


def test_the_fast_machine_takes_the_c_loop_and_every_hand_back(monkeypatch):
    """Most steps are made in C, and each way of handing a step back to Python (a run with
    something to handle, an IPI delivered, a view unit made visible) happens, so the
    differential runs below cover each."""
    runners = _runners()
    assert runners[Engine.REFERENCE].machine._loop is None
    seen = _statuses(monkeypatch, runners[Engine.FAST])
    steps = 0
    for seed in range(3):
        fast = runners[Engine.FAST].machine.run(RandomSource(seed))
        ref = runners[Engine.REFERENCE].machine.run(RandomSource(seed))
        assert differences(runners[Engine.FAST], fast, ref) == [], f"seed {seed}"
        steps += fast.steps
    assert seen["steps in C"] > steps / 2
    for status in (native_loop.RAN, native_loop.VIEWED, native_loop.IPI):
        assert seen[status] > 0, status


@pytest.mark.parametrize("source", ["pct", "replay"])
def test_other_sources_are_asked_as_the_reference_asks_them(source: str):
    """PCT answers CPU choices by priority and the rest from its own generator; a replay
    answers from a recorded path: both through Decisions.choose, from the C loop too."""
    runners = _runners("static_call")
    for seed in range(3):
        if source == "pct":
            make = lambda seed=seed: PctSource(seed, 4, 3, 500)  # noqa: E731
        else:
            path = runners[Engine.REFERENCE].machine.run(RandomSource(seed + 10)).path
            make = lambda path=path: ReplaySource(path)  # noqa: E731
        fast = runners[Engine.FAST].machine.run(make())
        ref = runners[Engine.REFERENCE].machine.run(make())
        assert differences(runners[Engine.FAST], fast, ref) == [], f"seed {seed}"


@pytest.mark.parametrize("answer", ["arity", "negative", "not an int", "a bool"])
def test_a_source_answering_out_of_range_is_refused_as_the_reference_refuses_it(answer: str):
    """A source's answer outside 0..arity-1, asked from the C loop, is the same ReplayError at
    the same choice as the reference loop raises; True is the int 1 to both."""
    bad = {"arity": lambda r: r.arity, "negative": lambda r: -1,
           "not an int": lambda r: "0", "a bool": lambda r: True}[answer]

    def make():  # the 20th choice, well inside the C loop's first batch; round robin before
        # and after it (always 0 keeps CPU 0 spinning to the budget: 7 s)
        asked = []
        return PolicySource(lambda r: (asked.append(r),
                                       bad(r) if len(asked) == 20 else len(asked) % r.arity)[1])

    runners = _runners()
    outcomes = []
    for engine in Engine:
        try:
            result = runners[engine].machine.run(make())
            outcomes.append(("ran", [(c.kind, c.value) for c in result.path]))
        except ReplayError as e:
            outcomes.append(("refused", str(e)))
    assert outcomes[0] == outcomes[1]
    assert outcomes[0][0] == ("ran" if answer == "a bool" else "refused"), outcomes[0]
    if answer != "a bool":
        assert outcomes[0][1].startswith("decision 19: source answered"), outcomes[0][1]


def test_a_replay_of_a_fast_run_on_the_reference_machine_is_that_run():
    runners = _runners()
    fast = runners[Engine.FAST].machine.run(RandomSource(7))
    ref = runners[Engine.REFERENCE].machine.run(ReplaySource(fast.path))
    assert differences(runners[Engine.FAST], fast, ref) == []


@pytest.mark.parametrize("bound", ["run budget", "instruction budget"])
def test_a_run_cut_or_out_of_budget_ends_on_the_same_step(bound: str):
    """The C loop checks the run's budget after every step and a CPU's instruction budget
    after every run, as the reference does."""
    if bound == "run budget":
        runners, budget = _runners(), RunBudget(ticks=3_001)
    else:
        runners, budget = _runners(insn_budget=2_003), None
    for seed in range(3):
        fast = runners[Engine.FAST].machine.run(RandomSource(seed), budget)
        ref = runners[Engine.REFERENCE].machine.run(RandomSource(seed), budget)
        assert differences(runners[Engine.FAST], fast, ref) == [], f"seed {seed}"
        if bound == "run budget":
            assert fast.cut and fast.verdict.event == "run_budget"
        else:
            assert fast.verdict.event == "budget"


def test_a_loop_that_draws_from_another_generator_is_caught(monkeypatch):
    """Perturbed: the C loop's random choices come from a generator seeded differently."""
    def other(source):
        rng = random.Random(source.seed + 1)
        return rng.getrandbits, rng.random

    monkeypatch.setattr(native_loop, "_draws", other)
    runners = _runners()
    fast = runners[Engine.FAST].machine.run(RandomSource(0))
    ref = runners[Engine.REFERENCE].machine.run(RandomSource(0))
    assert "path" in " ".join(differences(runners[Engine.FAST], fast, ref))


def test_a_loop_that_makes_the_wrong_unit_visible_is_caught(monkeypatch):
    """Perturbed: a view choice handed back makes the newest pending unit visible instead of
    the one chosen (when there are two or more)."""
    runners = _runners()
    machine = runners[Engine.FAST].machine
    refresh = machine._refresh

    def wrong(cpu, index):
        return refresh(cpu, cpu.view.pending_count - 1)

    monkeypatch.setattr(machine, "_refresh", wrong)
    found = []
    for seed in range(6):
        fast = machine.run(RandomSource(seed))
        ref = runners[Engine.REFERENCE].machine.run(RandomSource(seed))
        found += differences(runners[Engine.FAST], fast, ref)
    assert found


def test_a_loop_that_forgets_a_yield_is_caught(monkeypatch):
    """Perturbed: the state the C loop writes back loses every CPU's `yielded` flag; CPU
    choices then have other contexts (and round-robin picks other CPUs)."""
    runners = _runners()
    machine = runners[Engine.FAST].machine
    loop = machine._loop
    batch = loop._batch

    def forgetful(*args):
        out = batch(*args)
        for cpu in machine.cpus:
            cpu.state.yielded = False
        return out

    monkeypatch.setattr(loop, "_batch", forgetful)
    fast = machine.run(RandomSource(1))
    ref = runners[Engine.REFERENCE].machine.run(RandomSource(1))
    assert "path" in " ".join(differences(runners[Engine.FAST], fast, ref))


def test_the_loop_records_the_requests_the_reference_makes():
    """Interned choices: one object per request and value, with the request the reference
    loop makes for the same context (compared by value, context included)."""
    runners = _runners()
    fast = runners[Engine.FAST].machine.run(RandomSource(3))
    ref = runners[Engine.REFERENCE].machine.run(RandomSource(3))
    assert [c.request for c in fast.path] == [c.request for c in ref.path]
    kinds = {c.kind for c in fast.path}
    assert {Kind.CPU, Kind.QUANTUM, Kind.VIEW, Kind.IPI} <= kinds
    cpu_choices = [c for c in fast.path if c.kind is Kind.CPU]
    assert all(c.request.context is not None for c in cpu_choices)
    assert len({id(c) for c in cpu_choices}) < len(cpu_choices)  # shared, immutable


# ------------------------------------------------------------------ event mode

def _event_runners(name: str = "static_key", variant: str | None = None
                   ) -> dict[Engine, Runner]:
    return {e: Runner(SCENARIOS[name], variant, cpus=3, engine=e, decode=False,
                      event_mode=True) for e in Engine}


def _event_run(runner: Runner, prefix: list[int]) -> tuple[object, list[tuple]]:
    """An exhaustive run of `prefix` with footprints: its result and each step's footprint."""
    src = ExhaustiveSource(prefix, footprints=True)
    result = runner.machine.run(src)
    return result, [(s.node, s.cpu, frozenset(s.footprint.reads),
                     frozenset(s.footprint.writes)) for s in src.steps]


def _prefixes(runner: Runner, n: int, seed: int = 0) -> list[list[int]]:
    """The simplest path, and `n` paths that deviate from it at one choice each (then take
    the simplest values): preemptions, interrupts left pending, stale fetches."""
    path = _event_run(runner, [])[0].path
    base = [c.value for c in path]
    rng = random.Random(seed)
    out = [[]]
    for _ in range(n):
        at = rng.randrange(len(path))
        out.append(base[:at] + [(base[at] + 1 + rng.randrange(path[at].arity - 1))
                                % path[at].arity])
    return out


def _event_differences(runners: dict[Engine, Runner], prefixes: list[list[int]]) -> list[str]:
    found = []
    for k, prefix in enumerate(prefixes):
        fast, fast_steps = _event_run(runners[Engine.FAST], prefix)
        ref, ref_steps = _event_run(runners[Engine.REFERENCE], prefix)
        found += [f"run {k}: {d}" for d in differences(runners[Engine.FAST], fast, ref)]
        if fast_steps != ref_steps:
            first = next((i for i, (a, b) in enumerate(zip(fast_steps, ref_steps, strict=False))
                          if a != b), min(len(fast_steps), len(ref_steps)))
            found.append(f"run {k}: footprints (first at step {first})")
    return found


@pytest.mark.parametrize(("name", "variant"), [("static_key", None),
                                               ("z1_optprobe_shadow", "fixed"),
                                               ("z3_call_emulation", "buggy")])
def test_the_event_mode_loop_makes_the_reference_runs_and_footprints(monkeypatch, name,
                                                                    variant):
    """Event mode with footprints (what the exhaustive explorer runs): runs that deviate
    anywhere give the reference's paths, records, verdicts and every step's footprint; most
    steps are made in C, and each way of handing a step back happens: static_key's steps
    all end in C but for decided fetches, z1's CPUs with spontaneous NMIs are handed back
    once chosen, z3's buggy runs end in verdicts Python gives."""
    runners = _event_runners(name, variant)
    seen = _statuses(monkeypatch, runners[Engine.FAST])
    prefixes = _prefixes(runners[Engine.REFERENCE], 12)
    assert _event_differences(runners, prefixes) == []
    assert seen["steps in C"] > 0
    wanted = {"static_key": (native_loop.FETCH,), "z1_optprobe_shadow": (native_loop.CHOSEN,),
              "z3_call_emulation": (native_loop.RAN,)}[name]
    for status in wanted:
        assert seen[status] > 0, status


def test_ipis_handed_back_to_python_make_the_reference_runs(monkeypatch):
    """The IPIs the C loop delivers itself (deliver_ipi), handed back instead (as one whose
    frame C cannot push is): the reference's runs again, through the other path."""
    runners = _event_runners()
    seen = _statuses(monkeypatch, runners[Engine.FAST])
    prefixes = _prefixes(runners[Engine.REFERENCE], 4)
    assert _event_differences(runners, prefixes) == [] and seen[native_loop.IPI] == 0
    monkeypatch.setattr(native_loop, "InterruptEvent", None)  # (None: no IPI delivered in C)
    assert _event_differences(runners, prefixes) == [] and seen[native_loop.IPI] > 0


def test_the_loop_asks_an_exhaustive_source_only_its_prefix_deviations():
    """DecisionSource.follows: within the prefix the C loop answers the simplest values
    itself and asks the source the others, whose `pick` spends the bound; the reference
    asks every one. Made to fail: the loop answering every prefix value itself (the bound's
    spending would go unseen), or none."""
    class Asked(ExhaustiveSource):
        def pick(self, request, position):
            self.asked.append(position)
            return super().pick(request, position)

    runner = _event_runners()[Engine.FAST]
    for prefix in _prefixes(runner, 6, seed=3)[1:]:
        src = Asked(prefix, footprints=True, bound=Cost(2, 2, 1))
        src.asked = []
        path = runner.machine.run(src).path
        deviated = [k for k, c in enumerate(path[:len(prefix)]) if not c.simplest]
        assert deviated == [len(prefix) - 1]
        assert [k for k in src.asked if k < len(prefix)] == deviated
        assert src._spent != FREE  # the deviation spent its bound


def test_an_event_loop_whose_footprints_lose_a_location_is_caught(monkeypatch):
    """Perturbed: the footprints the C loop makes lose their IRQ-line read; the paths stay
    the same, the footprints (which steer DPOR) do not."""
    class Lossy(Footprint):
        @property
        def packed(self) -> bytes:
            return self.__dict__.get("kept", b"")

        @packed.setter
        def packed(self, entries: bytes) -> None:
            self.__dict__["kept"] = array("Q", (e for e in array("Q", entries)
                                                if e != irq(self.cpu))).tobytes()

    monkeypatch.setattr(native_loop, "Footprint", Lossy)
    runners = _event_runners()
    found = _event_differences(runners, _prefixes(runners[Engine.REFERENCE], 2))
    assert found and all("footprints" in f for f in found)


def test_an_event_loop_that_forgets_to_deliver_an_ipi_is_caught(monkeypatch):
    """Perturbed: a step handed back to deliver an IPI runs without delivering it (IPIs
    handed back, not delivered in C)."""
    monkeypatch.setattr(native_loop, "InterruptEvent", None)
    runners = _event_runners()
    loop = runners[Engine.FAST].machine._loop
    rest = loop._event_rest
    monkeypatch.setattr(loop, "_event_rest", lambda cpu, dec, status, value: rest(
        cpu, dec, native_loop.FETCH if status == native_loop.IPI else status, value))
    assert _event_differences(runners, [[]])


def test_a_runs_records_are_its_own_when_read_after_later_runs():
    """The C loop holds a run's records until Python reads them (emu/retired.py): read after
    two more runs of the same machine, or pickled, they are still the run's, equal to the
    reference's. Made to fail: the buffers handed to the next run's log without appending
    what they held."""
    import pickle

    runners = _event_runners()
    prefixes = _prefixes(runners[Engine.REFERENCE], 2, seed=1)
    fast = [runners[Engine.FAST].machine.run(ExhaustiveSource(p)) for p in prefixes]
    assert all(r.pending is not None for r in fast[-1].truth.retired)  # not read yet
    for prefix, result in zip(prefixes, fast, strict=True):
        ref = runners[Engine.REFERENCE].machine.run(ExhaustiveSource(prefix))
        assert differences(runners[Engine.FAST], result, ref) == []
        assert result.truth.retired == ref.truth.retired
    held = runners[Engine.FAST].machine.run(ExhaustiveSource(prefixes[0])).truth.retired[0]
    assert held.pending is not None
    assert pickle.loads(pickle.dumps(held)) == fast[0].truth.retired[0]


def test_records_made_in_c_are_those_their_classes_make(monkeypatch):
    """The C loop makes ExceptionEvent, InterruptEvent, Serialize and HandlerFrame without
    their __init__ (_native.c: make_record): every field is set, and each hashes (their
    values are the reference engine's: tests/test_engines.py). A class with a field C does
    not set, or whose default is not the one C writes, is refused before a run
    (check_records). Perturbed: the fields C names with one left out, a class with a field
    more, a default that differs; make_delivery setting one field less (by hand: this test
    and test_engines fail)."""
    import dataclasses

    from emu import native_cpu
    from emu.events import ExceptionEvent, InterruptEvent, Serialize

    native = native_module("machine")
    native_cpu.check_records(native)
    runner = Runner(SCENARIOS["static_key"], None, 3, event_mode=True, engine=Engine.FAST,
                    decode=False)
    made, frames = [], []
    for seed in range(4):
        result = runner.machine.run(RandomSource(seed))
        made += [e for e in result.truth.events
                 if type(e) in (ExceptionEvent, InterruptEvent, Serialize)]
        frames += [f for cpu in runner.machine.cpus for f in cpu.state.left]
    assert {type(e) for e in made} == {ExceptionEvent, InterruptEvent, Serialize}
    assert {e.vector for e in made if type(e) is ExceptionEvent} == {3} and frames
    for record in made + frames:
        assert all(hasattr(record, f.name) for f in dataclasses.fields(record))
        hash(record)

    short = {**native.RECORD_FIELDS, "serialize": native.RECORD_FIELDS["serialize"][:-1]}
    monkeypatch.setattr(native_cpu, "Serialize", Serialize)
    with pytest.raises(RuntimeError, match="Serialize"):
        native_cpu.check_records(_with(native, RECORD_FIELDS=short))

    @dataclasses.dataclass(frozen=True, slots=True)
    class Wider(Serialize):
        extra: int = 0

    monkeypatch.setattr(native_cpu, "Serialize", Wider)
    with pytest.raises(RuntimeError, match="Wider"):
        native_cpu.check_records(native)
    monkeypatch.setattr(native_cpu, "Serialize", Serialize)
    monkeypatch.setitem(native_cpu.C_DEFAULTS, "symbol", "?")  # a default C no longer writes
    with pytest.raises(RuntimeError, match="HandlerFrame.symbol"):
        native_cpu.check_records(native)


def _with(module, **attrs):
    """A stand-in for `module` with `attrs` replaced."""
    import types

    out = types.SimpleNamespace(**vars(module))
    for k, v in attrs.items():
        setattr(out, k, v)
    return out
