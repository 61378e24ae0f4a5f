"""perf.data, vmlinux and the text snapshots' symbols read by the real tools (perf 6.1, libipt
2.0.5, binutils), and `textpoke crosscheck` (issue 16).

A test that needs perf or libipt skips when it is missing, unless TEXTPOKE_REQUIRE_TOOLS=1
(CI sets it, having installed them): then it fails, so that a skip never hides a CI problem."""

from __future__ import annotations

import json
import os
import re
import shutil
import struct
import subprocess
from dataclasses import replace
from pathlib import Path

import pytest

from emu import layout
from harness import cli
from harness.crosscheck import Decoder, Outcome, crosscheck
from harness.run import Runner, write_artifacts
from harness.scenario.shipped import SCENARIOS
from harness.trace import kcore, libipt, perf_data, perf_script, saved_run, sideband
from harness.trace.pt.packets import Tnt, iter_packets
from harness.trace.saved_run import load
from tests import required
from tests.required import need


def test_a_missing_tool_skips_or_fails(monkeypatch):
    """The switch CI sets: without it a missing tool skips, with it the test fails."""
    monkeypatch.setattr(required, "REQUIRE", False)
    with pytest.raises(pytest.skip.Exception, match="nothing is not installed"):
        need(False, "nothing is not installed")
    monkeypatch.setattr(required, "REQUIRE", True)
    with pytest.raises(pytest.fail.Exception, match="TEXTPOKE_REQUIRE_TOOLS=1"):
        need(False, "nothing is not installed")
    need(True, "something is not installed")


def need_perf() -> None:
    need(shutil.which("perf") is not None, "perf (linux-perf) is not installed")


def need_libipt() -> None:
    need(not isinstance(libipt.load(), libipt.LibiptMissing), "libipt (libipt2) is not installed")


def _run(directory: Path, *args: str) -> None:
    assert cli.main(["run", *args, "--out", str(directory)]) == 0


def _perf(directory: Path, *options: str) -> str:
    done = subprocess.run(["perf", "script", "-i", str(directory / "perf.data"), "--vmlinux",
                           str(directory / "vmlinux"), "--ns", *options], cwd=directory,
                          env={**os.environ, "HOME": str(directory)}, capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return done.stdout


_LINE = re.compile(r"\s*\[(\d+)\]\s+(\d+\.\d+):\s+([0-9a-f]+)\s+(\S+)\s+insn:((?: [0-9a-f]{2})*)")


def _perf_insns(directory: Path, ncpus: int) -> list[list[tuple[int, int, bytes]]]:
    """Per CPU, (time, ip, bytes) of `perf script --itrace=i0ns -F cpu,time,ip,sym,insn`."""
    out: list[list[tuple[int, int, bytes]]] = [[] for _ in range(ncpus)]
    for line in _perf(directory, "--itrace=i0ns", "-F", "cpu,time,ip,sym,insn").splitlines():
        m = _LINE.match(line)
        assert m, line
        sec, ns = m.group(2).split(".")
        out[int(m.group(1))].append((int(sec) * 10**9 + int(ns), int(m.group(3), 16),
                                     bytes.fromhex(m.group(5))))
    return out


def _truth_insns(directory: Path) -> list[list[tuple[int, bytes]]]:
    """Per CPU, what it executed as PT shows it: a trapped INT3 is an event, not an
    instruction (perf reports it as a branch, `hw int`)."""
    return [[(i.ip, i.code) for i in flow if i.code] for flow in load(directory).flows]


# ---------------------------------------------------------------- perf.data and perf script
@pytest.mark.parametrize("seed", [1, 2, 3, 4, 5])
def test_perf_script_lists_the_ground_truth(tmp_path, seed):
    need_perf()
    _run(tmp_path, "static_key", "--seed", str(seed))
    truth = _truth_insns(tmp_path)
    got = _perf_insns(tmp_path, len(truth))
    for cpu, (want, have) in enumerate(zip(truth, got, strict=True)):
        assert [(ip, code) for _, ip, code in have] == want, f"cpu{cpu}"
        times = [t for t, _, _ in have]
        assert times == sorted(times) and times[0] >= 1  # perf time is the virtual TSC


def test_perf_without_the_records_is_silently_wrong(tmp_path):
    """The perturbation the test above must catch: the same trace with no TEXT_POKE record
    decodes without an error and lists other instructions (perf-data.md trap 1)."""
    need_perf()
    _run(tmp_path, "static_key", "--seed", "1")
    run = load(tmp_path)
    (tmp_path / "perf.data").write_bytes(perf_data.write(perf_data.Trace(
        run.streams, [], len(run.text_start), 100_000)))
    truth = _truth_insns(tmp_path)
    got = _perf_insns(tmp_path, len(truth))
    assert any([(ip, c) for _, ip, c in have] != want
               for want, have in zip(truth, got, strict=True))


def test_perf_shows_text_pokes_and_branches_with_symbols(tmp_path):
    need_perf()
    _run(tmp_path, "static_key", "--seed", "1")
    records = sideband.decode((tmp_path / "sideband.bin").read_bytes())
    text = _perf(tmp_path, "--itrace=i0ns", "-F", "cpu,time,ip,sym,insn",
                 "--show-text-poke-events")
    pokes = re.findall(r"(\d+)\.(\d+): PERF_RECORD_TEXT_POKE ([0-9a-f]+) (\S+) old len \d+ "
                       r"new len \d+\n\s+Old bytes: ([0-9a-f ]+)\n\s+New bytes: ([0-9a-f ]+)",
                       text)
    assert [(int(s) * 10**9 + int(ns), int(a, 16), bytes.fromhex(o), bytes.fromhex(n))
            for s, ns, a, _sym, o, n in pokes] == [(r.tick, r.addr, r.old, r.new)
                                                   for r in records]
    assert all(p[3].startswith("site_") for p in pokes)  # each named by its site's symbol
    branches = _perf(tmp_path, "--itrace=be", "-F", "cpu,ip,sym,addr,flags")
    # the INT3 -> handler -> IRET flow, named
    assert re.search(r"hw int\s+ffffffff81[0-9a-f]+ site_jl\d => ffffffff81[0-9a-f]+ "
                     r"int3_entry", branches), branches[:2000]
    assert re.search(r"iret\s+ffffffff81[0-9a-f]+ \S+ => ffffffff81[0-9a-f]+ ", branches)


def test_perf_data_layout():
    """The file's fixed parts as perf.data-file-format.txt lays them out: a perf.data that
    perf refuses fails the tests above; this one says which field moved."""
    stream = bytes.fromhex("0282" * 8) + b"\x19" + bytes(7) + bytes.fromhex("02032000 0223")
    rec = sideband.TextPokeRecord(5, 0, layout.TEXT_BASE + 7, b"\x0f\x1f\x44\x00\x00",
                                  b"\xe9\x08\x00\x00\x00")
    raw = perf_data.write(perf_data.Trace([stream], [rec], 0x1000, 9))
    magic, size, attr_size, attrs_off, attrs_size, data_off, data_size = \
        struct.unpack_from("<8sQQQQQQ", raw)
    assert (magic, size, attr_size, attrs_off, attrs_size) == (b"PERFILE2", 104, 144, 104, 144)
    assert data_off + data_size < len(raw)  # the feature section follows
    types = []
    pos = data_off
    while pos < data_off + data_size:
        rtype, _misc, rsize = struct.unpack_from("<IHH", raw, pos)
        types.append(rtype)
        if rtype == perf_data.Record.AUXTRACE:
            size, _off, reference, idx, _tid, cpu, _ = perf_data.AUXTRACE.unpack_from(raw, pos + 8)
            assert (idx, cpu, reference) == (0, 0, 9) and size % 8 == 0
            aux = raw[pos + rsize:pos + rsize + size]
            assert aux[16:24] == b"\x19\x01" + bytes(6)  # TSC 0 made 1: perf 6.1 crashes on 0
            rsize += size
        pos += rsize
    assert types == [70, 1, 20, 71, 68]


# ---------------------------------------------------------------- the snapshots' symbols
def test_snapshots_carry_the_guest_symbols(tmp_path):
    _run(tmp_path, "static_key", "--seed", "1")
    blob = (tmp_path / "text-start.elf").read_bytes()
    symbols = kcore.read_symbols(blob)
    assert symbols["site_jl0"] > layout.TEXT_BASE and symbols["int3_entry"] > layout.TEXT_BASE
    assert kcore.read(blob) == kcore.read((tmp_path / "vmlinux").read_bytes())
    assert kcore.read_symbols(kcore.write([(layout.TEXT_BASE, b"\x90" * 16)])) == {}
    if shutil.which("readelf") and shutil.which("objdump"):  # binutils' own view of it
        syms = subprocess.run(["readelf", "-sW", str(tmp_path / "text-end.elf")],
                              capture_output=True, text=True).stdout
        assert re.search(rf"{symbols['site_jl0']:016x}\s+\d+ FUNC\s+GLOBAL DEFAULT\s+1 "
                         r"site_jl0\n", syms)
        dis = subprocess.run(["objdump", "-d", str(tmp_path / "text-start.elf")],
                             capture_output=True, text=True).stdout
        assert f"{symbols['int3_entry']:016x} <int3_entry>:" in dis
    if shutil.which("gdb"):
        out = subprocess.run(["gdb", "-batch", "-nx", "-ex",
                              f"info symbol {symbols['site_jl0'] + 1:#x}",
                              str(tmp_path / "text-start.elf")],
                             capture_output=True, text=True, timeout=60).stdout
        assert "site_jl0 + 1 in section .text" in out


# ---------------------------------------------------------------- libipt
def test_libipt_missing_is_a_value(monkeypatch):
    monkeypatch.setattr(libipt, "LIBRARY", "libipt-not-here.so.2")
    got = libipt.load()
    assert isinstance(got, libipt.LibiptMissing)
    assert "apt-get install libipt2" in str(got) and "libipt-not-here" in str(got)


def test_a_pt_blk_block_our_rebuild_does_not_end_where_libipt_says_is_an_error(monkeypatch):
    """pt_blk gives a block's first and last IP and its count; the instructions between are
    rebuilt from the text. A rebuild that does not end at libipt's last IP (here: every
    instruction of 3 bytes or more taken for a byte shorter) is an error, never steps that
    would pass for agreement."""
    ipt = libipt.load()
    need(not isinstance(ipt, libipt.LibiptMissing), "libipt is not installed")
    out = Runner(SCENARIOS["static_key"]).run_seed(0)
    res = out.result

    def decoded():
        return libipt.decode(ipt, out.streams[1], layout.TEXT_BASE, res.text_start,
                             res.sideband, len(out.flows[1]) + 16, libipt.Flavour.BLOCK)
    assert decoded().error is None
    classify = libipt.classify

    def shorter(code: bytes):
        insn = classify(code)
        return replace(insn, size=insn.size - 1) if insn and insn.size >= 3 else insn
    monkeypatch.setattr(libipt, "classify", shorter)
    bad = decoded()
    assert bad.error is not None and "pt_blk's block ends at" in bad.error.message


# ---------------------------------------------------------------- crosscheck
def test_crosscheck_agrees_on_every_correct_variant(tmp_path):
    need_perf()
    need_libipt()
    for name, scn in SCENARIOS.items():
        runner = Runner(scn, decode=False)  # crosscheck decodes with ours too
        for seed in range(3):
            out = runner.run_seed(seed)
            d = tmp_path / f"{name}-{seed}"
            write_artifacts(out, seed, d)
            report = crosscheck(d)
            assert report.agree, f"{name} seed {seed}:\n" + "\n".join(report.lines())
            assert {x.decoder for c in report.cpus for x in c.decodings} == set(Decoder)


@pytest.fixture(scope="module")
def saved(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("run")
    _run(d, "static_key", "--seed", "2")
    return d


def _copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def test_crosscheck_cli_agrees(saved, capsys):
    need_perf()
    need_libipt()
    assert cli.main(["crosscheck", str(saved)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 4 and all("all agree (libipt pt_insn, libipt pt_blk, perf script, "
                                   "textpoke)" in x for x in lines)
    assert cli.main(["crosscheck", str(saved), "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["agree"] and len(doc["cpus"]) == 4


def test_damaged_stream_is_a_disagreement(saved, tmp_path, capsys):
    """A stream that still parses but says another branch went the other way."""
    need_perf()
    need_libipt()
    d = _copy(saved, tmp_path / "d")
    stream = bytearray((d / "cpu1.pt").read_bytes())
    tnts = [off for off, p in iter_packets(bytes(stream)) if isinstance(p, Tnt)
            and len(p.bits) == 1]
    off = tnts[len(tnts) // 2]
    stream[off] ^= 0x02  # T <-> N: the one branch bit of a short TNT
    (d / "cpu1.pt").write_bytes(bytes(stream))
    (d / "perf.data").unlink()  # else bad input: test_changed_directory_exits_2
    assert cli.main(["crosscheck", str(d), "--json"]) == 1
    doc = json.loads(capsys.readouterr().out)
    assert doc["notes"] and "written afresh" in doc["notes"][0]
    cpu1 = doc["cpus"][1]["decoders"]
    assert all(x["result"] != "agree" for x in cpu1), cpu1
    assert all(x["result"] == "agree" for c in (0, 2, 3) for x in doc["cpus"][c]["decoders"])
    first = next(x for x in cpu1 if x["divergence"])["divergence"]
    assert first["symbol"] and first["ip"].startswith("0xffffffff81")  # named, symbol+off


def test_misplaced_text_poke_record_is_a_disagreement(saved, tmp_path):
    """The first record's time moved to the end of the run: the decoders keep the old bytes
    after the site changed, and say nothing (perf-data.md trap 1)."""
    need_perf()
    need_libipt()
    d = _copy(saved, tmp_path / "d")
    recs = sideband.decode((d / "sideband.bin").read_bytes())
    end = json.loads((d / "verdict.json").read_text())["ticks"]
    moved = [replace(recs[0], tick=end), *recs[1:]]
    moved.sort(key=lambda r: r.tick)
    (d / "sideband.bin").write_bytes(b"".join(map(sideband.encode, moved)))
    (d / "perf.data").unlink()
    report = crosscheck(d)
    assert not report.agree
    externals = [x for c in report.cpus for x in c.decodings if x.decoder is not Decoder.OURS]
    assert any(x.outcome is Outcome.SILENTLY_WRONG for x in externals)
    assert "silently wrong (no error reported)" in "\n".join(report.lines())
    assert cli.main(["crosscheck", str(d)]) == 1


def _flip_a_branch(stream: bytes) -> bytes:
    """The stream with the branch bit of its middle one-bit TNT packet inverted."""
    out = bytearray(stream)
    tnts = [off for off, p in iter_packets(stream) if isinstance(p, Tnt) and len(p.bits) == 1]
    out[tnts[len(tnts) // 2]] ^= 0x02
    return bytes(out)


@pytest.mark.parametrize("changed", ["cpu1.pt", "perf.data"])
def test_changed_directory_exits_2(saved, tmp_path, capsys, changed):
    """perf reads the directory's own perf.data (what `perf script -i` reads) only where it is
    the one the directory's streams make: a stream changed after saving, or a perf.data
    changed alone (which crosscheck once never read, and called all agreed), is bad input,
    told with the file and the first byte that differs. No tool is needed to find it."""
    d = _copy(saved, tmp_path / "d")
    if changed == "cpu1.pt":
        (d / "cpu1.pt").write_bytes(_flip_a_branch((d / "cpu1.pt").read_bytes()))
    else:  # the same flip inside perf.data's AUX data for CPU 1
        data = (d / "perf.data").read_bytes()
        stream = (d / "cpu1.pt").read_bytes()
        at = data.index(stream[64:])  # past the first PSB+, whose TSC perf.data may change
        changed_data = data[:at] + _flip_a_branch(stream)[64:] + data[at + len(stream) - 64:]
        assert changed_data != data and len(changed_data) == len(data)
        (d / "perf.data").write_bytes(changed_data)
    assert cli.main(["crosscheck", str(d)]) == 2
    err = capsys.readouterr().err
    assert f"{d / 'perf.data'}: not the perf.data this directory's" in err
    assert "first differ at byte" in err and "delete perf.data" in err
    assert "Traceback" not in err


def test_perf_decodes_the_directory_s_own_perf_data(saved, tmp_path, monkeypatch):
    """The bytes perf is given are the saved file's, with no note; without one, a note says
    it was written afresh, and what is written is what `textpoke run` saved (crosscheck and
    write_artifacts make perf.data alike: the same end tick, the same records)."""
    seen: list[bytes] = []

    def decode(data: Path, vmlinux: Path, ncpus: int):
        seen.append(data.read_bytes())
        raise perf_script.PerfFailed(1, ["not run in this test"])

    monkeypatch.setattr(perf_script, "perf_path", lambda: "perf")
    monkeypatch.setattr(perf_script, "decode", decode)
    original = (saved / "perf.data").read_bytes()
    report = crosscheck(saved)
    assert seen == [original] and not report.notes
    d = _copy(saved, tmp_path / "d")
    (d / "perf.data").unlink()
    report = crosscheck(d)
    assert seen[1:] == [original] and "written afresh" in report.notes[0]


def test_run_ticks_of_a_malformed_verdict_is_bad_input(saved, tmp_path):
    d = _copy(saved, tmp_path / "d")
    doc = json.loads((d / "verdict.json").read_text())
    assert saved_run.ticks(d) == doc["ticks"] > 0
    (d / "verdict.json").write_text(json.dumps({**doc, "ticks": -1}))
    with pytest.raises(saved_run.RunDirError, match=r"verdict\.json: 'ticks' is -1"):
        saved_run.ticks(d)


def test_nothing_to_check_with_exits_2(saved, monkeypatch, capsys):
    monkeypatch.setattr(libipt, "LIBRARY", "libipt-not-here.so.2")
    monkeypatch.setenv("PATH", str(saved))  # no perf on it
    assert cli.main(["crosscheck", str(saved)]) == 2
    err = capsys.readouterr().err
    assert "nothing to check with" in err and "libipt2" in err and "linux-perf" in err
    assert "Traceback" not in err


def test_crosscheck_bad_directory_exits_2(tmp_path, capsys):
    assert cli.main(["crosscheck", str(tmp_path / "nope")]) == 2
    assert "not a run directory" in capsys.readouterr().err
