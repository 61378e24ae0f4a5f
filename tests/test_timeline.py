"""Issue 16: `textpoke timeline`, the picture of a run. The tests read the SVG's element ids
(xml.etree), so they check what is drawn, not that a file exists."""

from __future__ import annotations

import json
import re
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from emu.decisions import ReplaySource
from emu.events import TextStore
from emu.path import decode_path
from harness import cli
from harness.run import Runner, write_artifacts
from harness.scenario.shipped import SCENARIOS
from harness.timeline import ExecKind, from_run_dir
from harness.timeline_draw import draw
from harness.trace import sideband

REPROS = json.loads((Path(__file__).parent / "data" / "repros.json").read_text())
# text_poke_bp_batch's steps (arch/x86/kernel/alternative.c), as a batch does them
KERNEL = ["int3", "sync", "tail", "record", "sync", "first", "sync", "refs"]
SVG = "{http://www.w3.org/2000/svg}"


def _run(tmp: Path, name: str, variant: str | None = None, seed: int = 1,
         path: str | None = None):
    runner = Runner(SCENARIOS[name], variant)
    out = runner.run(ReplaySource(decode_path(path))) if path else runner.run_seed(seed)
    write_artifacts(out, None if path else seed, tmp)
    return out


def _ids(svg: Path) -> list[str]:
    return [el.get("id") for el in ET.parse(svg).getroot().iter() if el.get("id")]


def _text_of(svg: Path, gid: str) -> str:
    root = ET.parse(svg).getroot()
    el = next(e for e in root.iter() if e.get("id") == gid)
    return " ".join("".join(t.itertext()) for t in el.iter(f"{SVG}text"))


def _phases(ids: list[str]) -> list[str]:
    """The phase kinds in the order of their numbers (phase-<n>-<kind>)."""
    found = sorted((int(m.group(1)), m.group(2)) for i in ids
                   if (m := re.fullmatch(r"phase-(\d+)-([a-z0-9]+)", i)))
    return [k for _, k in found]


@pytest.fixture(scope="module")
def static_key(tmp_path_factory):
    """A passing static_key run (two key flips, four sites, three observers) and its SVG."""
    d = tmp_path_factory.mktemp("static_key")
    out = _run(d, "static_key")
    assert out.ok, out.verdict
    return out, d, draw(from_run_dir(d), d / "t.svg")


@pytest.fixture(scope="module")
def z2(tmp_path_factory):
    """Z2's buggy variant from its recorded decisions: a handler faults after teardown."""
    d = tmp_path_factory.mktemp("z2")
    out = _run(d, "z2_handler_vs_teardown", "buggy",
               path=REPROS["z2_handler_vs_teardown/buggy"]["path"])
    assert not out.ok
    return out, d, draw(from_run_dir(d), d / "t.svg")


def test_every_record_and_store_has_an_element(static_key):
    out, _, svg = static_key
    ids = set(_ids(svg))
    stores = [e for e in out.result.truth.events if isinstance(e, TextStore)]
    assert len(out.result.sideband) == 8 and len(stores) == 48
    assert {i for i in ids if i.startswith("record-")} == \
        {f"record-{n}" for n in range(len(out.result.sideband))}
    per_cpu: dict[int, int] = {}
    want = set()
    for e in stores:
        want.add(f"store-{e.cpu}-{per_cpu.setdefault(e.cpu, 0)}")
        per_cpu[e.cpu] += 1
    assert {i for i in ids if i.startswith("store-")} == want


def test_phases_of_the_kernel_sequence_in_order(static_key):
    _, _, svg = static_key
    assert _phases(_ids(svg)) == KERNEL + KERNEL  # enable the key, then disable it


def test_phases_come_from_the_run_not_the_scenario(tmp_path):
    """The record_late variant emits the record after the first byte: the picture says so."""
    _run(tmp_path, "static_key", "record_late")
    svg = draw(from_run_dir(tmp_path), tmp_path / "t.svg")
    late = ["int3", "sync", "tail", "sync", "first", "record", "sync", "refs"]
    assert _phases(_ids(svg)) == late + late


def test_every_site_execution_is_drawn_and_classified(static_key):
    out, d, svg = static_key
    ids = _ids(svg)
    execs = [i for i in ids if i.startswith("exec-")]
    inside = sum(1 for cpu in range(out.built.cpus) for _, ip, _ in out.result.truth.retired[cpu]
                 if any(a <= ip < a + n for _, a, n, _ in out.built.sites))
    assert len(execs) == inside > 0
    kinds = {i.rsplit("-", 1)[1] for i in execs}
    assert kinds == {"old", "int3", "new"}  # a passing run: never torn
    assert not any(i.startswith("exec-0-") for i in execs)  # the patcher runs no site
    tl = from_run_dir(d)
    bp = {(e.cpu, e.tick) for e in out.result.truth.events
          if e.kind == "exception" and e.vector == 3}
    int3s = [e for e in tl.executions if e.kind is ExecKind.INT3]
    assert len(int3s) == len(bp)  # each INT3 executed is a #BP taken


def test_a_torn_execution_is_drawn_where_the_oracle_says(tmp_path):
    out = _run(tmp_path, "z4_bytewise", "buggy", path=REPROS["z4_bytewise/buggy"]["path"])
    assert out.verdict.kind == "torn_execution"
    tl = from_run_dir(tmp_path)
    torn = [e for e in tl.executions if e.kind is ExecKind.TORN]
    assert (torn[0].cpu, torn[0].tick) == (out.verdict.cpu, out.verdict.extra["tick"])
    assert (tl.divergence.cpu, tl.divergence.tick) == (torn[0].cpu, torn[0].tick)


def test_divergence_marked_and_named_for_a_failing_run(z2, static_key):
    out, _, svg = z2
    ids = _ids(svg)
    assert "divergence" in ids
    label = _text_of(svg, "divergence-label")
    assert f"cpu{out.verdict.cpu}" in label and out.verdict.symbol in label
    assert "#BP at site_kp0" in label  # the exception it happened inside
    assert "divergence" not in _ids(static_key[2])  # a passing run has none


def test_dropping_a_record_changes_the_picture(z2, static_key, tmp_path):
    _, d, svg = static_key
    for f in d.iterdir():
        if f.suffix != ".svg":
            (tmp_path / f.name).write_bytes(f.read_bytes())
    records = sideband.decode((d / "sideband.bin").read_bytes())
    (tmp_path / "sideband.bin").write_bytes(b"".join(map(sideband.encode, records[:-1])))
    ids, fewer = set(_ids(svg)), set(_ids(draw(from_run_dir(tmp_path), tmp_path / "t.svg")))
    assert f"record-{len(records) - 1}" in ids and f"record-{len(records) - 1}" not in fewer
    assert ids - fewer  # and only what the record was
    assert "divergence" not in fewer and "divergence" in _ids(z2[2])


def test_same_run_same_bytes(z2, tmp_path):
    _, d, svg = z2
    again = draw(from_run_dir(d), tmp_path / "again.svg")
    assert again != svg and again.read_bytes() == svg.read_bytes()
    png1 = draw(from_run_dir(d), tmp_path / "1.png")
    png2 = draw(from_run_dir(d), tmp_path / "2.png")
    assert png1.read_bytes() == png2.read_bytes() and png1.read_bytes()[:4] == b"\x89PNG"


def test_cli_draws_and_refuses_bad_input(z2, tmp_path, capsys):
    _, d, _ = z2
    assert cli.main(["timeline", str(d), "--out", str(tmp_path / "z2.svg")]) == 0
    assert "divergence" in _ids(tmp_path / "z2.svg")
    capsys.readouterr()
    bad = [([str(tmp_path / "missing"), "--out", str(tmp_path / "a.svg")], "no such directory"),
           ([str(tmp_path), "--out", str(tmp_path / "a.svg")], "not a run directory"),
           ([str(d), "--out", str(tmp_path / "a.pdf")], "unknown picture format '.pdf'"),
           ([str(d), "--out", str(tmp_path / "no" / "a.svg")], "does not exist")]
    for args, why in bad:
        assert cli.main(["timeline", *args]) == 2, args
        err = capsys.readouterr().err
        assert why in err and "Traceback" not in err, err
    (d / "events.jsonl").rename(tmp_path / "events.jsonl")  # a damaged run directory
    try:
        assert cli.main(["timeline", str(d), "--out", str(tmp_path / "a.svg")]) == 2
        assert "events.jsonl" in capsys.readouterr().err
    finally:
        (tmp_path / "events.jsonl").rename(d / "events.jsonl")


def test_failing_replay_and_explore_name_the_picture(tmp_path, capsys):
    out_dir = tmp_path / "ex"
    code = cli.main(["explore", "z4_bytewise", "--variant", "buggy", "--schedules", "2",
                     "--stop-at-first", "--no-shrink", "--out", str(out_dir), "--json"])
    doc = json.loads(capsys.readouterr().out)
    assert code == 1 and doc["timeline"] == str(out_dir / "timeline.svg")
    assert "divergence" in _ids(out_dir / "timeline.svg")
    token = doc["failed"][0]["token"]
    assert cli.main(["replay", token, "--out", str(tmp_path / "rp")]) == 1
    assert f"timeline: {tmp_path / 'rp' / 'timeline.svg'}" in capsys.readouterr().out
    assert (tmp_path / "rp" / "timeline.svg").read_bytes() == \
        (out_dir / "timeline.svg").read_bytes()  # the same schedule, the same picture
    # the pytest plugin's --textpoke-out in a place it cannot write: the failure is still
    # reported (a warning says why there is no picture), never replaced by that error
    from harness.pytest_plugin import Textpoke, _Check

    (tmp_path / "file").write_text("")
    tp = Textpoke("random", 1, 0, 3, None, out=tmp_path / "file" / "test_x")
    chk = _Check(SCENARIOS["z4_bytewise"], "buggy", frozenset(), None)
    with pytest.warns(UserWarning, match="--textpoke-out"):
        assert tp._picture(chk, token) is None
    tp.out = tmp_path / "arts" / "test_x"
    assert "divergence" in _ids(tp._picture(chk, token))
    # a passing run's --out gets no picture (it costs a second; explorations need not pay)
    assert cli.main(["run", "z4_bytewise", "--out", str(tmp_path / "ok")]) == 0
    assert "timeline" not in capsys.readouterr().out
    assert not (tmp_path / "ok" / "timeline.svg").exists()


def test_pytest_report_names_the_picture(pytester, tmp_path):
    """--textpoke-out: a failing check's report names its picture, which shows the failure."""
    example = (Path(__file__).parent.parent / "examples" / "test_my_sequence.py").read_text()
    broken = example.replace('"record", ', "").replace("schedules=10", "schedules=3")
    assert broken != example  # no record: the trace decoder must notice
    pytester.makepyfile(test_mine=broken)
    out = tmp_path / "art"
    result = pytester.runpytest("-p", "no:cacheprovider", f"--textpoke-out={out}")
    result.assert_outcomes(failed=1)
    picture = out / "test_my_sequence_is_safe" / "timeline.svg"
    assert f"timeline: {picture}" in result.stdout.str()
    assert "divergence" in _ids(picture)
    assert "record-0" not in _ids(picture)  # the sequence emitted none


def test_a_users_scenario_gets_its_sites_and_an_undecodable_fetch_is_torn(tmp_path):
    """examples/my_race.py (not shipped: its symbols come from the run's own snapshot) runs
    from the middle of its jump label, where the bytes do not decode (#UD, no instruction
    retired): torn, at j0+1."""
    from harness.scenario.load import parse, resolve

    scn = resolve(parse(str(Path(__file__).parent.parent / "examples" / "my_race.py")
                        + "::my_race"))
    out = Runner(scn, "buggy").run_seed(0)
    write_artifacts(out, 0, tmp_path)
    assert out.verdict.site == "j0"
    tl = from_run_dir(tmp_path)
    assert [s.name for s in tl.sites] == ["j0"] and "no symbols" not in tl.title
    torn = [e for e in tl.executions if e.kind is ExecKind.TORN]
    assert [(e.cpu, e.ip) for e in torn] == [(out.verdict.cpu, out.verdict.rip)]
    assert any(e.kind is ExecKind.INT3 for e in tl.executions)


def test_the_refs_step_says_whether_it_waited_for_the_handlers(z2, static_key):
    """Z2's buggy variant drops its references while two CPUs are inside the INT3 handler
    and does not wait (no brp_wait retired): the picture says so; a correct run drains."""
    _, _, svg = z2
    refs = [i for i in _ids(svg) if re.fullmatch(r"phase-\d+-refs-label", i)]
    assert len(refs) == 1
    assert _text_of(svg, refs[0]) == "refs put, not waited for: cpu1, cpu2 in the INT3 handler"
    assert {i for i in _ids(svg) if i.startswith("handler-")} == {"handler-1-0", "handler-2-0"}
    ok = static_key[2]
    assert [_text_of(ok, i) for i in _ids(ok) if re.fullmatch(r"phase-\d+-refs-label", i)] == \
        ["refs drained"] * 2
