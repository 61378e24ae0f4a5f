"""A run directory read back: PT streams, ground truth, events, sideband and snapshots, so that
`textpoke decode DIR` can re-decode and re-verify it. Every malformed file is a RunDirError
naming the file and the place in it."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path

from emu import events as machine_events
from emu import layout
from emu.text_poke_record import TextPokeRecord
from harness.errors import BadInput
from harness.trace.pt.flow import FlowItem, async_events, cpu_flow
from harness.trace.pt.query import items_until_error

from . import kcore, sideband

# What `write_artifacts` (harness/run.py) writes: per CPU, and once per run.
PER_CPU = re.compile(r"cpu(0|[1-9][0-9]*)\.(pt|truth\.jsonl)")
PER_RUN = ("events.jsonl", "sideband.bin", "text-start.elf", "text-end.elf", "final-rips.json",
           "verdict.json", "vmlinux", "perf.data", "timeline.svg")


class RunDirError(BadInput):
    """A run directory (or an --out directory) that cannot be read or written as one."""


@dataclass
class SavedRun:
    streams: list[bytes]
    flows: list[list[FlowItem]]
    text_start: bytes
    text_end: bytes
    records: list[TextPokeRecord]
    items: list = field(default_factory=list)  # per stream, query.items_until_error's


def _text(path: Path) -> bytes:
    try:
        segs = kcore.read(path.read_bytes())
    except (OSError, kcore.ElfError) as e:
        raise RunDirError(f"{path}: {e}") from None
    for vaddr, raw in segs:
        if vaddr == layout.TEXT_BASE:
            return raw
    raise RunDirError(f"{path}: no PT_LOAD segment at {layout.TEXT_BASE:#x}")


def _lines(path: Path) -> list[str]:
    try:
        return path.read_text().splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise RunDirError(f"{path}: {e}") from None


def _jsonl(path: Path, lines: list[str] | None = None) -> list[tuple[str, dict]]:
    """Each line's object, with the "file:line" that names it."""
    if lines is None:
        lines = _lines(path)
    out = []
    for n, line in enumerate(lines, 1):
        try:
            obj = json.loads(line)
        except (ValueError, RecursionError) as e:
            raise RunDirError(f"{path}:{n}: {e}") from None
        if not isinstance(obj, dict):
            raise RunDirError(f"{path}:{n}: not a JSON object")
        out.append((f"{path}:{n}", obj))
    return out


def _field(where: str, obj: dict, key: str, kind: str) -> int | bytes | str:
    """obj[key] as `kind`: "tick" (an integer >= 0), "ip" (a 64-bit address in hex), "code"
    (1..15 instruction bytes in hex), "int" or "str"; else a RunDirError naming it."""
    value = obj.get(key)
    try:
        if kind in ("tick", "int"):
            if type(value) is int and (kind == "int" or value >= 0):
                return value
        elif kind == "str":
            if isinstance(value, str):
                return value
        elif kind == "ip":
            ip = int(value, 16)
            if 0 <= ip < 1 << 64:
                return ip
        elif kind == "code":
            code = bytes.fromhex(value)
            if 1 <= len(code) <= 15:
                return code
    except (TypeError, ValueError):
        pass
    raise RunDirError(f"{where}: {key!r} is {json.dumps(value)[:40]}, not a valid {kind}")


def _events(path: Path) -> list[machine_events.Event]:
    """The typed events (emu/events.py) of events.jsonl, each malformed line named."""
    out = []
    for where, e in _jsonl(path):
        try:
            out.append(machine_events.from_json(e))
        except (KeyError, ValueError, TypeError) as err:
            raise RunDirError(f"{where}: malformed event ({err})") from None
    return out


def _truth_row(where: str, d: dict, last: int) -> tuple[int, int, bytes]:
    t = _field(where, d, "t", "tick")
    if t <= last:
        raise RunDirError(f"{where}: tick {t} after tick {last}")
    return t, _field(where, d, "ip", "ip"), _field(where, d, "bytes", "code")


def _truth(path: Path) -> list[tuple[int, int, bytes]]:
    """A CPU's retired instructions, in the order of their ticks. The file is parsed as one
    JSON array and checked in one tight loop (a truth file has an object per instruction);
    only if that finds something wrong is it read again line by line, to say where."""
    lines = _lines(path)
    try:
        rows = json.loads("[" + ",".join(lines) + "]")
    except (ValueError, RecursionError):
        rows = None
    out: list[tuple[int, int, bytes]] = []
    if rows is not None and len(rows) == len(lines):
        last = -1
        try:
            for d in rows:
                t, ip, code = d["t"], int(d["ip"], 16), bytes.fromhex(d["bytes"])
                if type(t) is not int or t <= last or not 0 <= ip < 1 << 64 or \
                        not 1 <= len(code) <= 15:
                    break
                out.append((t, ip, code))
                last = t
        except (KeyError, TypeError, ValueError):
            pass
        if len(out) == len(lines):
            return out
    out, last = [], -1  # something is wrong: find the line and say what
    for where, d in _jsonl(path, lines):
        out.append(_truth_row(where, d, last))
        last = out[-1][0]
    return out


def check_out(directory: Path) -> Path:
    """An --out directory, checked before the run so that bad input costs nothing and changes
    nothing: a directory, or a new name in an existing one."""
    if directory.exists() and not directory.is_dir():
        raise RunDirError(f"--out {directory}: exists and is not a directory")
    parent = directory.absolute().parent
    if not directory.exists() and not parent.is_dir():
        raise RunDirError(f"--out {directory}: its parent directory {parent} does not exist")
    return directory


def prepare_out(directory: Path) -> Path:
    """`check_out`, then, just before the artifacts are written, remove our own artifacts of an
    earlier run from a reused directory, so that no stale cpu<N>.pt of a run with more CPUs
    stays beside the new ones (`decode` would read it). Nothing else in it is touched."""
    check_out(directory)
    try:
        directory.mkdir(exist_ok=True)
        for f in directory.iterdir():
            if PER_CPU.fullmatch(f.name) or f.name in PER_RUN:
                f.unlink()
    except OSError as e:
        raise RunDirError(f"--out {directory}: {e.strerror or e}") from None
    return directory


def _cpu_count(directory: Path) -> int:
    """N for cpu0.pt .. cpu<N-1>.pt, which must all be there and be all there is."""
    try:
        found = sorted(int(m.group(1)) for f in directory.iterdir()
                       if (m := PER_CPU.fullmatch(f.name)) and m.group(2) == "pt")
    except OSError as e:
        raise RunDirError(f"{directory}: {e.strerror or e}") from None
    if not found:
        raise RunDirError(f"{directory}: no cpu<N>.pt streams")
    missing = sorted(set(range(found[-1] + 1)) - set(found))
    if missing:
        raise RunDirError(f"{directory}: cpu{missing[0]}.pt is missing (there is "
                          f"cpu{found[-1]}.pt)")
    return len(found)


def ticks(directory: Path) -> int:
    """The run's last tick, as verdict.json records it (`RunResult.ticks`): what perf.data's
    AUXTRACE records take as their reference (harness/run.write_artifacts)."""
    path = directory / "verdict.json"
    try:
        doc = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, ValueError, RecursionError) as e:
        raise RunDirError(f"{path}: {e}") from None
    if not isinstance(doc, dict):
        raise RunDirError(f"{path}: not a JSON object")
    return _field(str(path), doc, "ticks", "tick")


def load(directory: Path) -> SavedRun:
    if not directory.is_dir():
        raise RunDirError(f"{directory}: not a run directory")
    ncpus = _cpu_count(directory)
    rips_file = directory / "final-rips.json"
    try:
        rips = json.loads(rips_file.read_text())
        streams = [(directory / f"cpu{c}.pt").read_bytes() for c in range(ncpus)]
        raw_sideband = (directory / "sideband.bin").read_bytes()
    except (OSError, ValueError, RecursionError) as e:
        raise RunDirError(f"{directory}: {e}") from None
    if not isinstance(rips, list) or len(rips) != ncpus:
        raise RunDirError(f"{rips_file}: not a list of {ncpus} RIPs, one per cpu<N>.pt")
    rips = [_field(f"{rips_file}[{c}]", {"rip": x}, "rip", "ip") for c, x in enumerate(rips)]
    # The cheap checks first, the ground truth (an object per instruction) last: a malformed
    # trace is refused before the truth is read.
    items = []
    for c, stream in enumerate(streams):
        its, error = items_until_error(stream)
        if error is not None:  # a malformed or misplaced packet: the trace is bad input
            raise RunDirError(f"{directory}/cpu{c}.pt: {error}")
        items.append((its, None))
    try:
        records = sideband.decode(raw_sideband)
    except sideband.SidebandError as e:
        raise RunDirError(f"{directory}/sideband.bin: {e}") from None
    text_start, text_end = _text(directory / "text-start.elf"), _text(directory / "text-end.elf")
    events = _events(directory / "events.jsonl")
    flows = [cpu_flow(_truth(directory / f"cpu{c}.truth.jsonl"), async_events(events, c),
                      rips[c]) for c in range(ncpus)]
    return SavedRun(streams, flows, text_start, text_end, records, items)


# The pieces of `load`, for readers of a run directory that need no trace (harness/timeline.py).
cpu_count, events, text, truth = _cpu_count, _events, _text, _truth
