"""A user's scenario file is first-class (issue 17, item 1): `textpoke run|explore|replay|zoo`
load scenarios from a user's file or module, a replay token records where its scenario came
from, and a file that cannot be loaded is bad input naming the file."""

import json
import re
import textwrap
from pathlib import Path

import pytest

from harness.cli import main
from harness.explore.token import Token, TokenError
from harness.scenario.load import Origin

EXAMPLE = (Path(__file__).parent.parent / "examples" / "test_my_sequence.py").read_text()
BROKEN = EXAMPLE.replace('"record", ', "").replace("cpus=3", "cpus=2")  # the decoder notices


def _explore(capsys, *args: str) -> tuple[int, dict]:
    rc = main(["explore", *args, "--schedules", "1", "--no-shrink", "--json"])
    return rc, json.loads(capsys.readouterr().out)


@pytest.fixture
def races(tmp_path, monkeypatch) -> Path:
    """A user's file of races, in a directory of its own (the working directory)."""
    assert BROKEN != EXAMPLE
    path = tmp_path / "my_races.py"
    path.write_text(BROKEN)
    monkeypatch.chdir(tmp_path)
    return path


def test_explore_a_files_scenario_and_replay_its_token_from_elsewhere(races, capsys,
                                                                      monkeypatch):
    rc, doc = _explore(capsys, "my_races.py::my_jump_flip")
    assert rc == 1 and doc["failed"][0]["verdict"] == "decode_divergence"
    token = doc["failed"][0]["token"]
    assert Token.decode(token).origin == Origin(file=str(races.resolve()))
    monkeypatch.chdir(races.parent.parent)  # the token says where the file is
    assert main(["replay", token]) == 1
    assert "my_jump_flip [correct]: decode_divergence" in capsys.readouterr().out
    # the file changed: another build, refused as such (exit 2), not replayed
    races.write_text(BROKEN.replace('"sync", "retire"', '"sync", "sync", "retire"'))
    assert main(["replay", token]) == 2
    assert "another build" in capsys.readouterr().err


def test_scenarios_option_adds_a_files_names(races, capsys):
    assert main(["run", "my_jump_flip", "--scenarios", "my_races.py"]) == 1
    assert "my_jump_flip [correct] seed 0: decode_divergence" in capsys.readouterr().out
    assert main(["scenarios", "--scenarios", str(races)]) == 0
    assert re.search(r"^my_jump_flip +my INT3 sequence$", capsys.readouterr().out, re.M)
    assert main(["run", "my_jump_flip"]) == 2  # without the file, it is not known
    assert "unknown scenario 'my_jump_flip'" in capsys.readouterr().err


def test_a_modules_scenario(races, capsys):
    pkg = races.parent / "mypkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "races.py").write_text(BROKEN)
    rc, doc = _explore(capsys, "mypkg.races::my_jump_flip")
    assert rc == 1 and Token.decode(doc["failed"][0]["token"]).origin == \
        Origin(module="mypkg.races")
    assert main(["replay", doc["failed"][0]["token"]]) == 1


def test_jobs_workers_load_the_users_scenario(races, capsys):
    rc = main(["explore", "my_races.py::my_jump_flip", "--schedules", "3", "--jobs", "2",
               "--no-shrink", "--json"])
    doc = json.loads(capsys.readouterr().out)
    assert rc == 1 and doc["failures"] == 3


@pytest.mark.parametrize("text, error", [
    ("x = (\n", r"my_races.py, line 1: SyntaxError"),
    ("import no_such_module_textpoke\n", r"my_races.py, line 1: ModuleNotFoundError"),
    ("raise SystemExit(3)\n", r"my_races.py, line 1: SystemExit"),
])
def test_a_file_that_cannot_load_is_bad_input_naming_it(races, capsys, text, error):
    races.write_text(text)
    for argv in (["explore", "my_races.py::x"], ["run", "z4_bytewise", "--scenarios",
                                                  "my_races.py"]):
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert re.search(error, err) and "Traceback" not in err, err


def test_unknown_name_in_a_file_and_a_missing_file(races, capsys):
    assert main(["run", "my_races.py::nope"]) == 2
    assert "no scenario named 'nope'; it defines: my_jump_flip" in capsys.readouterr().err
    assert main(["run", "missing.py::x"]) == 2
    assert "missing.py: no such file" in capsys.readouterr().err


def test_token_origin_field_is_validated():
    from_doc = Token._from_doc
    good = Token("s", "v", 2, (), "f" * 16, origin=Origin(file="/a/b.py"))
    assert Token.decode(good.encode()) == good
    for bad in (3, "", "dir:/a.py", "file:relative.py", "module:not a name", "x" * 5000):
        with pytest.raises(TokenError, match="token field origin"):
            from_doc({**json.loads(json.dumps(_doc(good))), "o": bad})


def _doc(tok: Token) -> dict:
    import base64
    import zlib

    body = tok.encode().split(".")[1]
    return json.loads(zlib.decompress(base64.urlsafe_b64decode(body + "=" * (-len(body) % 4))))


def test_the_command_a_pytest_failure_prints_works_from_the_shell(pytester, capsys,
                                                                  monkeypatch):
    pytester.makepyfile(test_mine=BROKEN.replace("schedules=10", "schedules=1"))
    result = pytester.runpytest("-p", "no:cacheprovider")
    result.assert_outcomes(failed=1)
    token = re.search(r"replay: textpoke replay (tp2\.\S+)", result.stdout.str()).group(1)
    monkeypatch.chdir(Path(__file__).parent)
    assert main(["replay", token]) == 1, capsys.readouterr().err
    assert "my_jump_flip [correct]: decode_divergence" in capsys.readouterr().out


def test_a_user_card_joins_the_zoo(races, monkeypatch):
    races.write_text(textwrap.dedent("""
        from dataclasses import replace
        from harness.scenario.shipped import SCENARIOS

        mine = replace(SCENARIOS["z4_bytewise"], name="my_z4", card=None)
    """))
    from harness import zoo as zoo_module
    from harness.scenario.load import ScenarioRef

    monkeypatch.setattr(zoo_module, "SCENARIOS", {})  # only the user's: cheap
    rows = zoo_module.zoo(buggy_budget=2, fixed_budget=1,
               extra=[ScenarioRef("my_z4", Origin(file=str(races)))])
    mine = [r for r in rows if r.scenario == "my_z4"]
    assert [r.card for r in mine] == ["my_z4"] and mine[0].found and mine[0].fixed_passed == 1
    assert Token.decode(mine[0].token).origin == Origin(file=str(races))
