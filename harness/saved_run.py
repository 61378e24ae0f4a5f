"""A run directory read back: PT streams, ground truth, events, sideband and snapshots, so that
`textpoke decode DIR` can re-decode and re-verify it. Every malformed file is a RunDirError
naming the file and the place in it."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from emu import events as machine_events
from emu import layout
from emu.text_poke_record import TextPokeRecord

from . import kcore, sideband
from .pt.flow import FlowItem, async_events, cpu_flow


class RunDirError(Exception):
    pass


@dataclass
class SavedRun:
    streams: list[bytes]
    flows: list[list[FlowItem]]
    text_start: bytes
    text_end: bytes
    records: list[TextPokeRecord]


def _text(path: Path) -> bytes:
    try:
        segs = kcore.read(path.read_bytes())
    except (OSError, kcore.ElfError) as e:
        raise RunDirError(f"{path}: {e}") from None
    for vaddr, raw in segs:
        if vaddr == layout.TEXT_BASE:
            return raw
    raise RunDirError(f"{path}: no PT_LOAD segment at {layout.TEXT_BASE:#x}")


def _jsonl(path: Path) -> list[dict]:
    try:
        lines = path.read_text().splitlines()
    except OSError as e:
        raise RunDirError(f"{path}: {e}") from None
    out = []
    for n, line in enumerate(lines, 1):
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError as e:
            raise RunDirError(f"{path}:{n}: {e}") from None
    return out


def load(directory: Path) -> SavedRun:
    if not directory.is_dir():
        raise RunDirError(f"{directory}: not a run directory")
    ncpus = len(list(directory.glob("cpu*.pt")))
    if ncpus == 0:
        raise RunDirError(f"{directory}: no cpu<N>.pt streams")
    try:
        rips = [int(x, 16) for x in json.loads((directory / "final-rips.json").read_text())]
        streams = [(directory / f"cpu{c}.pt").read_bytes() for c in range(ncpus)]
        raw_sideband = (directory / "sideband.bin").read_bytes()
    except (OSError, ValueError, TypeError) as e:
        raise RunDirError(f"{directory}: {e}") from None
    if len(rips) != ncpus:
        raise RunDirError(f"{directory}/final-rips.json: {len(rips)} CPUs, {ncpus} streams")
    try:
        events = [machine_events.from_json(e) for e in _jsonl(directory / "events.jsonl")]
        flows = []
        for c in range(ncpus):
            truth = [(d["t"], int(d["ip"], 16), bytes.fromhex(d["bytes"]))
                     for d in _jsonl(directory / f"cpu{c}.truth.jsonl")]
            flows.append(cpu_flow(truth, async_events(events, c), rips[c]))
    except (KeyError, ValueError, TypeError) as e:
        raise RunDirError(f"{directory}: malformed ground truth or events ({e!r})") from None
    try:
        records = sideband.decode(raw_sideband)
    except sideband.SidebandError as e:
        raise RunDirError(f"{directory}/sideband.bin: {e}") from None
    return SavedRun(streams, flows, _text(directory / "text-start.elf"),
                    _text(directory / "text-end.elf"), records)
