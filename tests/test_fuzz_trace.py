"""Fuzzing `textpoke decode` and `textpoke dump` (issue 14): 2,000 damaged run directories and
2,000 mutated PT streams, seeded so that every run sees the same inputs. Whatever the damage:
no traceback, no exit 3 (a crash) and no exit 1 for a crash (1 is only a divergence the decoder
found), and a stream cut short, or one that lost a branch packet, is never decoded as exact."""

from __future__ import annotations

import contextlib
import io
import json
import random
import shutil
import struct
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from emu.text_poke_record import TextPokeRecord
from harness.cli import main
from harness.trace import kcore
from harness.trace.pt.packets import (
    Fup,
    Psb,
    PsbEnd,
    Tip,
    TipPgd,
    TipPge,
    Tnt,
    TscPacket,
    iter_packets,
)
from harness.trace.sideband import decode as decode_sideband
from harness.trace.sideband import encode as encode_record

RUN_DIRS = 2000
STREAMS = 2000
BRANCH_PACKETS = (Tnt, Tip, TipPge, TipPgd, Fup)


def _poke(addr: int, old: bytes, new: bytes, tick: int, cpu: int) -> TextPokeRecord:
    return TextPokeRecord(tick, cpu, addr, old, new)


def run_cli(*args: str) -> tuple[int, str]:
    """(exit code, stderr) of `textpoke ARGS` in this process; stdout is dropped."""
    err = io.StringIO()
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(err):
        try:
            rc = main([str(a) for a in args])
        except SystemExit as e:
            rc = e.code
    return rc, err.getvalue()


@pytest.fixture(scope="module")
def saved(tmp_path_factory) -> dict[str, bytes]:
    """A small saved run (z4_bytewise, 2 CPUs): its files by name."""
    d = tmp_path_factory.mktemp("fuzz") / "run"
    assert run_cli("run", "z4_bytewise", "--cpus", "2", "--out", d)[0] == 0
    assert run_cli("decode", d)[0] == 0
    return {f.name: f.read_bytes() for f in sorted(d.iterdir())}


@dataclass
class Damage:
    what: str  # for the report: which mutation, where
    must_fail: bool = False  # a truncated path: never exact


class Workdir:
    """The saved run in a directory, damaged and restored in place (no copy per case)."""

    def __init__(self, path: Path, files: dict[str, bytes]) -> None:
        self.path, self.files = path, files
        path.mkdir()
        for name, data in files.items():
            (path / name).write_bytes(data)
        self.touched: set[str] = set()

    def write(self, name: str, data: bytes) -> None:
        self.touched.add(name)
        (self.path / name).write_bytes(data)

    def remove(self, name: str) -> None:
        self.touched.add(name)
        (self.path / name).unlink()

    def make_dir(self, name: str) -> None:
        self.remove(name)
        (self.path / name).mkdir()

    def restore(self) -> None:
        for name in self.touched:
            p = self.path / name
            if p.is_dir():
                shutil.rmtree(p)
            elif p.exists():
                p.unlink()
            if name in self.files:
                p.write_bytes(self.files[name])
        self.touched.clear()


# --- PT stream mutations ---------------------------------------------------------------------

def packets(stream: bytes) -> list[tuple[int, int, object]]:
    """(offset, length, packet) of every packet."""
    out = list(iter_packets(stream))
    ends = [off for off, _ in out[1:]] + [len(stream)]
    return [(off, end - off, p) for (off, p), end in zip(out, ends, strict=True)]


def mutate_stream(rng: random.Random, s: bytes) -> tuple[bytes, Damage]:
    pk = packets(s)
    op = rng.randrange(12)
    i = rng.randrange(len(pk))
    off, n, p = pk[i]
    name = type(p).__name__
    if op == 0:  # cut anywhere before the end
        cut = rng.randrange(len(s))
        return s[:cut], Damage(f"truncated at {cut:#x}", must_fail=True)
    if op == 1:  # cut at a packet boundary
        return s[:off], Damage(f"truncated before packet {i} ({name})", must_fail=True)
    if op == 2:  # a packet lost
        return s[:off] + s[off + n:], Damage(f"packet {i} ({name}) deleted",
                                             must_fail=isinstance(p, BRANCH_PACKETS))
    if op == 3:  # a packet twice: a TNT's bits or a TIP's target twice is never exact
        return s[:off + n] + s[off:off + n] + s[off + n:], Damage(
            f"packet {i} ({name}) twice", must_fail=isinstance(p, Tnt | Tip))
    if op == 4 and i + 1 < len(pk):  # two packets swapped
        o2, n2, p2 = pk[i + 1]
        return (s[:off] + s[o2:o2 + n2] + s[off:off + n] + s[o2 + n2:],
                Damage(f"packets {i} and {i + 1} ({name}, {type(p2).__name__}) swapped"))
    if op == 5:  # bits flipped inside one packet
        b = bytearray(s)
        for _ in range(rng.randint(1, 3)):
            b[off + rng.randrange(n)] ^= 1 << rng.randrange(8)
        return bytes(b), Damage(f"bits flipped in packet {i} ({name})")
    if op == 6:  # random bytes inserted
        junk = rng.randbytes(rng.randint(1, 12))
        return s[:off] + junk + s[off:], Damage(f"{junk.hex()} inserted before packet {i}")
    if op == 7:  # a TSC changed to any value: one that runs backwards is never exact
        tscs = [t for t in pk if isinstance(t[2], TscPacket)]
        j = rng.randrange(len(tscs))
        o, n2, t = tscs[j]
        prev = tscs[j - 1][2].tsc if j else 0
        value = max(0, rng.choice([0, prev - 1, prev, t.tsc + 1, (1 << 56) - 1,
                                   rng.randrange(1 << 56)]))
        backwards = value < prev or j + 1 < len(tscs) and value > tscs[j + 1][2].tsc
        return (s[:o] + TscPacket(value).encode() + s[o + n2:],
                Damage(f"TSC at {o:#x} set to {value}", must_fail=backwards))
    if op == 8:  # a packet from elsewhere in the stream put here
        o2, n2, p2 = rng.choice(pk)
        return (s[:off] + s[o2:o2 + n2] + s[off + n:],
                Damage(f"packet {i} ({name}) replaced by a {type(p2).__name__}"))
    if op == 9:  # a PSB+ in the middle of the stream, or a stray PSBEND / PSB
        extra = rng.choice([Psb().encode() + PsbEnd().encode(), PsbEnd().encode(),
                            Psb().encode()])
        return s[:off] + extra + s[off:], Damage(f"{extra.hex()} inserted before packet {i}")
    if op == 10:  # random bytes anywhere
        b = bytearray(s)
        for _ in range(rng.randint(1, 6)):
            b[rng.randrange(len(b))] = rng.randrange(256)
        return bytes(b), Damage("random bytes overwritten")
    # a stream of garbage, or of a few valid packets
    return rng.randbytes(rng.randint(0, 64)), Damage("random stream", must_fail=True)


# --- run directory damage -------------------------------------------------------------------

JSON_VALUES = [-1, 0, 1.5, 2**70, "x", "", "0xzz", "0x" + "f" * 20, None, True, [], {}, [[[]]],
               "ffffffff81000000", "-0x10", "90" * 20]


def _jsonl_edit(rng: random.Random, data: bytes) -> tuple[bytes, str]:
    lines = data.decode().splitlines()
    k = rng.randrange(len(lines))
    op = rng.randrange(7)
    if op == 0:
        obj = json.loads(lines[k])
        key = rng.choice(sorted(obj))
        obj[key] = rng.choice(JSON_VALUES)
        lines[k] = json.dumps(obj)
        what = f"line {k + 1}: {key} = {obj[key]!r}"
    elif op == 1:
        obj = json.loads(lines[k])
        key = rng.choice(sorted(obj))
        del obj[key]
        lines[k] = json.dumps(obj)
        what = f"line {k + 1}: {key} deleted"
    elif op == 2:
        del lines[k]
        what = f"line {k + 1} deleted"
    elif op == 3:
        lines.insert(k, lines[k])
        what = f"line {k + 1} twice"
    elif op == 4:
        j = rng.randrange(len(lines))
        lines[k], lines[j] = lines[j], lines[k]
        what = f"lines {k + 1} and {j + 1} swapped"
    elif op == 5:
        lines[k] = rng.choice(["[]", "5", '"s"', "null", "{", "[" * 5000, "\ufffd"])
        what = f"line {k + 1} = {lines[k][:10]!r}"
    else:
        lines = lines[:k]
        what = f"cut after line {k}"
    return ("\n".join(lines) + "\n").encode(), what


def _sideband_edit(rng: random.Random, data: bytes) -> tuple[bytes, str]:
    recs = decode_sideband(data)
    r = rng.choice(recs)
    field = rng.choice(["addr", "old", "new", "time", "lengths", "dup", "drop"])
    if field == "addr":
        r2 = _poke(rng.choice([0, r.addr + rng.randint(-64, 64), (1 << 64) - 1,
                                  r.addr + 0x10000]), r.old, r.new, r.tick, r.cpu)
    elif field == "old":
        r2 = _poke(r.addr, rng.randbytes(len(r.old)), r.new, r.tick, r.cpu)
    elif field == "new":
        r2 = _poke(r.addr, r.old, rng.randbytes(len(r.new)), r.tick, r.cpu)
    elif field == "time":
        r2 = _poke(r.addr, r.old, r.new, rng.choice([0, r.tick - 1, r.tick + 1, (1 << 64) - 1,
                                                        rng.randrange(1 << 20)]), r.cpu)
    elif field == "lengths":
        r2 = _poke(r.addr, r.old[:rng.randrange(len(r.old) + 1)],
                      r.new + rng.randbytes(rng.randint(0, 3)), r.tick, r.cpu)
    elif field == "dup":
        return b"".join(encode_record(x) for x in [*recs, r]), "a record twice"
    else:
        return b"".join(encode_record(x) for x in recs if x is not r), "a record dropped"
    return b"".join(encode_record(r2 if x is r else x) for x in recs), f"record {field} changed"


def _elf_edit(rng: random.Random, data: bytes) -> tuple[bytes, str]:
    b = bytearray(data)
    hdr = kcore.ELF_HEADER.size
    which = rng.choice(["phoff", "phnum", "phentsize", "offset", "vaddr", "filesz", "ident",
                        "text"])
    if which == "phoff":
        struct.pack_into("<Q", b, 32, rng.choice([0, len(b), 1 << 40, hdr + 1]))
    elif which == "phnum":
        struct.pack_into("<H", b, 56, rng.choice([0, 2, 0xFFFF]))
    elif which == "phentsize":
        struct.pack_into("<H", b, 54, rng.choice([0, 1, 0x38 * 2]))
    elif which == "offset":
        struct.pack_into("<Q", b, hdr + 8, rng.choice([0, len(b), 1 << 62, hdr + 1]))
    elif which == "vaddr":
        struct.pack_into("<Q", b, hdr + 16, rng.choice([0, 0xFFFFFFFF81001000, 1 << 63]))
    elif which == "filesz":
        struct.pack_into("<Q", b, hdr + 32, rng.choice([0, 1, 16, len(b), 1 << 63]))
    elif which == "ident":
        b[rng.randrange(16)] ^= 0xFF
    else:
        k = rng.randrange(hdr + kcore.PHDR.size, len(b))
        b[k] ^= 1 << rng.randrange(8)
    return bytes(b), f"ELF {which} changed"


def damage_dir(rng: random.Random, w: Workdir) -> Damage:
    names = sorted(w.files)
    name = rng.choice(names)
    data = w.files[name]
    op = rng.randrange(11)
    if op == 0:
        w.remove(name)
        return Damage(f"{name} deleted")
    if op == 1:
        cut = rng.randrange(len(data))
        w.write(name, data[:cut])
        return Damage(f"{name} cut at {cut}",
                      must_fail=name.endswith(".pt") or name.endswith(".truth.jsonl"))
    if op == 2:
        b = bytearray(data)
        for _ in range(rng.randint(1, 4)):
            b[rng.randrange(len(b))] = rng.randrange(256)
        w.write(name, bytes(b))
        return Damage(f"{name}: random bytes")
    if op == 3:
        w.make_dir(name)
        return Damage(f"{name} is a directory")
    if op == 4:  # stale or missing CPUs
        extra = rng.choice(["cpu2.pt", "cpu5.pt", "cpu2.truth.jsonl"])
        w.write(extra, w.files["cpu1.pt" if extra.endswith(".pt") else "cpu1.truth.jsonl"])
        if rng.random() < 0.5:
            w.write("cpu2.truth.jsonl", w.files["cpu1.truth.jsonl"])
        return Damage(f"stale {extra}")
    if op == 5:
        key = rng.choice([k for k in names if k.endswith(".jsonl")])
        new, what = _jsonl_edit(rng, w.files[key])
        w.write(key, new)
        return Damage(f"{key}: {what}")
    if op == 6:
        new, what = _sideband_edit(rng, w.files["sideband.bin"])
        w.write("sideband.bin", new)
        return Damage(f"sideband.bin: {what}")
    if op == 7:
        key = rng.choice(["text-start.elf", "text-end.elf"])
        new, what = _elf_edit(rng, w.files[key])
        w.write(key, new)
        return Damage(f"{key}: {what}")
    if op == 8:
        rips = json.loads(w.files["final-rips.json"])
        choice = rng.randrange(4)
        rips = [rips[:1], rips + rips[:1], [rng.choice(JSON_VALUES)] + rips[1:],
                rng.choice(JSON_VALUES)][choice]
        w.write("final-rips.json", json.dumps(rips).encode())
        return Damage(f"final-rips.json = {rips!r}")
    if op == 9:  # the snapshots swapped: the records no longer lead from one to the other
        w.write("text-start.elf", w.files["text-end.elf"])
        w.write("text-end.elf", w.files["text-start.elf"])
        return Damage("snapshots swapped", must_fail=True)
    cpu = rng.choice(["cpu0.pt", "cpu1.pt"])
    new, dmg = mutate_stream(rng, w.files[cpu])
    w.write(cpu, new)
    dmg.what = f"{cpu}: {dmg.what}"
    return dmg


def fuzz(w: Workdir, cases: int, seed: int,
         damage: Callable[[random.Random, Workdir], Damage]) -> dict[int, int]:
    """Run `cases` damaged decodes; fail with every case that crashed or was accepted wrongly.
    Returns how often each exit code came."""
    codes: dict[int, int] = {}
    bad: list[str] = []
    for case in range(cases):
        rng = random.Random(seed * 1_000_003 + case)
        dmg = damage(rng, w)
        args = ["decode", w.path, *(["--backward"] if case % 3 == 1 else []),
                *(["--json"] if case % 5 == 2 else [])]
        rc, err = run_cli(*args)
        codes[rc] = codes.get(rc, 0) + 1
        if rc not in (0, 1, 2) or "Traceback" in err:
            bad.append(f"case {case} ({dmg.what}): exit {rc}: {err[-600:]}")
        elif rc == 0 and dmg.must_fail:
            bad.append(f"case {case} ({dmg.what}): accepted as exact")
        elif rc == 2 and not err.startswith("textpoke: error: "):
            bad.append(f"case {case} ({dmg.what}): exit 2 without a message: {err!r}")
        w.restore()
    assert not bad, f"{len(bad)} of {cases} cases:\n" + "\n".join(bad[:10])
    return codes


def test_fuzz_damaged_run_directories(saved, tmp_path):
    start = time.perf_counter()
    codes = fuzz(Workdir(tmp_path / "run", saved), RUN_DIRS, 1, damage_dir)
    assert codes.get(2, 0) > RUN_DIRS // 2 and sum(codes.values()) == RUN_DIRS, codes
    assert time.perf_counter() - start < 60


def test_fuzz_mutated_pt_streams(saved, tmp_path):
    """Both decode (forward and backward) and dump see each mutated stream."""
    w = Workdir(tmp_path / "run", saved)
    dumped: dict[int, int] = {}

    def damage(rng: random.Random, w: Workdir) -> Damage:
        cpu = rng.choice(["cpu0.pt", "cpu1.pt"])
        new, dmg = mutate_stream(rng, w.files[cpu])
        w.write(cpu, new)
        rc, err = run_cli("dump", w.path / cpu)
        dumped[rc] = dumped.get(rc, 0) + 1
        assert rc in (0, 2) and "Traceback" not in err, (dmg.what, rc, err)
        dmg.what = f"{cpu}: {dmg.what}"
        return dmg

    codes = fuzz(w, STREAMS, 2, damage)
    assert sum(dumped.values()) == STREAMS and dumped.get(2, 0) > 0
    assert codes.get(1, 0) > 0 and codes.get(2, 0) > 0, codes


def test_the_fuzz_oracle_catches_an_accepted_truncation(saved, tmp_path, monkeypatch):
    """The oracle itself can fail: a decoder that accepted every stream would be reported."""
    from harness.trace.verify import DecodeReport

    monkeypatch.setattr("harness.trace.verify.check", lambda *a, **k: DecodeReport("forward"))
    cut = packets(saved["cpu0.pt"])[10][0]
    with pytest.raises(AssertionError, match="accepted as exact"):
        fuzz(Workdir(tmp_path / "run", saved), 3, 2, lambda rng, w: (
            w.write("cpu0.pt", w.files["cpu0.pt"][:cut]) or Damage("cut", must_fail=True)))


def test_the_fuzz_oracle_catches_a_crash(saved, tmp_path, monkeypatch):
    def crash(*a, **k):
        raise IndexError("a harness bug")
    monkeypatch.setattr("harness.trace.verify.check", crash)
    with pytest.raises(AssertionError, match="exit 3"):
        fuzz(Workdir(tmp_path / "run", saved), 3, 2, lambda rng, w: Damage("none"))
