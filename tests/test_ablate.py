"""Issue 17: `textpoke ablate` drops and swaps the steps of a poking sequence and explores
every mutant."""

from __future__ import annotations

from emu.path import Cost
from harness.ablate import KERNEL_STEPS, AblationRow, ablate, mutants, table
from harness.cli import main
from harness.scenario.op import PokeSteps
from harness.scenario.scenario import Scenario
from harness.scenario.shipped import get
from harness.scenario.site import JumpLabel

MINE = ["int3", "sync", "tail", "record", "sync", "first", "sync", "retire"]
FLIP = Scenario("my_jump_flip", "my INT3 sequence", cpus=3,
                sites=[JumpLabel("j0", key="k")], ops=[PokeSteps("j0", MINE)])


def test_the_kernel_sequence_has_a_row_per_step_each_its_generic_variant():
    found = list(mutants(get("static_key")))
    assert found[0].variant == "correct" and len(found) == 1 + len(KERNEL_STEPS)
    assert [m.variant for m in found[1:]] == ["no_int3", "no_sync1", "no_sync2",
                                                "record_early", "record_late", "no_sync3",
                                                "no_refwait"]


def test_a_step_sequence_has_a_row_per_drop_and_per_swap():
    found = list(mutants(FLIP))
    drops = [m for m in found if m.mutation.startswith("drop")]
    swaps = [m for m in found if m.mutation.startswith("swap")]
    assert len(drops) == len(MINE) and len(swaps) == len(MINE) - 1
    (drop_int3,) = [m for m in drops if "'int3'" in m.mutation]
    assert drop_int3.scenario.ops[0].steps == MINE[1:]
    assert FLIP.ops[0].steps == MINE  # the scenario itself is left as it was


def test_the_cli_prints_the_table_and_exits_by_the_unmutated_sequence(capsys):
    args = ["ablate", "z4_bytewise", "--variant", "fixed", "--cpus", "3", "--schedules", "3",
            "--limit", "3", "--preemptions", "0", "--delays", "0"]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "drop the sync after the tail" in out and "| none (the sequence as written) |" in out
    assert main(["ablate", "z4_bytewise", "--variant", "buggy", "--cpus", "3", "--schedules",
                 "3", "--limit", "3", "--preemptions", "0", "--delays", "0"]) == 1


def test_a_sequence_with_nothing_to_mutate_is_refused_before_any_run():
    import pytest

    from harness.scenario.op import Raw
    from harness.scenario.text_poke_loc import ScenarioError

    bare = Scenario("bare", "raw code only", sites=[JumpLabel("j0", key="k")],
                    ops=[Raw("    nop\n")], cpus=2)
    with pytest.raises(ScenarioError, match="nothing to mutate"):
        next(mutants(bare))
    with pytest.raises(Exception, match="--preemptions"):
        ablate(FLIP, bound=Cost(-1, 0, 0))


def test_a_mutant_is_named_by_an_id_that_rebuilds_it():
    import pytest

    from harness.scenario.load import ScenarioRef, resolve
    from harness.scenario.mutation import mutate
    from harness.scenario.text_poke_loc import ScenarioError

    drop = mutate(FLIP, "p0.op0.drop0")
    assert drop.name == "my_jump_flip~p0.op0.drop0" and drop.ops[0].steps == MINE[1:]
    assert [m.scenario.name for m in mutants(FLIP)][1] == drop.name
    z4 = resolve(ScenarioRef("z4_bytewise~k.no_sync1.fixed", None))
    assert z4.variant("ablate_no_sync1").cfg == get("z4_bytewise").variant("fixed").cfg | 1
    for bad in ("p0.op0.drop99", "p1.op0.drop0", "k.nonsense.fixed", "k.no_sync1.nope", "x"):
        with pytest.raises(ScenarioError):
            mutate(FLIP, bad)


def test_a_mutants_token_from_a_users_file_replays_from_the_shell(tmp_path, capsys):
    """Dropping the INT3 guard fails, the sequence as written does not, and the failing
    mutant's token replays from the shell (its scenario is named `NAME~ID`)."""
    import json
    import subprocess
    import sys

    mine = tmp_path / "mine.py"
    mine.write_text("from harness.scenario.op import PokeSteps\n"
                    "from harness.scenario.scenario import Scenario\n"
                    "from harness.scenario.site import JumpLabel\n"
                    f"MINE = {MINE!r}\n"
                    "FLIP = Scenario('my_jump_flip', 'my INT3 sequence', cpus=3,\n"
                    "                sites=[JumpLabel('j0', key='k')], "
                    "ops=[PokeSteps('j0', MINE)])\n")
    assert main(["ablate", f"{mine}::my_jump_flip", "--schedules", "6", "--preemptions", "0",
                 "--delays", "0", "--limit", "5", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert rows[0]["verdict"] is None and "no failure" in rows[0]["finding"]
    (token,) = [r["token"] for r in rows if r["mutation"].startswith("drop 'int3'")]
    assert token and "| drop 'int3' (step 0) |" in table([AblationRow(**r) for r in rows])
    replay = [sys.executable, "-m", "harness.cli", "replay"]
    done = subprocess.run([*replay, token], capture_output=True, text=True)
    assert done.returncode == 1 and "my_jump_flip~p0.op0.drop0" in done.stdout, done.stderr
    mine.write_text(mine.read_text().replace("'int3', ", ""))  # the file changed since
    stale = subprocess.run([*replay, token], capture_output=True, text=True)
    assert stale.returncode == 2 and "Traceback" not in stale.stderr, stale.stderr
