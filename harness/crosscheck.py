"""`textpoke crosscheck DIR`: a saved run decoded by the tools kernel developers use -- Intel's
libipt (its `pt_insn` and `pt_blk` decoders, harness/trace/libipt.py) and `perf script`
(harness/trace/perf_script.py, over the run's perf.data) -- and by our own decoder, each
compared, per CPU, with the ground truth (what the CPU really executed) and with ours.

Each decoder's result on a CPU is one of: it agrees; it reported an error (where, and whether
its flow had already left the real one); or it is *silently wrong*: no error, another flow.
The last is what a user of the tool would never notice, so it is named as such.

perf reads the directory's own perf.data, the file a user opens with `perf script -i`, once it
is shown to be byte for byte the one the directory's streams, records and run length make
(harness/trace/perf_data.py, as harness/run.write_artifacts wrote it): so every decoder reads
the same input, and what perf is judged on is the user's file. A directory whose perf.data
holds anything else is bad input (it changed after it was saved); one saved without perf.data
gets one written afresh, and the report says so. The vmlinux is written afresh from the start
snapshot (see `_perf`)."""

from __future__ import annotations

import re
import tempfile
from dataclasses import dataclass, field, replace
from enum import StrEnum
from pathlib import Path

from emu import layout
from emu.asm import Program
from harness.trace import kcore, libipt, perf_data, perf_script, saved_run
from harness.trace.pt.decoder import decode as our_decode
from harness.trace.pt.image import Image, ImageError
from harness.trace.saved_run import RunDirError, SavedRun, load


class Decoder(StrEnum):
    LIBIPT_INSN = "libipt pt_insn"
    LIBIPT_BLK = "libipt pt_blk"
    PERF = "perf script"
    OURS = "textpoke"


class Outcome(StrEnum):
    AGREE = "agree"
    ERROR = "error"  # the decoder said something is wrong
    SILENTLY_WRONG = "silently wrong"  # no error, and not the flow the CPU executed


EXTERNAL = (Decoder.LIBIPT_INSN, Decoder.LIBIPT_BLK, Decoder.PERF)
MORE_STEPS = 16  # steps past the real flow's length before a runaway decoding is stopped

Step = tuple[int, bytes, int | None]  # ip, bytes (b"": an asynchronous branch), packet offset


@dataclass(frozen=True)
class Divergence:
    """The first step where a decoding and the real flow part (None on a side that ended)."""

    index: int
    offset: int | None
    ip: int | None
    expected: bytes | None
    decoded_ip: int | None
    decoded: bytes | None


@dataclass
class Decoding:
    decoder: Decoder
    outcome: Outcome
    steps: int
    divergence: Divergence | None = None  # from the ground truth
    error: str | None = None  # what the decoder reported
    vs_ours: int | None = None  # the first step where it differs from our decoder's
    cut: bool = False  # still decoding past the real flow's length: stopped by us


@dataclass
class CpuReport:
    cpu: int
    steps: int  # the ground truth's, as the decoders see it (instructions, async branches)
    decodings: list[Decoding] = field(default_factory=list)


@dataclass
class Report:
    directory: Path
    unavailable: dict[str, str]  # tool -> why it was not used
    cpus: list[CpuReport]
    symbols: Program
    notes: list[str] = field(default_factory=list)  # how the inputs were found, if unusual

    @property
    def agree(self) -> bool:
        return all(d.outcome is Outcome.AGREE for c in self.cpus for d in c.decodings)

    def where(self, ip: int | None) -> str:
        return named(self.symbols, ip)

    def describe(self, d: Decoding) -> str:
        text = d.outcome.value
        if d.outcome is Outcome.SILENTLY_WRONG:
            text += " (no error reported)"
        v = d.divergence
        if v is not None:
            at = f"step {v.index}" + ("" if v.offset is None else f", packet offset {v.offset:#x}")
            text += (f": {at}: executed {_code(v.expected)} at {self.where(v.ip)}, decoded "
                     f"{_code(v.decoded)} at {self.where(v.decoded_ip)}")
        if d.error is not None:
            text += ("; then " if v is not None else ": ") + d.error
        if d.cut:
            text += f"; still decoding after {d.steps} steps, stopped there"
        if d.decoder is not Decoder.OURS and d.vs_ours is not None:
            text += f" [differs from textpoke's decoding at step {d.vs_ours}]"
        return text

    def lines(self) -> list[str]:
        out = [*self.notes, *(f"{tool}: not used: {why}" for tool, why in self.unavailable.items())]
        for c in self.cpus:
            if all(d.outcome is Outcome.AGREE for d in c.decodings):
                out.append(f"cpu{c.cpu}: {c.steps} steps: all agree "
                           f"({', '.join(d.decoder.value for d in c.decodings)})")
                continue
            out.append(f"cpu{c.cpu}: {c.steps} steps:")
            out += [f"  {d.decoder.value}: {self.describe(d)}" for d in c.decodings]
        return out

    def to_json(self) -> dict:
        def div(v: Divergence | None) -> dict | None:
            if v is None:
                return None
            return {"step": v.index, "offset": v.offset,
                    "ip": None if v.ip is None else f"{v.ip:#x}",
                    "symbol": self.symbols.symbolize(v.ip) if v.ip is not None else "",
                    "expected": _code(v.expected),
                    "decoded_ip": None if v.decoded_ip is None else f"{v.decoded_ip:#x}",
                    "decoded_symbol": self.symbols.symbolize(v.decoded_ip)
                    if v.decoded_ip is not None else "",
                    "decoded": _code(v.decoded)}

        return {"dir": str(self.directory), "agree": self.agree,
                "unavailable": self.unavailable, "notes": self.notes,
                "cpus": [{"cpu": c.cpu, "steps": c.steps,
                          "decoders": [{"decoder": d.decoder.value, "result": d.outcome.value,
                                        "steps": d.steps, "divergence": div(d.divergence),
                                        "error": d.error, "vs_ours": d.vs_ours,
                                        "cut": d.cut}
                                       for d in c.decodings]} for c in self.cpus]}


class NothingToCheckWith(RunDirError):
    """Neither libipt nor perf is available: a cross-check would check nothing."""


def named(symbols: Program, ip: int | None) -> str:
    """An address as every report names it: `0x... (symbol+off)`."""
    if ip is None:
        return "the end"
    sym = symbols.symbolize(ip)
    return f"{ip:#x}" + (f" ({sym})" if sym else "")


_TEXT_ADDRESS = re.compile(r"0x[0-9a-f]{9,16}(?! \()")


def named_text(symbols: Program, text: str) -> str:
    """A decoder's message with each text address followed by its symbol, as verdicts have
    them (harness/run.py: symbolized)."""
    return _TEXT_ADDRESS.sub(lambda m: named(symbols, int(m.group(0), 16))
                             if symbols.symbolize(int(m.group(0), 16)) else m.group(0), text)


def _code(code: bytes | None) -> str:
    if code is None:
        return "nothing (the decoding ended)"
    return "an asynchronous branch" if not code else code.hex(" ")


def first_divergence(want: list[Step], got: list[Step]) -> Divergence | None:
    """The first step where `got` leaves `want`, or where one of them ends before the other."""
    for k, (w, g) in enumerate(zip(want, got, strict=False)):
        if w[0] != g[0] or w[1] != g[1]:
            return Divergence(k, g[2], w[0], w[1], g[0], g[1])
    if len(want) == len(got):
        return None
    k = min(len(want), len(got))
    w = want[k] if k < len(want) else None
    g = got[k] if k < len(got) else None
    return Divergence(k, g[2] if g else None, w[0] if w else None, w[1] if w else None,
                      g[0] if g else None, g[1] if g else None)


def _first_difference(a: list[Step], b: list[Step]) -> int | None:
    """The first step both decoded differently (one that stopped earlier is no difference:
    its error or end is reported as such)."""
    return next((k for k, (x, y) in enumerate(zip(a, b, strict=False))
                 if x[0] != y[0] or x[1] != y[1]), None)


def judge(decoder: Decoder, want: list[Step], got: list[Step], error: str | None,
          ours: list[Step] | None, steps: list[int] | None = None) -> Decoding:
    """A decoding against the real flow: agree, error, or silently wrong. With an error, the
    divergence is kept only if the flow had already left the real one before it. `steps`:
    for a decoder that lists instructions only (perf), the flow step of each of `want`'s,
    so that every decoder's disagreement is numbered in the same steps."""
    div = first_divergence(want, got)
    if steps is not None and div is not None:
        div = replace(div, index=steps[div.index] if div.index < len(steps) else
                      (steps[-1] + 1 if steps else 0))
    if error is not None:
        if div is not None and div.decoded is None:  # a prefix of the real flow, then the error
            div = None
        outcome = Outcome.ERROR
    else:
        outcome = Outcome.AGREE if div is None else Outcome.SILENTLY_WRONG
    vs = None if ours is None else _first_difference(ours, got)
    if steps is not None and vs is not None:
        vs = steps[vs] if vs < len(steps) else (steps[-1] + 1 if steps else 0)
    return Decoding(decoder, outcome, len(got), div, error, vs)


def _ours(run: SavedRun, cpu: int) -> tuple[list[Step], str | None]:
    flow = run.flows[cpu]
    try:
        image = Image(layout.TEXT_BASE, run.text_start, run.records)
    except ImageError as e:
        return [], str(e)
    res = our_decode(run.streams[cpu], image, len(flow) + MORE_STEPS,
                     run.items[cpu] if run.items else None)
    return [(s.ip, s.code, s.offset) for s in res.steps], \
        None if res.error is None else f"{type(res.error).__name__}: {res.error}"


def _perf_data(directory: Path, run: SavedRun, notes: list[str]) -> bytes:
    """What perf decodes: the directory's perf.data if it is the one its cpu<N>.pt,
    sideband.bin and verdict.json make (RunDirError if not), else, when there is none, that
    one (noted)."""
    made = perf_data.write(perf_data.Trace(run.streams, run.records, len(run.text_start),
                                           saved_run.ticks(directory)))
    path = directory / "perf.data"
    try:
        saved = path.read_bytes()
    except FileNotFoundError:
        notes.append(f"{path.name}: the directory has none: perf reads one written afresh from "
                     "its cpu<N>.pt, sideband.bin and verdict.json")
        return made
    except OSError as e:
        raise RunDirError(f"{path}: {e.strerror or e}") from None
    if saved != made:
        at = next((k for k, (a, b) in enumerate(zip(saved, made, strict=False)) if a != b),
                  min(len(saved), len(made)))
        raise RunDirError(f"{path}: not the perf.data this directory's cpu<N>.pt, sideband.bin "
                          f"and verdict.json make (they first differ at byte {at} of "
                          f"{len(saved)}): the directory changed after it was saved; delete "
                          "perf.data to have crosscheck write one afresh")
    return saved


def _perf(data: bytes, run: SavedRun, symbols: dict[str, int], unavailable: dict[str, str]
          ) -> list[perf_script.PerfCpu] | str | None:
    """perf's decoding per CPU of `data` (a perf.data); a string if perf failed as a whole (a
    crash); None if there is no perf (said in `unavailable`). perf runs on a copy in a
    directory of its own: it reads ./vmlinux and $HOME/.debug there (perf_script.decode), and
    the user's run directory is not written to."""
    if perf_script.perf_path() is None:
        unavailable["perf"] = "perf is not installed (Debian: apt-get install linux-perf)"
        return None
    with tempfile.TemporaryDirectory(prefix="textpoke-perf-") as tmp:
        path, vmlinux = Path(tmp) / "perf.data", Path(tmp) / "vmlinux"
        path.write_bytes(data)
        # written, not copied: a directory saved before snapshots had sections and symbols
        # still gets the `.text` and `_text` perf needs
        vmlinux.write_bytes(kcore.write([(layout.TEXT_BASE, run.text_start)], symbols))
        try:
            return perf_script.decode(path, vmlinux, len(run.streams))
        except perf_script.PerfMissing as e:
            unavailable["perf"] = str(e)
            return None
        except perf_script.PerfFailed as e:
            return str(e)


def crosscheck(directory: Path) -> Report:
    """Every CPU of the saved run in `directory`, decoded by every available decoder."""
    run = load(directory)
    try:
        symbols = kcore.read_symbols((directory / "text-start.elf").read_bytes())
    except (OSError, kcore.ElfError) as e:
        raise RunDirError(f"{directory / 'text-start.elf'}: {e}") from None
    program = Program(layout.TEXT_BASE, run.text_start, symbols)
    unavailable: dict[str, str] = {}
    notes: list[str] = []
    data = _perf_data(directory, run, notes)  # checked whether or not perf is there to read it
    ipt = libipt.load()
    if isinstance(ipt, libipt.LibiptMissing):
        unavailable["libipt"] = str(ipt)
    perf = _perf(data, run, symbols, unavailable)
    if len(unavailable) == 2:
        raise NothingToCheckWith(f"crosscheck {directory}: nothing to check with: "
                                 + "; ".join(unavailable.values()))
    cpus = []
    for cpu, flow in enumerate(run.flows):
        want: list[Step] = [(i.ip, i.code, None) for i in flow]
        ours, our_error = _ours(run, cpu)
        if our_error is not None:
            our_error = named_text(program, our_error)
        rep = CpuReport(cpu, len(want))
        if not isinstance(ipt, libipt.LibiptMissing):
            for decoder, flavour in ((Decoder.LIBIPT_INSN, libipt.Flavour.INSN),
                                     (Decoder.LIBIPT_BLK, libipt.Flavour.BLOCK)):
                res = libipt.decode(ipt, run.streams[cpu], layout.TEXT_BASE, run.text_start,
                                    run.records, len(want) + MORE_STEPS, flavour)
                error = None if res.error is None else named_text(program, str(res.error))
                rep.decodings.append(judge(decoder, want, list(res.steps), error, ours))
                rep.decodings[-1].cut = error is None and len(res.steps) >= len(want) + MORE_STEPS
        if perf is not None:
            steps = [k for k, w in enumerate(want) if w[1]]  # perf lists instructions only
            insns = [want[k] for k in steps]
            our_insns = [s for s in ours if s[1]]
            if isinstance(perf, str):
                rep.decodings.append(judge(Decoder.PERF, insns, [], perf, our_insns, steps))
            else:
                got = [(ip, code, None) for ip, code in perf[cpu].insns]
                err = None
                if perf[cpu].errors:  # judged up to its first error (perf resyncs after it)
                    n, e = perf[cpu].errors[0]
                    err = (f"perf: code {e.code} \"{e.message}\" at {named(program, e.ip)} "
                           f"after {n} instructions" + (f" ({len(perf[cpu].errors)} errors)"
                                                        if len(perf[cpu].errors) > 1 else ""))
                    got = got[:n]
                rep.decodings.append(judge(Decoder.PERF, insns, got, err, our_insns, steps))
        rep.decodings.append(judge(Decoder.OURS, want, ours, our_error, None))
        cpus.append(rep)
    return Report(directory, unavailable, cpus, program, notes)

