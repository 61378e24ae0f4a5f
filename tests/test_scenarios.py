"""Issue 3: the guest patching code, its users, the scenarios and their verdicts."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from emu.decisions import ReplaySource
from emu.events import TextStore
from emu.path import decode_path, encode_path
from emu.selftest import Scripted
from emu.verdict import VerdictKind
from harness.run import Runner, outcome_counts
from harness.scenario import int3_selftest
from harness.scenario.build import build
from harness.scenario.guest import Cfg
from harness.scenario.guest_abi import KPROBE
from harness.scenario.op import StaticCallUpdate, StaticKey
from harness.scenario.scenario import Scenario, Variant
from harness.scenario.shipped import SCENARIOS
from harness.scenario.site import CallSite, JumpLabel
from harness.scenario.text_poke_loc import ScenarioError, text_poke_loc_init
from tests.conftest import one_changed

REPROS = json.loads((Path(__file__).parent / "data" / "repros.json").read_text())
SEEDS = 12  # per scenario here; bench/sweep.py runs 200


def _observer_runs(out, label):
    """Per observer CPU, (tick, bytes) of every execution of the instruction at `label`."""
    addr = out.built.program.sym(label)
    return {cpu: [(t, b) for t, ip, b in out.result.truth.retired[cpu] if ip == addr]
            for cpu in range(1, out.built.cpus)}


def _done_tick(out, op_index):
    addr = out.built.program.sym(f"op_done_{op_index}")
    return next(t for t, ip, _ in out.result.truth.retired[0] if ip == addr)


def _qs_after(out, cpu, tick):
    """The tick at which `cpu` next passed its quiescent point (the top of its loop)."""
    top = out.built.program.sym("obs_top")
    return next(t for t, ip, _ in out.result.truth.retired[cpu] if ip == top and t > tick)


@pytest.mark.parametrize("name", list(SCENARIOS))
def test_correct_sequence_passes(name):
    runner = Runner(SCENARIOS[name])
    for seed in range(SEEDS):
        out = runner.run_seed(seed)
        assert out.ok, f"{name} seed {seed}: {out.verdict}"


@pytest.mark.parametrize("key", sorted(REPROS))
def test_buggy_variant_reproduces_from_its_decision_sequence(key):
    name, variant = key.split("/")
    repro = REPROS[key]
    runner = Runner(SCENARIOS[name], variant)
    path = decode_path(repro["path"])
    first = runner.run(ReplaySource(path))
    assert repro["expect"] == SCENARIOS[name].variants[variant].expect
    assert SCENARIOS[name].variants[variant].accepts(first.verdict.kind), first.verdict
    assert _replays_identically(runner, first, ReplaySource(path))


def _replays_identically(runner, first, source) -> bool:
    """The determinism check: a second, independent run from `source` records the same ground
    truth as `first`, byte for byte."""
    again = runner.run(source)
    return again.result.truth is not first.result.truth and \
        again.result.truth.digest() == first.result.truth.digest()


def test_the_determinism_check_sees_one_changed_decision():
    path = decode_path(REPROS["z4_bytewise/buggy"]["path"])
    runner = Runner(SCENARIOS["z4_bytewise"], "buggy")
    first = runner.run(ReplaySource(path))
    assert _replays_identically(runner, first, ReplaySource(path))
    assert not _replays_identically(runner, first, one_changed(path))


def test_every_buggy_zoo_variant_has_a_reproduction():
    for scn in SCENARIOS.values():
        for vname, var in scn.variants.items():
            if var.expect:
                assert f"{scn.name}/{vname}" in REPROS


def test_every_zoo_card_has_a_buggy_and_a_fixed_variant():
    cards = {s.card: s for s in SCENARIOS.values() if s.card}
    assert sorted(cards) == [f"Z{i}" for i in range(1, 8)]
    for scn in cards.values():
        assert scn.variants["fixed"].expect is None and scn.variants["buggy"].expect


def test_static_key_every_observer_takes_the_jump_after_enable():
    out = Runner(SCENARIOS["static_key"]).run_seed(5)
    assert out.ok
    done = _done_tick(out, 0)  # static_key_enable() returned
    disable = next(e.tick for e in out.result.truth.events  # static_key_disable()'s first poke
                   if isinstance(e, TextStore) and e.tick > done)
    for cpu, runs in _observer_runs(out, "site_jl0").items():
        start = _qs_after(out, cpu, done)  # the next pass that began after it
        after = [b for t, b in runs if start < t < disable]
        assert after and all(b[0] == 0xE9 for b in after), cpu
        assert any(b == bytes.fromhex("0f1f440000") for t, b in runs if t < done)


def test_static_key_observers_saw_both_branches():
    runner = Runner(SCENARIOS["static_key"])
    assert runner.run_seed(1).ok
    for site, counts in outcome_counts(runner).items():
        assert set(counts) == {1, 2}, site


def test_static_call_calls_the_new_target_after_update():
    runner = Runner(SCENARIOS["static_call"])
    out = runner.run_seed(2)
    assert out.ok
    prog = out.built.program
    fn_b = prog.sym("fn_b")
    done = _done_tick(out, 0)
    for cpu in range(1, out.built.cpus):
        start = _qs_after(out, cpu, done)
        second = next(e.tick for e in out.result.truth.events
                      if isinstance(e, TextStore) and e.tick > done)
        ips = [ip for t, ip, _ in out.result.truth.retired[cpu] if start < t < second]
        assert fn_b in ips
        assert prog.sym("fn_a") not in ips
    assert set(outcome_counts(runner)["sc0"]) == {1, 2}


def test_kprobe_hits_and_detour():
    runner = Runner(SCENARIOS["kprobe_optimize"])
    out = runner.run_seed(3)
    assert out.ok
    hits = runner.machine.mem.read_u64(runner.built.data.vars["KPROBE_kp0"]
                                       + KPROBE.offset("hits"))
    assert hits > 0
    detour = out.built.program.sym("kp0_detour")
    slot = out.built.program.sym("kp0_slot")
    ran = {ip for cpu in range(1, out.built.cpus) for _, ip, _ in out.result.truth.retired[cpu]}
    assert detour in ran and slot in ran  # optimized and INT3-armed paths were both taken
    final = runner.machine.mem.read(out.built.program.sym("site_kp0"), 5)
    assert final == bytes.fromhex("554889e553")  # disarmed: the original prologue is back


def test_call_promotion_reaches_every_target():
    runner = Runner(SCENARIOS["call_promotion"])
    assert runner.run_seed(4).ok
    assert set(outcome_counts(runner)["promo"]) == {1, 2, 3}


def test_int3_selftest_analogue():
    from harness.scenario.guest import kernel_data
    from harness.scenario.guest_abi import INT3_SELFTEST

    verdict, m = int3_selftest.run()
    assert verdict.ok, verdict
    val = kernel_data(1)["V_SCRATCH"] + INT3_SELFTEST.offset("val")
    assert m.mem.read_u64(val) == 1


def test_int3_selftest_fails_without_the_stack_gap():
    verdict, _ = int3_selftest.run(Cfg.NO_GAP)
    assert verdict.kind == "guest_fault" and verdict.fetched[:2] == b"\x48\xcf"  # at IRETQ


def test_batch_is_sorted_and_flushed_on_a_lower_address():
    """Descending jump entries still work with the kernel's ordering flush (Z6 fixed)."""
    runner = Runner(SCENARIOS["z6_unsorted_batch"], "fixed")
    out = runner.run_seed(0)
    assert out.ok
    records = out.result.sideband
    assert len(records) == 4  # one record per site, one batch each after the flushes
    assert [r.addr for r in records] == sorted((r.addr for r in records), reverse=True)


def test_records_carry_old_and_new_bytes():
    out = Runner(SCENARIOS["static_key"]).run_seed(0)
    nop5 = bytes.fromhex("0f1f440000")
    enable, disable = out.result.sideband[:4], out.result.sideband[4:]
    assert len(out.result.sideband) == 8
    assert all(r.old == nop5 and r.new[0] == 0xE9 for r in enable)
    assert all(r.new == nop5 and r.old[0] == 0xE9 for r in disable)


# ---------------------------------------------------------------- bad input
def test_text_poke_loc_init_rules():
    assert text_poke_loc_init(0, bytes.fromhex("0f1f440000")) == (0xE9, 0)
    assert text_poke_loc_init(0, bytes.fromhex("6690")) == (0xEB, 0)
    assert text_poke_loc_init(0, bytes.fromhex("c3cccccccc")) == (0xC3, 0)
    assert text_poke_loc_init(0, bytes.fromhex("e810000000")) == (0xE8, 16)
    for bad, why in [("b801000000", "none of the instructions"), ("c390", "padded with INT3"),
                     ("0f1f400000", "instruction length 4"), ("e8100000", "instruction length 5"),
                     ("e81000000090", "len 6"), ("", "len 0")]:
        with pytest.raises(ScenarioError, match=why):
            text_poke_loc_init(0x1000, bytes.fromhex(bad))


def test_a_site_that_is_not_an_instruction_boundary_is_refused():
    scn = Scenario("bad", "x", sites=[JumpLabel("j", key="k", offset=2)],
                   ops=[StaticKey("k", True)])
    with pytest.raises(ScenarioError, match="not an instruction boundary"):
        build(scn)


def test_a_poke_text_poke_loc_init_rejects_is_refused():
    scn = Scenario("bad", "x", sites=[CallSite("c", key="s", funcs=("f1", "f2"), offset=0)],
                   ops=[StaticCallUpdate("s", "f2")], cpus=2)
    build(scn)  # a CALL is fine
    from harness.scenario import site as sc
    orig = sc.CallSite.instructions
    try:
        sc.CallSite.instructions = lambda self, prog, state: [(0, bytes.fromhex("b801000000"))]
        with pytest.raises(ScenarioError, match="text_poke_loc_init"):
            build(scn)
    finally:
        sc.CallSite.instructions = orig


def test_poke_steps_refuse_an_unknown_step_or_site():
    from harness.scenario.op import PokeSteps
    for op, why in [(PokeSteps("j", ["int3", "synk"]), "unknown step 'synk'"),
                    (PokeSteps("x", ["int3"]), "no jump label named 'x'")]:
        with pytest.raises(ScenarioError, match=why):
            build(Scenario("bad", "x", sites=[JumpLabel("j", key="k")], ops=[op], cpus=2))


def test_guest_text_poke_loc_init_bugs_on_a_bad_entry():
    """The guest's own text_poke_loc_init() BUG()s (guest_assert) on what it cannot emulate."""
    from harness.scenario.op import Raw
    scn = Scenario("bad_guest", "x", sites=[JumpLabel("j", key="k")], cpus=2,
                   ops=[Raw("    lea rdi, [rip + site_j]\n    lea rsi, [rip + bad_insn]\n"
                            "    mov edx, 5\n    xor ecx, ecx\n    call text_poke_bp\n")],
                   extra_asm="bad_insn:\n    mov eax, 1\n")
    out = Runner(scn).run(Scripted())
    assert out.verdict.kind == "guest_assert" and "text_poke_loc_init" in out.verdict.detail


def test_unknown_scenario_variant_and_cpus():
    with pytest.raises(ScenarioError, match="unknown variant"):
        Runner(SCENARIOS["static_key"], "nope")
    with pytest.raises(ScenarioError, match="needs 2..64 CPUs"):
        Runner(SCENARIOS["static_key"], cpus=1)


def test_path_codec_round_trip_and_errors():
    out = Runner(SCENARIOS["z4_bytewise"]).run_seed(0)
    text = encode_path(out.result.path)
    assert decode_path(text) == out.result.path
    for bad in ("x2.1", "c2", "c2.5", "c.1", "c2.1,,"):
        with pytest.raises(ValueError, match="decision"):
            decode_path(bad)


def _cli(*args):
    return subprocess.run([sys.executable, "-m", "harness", *args], capture_output=True,
                          text=True, timeout=300)


def test_cli_run_writes_verdict_and_truth(tmp_path):
    out = _cli("run", "static_call", "--seed", "3", "--out", str(tmp_path))
    assert out.returncode == 0, out.stderr
    doc = json.loads((tmp_path / "verdict.json").read_text())
    assert doc["scenario"] == "static_call" and doc["verdict"] == "pass" and doc["seed"] == 3
    assert doc["variant"] == "correct" and doc["decisions"] > 0 and "detail" in doc
    line = json.loads((tmp_path / "cpu1.truth.jsonl").read_text().splitlines()[0])
    assert set(line) == {"t", "ip", "bytes"} and line["ip"].startswith("0x")


def test_cli_run_failing_variant_exits_1(tmp_path):
    seed = REPROS["z6_unsorted_batch/buggy"]["seed"]
    out = _cli("run", "z6_unsorted_batch", "--variant", "buggy", "--seed", str(seed),
               "--out", str(tmp_path))
    assert out.returncode == 1
    assert json.loads((tmp_path / "verdict.json").read_text())["verdict"] == "unexpected_trap"


@pytest.mark.parametrize("args,msg", [(["run", "nope"], "unknown scenario"),
                                      (["run", "static_key", "--variant", "x"], "unknown variant"),
                                      (["run", "static_key", "--cpus", "0"], "needs 2..64")])
def test_cli_bad_input_exits_2(args, msg):
    out = _cli(*args)
    assert out.returncode == 2 and msg in out.stderr and "Traceback" not in out.stderr


def test_cli_scenarios_lists_them_all():
    out = _cli("scenarios")
    assert out.returncode == 0
    assert all(name in out.stdout for name in SCENARIOS)


def test_a_misspelt_expected_verdict_kind_is_refused():
    """A variant's expected kinds are VerdictKinds: a typo would otherwise make the zoo's
    `found` impossible without a word."""
    with pytest.raises(ValueError, match="torn_exec"):
        Variant(Cfg(0), "torn_exec|hang")
    assert Variant(Cfg(0), "torn_execution|hang").accepts(VerdictKind.HANG)
    assert not Variant(Cfg(0), "torn_execution").accepts(VerdictKind.HANG)
