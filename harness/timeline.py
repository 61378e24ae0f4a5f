"""A run's timeline: what each CPU did over virtual time, derived from a run directory.

The patcher's phases are read off what the run recorded, not assumed from the scenario: its
text stores classified by the patch site and byte they hit (the INT3 on a site's first byte,
the tail behind it, the new first byte), its CALL_FUNCTION_VECTOR IPI broadcasts (the syncs,
each until the last CPU it targeted serialized on it), its SIDEBAND hypercalls (the text-poke
records) and the instructions it retired in `bp_refs_put` (the wait for the INT3 handlers'
references). These are the steps of Linux's text_poke_bp_batch (arch/x86/kernel/alternative.c;
guest_code/alternative.S): INT3, sync, tail, record, sync, first byte, sync, refs drained.

Each CPU's executions of each site are classified against the site's states (the start
snapshot, then each record's new bytes): the old instruction, the INT3 (→ the #BP handler), the
new instruction, or torn (no state's instruction: what harness/oracles.torn_execution reports).
harness/timeline_draw.py turns a Timeline into a picture."""

from __future__ import annotations

import enum
import json
from bisect import bisect_right
from dataclasses import dataclass, field
from pathlib import Path

from emu import events as ev
from emu import layout, x86
from emu.asm import Program
from emu.hypercall import Hypercall
from emu.text_poke_record import TextPokeRecord
from harness.errors import BadInput
from harness.trace import kcore, saved_run, sideband

INT3 = 0xCC


class TimelineError(BadInput):
    """A directory a timeline cannot be drawn from, or a picture that cannot be written."""


class PhaseKind(enum.StrEnum):
    """A step of the patcher's sequence, as text_poke_bp_batch orders them."""

    INT3 = "int3"  # 0xcc written on a site's first byte
    SYNC = "sync"  # on_each_cpu(do_sync_core): IPI broadcast until every target serialized
    TAIL = "tail"  # bytes 1..len-1 of the new instruction under the INT3
    RECORD = "record"  # perf_event_text_poke: the SIDEBAND hypercall
    FIRST = "first"  # the new first byte, replacing the INT3
    REFS = "refs"  # bp_refs_put: waiting until no INT3 handler holds a reference
    TEXT = "text"  # a text store outside every patch site

    @property
    def label(self) -> str:
        return _PHASE_LABELS[self]


_PHASE_LABELS = {PhaseKind.INT3: "INT3 written", PhaseKind.SYNC: "sync",
                 PhaseKind.TAIL: "tail", PhaseKind.RECORD: "record",
                 PhaseKind.FIRST: "first byte", PhaseKind.REFS: "refs drained",
                 PhaseKind.TEXT: "text store"}


class ExecKind(enum.StrEnum):
    """How one execution of a patch site behaved."""

    OLD = "old"
    INT3 = "int3"  # the INT3 on the first byte: a #BP, then the handler
    NEW = "new"
    TORN = "torn"  # no state's instruction: half old and half new, or mid-instruction


@dataclass(frozen=True)
class Site:
    name: str
    addr: int
    length: int
    # (offset, bytes) of every instruction the site may hold in any state, INT3 included;
    # empty when the scenario could not be rebuilt (then the records' bytes decide)
    allowed: frozenset[tuple[int, bytes]] = frozenset()

    def __contains__(self, address: int) -> bool:
        return self.addr <= address < self.addr + self.length


@dataclass(frozen=True)
class Phase:
    kind: PhaseKind
    cpu: int
    start: int  # ticks
    end: int
    sites: tuple[str, ...] = ()  # the sites its stores or records touched
    note: str = ""  # what the run says of it beyond its kind (a refs wait that did not wait)

    @property
    def label(self) -> str:
        return self.note or self.kind.label


@dataclass(frozen=True)
class Store:
    """A text store (emu/events.TextStore) with the site and phase it belongs to."""

    cpu: int
    tick: int
    addr: int
    data: bytes
    site: str  # "" outside every site
    kind: PhaseKind


@dataclass(frozen=True)
class Execution:
    cpu: int
    tick: int
    ip: int
    code: bytes
    site: str
    kind: ExecKind
    until: int | None = None  # INT3: when its #BP handler returned (IRET), or the run ended


@dataclass(frozen=True)
class Handler:
    """A #BP taken on a site's INT3: from its delivery until the IRET that returns from it
    (the run's end if none did). poke_int3_handler runs inside it."""

    cpu: int
    start: int
    end: int
    site: str


@dataclass(frozen=True)
class Mark:
    """A point event on one CPU's lane: an interrupt, exception, serialization, view update,
    or an IPI sent."""

    cpu: int
    tick: int
    what: str  # "ipi", "nmi", "exception", "serialize", "view", "send"
    label: str


@dataclass(frozen=True)
class Divergence:
    """The first divergence or failing instruction: where the run went wrong."""

    cpu: int | None
    tick: int
    label: str


@dataclass
class Timeline:
    title: str
    ncpus: int
    ticks: int
    sites: list[Site]
    phases: list[Phase] = field(default_factory=list)
    stores: list[Store] = field(default_factory=list)
    records: list[TextPokeRecord] = field(default_factory=list)
    executions: list[Execution] = field(default_factory=list)
    marks: list[Mark] = field(default_factory=list)
    divergence: Divergence | None = None
    handlers: list[Handler] = field(default_factory=list)


# ---------------------------------------------------------------------------- the run directory


@dataclass(frozen=True)
class _Run:
    verdict: dict
    ncpus: int
    events: list[ev.Event]
    records: list[TextPokeRecord]
    text_start: bytes
    truth: list[list[tuple[int, int, bytes]]]
    symbols: dict[str, int]  # the start snapshot's symbol table (empty in an older run dir)


def _read(directory: Path) -> _Run:
    if not directory.exists():
        raise TimelineError(f"{directory}: no such directory")
    if not directory.is_dir():
        raise TimelineError(f"{directory}: not a directory")
    vfile = directory / "verdict.json"
    if not vfile.is_file():
        raise TimelineError(f"{directory}: not a run directory (no verdict.json; `textpoke run "
                            "--out DIR` or `textpoke replay TOKEN --out DIR` writes one)")
    try:
        verdict = json.loads(vfile.read_text())
    except (OSError, ValueError, RecursionError) as e:
        raise TimelineError(f"{vfile}: {e}") from None
    if not isinstance(verdict, dict):
        raise TimelineError(f"{vfile}: not a JSON object")
    ncpus = saved_run.cpu_count(directory)
    try:
        records = sideband.decode((directory / "sideband.bin").read_bytes())
    except OSError as e:
        raise TimelineError(f"{directory}/sideband.bin: {e.strerror or e}") from None
    except sideband.SidebandError as e:
        raise TimelineError(f"{directory}/sideband.bin: {e}") from None
    try:
        symbols = kcore.read_symbols((directory / "text-start.elf").read_bytes())
    except (OSError, kcore.ElfError):
        symbols = {}  # saved_run.text() below says what is wrong with the file
    return _Run(verdict, ncpus, saved_run.events(directory / "events.jsonl"), records,
                saved_run.text(directory / "text-start.elf"),
                [saved_run.truth(directory / f"cpu{c}.truth.jsonl") for c in range(ncpus)],
                symbols)


def _program_and_sites(run: _Run) -> tuple[Program | None, list[Site]]:
    """The scenario rebuilt from verdict.json for its symbols and site table, if it is a
    shipped one and its text is the run's start snapshot; else the snapshot's own symbol
    table (a user's scenario), and the sites verdict.json lists, or (an older run directory)
    a site per record address."""
    from harness.scenario.build import build
    from harness.scenario.shipped import get
    from harness.scenario.text_poke_loc import ScenarioError

    name, variant = run.verdict.get("scenario"), run.verdict.get("variant")
    built = None
    if isinstance(name, str) and isinstance(variant, str):
        try:
            built = build(get(name), variant, run.ncpus)
        except (ScenarioError, KeyError, ValueError):
            built = None
    if built is not None:
        prog = built.program
        off = prog.base - layout.TEXT_BASE
        if 0 <= off and run.text_start[off:off + len(prog.code)] == prog.code:
            return prog, [Site(n, a, ln, allowed) for n, a, ln, allowed in built.sites]
    prog = (Program(layout.TEXT_BASE, run.text_start, run.symbols, "text-start.elf")
            if run.symbols else None)
    listed = _listed_sites(run.verdict)
    if listed is not None:
        return prog, listed
    sites: dict[int, Site] = {}
    for r in run.records:
        if r.addr not in sites:
            sites[r.addr] = Site(f"{r.addr:#x}", r.addr, len(r.new))
    return prog, sorted(sites.values(), key=lambda s: s.addr)


def _listed_sites(verdict: dict) -> list[Site] | None:
    """The site table verdict.json lists (harness/run.write_artifacts): each site's name,
    address, length and the instructions it may hold, the torn-execution oracle's table."""
    listed = verdict.get("sites")
    if not isinstance(listed, list):
        return None
    out = []
    for s in listed:
        try:
            allowed = frozenset((int(o), bytes.fromhex(b)) for o, b in s["allowed"])
            out.append(Site(str(s["name"]), int(s["addr"], 16), int(s["length"]), allowed))
        except (KeyError, TypeError, ValueError):
            return None
    return sorted(out, key=lambda s: s.addr)


def _site_of(sites: list[Site], address: int) -> Site | None:
    return next((s for s in sites if address in s), None)


# ------------------------------------------------------------------------------------- phases


def _store_kind(site: Site | None, e: ev.TextStore) -> PhaseKind:
    """Which step of text_poke_bp_batch a store is: the INT3 (step 1), a tail byte (step 3),
    the first byte (step 5); outside every site, a plain text store."""
    if site is None:
        return PhaseKind.TEXT
    if e.addr == site.addr:
        return PhaseKind.INT3 if e.data[:1] == bytes([INT3]) else PhaseKind.FIRST
    return PhaseKind.TAIL


def _sync_end(run: _Run, start: int, mask: int) -> int:
    """When the last CPU an on_each_cpu() IPI targeted serialized on it (do_sync_core); the run's
    end for a CPU that never did."""
    end = start
    for cpu in range(run.ncpus):
        if mask >> cpu & 1:
            end = max(end, next((e.tick for e in run.events
                                 if isinstance(e, ev.Serialize) and e.cpu == cpu
                                 and e.ipi == x86.CALL_FUNCTION_VECTOR and e.tick >= start),
                                _ticks(run)))
    return end


def _refs_waits(run: _Run, prog: Program | None, cpu: int) -> list[tuple[int, int, bool]]:
    """(entry, return, waited) of each bp_refs_put the CPU ran: dropping its references and
    spinning (brp_wait) until no INT3 handler holds one (text_poke_bp_batch's last step)."""
    names = ("bp_refs_put", "brp_done", "brp_wait")
    if prog is None or any(n not in prog.symbols for n in names):
        return []
    entry, done, wait = (prog.sym(n) for n in names)
    out: list[tuple[int, int, bool]] = []
    start, waited = None, False
    for t, ip, _ in run.truth[cpu]:
        if ip == entry:
            start, waited = t, False
        elif ip == wait:
            waited = True
        elif ip == done and start is not None:
            out.append((start, t, waited))
            start = None
    if start is not None:  # the run ended while it waited
        out.append((start, _ticks(run), waited))
    return out


def _handlers(run: _Run, sites: list[Site]) -> list[Handler]:
    """Every #BP a CPU took on a site's first byte, until the IRETQ that returned from it:
    deliveries and IRETQs nest, so the handler ends when its own frame is popped."""
    iretq = bytes.fromhex("48cf")
    out = []
    for cpu in range(run.ncpus):
        steps = [(t, 0, None) for t, _, code in run.truth[cpu] if code == iretq]
        # an event at tick t comes after the instruction retired at tick t
        steps += [(e.tick, 1, e) for e in run.events
                  if e.cpu == cpu and isinstance(e, ev.Delivery)]
        stack: list[tuple[int, Site | None]] = []
        for t, _, e in sorted(steps, key=lambda s: s[:2]):
            if e is None:
                if stack:
                    start, site = stack.pop()
                    if site is not None:
                        out.append(Handler(cpu, start, t, site.name))
                continue
            site = _site_of(sites, e.source) if isinstance(e, ev.ExceptionEvent) and \
                e.vector == x86.BP else None
            stack.append((t, site if site is not None and e.source == site.addr else None))
        out += [Handler(cpu, start, _ticks(run), site.name) for start, site in stack
                if site is not None]
    return sorted(out, key=lambda h: (h.start, h.cpu))


def _phases(run: _Run, prog: Program | None, sites: list[Site], stores: list[Store],
            handlers: list[Handler]) -> list[Phase]:
    """Each patching CPU's steps in time order; consecutive steps of one kind (the INT3s of a
    batch's sites, the tail bytes) are one phase."""
    patchers = sorted({s.cpu for s in stores} | {r.cpu for r in run.records})
    by_cpu: dict[int, list[tuple[int, int, PhaseKind, str]]] = {c: [] for c in patchers}
    for s in stores:
        by_cpu[s.cpu].append((s.tick, s.tick, s.kind, s.site))
    for r in run.records:
        by_cpu[r.cpu].append((r.tick, r.tick, PhaseKind.RECORD, _name(sites, r.addr)))
    for e in run.events:
        if isinstance(e, ev.HypercallEvent) and e.cpu in by_cpu and \
                e.number is Hypercall.SEND_IPI and e.args[1] == x86.CALL_FUNCTION_VECTOR:
            by_cpu[e.cpu].append((e.tick, _sync_end(run, e.tick, e.args[0]), PhaseKind.SYNC,
                                  ""))
    notes: dict[tuple[int, int], str] = {}
    for c in patchers:
        for start, end, waited in _refs_waits(run, prog, c):
            by_cpu[c].append((start, end, PhaseKind.REFS, ""))
            inside = sorted({h.cpu for h in handlers if h.start <= start < h.end})
            if inside and not waited:  # the step the kernel needs, skipped (Z2)
                notes[c, start] = ("refs put, not waited for: "
                                   + ", ".join(f"cpu{i}" for i in inside)
                                   + " in the INT3 handler")
    out: list[Phase] = []
    for c in patchers:
        cur: list | None = None
        for start, end, kind, site in sorted(by_cpu[c]):
            if cur is not None and cur[2] is kind and kind is not PhaseKind.SYNC and \
                    kind is not PhaseKind.REFS:
                cur[1] = max(cur[1], end)
                if site and site not in cur[3]:
                    cur[3].append(site)
                continue
            if cur is not None:
                out.append(Phase(cur[2], c, cur[0], cur[1], tuple(cur[3]),
                                 notes.get((c, cur[0]), "")))
            cur = [start, end, kind, [site] if site else []]
        if cur is not None:
            out.append(Phase(cur[2], c, cur[0], cur[1], tuple(cur[3]),
                             notes.get((c, cur[0]), "")))
    return sorted(out, key=lambda p: (p.start, p.cpu))


def _name(sites: list[Site], address: int) -> str:
    site = _site_of(sites, address)
    return site.name if site else ""


# --------------------------------------------------------------------------------- executions


@dataclass
class _SiteStates:
    """A site's contents over time: the start snapshot's, then each record's new bytes, with
    the tick each poke began (its INT3, or the record itself without one)."""

    states: list[bytes]
    starts: list[int]  # starts[i]: when the poke from states[i] to states[i + 1] began


def _states(run: _Run, sites: list[Site], stores: list[Store]) -> dict[str, _SiteStates]:
    out = {}
    for s in sites:
        off = s.addr - layout.TEXT_BASE
        states, starts = [run.text_start[off:off + s.length]], []
        for r in sorted((r for r in run.records if r.addr == s.addr), key=lambda r: r.tick):
            int3s = [st.tick for st in stores if st.site == s.name and st.kind is PhaseKind.INT3
                     and st.tick <= r.tick and (not starts or st.tick > starts[-1])]
            starts.append(int3s[-1] if int3s else r.tick)
            states.append(r.new)
        out[s.name] = _SiteStates(states, starts)
    return out


def _classify(site: Site, st: _SiteStates, tick: int, ip: int, code: bytes) -> ExecKind:
    o = ip - site.addr
    if o == 0 and code[:1] == bytes([INT3]):
        return ExecKind.INT3
    if site.allowed and (o, code) not in site.allowed:
        return ExecKind.TORN
    gen = bisect_right(st.starts, tick)  # pokes begun by now
    old = st.states[gen - 1] if gen else st.states[0]
    new = st.states[gen] if gen < len(st.states) else st.states[-1]
    if old[o:o + len(code)] == code:
        return ExecKind.OLD
    if new[o:o + len(code)] == code:
        return ExecKind.NEW
    for j, state in enumerate(st.states):  # a state another poke left or will leave
        if state[o:o + len(code)] == code:
            return ExecKind.OLD if j < gen else ExecKind.NEW
    return ExecKind.TORN


def _executions(run: _Run, sites: list[Site], states: dict[str, _SiteStates],
                handlers: list[Handler]) -> list[Execution]:
    """Every instruction a CPU retired, or fetched and faulted on, inside a site; an
    undecodable fetch there (#UD) is torn."""
    if not sites:
        return []
    lo, hi = min(s.addr for s in sites), max(s.addr + s.length for s in sites)
    faulted: list[list[tuple[int, int, bytes]]] = [[] for _ in range(run.ncpus)]
    undecoded: list[list[tuple[int, int, bytes]]] = [[] for _ in range(run.ncpus)]
    for e in run.events:
        if isinstance(e, ev.Faulted):
            faulted[e.cpu].append((e.tick, e.ip, e.code))
        elif isinstance(e, ev.ExceptionEvent) and e.vector == x86.UD:
            undecoded[e.cpu].append((e.tick, e.source, b""))
    out = []
    for cpu in range(run.ncpus):
        seen = {(t, ip) for t, ip, _ in faulted[cpu]}
        # a #UD with no Faulted event: bytes the CPU could not even decode
        rows = faulted[cpu] + [u for u in undecoded[cpu] if u[:2] not in seen]
        for tick, ip, code in sorted(run.truth[cpu] + rows):
            if lo <= ip < hi and (site := _site_of(sites, ip)) is not None:
                kind = ExecKind.TORN if not code else \
                    _classify(site, states[site.name], tick, ip, code)
                until = None
                if kind is ExecKind.INT3:  # the #BP it raised: delivered at or after it
                    until = next((h.end for h in handlers if h.cpu == cpu and h.start >= tick
                                  and h.site == site.name), None)
                out.append(Execution(cpu, tick, ip, code, site.name, kind, until))
    return out


# ------------------------------------------------------------------------------ marks, verdict


def _marks(run: _Run) -> list[Mark]:
    out = []
    for e in run.events:
        if isinstance(e, ev.InterruptEvent):
            what = "nmi" if e.vector == x86.NMI else "ipi"
            out.append(Mark(e.cpu, e.tick, what, x86.vector_name(e.vector)))
        elif isinstance(e, ev.ExceptionEvent):
            out.append(Mark(e.cpu, e.tick, "exception", x86.vector_name(e.vector)))
        elif isinstance(e, ev.Serialize):
            cause = "instruction" if e.ipi is None else f"IPI {e.ipi:#x}"
            out.append(Mark(e.cpu, e.tick, "serialize", f"serialize ({cause})"))
        elif isinstance(e, ev.ViewUpdate):
            out.append(Mark(e.cpu, e.tick, "view", f"view {e.start:#x}+{e.size}"
                            + (" stale" if e.stale else "")))
        elif isinstance(e, ev.HypercallEvent) and e.number is Hypercall.SEND_IPI:
            out.append(Mark(e.cpu, e.tick, "send", f"IPI {e.args[1]:#x} to mask {e.args[0]:#x}"))
    return out


def _ticks(run: _Run) -> int:
    ticks = run.verdict.get("ticks")
    last = max([t for rows in run.truth for t, _, _ in rows[-1:]]
               + [e.tick for e in run.events[-1:]] + [0])
    return ticks if type(ticks) is int and ticks >= last else last


def _divergence(run: _Run, prog: Program | None, sites: list[Site]) -> Divergence | None:
    """Where the failing verdict points: its tick if it has one (a torn execution, a decode
    divergence), else the failing instruction (faulted, or last retired there) on its CPU."""
    where = run.verdict.get("where")
    if not isinstance(where, dict) or run.verdict.get("verdict") in (None, "pass"):
        return None
    kind = str(run.verdict.get("verdict"))
    cpu = where.get("cpu") if type(where.get("cpu")) is int else None
    if cpu is not None and not 0 <= cpu < run.ncpus:
        cpu = None
    try:
        rip = int(where["rip"], 16) if isinstance(where.get("rip"), str) else None
    except ValueError:
        rip = None
    extra = where.get("extra") if isinstance(where.get("extra"), dict) else {}
    tick = extra.get("tick") if type(extra.get("tick")) is int else None
    if tick is None and cpu is not None:
        hits = [e.tick for e in run.events if isinstance(e, ev.Faulted) and e.cpu == cpu
                and e.ip == rip]
        hits += [t for t, ip, _ in run.truth[cpu] if ip == rip]
        ends = [t for t, _, _ in run.truth[cpu][-1:]] + \
            [e.tick for e in run.events if e.cpu == cpu][-1:]
        tick = max(hits) if hits else max(ends, default=_ticks(run))
    if tick is None:
        tick = _ticks(run)
    label = kind + ("" if cpu is None else f" on cpu{cpu}")
    if rip is not None:
        symbol = where.get("symbol") if isinstance(where.get("symbol"), str) else ""
        site = where.get("site") if isinstance(where.get("site"), str) else ""
        if not symbol and prog is not None:
            symbol = prog.symbolize(rip)
        if not site:
            site = _name(sites, rip)
        label += f" at {rip:#x}" + (f" ({symbol}{', site ' + site if site else ''})"
                                    if symbol else f" (site {site})" if site else "")
    nested = where.get("nested") if isinstance(where.get("nested"), list) else []
    chain = [f"{f.get('name', '?')} at {f.get('symbol') or f.get('rip', '?')}"
             for f in nested if isinstance(f, dict)]
    if chain:  # the exception it happened inside: the cause, not only the last fault
        label += "\n" + " \u2192 ".join(chain)
    return Divergence(cpu, tick, label)


def from_run_dir(directory: Path) -> Timeline:
    """The timeline of a run directory (`textpoke run/replay --out`); TimelineError (bad
    input) naming the file and the place in it for anything missing or malformed."""
    run = _read(directory)
    prog, sites = _program_and_sites(run)
    stores = []
    for e in run.events:
        if isinstance(e, ev.TextStore):
            site = _site_of(sites, e.addr)
            stores.append(Store(e.cpu, e.tick, e.addr, e.data, site.name if site else "",
                                _store_kind(site, e)))
    states = _states(run, sites, stores)
    handlers = _handlers(run, sites)
    v = run.verdict
    title = (f"{v.get('scenario', '?')} [{v.get('variant', '?')}]"
             + (f" seed {v['seed']}" if v.get("seed") is not None else "")
             + f": {v.get('verdict', '?')}" + ("" if prog else " (no symbols: scenario unknown "
                                                "to this build)"))
    return Timeline(title, run.ncpus, _ticks(run), sites,
                    _phases(run, prog, sites, stores, handlers), stores,
                    sorted(run.records, key=lambda r: r.tick),
                    _executions(run, sites, states, handlers), _marks(run),
                    _divergence(run, prog, sites), handlers)
