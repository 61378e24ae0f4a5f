"""Issue 17, items 2 and 3: a scenario's own handlers, named flags and shared variables."""

from __future__ import annotations

import pytest

from emu import x86
from harness.run import Runner
from harness.scenario.build import build
from harness.scenario.op import Raw, StaticKey
from harness.scenario.scenario import Scenario, Variant
from harness.scenario.site import JumpLabel
from harness.scenario.text_poke_loc import ScenarioError

# An own #BP entry that counts the INT3s it sees, then runs the kernel's (int3_entry, whose
# template is the one to copy for a handler variant: stack gap, saved registers, regs pointer).
OWN = """
my_bp:
    lock inc qword ptr [bp_hits]
    jmp int3_entry
"""
MARK = """    test qword ptr [V_CFG], CFG_MARK_IT
    jz mark_skip{i}
    mov qword ptr [marked], 1
mark_skip{i}:
"""


def scenario(**changes) -> Scenario:
    kw = dict(name="own", description="own handler, flag and variables",
              sites=[JumpLabel("j0", key="k")],
              ops=[Raw(MARK), StaticKey("k", True), StaticKey("k", False)], cpus=3,
              extra_asm=OWN, handlers={"bp": "my_bp"}, flags=["MARK_IT"],
              variables={"bp_hits": 8, "marked": 8},
              variants={"plain": Variant(), "marked": Variant(flags=("MARK_IT",))},
              default_variant="plain")
    return Scenario(**(kw | changes))


def test_an_own_handler_flag_and_variables_take_effect():
    runs = {}
    for variant in ("plain", "marked"):
        runner = Runner(scenario(), variant, decode=False)
        m, prog = runner.machine, runner.built.program
        assert runner.built.image.idt[x86.BP] == prog.sym("my_bp")
        hits = 0
        for seed in range(6):
            out = runner.run_seed(seed)
            assert out.ok, out.verdict
            hits += m.mem.read_u64(runner.built.data["bp_hits"])
        runs[variant] = (hits, m.mem.read_u64(runner.built.data["marked"]))
    assert runs["plain"][1] == 0 and runs["marked"][1] == 1  # the flag, by name
    assert runs["plain"][0] > 0  # the observers hit INT3s, and each went through my_bp


def test_own_variables_are_scheduling_points_of_the_exhaustive_search():
    built = build(scenario(), "plain", event_mode=True)
    addr = built.data["bp_hits"]
    assert any(lo <= addr < hi for lo, hi in built.config.watch)


@pytest.mark.parametrize("changes,message", [
    ({"handlers": {"bp": "nowhere"}}, "nowhere"),
    ({"handlers": {"int3": "my_bp"}}, "unknown vector 'int3'"),
    ({"variants": {"plain": Variant(flags=("MARK_ID",))}}, "variant flag 'MARK_ID'"),
    ({"flags": ["MARK IT"]}, "flag 'MARK IT' is not a name"),
    ({"variables": {"bp_hits": 0, "marked": 8}}, "variable 'bp_hits'"),
    ({"variables": {"V_CFG": 8, "bp_hits": 8, "marked": 8}}, "V_CFG names"),
])
def test_a_bad_own_declaration_is_a_scenario_error_naming_it(changes, message):
    with pytest.raises(ScenarioError, match=message):
        build(scenario(**changes), "plain")


def test_the_readme_race_is_found_from_its_file_and_replayed_from_its_token(capsys):
    """examples/my_race.py (an own #BP handler, a named flag, an own variable): explored from
    the command line by file, and replayed from the token it printed."""
    import json
    from pathlib import Path

    from harness.cli import main

    race = f"{Path(__file__).parent.parent / 'examples' / 'my_race.py'}::my_race"
    assert main(["explore", race, "--schedules", "4", "--json"]) == 0
    capsys.readouterr()
    assert main(["explore", race, "--variant", "buggy", "--schedules", "2", "--no-shrink",
                 "--json"]) == 1
    failed = json.loads(capsys.readouterr().out)["failed"]
    assert failed and main(["replay", failed[0]["token"]]) == 1
    assert failed[0]["verdict"] in capsys.readouterr().out
