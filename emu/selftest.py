"""The machine's self-checks: each drives real guest code (guest_code/selftest.S) through the
decision stream and checks what the CPUs fetched, executed and stored."""

from __future__ import annotations

import struct
from collections.abc import Callable
from dataclasses import dataclass

from . import hypercall, layout, x86
from .asm import Program, assemble, load_source
from .config import MachineConfig
from .decisions import DecisionSource, RandomSource, ReplaySource
from .engine import Engine
from .events import ExceptionEvent, InterruptEvent, Serialize, TextStore
from .fetch_view import Grain
from .loader import CpuBoot, GuestImage
from .machine import Machine, RunResult
from .path import Choice, Kind, Request, simplest
from .verdict import VerdictKind

VARS = ("OBS_LAST", "OBS_ITERS", "STOP", "IPI_SEEN", "IPI_ACK", "TRAPS", "FRAME_RIP", "FRAME_CS",
        "NMI_DEPTH", "NMI_MAXDEPTH", "NMI_ENTRIES", "NMI_SECOND", "PF_CR2", "PF_ERR", "TSC1",
        "TSC2", "OBS_FIRST")
OLD_SITE = bytes.fromhex("b811111111")
NEW_SITE = bytes.fromhex("b822222222")


def var(name: str) -> int:
    return layout.DATA_BASE + layout.GUEST_DATA_OFFSET + 8 * VARS.index(name)


def program() -> Program:
    equates = {f"V_{n}": var(n) for n in VARS} | hypercall.EQUATES | {
        "POKE_DELTA": layout.POKE_BASE - layout.TEXT_BASE}
    return assemble(load_source("selftest.S"), layout.TEXT_BASE, equates, "selftest.S")


def build(entries: list[str], idt: dict[int, str] | None = None, interrupts: bool = True,
          engine: Engine = Engine.REFERENCE, **config) -> Machine:
    prog = program()
    idt_map = {x86.DF: prog.sym("df_handler")}
    idt_map |= {v: prog.sym(h) for v, h in (idt or {}).items()}
    image = GuestImage(programs=[prog], idt=idt_map,
                       boot=[CpuBoot(prog.sym(e), interrupts=interrupts) for e in entries])
    return Machine(MachineConfig(ncpus=len(entries), **config), image, engine)


class Scripted(DecisionSource):
    """A scripted schedule: CPUs in turn, a fixed quantum, fetch-view updates chosen by
    `view(arity)`; every other choice its simplest (interrupts as soon as allowed)."""

    def __init__(self, quantum: int = 3, view: Callable[[int], int] = lambda _arity: 0,
                 flush: Callable[[int], int] = lambda _arity: 0) -> None:
        self.quantum = quantum
        self.view = view
        self.flush = flush  # event mode's fetch of a pending unit (0: memory's latest)
        self._rr = -1

    def pick(self, request: Request, position: int) -> int:
        kind, arity = request.kind, request.arity
        if kind is Kind.CPU:
            self._rr = (self._rr + 1) % arity
            return self._rr
        if kind is Kind.QUANTUM:
            return min(self.quantum, arity) - 1
        if kind is Kind.VIEW:
            return self.view(arity)
        if kind is Kind.FLUSH:
            return self.flush(arity)
        return simplest(request)


@dataclass
class Check:
    name: str
    ok: bool
    detail: str


def _u64(m: Machine, name: str) -> int:
    return struct.unpack("<Q", m.mem.read(var(name), 8))[0]


def _site_runs(m: Machine, res: RunResult, cpu: int) -> list[tuple[int, bytes]]:
    site = m.symbol("site_insn")
    return [(t, b) for t, ip, b in res.truth.retired[cpu] if ip == site]


def _serialize_tick(res: RunResult, cpu: int, ipi: bool) -> int | None:
    """When `cpu` first serialized by taking an IPI (`ipi`) or by an instruction."""
    for e in res.truth.events:
        if isinstance(e, Serialize) and e.cpu == cpu and (e.ipi is not None) is ipi:
            return e.tick
    return None


def _store_tick(res: RunResult) -> int:
    return next(e.tick for e in res.truth.events if isinstance(e, TextStore))


def _xmc(grain: Grain, view: Callable[[int], int], engine: Engine, event_mode: bool = False
         ) -> tuple[Machine, RunResult]:
    """cpu0 patches the site cpu1 runs, then syncs it by IPI. In event mode cpu1's fetches
    of the pending site see the view's own (stale) bytes, as `view` 0 keeps them in quantum
    mode, until it serializes."""
    m = build(["xmc_cpu0", "xmc_cpu1"], {x86.CALL_FUNCTION_VECTOR: "xmc_ipi"}, grain=grain,
              engine=engine, event_mode=event_mode)
    return m, m.run(Scripted(view=view, flush=lambda arity: min(1, arity - 1)))


def check_stale_fetch_until_sync(engine: Engine = Engine.REFERENCE) -> Check:
    m, res = _xmc(Grain.STORE, lambda _a: 0, engine)
    if not res.verdict.ok:
        return Check("stale_fetch_until_sync", False, str(res.verdict))
    stored, synced = _store_tick(res), _serialize_tick(res, 1, ipi=True)
    runs = _site_runs(m, res, 1)
    stale = [t for t, b in runs if stored < t and (synced is None or t < synced) and b == OLD_SITE]
    after = [b for t, b in runs if synced is not None and t > synced]
    ok = bool(stale) and synced is not None and bool(after) and all(b == NEW_SITE for b in after)
    return Check("stale_fetch_until_sync", ok,
                 f"cpu1 ran the old site {len(stale)}x after the store at t={stored}, "
                 f"serialized at t={synced}, then ran {len(after)}x, all new={ok}")


def _torn_first(arity: int, state: list[int]) -> int:
    """Make exactly one pending unit (the first) visible, once."""
    if state[0]:
        return 0
    state[0] = 1
    return 1


def _is_torn(b: bytes) -> bool:
    return (b not in (OLD_SITE, NEW_SITE) and len(b) == 5
            and all(x in (o, n) for x, o, n in zip(b, OLD_SITE, NEW_SITE, strict=True)))


def check_torn_fetch_byte_grain(engine: Engine = Engine.REFERENCE) -> Check:
    state = [0]
    m, res = _xmc(Grain.BYTE, lambda a: _torn_first(a, state), engine)
    torn = [(t, b) for t, b in _site_runs(m, res, 1) if _is_torn(b)]
    value = _u64(m, "OBS_LAST")
    ok = res.verdict.ok and bool(torn)
    return Check("torn_fetch_byte_grain", ok,
                 f"cpu1 executed {len(torn)} torn fetches of the site, e.g. "
                 f"{torn[0][1].hex() if torn else '-'}; verdict {res.verdict.kind}; "
                 f"last value {value:#x}")


def check_no_torn_fetch_after_sync(engine: Engine = Engine.REFERENCE) -> Check:
    state = [0]
    m, res = _xmc(Grain.BYTE, lambda a: _torn_first(a, state), engine)
    synced = _serialize_tick(res, 1, ipi=True)
    runs = _site_runs(m, res, 1)
    before = [b for t, b in runs if synced is not None and t < synced and _is_torn(b)]
    after = [b for t, b in runs if synced is not None and t > synced]
    ok = (res.verdict.ok and bool(before) and bool(after)
          and all(b == NEW_SITE for b in after))
    return Check("no_torn_fetch_after_sync", ok,
                 f"{len(before)} torn fetches before the sync at t={synced}, {len(after)} "
                 f"fetches after it, all new={all(b == NEW_SITE for b in after)}")


def check_own_writes_visible(engine: Engine = Engine.REFERENCE) -> Check:
    """A CPU runs the site, stores to it, and runs it again: the new bytes, in both modes
    (its translation of the old ones is dropped however its store is handled); and the
    old ones again in the machine's next run (the translation of the new ones is dropped
    at its reset)."""
    seen = []
    for event_mode in (False, True):
        m = build(["own_cpu0"], engine=engine, event_mode=event_mode)
        for run in (1, 2):
            res = m.run(Scripted(view=lambda _a: 0))
            runs = [b for _, b in _site_runs(m, res, 0)]
            got = (_u64(m, "OBS_FIRST") & 0xFFFFFFFF, _u64(m, "OBS_LAST") & 0xFFFFFFFF)
            seen.append((res.verdict.ok and got == (0x11111111, 0x22222222)
                         and runs == [OLD_SITE, NEW_SITE],
                         f"{'event' if event_mode else 'quantum'} mode, run {run}: the "
                         f"patching CPU ran {[b.hex() for b in runs]} and got "
                         f"{got[0]:#x}, {got[1]:#x}"))
    return Check("own_writes_visible", all(ok for ok, _ in seen), "; ".join(d for _, d in seen))


def check_int3_handler_iret(engine: Engine = Engine.REFERENCE) -> Check:
    m = build(["int3_cpu0"], {x86.BP: "bp_handler"}, engine=engine)
    res = m.run(Scripted())
    ips = res.truth.ips(0)
    int3, after, handler = m.symbol("int3_insn"), m.symbol("int3_after"), m.symbol("bp_handler")
    trapped = [b for _, ip, b in res.truth.retired[0] if ip == int3]
    ok = (res.verdict.ok and _u64(m, "TRAPS") == 1 and _u64(m, "FRAME_RIP") == after
          and _u64(m, "FRAME_CS") == layout.KERNEL_CS and trapped == [b"\xcc"]
          and handler in ips and ips.index(after) > ips.index(handler)
          and _u64(m, "OBS_LAST") & 0xFFFFFFFF == 8)
    return Check("int3_handler_iret", ok,
                 f"handler ran {_u64(m, 'TRAPS')}x with frame RIP {_u64(m, 'FRAME_RIP'):#x} "
                 f"(INT3 at {int3:#x}), execution resumed at {after:#x}")


def check_ud_from_invalid_bytes(engine: Engine = Engine.REFERENCE) -> Check:
    m = build(["ud_cpu0"], {x86.UD: "ud_handler"}, engine=engine)
    res = m.run(Scripted())
    ud = m.symbol("ud_insn")
    ok = (res.verdict.ok and _u64(m, "TRAPS") == 1 and _u64(m, "FRAME_RIP") == ud
          and ud not in res.truth.ips(0) and _u64(m, "OBS_LAST") & 0xFFFFFFFF == 8
          and any(isinstance(e, ExceptionEvent) and e.vector == x86.UD
                  for e in res.truth.events))
    return Check("ud_from_invalid_bytes", ok,
                 f"#UD handler ran {_u64(m, 'TRAPS')}x with frame RIP "
                 f"{_u64(m, 'FRAME_RIP'):#x} (invalid bytes at {ud:#x})")


def check_ipi_serializes(engine: Engine = Engine.REFERENCE) -> Check:
    """In both modes: cpu1 runs the old site until the IPI; its handler, before its IRETQ,
    runs the new one (the serialization made it visible and dropped the old translation)."""
    seen = []
    for event_mode in (False, True):
        m, res = _xmc(Grain.STORE, lambda _a: 0, engine, event_mode)
        value = _u64(m, "IPI_SEEN") & 0xFFFFFFFF
        stored, synced = _store_tick(res), _serialize_tick(res, 1, ipi=True)
        stale = [t for t, b in _site_runs(m, res, 1)
                 if stored < t and synced is not None and t < synced and b == OLD_SITE]
        seen.append((res.verdict.ok and value == 0x22222222 and bool(stale),
                     f"{'event' if event_mode else 'quantum'} mode: cpu1 ran the old site "
                     f"{len(stale)}x after the store, then its IPI handler got {value:#x}"))
    return Check("ipi_serializes", all(ok for ok, _ in seen), "; ".join(d for _, d in seen))


def check_nmi_delivery(engine: Engine = Engine.REFERENCE) -> Check:
    m = build(["nmi_cpu0", "nmi_cpu1"], {x86.NMI: "nmi_handler"}, engine=engine)
    res = m.run(Scripted())
    nmis = [e for e in res.truth.events if isinstance(e, InterruptEvent) and e.cpu == 1
            and e.vector == x86.NMI]
    iret_ticks = [t for t, ip, b in res.truth.retired[1] if b == b"\x48\xcf"]
    second_after_iret = len(nmis) == 2 and bool(iret_ticks) and nmis[1].tick > iret_ticks[0]
    ok = (res.verdict.ok and _u64(m, "NMI_ENTRIES") == 2 and _u64(m, "NMI_MAXDEPTH") == 1
          and second_after_iret)
    return Check("nmi_delivery", ok,
                 f"{len(nmis)} NMIs delivered to cpu1 running with IF=0, max nesting "
                 f"{_u64(m, 'NMI_MAXDEPTH')}, second after the first IRETQ={second_after_iret}")


def check_write_via_exec_mapping_faults(engine: Engine = Engine.REFERENCE) -> Check:
    m = build(["pf_cpu0"], {x86.PF: "pf_handler"}, engine=engine)
    res = m.run(Scripted())
    site = m.symbol("site_insn")
    err = _u64(m, "PF_ERR")
    intact = m.mem.read(site, 5) == OLD_SITE
    ok = (res.verdict.ok and _u64(m, "TRAPS") == 1 and _u64(m, "PF_CR2") == site
          and err & (x86.PF_PRESENT | x86.PF_WRITE) == x86.PF_PRESENT | x86.PF_WRITE
          and _u64(m, "FRAME_RIP") == m.symbol("pf_store") and intact)
    return Check("write_via_exec_mapping_faults", ok,
                 f"#PF with CR2 {_u64(m, 'PF_CR2'):#x}, error code {err:#x}, frame RIP "
                 f"{_u64(m, 'FRAME_RIP'):#x}; text unchanged={intact}")


def check_rdtsc_virtual(engine: Engine = Engine.REFERENCE) -> Check:
    m = build(["tsc_cpu0"], engine=engine)
    res = m.run(Scripted())
    ticks = {ip: t for t, ip, _ in res.truth.retired[0]}
    t1, t2 = _u64(m, "TSC1"), _u64(m, "TSC2")
    ok = (res.verdict.ok and t1 == ticks[m.symbol("rdtsc_1")]
          and t2 == ticks[m.symbol("rdtsc_2")] and t2 > t1)
    return Check("rdtsc_virtual", ok,
                 f"RDTSC={t1}, RDTSCP={t2}: the global ticks of those instructions")


def check_determinism(replay: Callable[[list[Choice]], DecisionSource] = ReplaySource,
                      engine: Engine = Engine.REFERENCE) -> Check:
    """A seeded run, its path replayed on a fresh machine (through `replay`, which a test
    perturbs to see this check fail), and the seed run again there: three runs, each result
    owning its record, with the same verdict, ground truth and sideband."""
    def machine() -> Machine:
        return build(["xmc_cpu0", "xmc_cpu1"], {x86.CALL_FUNCTION_VECTOR: "xmc_ipi"},
                     grain="byte", engine=engine)

    a = machine().run(RandomSource(1234))
    m2 = machine()
    b = m2.run(replay(list(a.path)))
    c = m2.run(RandomSource(1234))
    digests = [r.truth.digest() for r in (a, b, c)]
    same = [a.verdict.kind == r.verdict.kind and digests[0] == d and a.sideband == r.sideband
            for r, d in ((b, digests[1]), (c, digests[2]))]
    ok = all(same) and len(a.path) > 10
    return Check("determinism", ok,
                 f"{len(a.path)} decisions; ground truth {digests[0][:12]}, replayed on a fresh "
                 f"machine {digests[1][:12]} (same={same[0]}), seeded re-run {digests[2][:12]} "
                 f"(same={same[1]})")


def check_reset_restores(engine: Engine = Engine.REFERENCE) -> Check:
    m = build(["xmc_cpu0", "xmc_cpu1"], {x86.CALL_FUNCTION_VECTOR: "xmc_ipi"}, grain="byte",
              engine=engine)
    initial = m.mem.snapshot()
    regs0 = [(c.reg("rip"), c.reg("rsp"), c.reg("rflags")) for c in m.cpus]
    first = m.run(RandomSource(7))
    digest = first.truth.digest()
    m.reset()
    same_mem = m.mem.snapshot() == initial
    same_regs = [(c.reg("rip"), c.reg("rsp"), c.reg("rflags")) for c in m.cpus] == regs0
    same_views = all(bytes(v.buf) == initial[0] and not v.has_pending() for v in m.views)
    again = m.run(RandomSource(7))
    ok = (same_mem and same_regs and same_views and m.clock.tick == again.ticks
          and again.truth.digest() == digest)
    return Check("reset_restores", ok,
                 f"memory={same_mem} registers={same_regs} views={same_views}; re-run after "
                 "reset identical=" + str(again.truth.digest() == digest))


def check_hang_budget(engine: Engine = Engine.REFERENCE) -> Check:
    m = build(["hang_cpu0", "idle_cpu"], insn_budget=5000, engine=engine)
    res = m.run(RandomSource(1))
    ok = res.verdict.kind is VerdictKind.HANG and res.verdict.cpu == 0 and m.cpus[0].retired >= 5000
    return Check("hang_budget", ok, f"runaway guest ended with: {res.verdict}")


CHECKS: tuple[Callable[[], Check], ...] = (
    check_stale_fetch_until_sync, check_torn_fetch_byte_grain, check_no_torn_fetch_after_sync,
    check_own_writes_visible, check_int3_handler_iret, check_ud_from_invalid_bytes,
    check_ipi_serializes, check_nmi_delivery, check_write_via_exec_mapping_faults,
    check_rdtsc_virtual, check_determinism, check_reset_restores, check_hang_budget,
)


def run_all(engine: Engine = Engine.REFERENCE) -> list[Check]:
    """Every check, on machines of `engine` (the fast one's native hooks where installed)."""
    out = []
    for fn in CHECKS:
        name = fn.__name__.removeprefix("check_")
        try:
            out.append(fn(engine=engine))
        except Exception as e:  # a check that crashes is a failed check, with the reason
            out.append(Check(name, False, f"{type(e).__name__}: {e}"))
    return out
