"""The fast engine's machine against the reference (issue 15): the same decisions must give the
same run. Every shipped scenario and variant, quantum and event mode, through both machines:
identical path (choices and their requests), retired records per CPU, events, sideband records,
final RIPs, text snapshots and verdicts; and a small exhaustive search (with DPOR footprints)
visits the same paths in the same order. The trace side has its own comparisons."""

from __future__ import annotations

import random
from dataclasses import replace

import pytest

from emu import engine as engines
from emu import layout, selftest, x86
from emu.cpu import Clock, Cpu
from emu.decisions import RandomSource
from emu.engine import Engine, native_module
from emu.layout import Access
from emu.machine import RunResult
from emu.native_cpu import NativeCpu
from emu.path import Choice, Cost
from emu.retired import Retired
from emu.truth import GroundTruth
from harness.explore.exhaustive import explore_exhaustive
from harness.oracles import torn_execution
from harness.run import Runner
from harness.scenario.op import Raw, StaticKey
from harness.scenario.scenario import GENERIC_VARIANTS, Scenario
from harness.scenario.shipped import SCENARIOS
from harness.scenario.site import JumpLabel, ObserverCode
from harness.trace.pt import native as trace_native
from tests.test_soundness import STACK_RACE

pytestmark = pytest.mark.skipif(native_module("machine") is None,
                                reason="emu._native was not compiled (setup.py)")

# every shipped scenario with each of its own variants, and the generic variants once
CASES = [(name, v) for name, s in SCENARIOS.items() for v in (list(s.variants) or [None])]
CASES += [("static_key", v) for v in GENERIC_VARIANTS if v != "correct"]
SEEDS = range(3)


def _record(runner: Runner, result: RunResult, engine: Engine) -> dict[str, object]:
    """Everything a run produced that the engines must agree on, by name (the torn oracle
    run by `engine`: its C site filter is compared too)."""
    torn = torn_execution(result.truth, runner.built.sites, engine)
    return {
        "path": [(c.kind, c.arity, c.value, c.request) for c in result.path],
        **{f"retired cpu{i}": r for i, r in enumerate(result.truth.retired)},
        "events": result.truth.events,
        "sideband": result.sideband,
        "final rips": result.final_rips,
        "text start": result.text_start,
        "text end": result.text_end,
        "verdict": (result.verdict, torn),
        "ticks, steps, cut": (result.ticks, result.steps, result.cut),
    }


def differences(runner: Runner, fast: RunResult, ref: RunResult) -> list[str]:
    """The names of what differs between a fast and a reference run (empty: identical)."""
    a, b = _record(runner, fast, Engine.FAST), _record(runner, ref, Engine.REFERENCE)
    assert a.keys() == b.keys()
    out = []
    for key in a:
        if a[key] != b[key]:
            x, y = a[key], b[key]
            if isinstance(x, list | Retired) and isinstance(y, list | Retired):
                first = next((i for i, (p, q) in enumerate(zip(x, y, strict=False)) if p != q),
                             min(len(x), len(y)))
                key += f" (first at {first}: {x[first] if first < len(x) else None} vs "
                key += f"{y[first] if first < len(y) else None})"
            out.append(key)
    return out


def _runners(name: str, variant: str | None, event: bool) -> dict[Engine, Runner]:
    return _runners_of(SCENARIOS[name], variant, event)


def _runners_of(scn: Scenario, variant: str | None, event: bool) -> dict[Engine, Runner]:
    return {e: Runner(scn, variant, event_mode=event, engine=e, decode=False) for e in Engine}


@pytest.mark.parametrize("event", [False, True], ids=["quantum", "event"])
@pytest.mark.parametrize(("name", "variant"), CASES, ids=[f"{n}-{v}" for n, v in CASES])
def test_both_machines_run_the_same_schedule(name: str, variant: str | None, event: bool):
    runners = _runners(name, variant, event)
    assert isinstance(runners[Engine.FAST].machine.cpus[0], NativeCpu)
    assert type(runners[Engine.REFERENCE].machine.cpus[0]) is Cpu
    for seed in SEEDS:
        fast = runners[Engine.FAST].machine.run(RandomSource(seed))
        ref = runners[Engine.REFERENCE].machine.run(RandomSource(seed))
        assert fast.ticks > 0
        assert differences(runners[Engine.FAST], fast, ref) == [], f"seed {seed}"
        states = {e: [c.state for c in r.machine.cpus] for e, r in runners.items()}
        assert states[Engine.FAST] == states[Engine.REFERENCE], f"seed {seed}: CPU states"


# CPU 0 sends CPU 1 an NMI whose handler spins once (a step ends at its PAUSE), so the C loop
# runs the handler's IRET, which ends NMI blocking there: CPU 1's next steps read its NMI line
# again (their footprints say so)
NMI_IRET = Scenario(
    "nmi_iret", "an NMI handler whose IRET ends a step of its own", cpus=2,
    sites=[JumpLabel("j0", key="k")], handlers={"nmi": "pausing_nmi"},
    ops=[Raw("    mov edi, 1\n    mov esi, 2\n    mov eax, HC_SEND_IPI\n    out HC_PORT, eax\n"
             "    nop\n"), StaticKey("k", True)],
    extra_asm="pausing_nmi:\n    pause\n    iretq\n")


# CPU 1, with spontaneous NMIs left, sends CPU 0 an NMI, then itself one, and runs on after
# each: the C loop leaves the NMI points after a hypercall to Python, which makes NMI_RAISE
# choices after the first (24 of its NMIs in the search below), none after the second (the
# NMI is pending)
SEND_NMI = "    mov edi, {}\n    mov esi, 2\n    mov eax, HC_SEND_IPI\n    out HC_PORT, eax\n"
SELF_NMI = Scenario(
    "self_nmi", "an observer sends CPU 0 an NMI, then itself one, and runs on", cpus=2,
    sites=[ObserverCode("self_nmi", SEND_NMI.format(1) + "    nop\n    nop\n" +
                        SEND_NMI.format(2) + "    nop\n    nop\n")],
    ops=[Raw("    nop\n")], observer_nmis=3, nmi_rarity=1000, handlers={"nmi": "quiet_nmi"},
    extra_asm="quiet_nmi:\n    iretq\n")


def test_an_nmi_a_cpu_sends_itself_leaves_the_rest_of_its_run_to_python():
    """Perturbed: the C loop making NMI_RAISE choices after a hypercall (after the second, a
    choice at each point where the reference makes none)."""
    runners = _runners_of(SELF_NMI, None, True)
    for seed in SEEDS:
        fast = runners[Engine.FAST].machine.run(RandomSource(seed))
        ref = runners[Engine.REFERENCE].machine.run(RandomSource(seed))
        assert differences(runners[Engine.FAST], fast, ref) == [], f"seed {seed}"


@pytest.mark.parametrize(("scenario", "variant", "cpus", "bound", "limit"), [
    ("z4_bytewise", "fixed", None, Cost(1, 0, 0), None),
    (STACK_RACE, None, 2, Cost(1, 0, 0), None),  # a race through another CPU's stack
    (NMI_IRET, None, 2, Cost(1, 0, 0), None),
    # spontaneous NMIs, raised at a step's start and at NMI points inside runs, where the C
    # loop makes the NMI_RAISE choices (the first 20 of its 225 runs)
    ("z1_optprobe_shadow", "buggy", None, Cost(0, 0, 1), 20),
    (SELF_NMI, None, 2, Cost(0, 0, 1), None),  # NMIs raised by Python after a hypercall
], ids=["z4_bytewise", "stack_race", "nmi_iret", "z1_nmis", "self_nmi"])
def test_both_machines_search_the_same_space(scenario, variant, cpus, bound, limit):
    """An exhaustive search with the DPOR reduction: the footprints the C hooks collect steer
    which paths come next, so equal paths in equal order need equal footprints too (and each
    step's footprint is compared)."""
    scn = SCENARIOS[scenario] if isinstance(scenario, str) else scenario
    visited: dict[Engine, list[tuple[object, ...]]] = {}
    for eng in Engine:
        runner = Runner(scn, variant, cpus, event_mode=True, engine=eng, decode=False)
        seen: list[tuple[object, ...]] = []

        class Out:
            def __init__(self, result: RunResult) -> None:
                self.ok = result.verdict.ok

        def run(src, runner=runner, seen=seen):
            steps: list[tuple[int, frozenset[int], frozenset[int]]] = []
            done = src.step_done
            src.step_done = lambda fp: (steps.append((fp.cpu, frozenset(fp.reads),
                                                      frozenset(fp.writes))), done(fp))
            result = runner.machine.run(src)
            seen.append((tuple((c.kind, c.arity, c.value) for c in result.path), tuple(steps),
                         result.verdict))
            return Out(result)

        res = explore_exhaustive(run, bound, reduce=True, limit=limit)
        assert res.exhausted or limit is not None
        visited[eng] = seen
    assert len(visited[Engine.FAST]) > 10
    assert visited[Engine.FAST] == visited[Engine.REFERENCE]


def test_the_comparison_sees_a_one_instruction_difference():
    """The differential check is not vacuous: one retired record dropped, one choice changed,
    one final RIP moved are each reported, by name."""
    runners = _runners("static_key", None, False)
    runner = runners[Engine.FAST]
    fast = runner.machine.run(RandomSource(0))
    ref = runners[Engine.REFERENCE].machine.run(RandomSource(0))
    assert differences(runner, fast, ref) == []

    retired = [Retired(list(r)) for r in fast.truth.retired]
    del_at = len(retired[1]) // 2
    retired[1] = Retired(list(retired[1])[:del_at] + list(retired[1])[del_at + 1:])
    dropped = replace(fast, truth=GroundTruth(fast.truth.ncpus, retired, fast.truth.events))
    assert [d.split(" ")[0:2] for d in differences(runner, dropped, ref)] == [["retired",
                                                                              "cpu1"]]
    path = list(fast.path)
    k = next(i for i, c in enumerate(path) if c.arity > 2)
    c = path[k]
    path[k] = Choice(c.kind, c.arity, (c.value + 1) % c.arity, c.request)
    assert [d.split(" ")[0] for d in differences(runner, replace(fast, path=path), ref)] == [
        "path"]
    moved = replace(fast, final_rips=[r + 1 for r in fast.final_rips])
    assert [d.split(" (")[0] for d in differences(runner, moved, ref)] == ["final rips"]


def test_without_the_native_module_the_fast_engine_runs_the_reference_machine(monkeypatch):
    fast = Runner(SCENARIOS["z4_bytewise"], "fixed", engine=Engine.FAST, decode=False)
    assert isinstance(fast.machine.cpus[0], NativeCpu)  # installed: the native hooks
    monkeypatch.setattr(engines, "native_module", lambda part: None)
    monkeypatch.setattr(trace_native, "native_module", lambda part: None)
    assert not trace_native.available(Engine.FAST)  # the trace part falls back too
    missing = Runner(SCENARIOS["z4_bytewise"], "fixed", engine=Engine.FAST, decode=False)
    assert missing.engine is Engine.FAST
    assert all(type(c) is Cpu for c in missing.machine.cpus)
    assert type(missing.machine.clock) is Clock
    ref = Runner(SCENARIOS["z4_bytewise"], "fixed", engine=Engine.REFERENCE, decode=False)
    a, b = missing.machine.run(RandomSource(1)), ref.machine.run(RandomSource(1))
    assert differences(missing, a, b) == []
    missing.decode = ref.decode = True
    checked = missing.check(a), ref.check(b)
    assert [r.to_json() for r in checked[0].decode] == [r.to_json() for r in checked[1].decode]
    assert checked[0].streams == checked[1].streams and checked[0].decode


def test_the_native_effect_table_is_the_reference_one():
    """The C hook classifies retired bytes as emu.x86.effect does: every prefix/REX/opcode
    combination the classification looks at, and random encodings."""
    native = native_module("machine")
    prefixes = [b"", b"\x66", b"\xf3", b"\xf0\x2e", b"\x48", b"\x66\x41"]
    bodies = [bytes([op]) for op in range(256)] + [
        b"\x0f" + bytes([b]) for b in range(256)] + [
        b"\x8e" + bytes([m]) for m in range(256)] + [b"\xf3\x90", b"\xf4", b"\x0f\x01\xf9"]
    rng = random.Random(15)
    samples = [p + b for p in prefixes for b in bodies]
    samples += [bytes(rng.randrange(256) for _ in range(rng.randrange(1, 16)))
                for _ in range(3000)]
    wrong = [s.hex() for s in samples if native.effect(s) != x86.effect(s)]
    assert wrong == []
    kinds = {x86.effect(s) for s in samples}
    assert kinds == set(x86.Effect)  # every class was exercised


@pytest.mark.parametrize("check", selftest.CHECKS, ids=[f.__name__ for f in selftest.CHECKS])
def test_every_machine_self_check_passes_on_the_fast_engine(check):
    """The self-checks drive what no scenario does (RDTSC, RDTSCP, HLT, #UD, #PF, nested NMIs)
    and check its architectural result, here on the native hooks."""
    result = check(engine=Engine.FAST)
    assert result.ok, result.detail


def test_the_c_tlb_fill_translates_as_the_layout_does():
    """The fast engine's TLB fill hook translates in C; Layout.translate is the reference:
    every region's edges, each side of every guard page, each access kind."""
    runner = Runner(SCENARIOS["static_key"], None, 3, engine=Engine.FAST, decode=False)
    cpu, lay = runner.machine.cpus[0], runner.machine.layout
    edges = [layout.TEXT_BASE, layout.TEXT_BASE + lay.text_size, layout.DATA_BASE,
             layout.DATA_BASE + lay.data_size, layout.STACK_BASE,
             layout.STACK_BASE + lay.stacks_size, layout.POKE_BASE,
             layout.POKE_BASE + lay.text_size, 0, 2**64 - 1]
    edges += [lay.stack_top(c) - lay.stack_size + d for c in range(3) for d in (-layout.PAGE, 0)]
    vas = {max(0, min(2**64 - 1, e + d)) for e in edges for d in (-8, -1, 0, 1, 8)}
    for va in sorted(vas):
        for acc in Access:
            assert cpu._nat.translate(va, acc) == lay.translate(va, acc), (hex(va), acc)


def test_an_int3_whose_frame_c_cannot_push_is_delivered_by_python():
    """Event mode: the C loop delivers an INT3's #BP when C can push its frame; here the
    stack has 16 bytes left, the push reaches the guard page, and delivery.py, the reference,
    reports the overflow on both engines. Perturbed (the C loop ending the step anyway), the
    fast engine runs on into the handler it never entered."""
    low = layout.STACK_BASE + layout.STACK_GUARD  # CPU 0's lowest stack byte
    scn = Scenario("overflow", "an INT3 with no room for its frame", cpus=2,
                   sites=[JumpLabel("j0", key="k")],
                   ops=[Raw(f"    mov rsp, {low + 16:#x}\n    int3\n")])
    runners = _runners_of(scn, None, True)
    fast = runners[Engine.FAST].machine.run(RandomSource(0))
    ref = runners[Engine.REFERENCE].machine.run(RandomSource(0))
    assert fast.verdict.event == "stack_overflow", str(fast.verdict)
    assert differences(runners[Engine.FAST], fast, ref) == []


@pytest.mark.parametrize("name", ["static_key", "z1_optprobe_shadow"])
def test_a_dropped_fast_machine_is_collected(name: str):
    """Its C objects hold Python ones that hold them back (the OUT hook's _on_out_c, the
    NMI point's machine): cycles the collector must see through (the C Cpu's traverse). A
    z1 machine, whose NMI point is the machine's, was never freed before."""
    import gc
    import weakref

    runner = Runner(SCENARIOS[name], None, event_mode=True, engine=Engine.FAST, decode=False)
    runner.machine.run(RandomSource(0))
    machine = weakref.ref(runner.machine)
    del runner
    gc.collect()
    assert machine() is None


def test_the_fast_engine_pushes_every_interrupt_frame_of_a_run_in_c(monkeypatch):
    """delivery.py's common case in C (NativeCpu.push_frame): every exception and IPI of a
    static_key run; the cases it leaves to Python (no gate, no stack: test_machine.py's
    #DF and triple-fault tests, on both engines) give the reference's verdicts."""
    from emu.native_cpu import NativeCpu

    taken: list[bool] = []
    push = NativeCpu.push_frame

    def counted(self, vector, rip, err):
        taken.append(push(self, vector, rip, err))
        return taken[-1]
    monkeypatch.setattr(NativeCpu, "push_frame", counted)
    runner = Runner(SCENARIOS["static_key"], None, 3, engine=Engine.FAST, decode=False)
    runner.run_seed(1)
    assert len(taken) > 10 and all(taken)


@pytest.mark.parametrize(("name", "variant"), [("static_key", None), ("z4_bytewise", "buggy"),
                                               ("kprobe_optimize", None)])
def test_a_full_fetch_pool_is_emptied_with_its_translations(monkeypatch, name, variant):
    """emu/fetch_pages.c with one spare slot: the pool fills again and again, and each time
    every translation goes with it, so both engines still run the same schedules (perturbed:
    an emptied pool whose translations stay, or no TLB flush after a page is remapped)."""
    monkeypatch.setattr("emu.native_cpu.FETCH_SLOTS_SPARE", 1)
    runners = _runners(name, variant, True)
    for seed in SEEDS:
        fast = runners[Engine.FAST].machine.run(RandomSource(seed))
        ref = runners[Engine.REFERENCE].machine.run(RandomSource(seed))
        assert differences(runners[Engine.FAST], fast, ref) == [], f"seed {seed}"
    pages = [c.fetch_pages() for c in runners[Engine.FAST].machine.cpus]
    assert sum(p[5] for p in pages) > 0  # emptied


def test_fetch_pages_keep_the_translations_of_contents_seen_before():
    """The fast engine's point of emu/fetch_pages.c: a run that repeats an earlier one's
    views fills no new slot, and so translates nothing anew (the first run's contents are
    all in the pool), while its pages do switch slots."""
    runner = _runners("static_key", None, True)[Engine.FAST]
    cpus = runner.machine.cpus
    runner.machine.run(RandomSource(0))
    first = [c.fetch_pages() for c in cpus]
    runner.machine.run(RandomSource(0))
    again = [c.fetch_pages() for c in cpus]
    assert [a[4] for a in again] == [f[4] for f in first]  # made: no new contents
    assert sum(a[3] - f[3] for a, f in zip(again, first, strict=True)) > 0  # switches
    assert all(a[5] == 0 for a in again)
    # quantum mode drops translations instead (NativeCpu.fetch_from_pages has why)
    quantum = _runners("static_key", None, False)[Engine.FAST].machine
    assert [c.fetch_pages() for c in quantum.cpus] == [None] * len(quantum.cpus)


@pytest.mark.parametrize("engine", [Engine.FAST, Engine.REFERENCE])
@pytest.mark.parametrize("event", [True, False])
def test_an_error_inside_the_text_store_hook_is_raised_not_a_verdict(monkeypatch, engine, event):
    """The text-store hook is called from C on the fast engine (bind_store), through the
    binding on the reference: what it raises is the harness's error either way (exit 3 at
    the command line), not a run that passes or fails. (Perturbed: a C hook that drops the
    error, and the fast runs pass.)"""
    from emu.fetch_view import FetchView

    runner = Runner(SCENARIOS["static_key"], None, event_mode=event, engine=engine,
                    decode=False)

    def broken(self, off, data):
        raise RuntimeError("write_own is broken")

    monkeypatch.setattr(FetchView, "write_own", broken)
    with pytest.raises(RuntimeError, match="write_own is broken"):
        runner.run(RandomSource(0))
