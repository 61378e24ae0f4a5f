"""Building a scenario for one variant and CPU count: the guest program assembled, the data
tables packed (guest_abi.py), the image and machine configuration, and each site's allowed
instructions for the torn-execution oracle. Every poke is checked against
text_poke_loc_init()'s rules here, before the guest could BUG() on it.
"""

from __future__ import annotations

from dataclasses import dataclass

from emu import layout
from emu.asm import AsmError, Program, load_source
from emu.config import MachineConfig
from emu.engine import Engine
from emu.loader import CpuBoot, GuestImage
from emu.machine import Machine
from emu.verdict import MachineConfigError

from . import guest
from . import guest_abi as abi
from .guest import DataLayout
from .scenario import FIRST_OWN_FLAG, HANDLER_VECTORS, Scenario, patcher_label
from .site import KPROBE_REGION, CallSite, JumpLabel, KprobeSite
from .text_poke_loc import ScenarioError, check_boundary, text_poke_loc_init


@dataclass
class Built:
    """A scenario made concrete for one variant and CPU count: program, image, site table."""

    scenario: Scenario
    variant: str
    cpus: int
    program: Program
    image: GuestImage
    sites: list[tuple[str, int, int, frozenset[tuple[int, bytes]]]]  # name, addr, len, allowed
    config: MachineConfig
    data: DataLayout


def build(scn: Scenario, variant: str | None = None, cpus: int | None = None,
          event_mode: bool = False) -> Built:
    variant = variant or scn.default_variant
    var = scn.variant(variant)
    ncpus = scn.cpus if cpus is None else cpus
    npatchers = len(scn.patcher_ops())
    least = max(scn.min_cpus, npatchers + 1)  # at least one observer
    if not isinstance(ncpus, int) or not least <= ncpus <= layout.MAX_CPUS:
        raise ScenarioError(f"scenario {scn.name}: needs {least}..{layout.MAX_CPUS} "
                            f"CPUs, got {ncpus}")
    keys = scn.keys()
    kprobes = [s for s in scn.sites if isinstance(s, KprobeSite)]
    gens = scn.generations()
    what = f"scenario {scn.name}"
    data = guest.kernel_data(ncpus, len(scn.sites), len(kprobes),
                             sum(isinstance(s, JumpLabel) for s in scn.sites),
                             sum(isinstance(s, CallSite) for s in scn.sites),
                             ngen=len(gens), nkeys=len(keys))
    if npatchers > 1:  # guest_code/patchers.S's state
        data.dims["NPATCHERS"] = npatchers
        data.alloc("V_TEXT_MUTEX", 8, 64)
        data.alloc("V_PATCHERS_DONE", 8)
        data.alloc("V_SITE_GEN", 16 * max(len(scn.sites), 1))  # {stride, radix} per site
    guest.region_sizes(what, 0, data)  # the data fits, before anything is assembled
    extra = {f"KEY_{k}": data["V_KEYS"] + abi.KEY_SLOT * i for i, k in enumerate(keys)}
    extra |= {f"KPROBE_{s.name}": data["V_KPROBES"] + abi.KPROBE.size * i
              for i, s in enumerate(kprobes)}
    taken = set(guest.equates(ncpus, data))  # before the scenario's own names are allocated
    extra |= _own_names(scn, data, what)
    clash = sorted(set(extra) & taken)
    if clash:
        raise ScenarioError(f"{what}: {clash[0]} names a key, kprobe, flag or variable and a "
                            "guest equate; rename it")
    data.vars.update(extra)
    for op in scn.all_ops():
        problem = op.validate(scn.sites)
        if problem:
            raise ScenarioError(f"{what}: {problem}")
    text = scn.source()
    try:
        prog = guest.kernel_program(text, ncpus, data, what,
                                    ("patchers.S",) if npatchers > 1 else ())
    except AsmError as e:  # the user's mistake; anything else is a harness bug (exit 3)
        raise ScenarioError(_locate(scn, text, e)) from None
    text_size, data_size = guest.region_sizes(what, prog.end - layout.TEXT_BASE, data)

    sites = []
    for i, s in enumerate(scn.sites):
        addr = prog.sym(s.label) + getattr(s, "offset", 0)
        check_boundary(prog, addr, s.name)
        allowed = {(0, b"\xcc")}
        for states in gens:
            allowed |= set(s.instructions(prog, states[i]))
        length = max(off + len(b) for off, b in allowed)
        sites.append((s.name, addr, length, frozenset(allowed)))
    _check_pokes(scn, prog, gens)

    init: list[tuple[int, bytes]] = [
        (data["V_CFG"], guest.u64s(scn.cfg_value(var))),
        (data["V_ONLINE"], guest.u64s((1 << ncpus) - 1)),
        (data["V_STATE_OUT"],  # u64 [site][NGEN]: what the site reports in each generation
         guest.u64s(*(s.outcome(states[i]) for i, s in enumerate(scn.sites)
                      for states in gens))),
    ]
    if npatchers > 1:
        strides = scn.gen_strides()
        init.append((data["V_SITE_GEN"], guest.u64s(*(v for p in scn.site_patchers()
                                                       for v in strides[p]))))
    jumps = [abi.JUMP_ENTRY.pack(code=prog.sym(s.label), target=prog.sym(f"{s.name}_yes"),
                                 key=extra[f"KEY_{s.key}"])
             for s in sorted((s for s in scn.sites if isinstance(s, JumpLabel)),
                             key=lambda s: (extra[f"KEY_{s.key}"], prog.sym(s.label)),
                             reverse=scn.jump_order == "descending")]
    init += [(data["V_JUMP_NR"], guest.u64s(len(jumps))),
             (data["V_JUMP_TABLE"], b"".join(jumps))]
    calls = [abi.STATIC_CALL_SITE.pack(addr=prog.sym(s.label), key=extra[f"KEY_{s.key}"])
             for s in scn.sites if isinstance(s, CallSite)]
    init += [(data["V_SC_NR"], guest.u64s(len(calls))), (data["V_SC_SITES"], b"".join(calls))]
    for s in scn.sites:
        if isinstance(s, CallSite):
            init.append((extra[f"KEY_{s.key}"],
                         abi.STATIC_CALL_KEY.pack(func=prog.sym(s.funcs[0]))))
    kp = [abi.KPROBE.pack(addr=prog.sym(s.label), slot=prog.sym(f"{s.name}_slot"),
                          detour=prog.sym(f"{s.name}_detour"), opcode=KPROBE_REGION[0][0],
                          copied=b"".join(KPROBE_REGION)[1:])
          for s in kprobes]
    init += [(data["V_KPROBES_NR"], guest.u64s(len(kprobes))), (data["V_KPROBES"], b"".join(kp))]
    init += [(extra[name], value) for name, value in scn.variables.items()
             if isinstance(value, bytes)]
    init = [(va, raw) for va, raw in init if raw]

    nmis = (0,) * npatchers + (scn.observer_nmis,) * (ncpus - npatchers)
    # In event mode the visible shared data is the patching protocol's own state: the
    # descriptor the INT3 handler reads and its per-CPU refs, the call-function flags of
    # text_poke_sync, the kprobes.
    watch = ((data["V_BP_VEC"], data["V_BP_NR"] + 8),
             (data["V_CSD"], data["V_CSD"] + 8 * ncpus),
             (data["V_BP_REFS"], data["V_BP_REFS"] + 8 * ncpus))
    if kprobes:
        watch += ((data["V_KPROBES"], data["V_KPROBES"] + abi.KPROBE.size * len(kprobes)),)
    # ... the shipped scenarios' scratch state (Z7's trampoline users, sleeper, wake flag) and
    # the scenario's own shared variables (a user's protocol state)
    watch += ((data["V_SCRATCH"], data["V_SCRATCH"] + guest.SCRATCH_SIZE),)
    if npatchers > 1:
        watch += ((data["V_TEXT_MUTEX"], data["V_TEXT_MUTEX"] + 8),)
    watch += tuple((extra[name], extra[name] + _size(value))
                   for name, value in scn.variables.items())
    config = MachineConfig(ncpus=ncpus, grain=scn.grain, text_size=text_size, data_size=data_size,
                           max_quantum=5000 if event_mode else scn.max_quantum,
                           insn_budget=scn.insn_budget,
                           spontaneous_nmis=nmis if scn.observer_nmis else (),
                           nmi_text=_nmi_text(scn, sites),
                           nmi_rarity=scn.nmi_rarity, event_mode=event_mode,
                           watch=watch if event_mode else ())
    try:
        idt = guest.kernel_idt(prog, {HANDLER_VECTORS[k]: label
                                      for k, label in scn.handlers.items()})
    except AsmError as e:
        raise ScenarioError(f"{what}: handlers: {e}") from None
    image = GuestImage(programs=[prog], idt=idt,
                       boot=[CpuBoot(prog.sym(patcher_label(p))) for p in range(npatchers)]
                       + [CpuBoot(prog.sym("observer")) for _ in range(ncpus - npatchers)],
                       data=init)
    return Built(scn, variant, ncpus, prog, image, sites, config, data)


def _nmi_text(scn: Scenario, sites: list[tuple[str, int, int, frozenset]]
              ) -> tuple[tuple[int, int], ...] | None:
    """MachineConfig.nmi_text for `Scenario.nmi_points`."""
    if scn.nmi_points == "every":
        return None
    if scn.nmi_points != "sites":
        raise ScenarioError(f"scenario {scn.name}: nmi_points must be 'every' or 'sites', got "
                            f"{scn.nmi_points!r}")
    return tuple((addr - layout.TEXT_BASE, addr - layout.TEXT_BASE + length)
                 for _name, addr, length, _allowed in sites)


def _size(value: int | bytes) -> int:
    return len(value) if isinstance(value, bytes) else value


def _own_names(scn: Scenario, data: DataLayout, what: str) -> dict[str, int]:
    """The scenario's own flags (CFG_<name>: its bit) and shared variables (name: its address,
    allocated in the guest data), checked by name."""
    out: dict[str, int] = {}
    if len(scn.flags) > 64 - FIRST_OWN_FLAG or len(set(scn.flags)) != len(scn.flags):
        raise ScenarioError(f"{what}: flags: at most {64 - FIRST_OWN_FLAG} distinct names")
    for name in scn.flags:
        if not name.isidentifier():
            raise ScenarioError(f"{what}: flag {name!r} is not a name")
        out[f"CFG_{name}"] = scn.flag_bit(name)
    for name, value in scn.variables.items():
        size = _size(value)
        if not name.isidentifier() or not isinstance(size, int) or not 1 <= size <= 1 << 20:
            raise ScenarioError(f"{what}: variable {name!r}: a name and 1..1 MiB of data, got "
                                f"{value!r:.40}")
        out[name] = data.alloc(name, size, 64)  # a line of its own: no false sharing
    unknown = sorted(set(scn.handlers) - set(HANDLER_VECTORS))
    if unknown:
        raise ScenarioError(f"{what}: handlers: unknown vector {unknown[0]!r}; known: "
                            f"{', '.join(HANDLER_VECTORS)}")
    return out


def _pieces(scn: Scenario, text: str) -> list[tuple[int, int, str]]:
    """(first line, last line, what) of each piece of the scenario's own source in `text`
    (scn.source(): the ops, then the sites' observer code, their support code, extra_asm)."""
    pieces = [(op.asm(i), f"op {i} ({type(op).__name__})")
              for i, op in enumerate(scn.all_ops())]
    pieces += [(s.observer_asm(), f"site {s.name!r}") for s in scn.sites]
    pieces += [(s.support_asm(), f"site {s.name!r} (support code)") for s in scn.sites]
    pieces.append((scn.extra_asm, "extra_asm"))
    out, cursor = [], 0
    for code, what in pieces:
        code = code.strip("\n")
        at = text.find(code, cursor) if code else -1
        if at < 0:
            continue
        first = text.count("\n", 0, at) + 1
        out.append((first, first + code.count("\n"), what))
        cursor = at + len(code)
    return out


def _locate(scn: Scenario, text: str, err: AsmError) -> str:
    """The assembler's error, said where the user wrote the line: the op or site, and the line
    within it (the program is alternative.S + users.S + the scenario's source)."""
    what = f"scenario {scn.name}"
    if err.line is None:
        return f"{what}: {err}"
    shipped = [(name, load_source(name).count("\n") + 1) for name in ("alternative.S",
                                                                      "users.S")]
    line = err.line
    for name, count in shipped:
        if line <= count:
            return f"{what}: guest_code/{name}:{line}: {err.reason}"
        line -= count
    statement = text.splitlines()[line - 1].strip() if line <= text.count("\n") + 1 else ""
    for first, last, piece in _pieces(scn, text):
        if first <= line <= last:
            return f"{what}, {piece}, line {line - first + 1}: `{statement}`: {err.reason}"
    return f"{what}, its generated code, line {line}: `{statement}`: {err.reason}"


def _check_pokes(scn: Scenario, prog: Program, gens: list[list[object]]) -> None:
    """Every poke the ops will make must pass text_poke_loc_init()'s rules: a clear error now,
    rather than a BUG() in the guest."""
    for g in range(1, len(gens)):
        for i, s in enumerate(scn.sites):
            if gens[g][i] == gens[g - 1][i] or isinstance(s, KprobeSite):
                continue
            new = b"".join(b for _, b in sorted(s.instructions(prog, gens[g][i])))
            text_poke_loc_init(prog.sym(s.label), new, name=f"{scn.name}/{s.name}")


def machine_for(built: Built, engine: Engine = Engine.REFERENCE) -> Machine:
    try:
        return Machine(built.config, built.image, engine)
    except MachineConfigError as e:
        raise ScenarioError(f"scenario {built.scenario.name}: {e}") from None
