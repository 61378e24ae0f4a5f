"""Issue 17, item 4: several patcher CPUs, each with its own ops (guest_code/patchers.S)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from emu.verdict import VerdictKind
from harness.run import Runner
from harness.scenario.build import build
from harness.scenario.op import StaticKey
from harness.scenario.scenario import Scenario
from harness.scenario.shipped import get
from harness.scenario.site import JumpLabel
from harness.scenario.text_poke_loc import ScenarioError

TWO = Scenario("two_patchers", "two CPUs each enable then disable their own key, at once",
               sites=[JumpLabel("a0", key="a"), JumpLabel("a1", key="a"),
                      JumpLabel("b0", key="b")],
               patchers=[[StaticKey("a", True), StaticKey("a", False)],
                         [StaticKey("b", True), StaticKey("b", False)]],
               cpus=4)


def test_two_patchers_under_text_mutex_pass_and_both_keys_move():
    runner = Runner(TWO, decode=False)
    prog, mem = runner.built.program, runner.machine.mem
    assert [b.entry for b in runner.built.image.boot[:2]] == [prog.sym("patcher"),
                                                              prog.sym("patcher_1")]
    for seed in range(4):
        out = runner.run_seed(seed)
        assert out.ok, out.verdict
        # both patchers did both their ops: 2 + 2 * 3 in V_DONE_GEN's mixed radix
        assert mem.read_u64(runner.built.data["V_DONE_GEN"]) == 2 + 2 * 3
        retired = out.result.truth.retired
        assert any(ip == prog.sym("op_done_3") for _, ip, _ in retired[1])  # patcher 1's last


def test_without_text_mutex_two_patchers_clobber_the_batch():
    """text_poke_bp_batch() on two CPUs at once: one bp_patching_desc, one tp_vec."""
    runner = Runner(TWO, "no_text_mutex", decode=False)
    kinds = {runner.run_seed(seed).verdict.kind for seed in range(3)}
    assert kinds - {VerdictKind.PASS}, kinds


def test_the_outcome_check_follows_each_sites_own_patcher():
    """Perturbed: as if every site were patcher 0's, site b0's states never change, and the
    correct sequence is reported as a semantics failure (the check is live)."""

    class Misowned(Scenario):
        def site_patchers(self) -> list[int]:
            return [0] * len(self.sites)

    wrong = Misowned(**{f: getattr(TWO, f) for f in ("name", "description", "sites",
                                                       "patchers", "cpus")})
    runner = Runner(wrong, decode=False)
    kinds = {runner.run_seed(seed).verdict.kind for seed in range(4)}
    assert VerdictKind.SEMANTICS in kinds


def test_a_site_two_patchers_change_is_refused():
    both = Scenario("both", "", sites=[JumpLabel("j", key="k")],
                    patchers=[[StaticKey("k", True)], [StaticKey("k", False)]])
    with pytest.raises(ScenarioError, match="site 'j' is changed by patchers \\[0, 1\\]"):
        build(both)


def test_ops_and_patchers_together_are_refused_and_an_observer_is_required():
    with pytest.raises(ScenarioError, match="not both"):
        build(Scenario("x", "", sites=TWO.sites, ops=[StaticKey("a", True)],
                       patchers=TWO.patchers))
    with pytest.raises(ScenarioError, match="needs 3\\.\\."):
        build(TWO, cpus=2)


def test_one_patcher_builds_without_the_several_patchers_code():
    prog = build(get("static_key")).program
    assert "text_mutex_lock" not in prog.symbols and "check_outcome_gens" not in prog.symbols
    assert "no_text_mutex" not in get("static_key").variant_names()
    assert "no_text_mutex" in TWO.variant_names()


def test_several_patchers_from_a_users_file_on_the_command_line(tmp_path: Path):
    src = Path(__file__).read_text()
    start, end = src.index("TWO = Scenario("), src.index("\n\n\ndef test_two_patchers")
    races = tmp_path / "races.py"
    races.write_text("from harness.scenario.op import StaticKey\n"
                     "from harness.scenario.scenario import Scenario\n"
                     "from harness.scenario.site import JumpLabel\n\n" + src[start:end] + "\n")
    cmd = [sys.executable, "-m", "harness.cli", "run", f"{races}::two_patchers", "--seed"]
    ok = subprocess.run([*cmd, "0"], capture_output=True, text=True)
    assert ok.returncode == 0, ok.stderr
    bad = subprocess.run([*cmd, "0", "--variant", "no_text_mutex"], capture_output=True,
                         text=True)
    assert bad.returncode == 1, bad.stdout + bad.stderr
