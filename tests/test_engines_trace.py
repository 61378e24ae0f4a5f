"""The native trace pipeline against the reference (issue 15): `Runner.check` of the same
RunResult under both engines gives the same flows, PT streams, decode reports both ways and
verdicts, on every shipped scenario and variant, seeds 0..2, quantum and event mode; the
decoder gives the same steps and the same errors at the same positions on damaged streams.

Each (scenario, variant) runs once in the default suite, its seed and mode rotating so that
every scenario meets every seed and both modes; TEXTPOKE_FULL_DIFF=1 runs the whole matrix."""

from __future__ import annotations

import os
import random
from dataclasses import replace

import pytest
from test_fuzz_trace import mutate_stream

from emu import layout
from emu.decisions import RandomSource
from emu.engine import Engine, native_module
from emu.retired import Retired
from harness.run import Outcome, Runner
from harness.scenario.shipped import SCENARIOS
from harness.trace import verify
from harness.trace.pt import native
from harness.trace.pt.decoder import DecodeResult, decode
from harness.trace.pt.image import Image, ImageError

pytestmark = pytest.mark.skipif(native_module("trace") is None,
                                reason="the native trace module is not built")

FULL = os.environ.get("TEXTPOKE_FULL_DIFF") == "1"
CASES = [(name, variant) for name, scn in SCENARIOS.items() for variant in scn.variant_names()]


def _matrix() -> list[tuple[str, str, int, bool]]:
    if FULL:
        return [(n, v, seed, event) for n, v in CASES for seed in range(3)
                for event in (False, True)]
    out = []
    for name in SCENARIOS:  # per scenario, k-th variant: seed k % 3, event mode k // 3 % 2
        mine = [v for n, v in CASES if n == name]
        out += [(name, v, k % 3, k // 3 % 2 == 1) for k, v in enumerate(mine)]
    return out


def differences(fast: Outcome, ref: Outcome) -> list[str]:
    """What differs between the two engines' outcomes of one run (empty: nothing)."""
    out = []
    if fast.verdict != ref.verdict:
        out.append(f"verdict: {fast.verdict} / {ref.verdict}")
    if fast.streams != ref.streams:
        out.append("PT streams")
    if len(fast.flows) != len(ref.flows) or any(
            a != b for a, b in zip(fast.flows, ref.flows, strict=False)):
        out.append("flows")
    if [r.to_json() for r in fast.decode] != [r.to_json() for r in ref.decode] or \
            [[c.verdict for c in r.cpus] for r in fast.decode] != \
            [[c.verdict for c in r.cpus] for r in ref.decode]:
        out.append("decode reports")
    return out


def both(runner: Runner, result) -> tuple[Outcome, Outcome]:
    runner.engine = Engine.FAST
    fast = runner.check(result)
    runner.engine = Engine.REFERENCE
    return fast, runner.check(result)


def same_decode(a: DecodeResult, b: DecodeResult) -> list[str]:
    out = []
    if a.steps != b.steps:
        first = next((i for i, (x, y) in enumerate(zip(a.steps, b.steps, strict=False))
                      if x != y), min(len(a.steps), len(b.steps)))
        out.append(f"steps ({len(a.steps)} / {len(b.steps)}, first differing {first})")
    if type(a.error) is not type(b.error) or str(a.error) != str(b.error) or \
            getattr(a.error, "offset", None) != getattr(b.error, "offset", None) or \
            getattr(a.error, "ip", None) != getattr(b.error, "ip", None):
        out.append(f"error: {a.error!r} / {b.error!r}")
    if a.ended != b.ended:
        out.append("ended")
    return out


def decodes(stream: bytes, text: bytes, records, backward: bool, max_steps: int):
    """(native, reference) DecodeResult of one stream; ImageError of the image as a result."""
    try:
        ref = decode(stream, Image(layout.TEXT_BASE, text, records, backward), max_steps)
    except ImageError as e:
        ref = DecodeResult([], e)
    try:
        fast = native.decode_result(stream, layout.TEXT_BASE, text, records, backward,
                                    max_steps)
    except ImageError as e:
        fast = DecodeResult([], e)
    return fast, ref


@pytest.mark.parametrize(("name", "variant", "seed", "event"), _matrix(),
                         ids=lambda v: str(v))
def test_both_engines_check_a_run_alike(name, variant, seed, event):
    runner = Runner(SCENARIOS[name], variant, event_mode=event)
    result = runner.machine.run(RandomSource(seed))
    fast, ref = both(runner, result)
    assert differences(fast, ref) == []
    assert isinstance(fast.flows[0], native.PackedFlow)  # the native path ran
    if ref.verdict.kind in ("decode_divergence", "ambiguous", "decode_error"):
        for cpu, (stream, flow) in enumerate(zip(ref.streams, ref.flows, strict=True)):
            for backward in (False, True):  # where decoding stops early: step by step too
                text = result.text_end if backward else result.text_start
                got = decodes(stream, text, result.sideband, backward, len(flow) + 16)
                assert same_decode(*got) == [], (cpu, backward)


@pytest.fixture(scope="module")
def base_runs():
    """Two runs whose streams are damaged below: one with records, one with events."""
    out = []
    for name, variant, seed in (("static_key", "correct", 0), ("z6_unsorted_batch", "buggy", 1)):
        runner = Runner(SCENARIOS[name], variant, cpus=2)
        out.append(runner.run(RandomSource(seed)))
    return out


def test_the_decoders_agree_step_by_step_on_whole_streams(base_runs):
    steps = 0
    for out in base_runs:
        res = out.result
        for stream, flow in zip(out.streams, out.flows, strict=True):
            for backward in (False, True):
                text = res.text_end if backward else res.text_start
                fast, ref = decodes(stream, text, res.sideband, backward, len(flow) + 16)
                assert same_decode(fast, ref) == []
                assert ref.ended or not out.verdict.ok
                steps += len(ref.steps)
    assert steps > 5000


def test_damaged_streams_decode_to_the_same_errors(base_runs):
    rng = random.Random(15)
    kinds: dict[str, int] = {}
    for k in range(120):
        out = base_runs[k % 2]
        cpu = rng.randrange(len(out.streams))
        stream, damage = mutate_stream(rng, out.streams[cpu])
        backward = rng.random() < 0.5
        res = out.result
        text = res.text_end if backward else res.text_start
        fast, ref = decodes(stream, text, res.sideband, backward, len(out.flows[cpu]) + 16)
        assert same_decode(fast, ref) == [], damage.what
        kinds[type(ref.error).__name__] = kinds.get(type(ref.error).__name__, 0) + 1
        reports = [verify.check([stream], [out.flows[cpu]], res.text_start, res.text_end,
                                res.sideband, backward, None, False, engine)
                   for engine in (Engine.FAST, Engine.REFERENCE)]
        assert reports[0].cpus == reports[1].cpus, damage.what
    # the damage reached every kind of error the decoder has
    assert {"PacketError", "DecodeError", "NoneType"} <= set(kinds), kinds


def test_a_record_outside_the_text_is_the_same_error_both_ways(base_runs):
    from emu.text_poke_record import TextPokeRecord
    out = base_runs[0]
    res = out.result
    bad = [*res.sideband, TextPokeRecord(5, 0, 0x1000, b"\x90", b"\xcc")]
    for backward in (False, True):
        text = res.text_end if backward else res.text_start
        fast, ref = decodes(out.streams[0], text, bad, backward, len(out.flows[0]) + 16)
        assert same_decode(fast, ref) == [] and ref.error is not None


def test_the_comparison_sees_a_difference():
    """A perturbation: the native engine checks a run with one retired IP changed, the
    reference the run itself; every part the run's trace feeds must differ."""
    runner = Runner(SCENARIOS["z4_bytewise"], "fixed", cpus=2)
    result = runner.machine.run(RandomSource(0))
    retired = result.truth.retired[1]
    bent = Retired(list(retired))
    bent.ips[len(bent) // 2] += 1
    truth = replace(result.truth, retired=[result.truth.retired[0], bent])
    runner.engine = Engine.FAST
    fast = runner.check(replace(result, truth=truth))
    runner.engine = Engine.REFERENCE
    ref = runner.check(result)
    assert differences(fast, ref) == ["verdict: " + f"{fast.verdict} / {ref.verdict}",
                                      "flows", "decode reports"]  # not a branch: same stream
    # and the step-by-step comparison sees one changed byte of a stream
    stream = bytearray(ref.streams[1])
    stream[len(stream) // 2] ^= 0x40
    fast_d, _ = decodes(bytes(stream), result.text_start, result.sideband, False,
                        len(ref.flows[1]) + 16)
    _, ref_d = decodes(ref.streams[1], result.text_start, result.sideband, False,
                       len(ref.flows[1]) + 16)
    assert same_decode(fast_d, ref_d) != []


def test_a_record_inside_a_decoded_instruction_drops_it():
    """The native walker keeps what it decoded per IP (insn_cache.py); a record that writes
    into the middle of an instruction must drop that instruction, not only those starting at
    the bytes written: a NOP5 whose last three bytes become those of a NOP4 and a NOP, with no
    INT3 guard (the CPU runs elsewhere meanwhile), is decoded as what ran, both ways."""
    from emu.text_poke_record import TextPokeRecord
    from harness.trace.pt.encoder import TraceConfig, encode_cpu
    from harness.trace.pt.flow import FlowItem

    base = layout.TEXT_BASE
    nop5, nop4 = bytes.fromhex("0f1f440000"), bytes.fromhex("0f1f4000")
    old = nop5 + bytes.fromhex("75f9" "90" "75fd" "ebf4")  # loop1: nop5; jnz loop1
    text = old + b"\xcc" * 52                             # loop2: nop; jnz loop2; jmp loop1
    new = bytearray(text)
    new[2:5] = b"\x40\x00\x90"
    code_at = {base + 5: old[5:7], base + 7: old[7:8], base + 8: old[8:10],
               base + 10: old[10:12]}
    run: list[tuple[int, bytes, int]] = []  # (ip, bytes, next ip)

    def loop1(times: int, patched: bool) -> None:
        for k in range(times):
            if patched:
                run.extend([(base, nop4, base + 4), (base + 4, b"\x90", base + 5)])
            else:
                run.append((base, nop5, base + 5))
            run.append((base + 5, code_at[base + 5], base if k + 1 < times else base + 7))

    loop1(3, False)
    for k in range(4):
        run += [(base + 7, code_at[base + 7], base + 8),
                (base + 8, code_at[base + 8], base + 7 if k < 3 else base + 10)]
    poke_tick = len(run) - 3  # in loop2: no instruction at the site is near it in time
    run.append((base + 10, code_at[base + 10], base))
    loop1(2, True)
    flow = [FlowItem(t, ip, code, cont) for t, (ip, code, cont) in enumerate(run, 1)]
    record = TextPokeRecord(poke_tick, 0, base + 2, old[2:5], bytes(new[2:5]))
    stream = encode_cpu(flow, base + 7, TraceConfig())
    for backward in (False, True):
        fast, ref = decodes(stream, bytes(new) if backward else text, [record], backward,
                            len(flow) + 16)
        assert same_decode(fast, ref) == [] and ref.ended
        assert verify.compare(0, flow, ref) is None  # decoded as it ran


@pytest.mark.skipif(native_module("trace") is None, reason="the native trace module is missing")
def test_more_records_in_doubt_than_the_native_decoder_takes_decode_as_the_reference():
    """Time known only at PSBs puts every record in doubt at every poked instruction; 130
    no-op records at one executed instruction are more than the C walker takes (128): that
    stream is decoded by the reference, the report the same as the reference's (not exit 3)."""
    from emu.text_poke_record import TextPokeRecord
    from harness.trace.pt.encoder import TraceConfig

    runner = Runner(SCENARIOS["static_key"], decode=False,
                    trace=TraceConfig(tsc_period=10**9))
    out = runner.run_seed(0)
    res = out.result
    tick, ip, _ = res.truth.retired[1][2]
    at = ip - layout.TEXT_BASE
    same = bytes(res.text_start[at:at + 4])
    assert res.text_end[at:at + 4] == same  # not a poked site: the records change nothing
    records = sorted(res.sideband + [TextPokeRecord(tick, 0, ip, same, same)] * 130,
                     key=lambda r: r.tick)
    with pytest.raises(native.TooMuchDoubt):
        native.decode(out.streams[1], layout.TEXT_BASE, res.text_start, records, False,
                      len(out.flows[1]) + 16, None)
    reports = [verify.check(out.streams, out.flows, res.text_start, res.text_end, records,
                            engine=engine) for engine in (Engine.FAST, Engine.REFERENCE)]
    assert reports[0].to_json() == reports[1].to_json()


# the encoder's other settings; long TNT matters only when TSCs do not flush every few bits
TRACE_OPTIONS = [{"ret_compression": False}, {"long_tnt": False, "tsc_period": 1000},
                 {"psb_period": 64}, {"tsc_period": 50}, {"cbr": 7}]


@pytest.mark.parametrize("option", TRACE_OPTIONS,
                         ids=lambda o: ",".join(f"{k}={v}" for k, v in o.items()))
@pytest.mark.parametrize("name", ["static_key", "z6_unsorted_batch"])
def test_both_engines_encode_and_check_alike_under_every_trace_option(name, option):
    """The encoder's other settings (a token or the CLI may carry them): the same streams,
    flows, decode reports and verdicts from both engines."""
    from harness.trace.pt.encoder import TraceConfig

    variant = "buggy" if name.startswith("z") else None
    runner = Runner(SCENARIOS[name], variant, trace=TraceConfig(**option))
    result = runner.machine.run(RandomSource(1))
    fast, ref = both(runner, result)
    assert differences(fast, ref) == []
    first, *rest = option  # the option itself took effect: not the streams without it
    without = Runner(SCENARIOS[name], variant, trace=TraceConfig(**{k: option[k] for k in rest}))
    assert fast.streams != without.check(result).streams, first
