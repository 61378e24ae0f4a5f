"""Scenarios: which text, which patching sequence and variant, what the observers run, and
what must hold. A scenario is a few lines of Python:

    Scenario("static_key", "one key, 4 jump-label sites, enabled then disabled",
             sites=[JumpLabel(f"jl{i}", key="k") for i in range(4)],
             ops=[StaticKey("k", True), StaticKey("k", False)])

CPU 0 runs the patcher: it waits for every observer to pass once, performs each op through the
guest kernel (guest_code/users.S -> alternative.S), bumping V_DONE_GEN after each, then lets the
observers pass twice more and stops them. CPUs 1.. run the observer loop: a quiescent point,
then every site in turn, each execution checked by the guest's check_outcome() against the
states the site may be in (a `semantics` verdict otherwise). After the run the harness checks
the ground truth: every instruction executed inside a site must be one of the site's
instructions in one of its states, or the INT3 at its first byte (`torn_execution` otherwise).
"""

from __future__ import annotations

import abc
import struct
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from emu import layout
from emu.asm import KERNEL_NOPS, Program
from emu.loader import CpuBoot, GuestImage
from emu.machine import Machine, MachineConfig
from emu.verdict import MachineConfigError, VerdictKind

from . import guest
from . import guest_abi as abi
from .guest import Cfg, DataLayout
from .text_poke_loc import ScenarioError, check_boundary, text_poke_loc_init


def _rel32(frm: int, to: int) -> bytes:
    return struct.pack("<i", to - (frm + 5))


# ---------------------------------------------------------------------------- sites
class Site(abc.ABC):
    """A patch site in the observers' path and the instructions it can hold."""

    name: str

    @abc.abstractmethod
    def observer_asm(self) -> str:
        """Code at the site in the observer loop; leaves the outcome in ebx."""

    def support_asm(self) -> str:
        return ""

    @property
    def label(self) -> str:
        return f"site_{self.name}"

    @abc.abstractmethod
    def instructions(self, prog: Program, state: object) -> list[tuple[int, bytes]]:
        """(offset, bytes) of every instruction in the site when it is in `state`."""

    @abc.abstractmethod
    def outcome(self, state: object) -> int:
        """What an execution reports (ebx) in `state`."""

    @abc.abstractmethod
    def initial(self) -> object:
        """The state before any op."""


@dataclass
class JumpLabel(Site):
    """A static branch: the kernel's NOP5 while the key is off, a JMP32 to `yes` when on."""

    name: str
    key: str
    offset: int = 0  # where the patch goes relative to the label (validated: a boundary)

    def observer_asm(self) -> str:
        n = self.name
        return (f"{self.label}:\n    KNOP 5\n    mov ebx, 1\n    jmp {n}_out\n"
                f"{n}_yes:\n    mov ebx, 2\n{n}_out:\n")

    def instructions(self, prog: Program, state: object) -> list[tuple[int, bytes]]:
        site = prog.sym(self.label)
        if state:
            return [(0, b"\xe9" + _rel32(site, prog.sym(f"{self.name}_yes")))]
        return [(0, KERNEL_NOPS[5])]

    def outcome(self, state: object) -> int:
        return 2 if state else 1

    def initial(self) -> object:
        return False


@dataclass
class CallSite(Site):
    """A direct CALL whose target is one of `funcs` (static_call, or a promoted indirect call
    when `promoted` is set: the observer then also makes the indirect call it stands for)."""

    name: str
    key: str
    funcs: Sequence[str]
    promoted: bool = False
    offset: int = 0

    def observer_asm(self) -> str:
        pre = post = ""
        if self.promoted:  # the promotion RFC: compare the target, direct call if it matches
            pre = (f"    mov rax, qword ptr [KEY_{self.key}]\n"
                   f"    lea rcx, [rip + {self.funcs[0]}]\n"
                   f"    cmp rax, rcx\n    jne {self.name}_miss\n")
            post = (f"    jmp {self.name}_out\n{self.name}_miss:\n    push rbx\n    call rax\n"
                    f"    pop rbx\n    mov ebx, 0\n    jmp {self.label}\n{self.name}_out:\n")
        return f"{pre}{self.label}:\n    call {self.funcs[0]}\n{post}"

    def instructions(self, prog: Program, state: object) -> list[tuple[int, bytes]]:
        site = prog.sym(self.label)
        return [(0, b"\xe8" + _rel32(site, prog.sym(self.funcs[int(state)])))]

    def outcome(self, state: object) -> int:
        return int(state) + 1

    def initial(self) -> object:
        return 0


KPROBE_REGION = (b"\x55", b"\x48\x89\xe5", b"\x53")  # push rbp; mov rbp, rsp; push rbx


@dataclass
class KprobeSite(Site):
    """A probed function prologue: `push rbp; mov rbp, rsp; push rbx`, 5 bytes in 3
    instructions. States: plain, armed (INT3 on the first byte), optimized (JMP32 to the
    detour)."""

    name: str
    offset: int = 0

    def observer_asm(self) -> str:
        n = self.name
        return (f"{self.label}:\n    push rbp\n    mov rbp, rsp\n    push rbx\n{n}_after:\n"
                f"    pop rbx\n    pop rbp\n    mov ebx, 1\n")

    def support_asm(self) -> str:
        n = self.name
        body = "    push rbp\n    mov rbp, rsp\n    push rbx\n    jmp " + f"{n}_after\n"
        return (f"{n}_slot:\n{body}"
                f"{n}_detour:\n    lock inc qword ptr [KPROBE_{n} + KPROBE_HITS]\n{body}")

    def instructions(self, prog: Program, state: object) -> list[tuple[int, bytes]]:
        if state == "optimized":
            site = prog.sym(self.label)
            return [(0, b"\xe9" + _rel32(site, prog.sym(f"{self.name}_detour")))]
        first = b"\xcc" if state == "armed" else KPROBE_REGION[0]
        return [(0, first), (1, KPROBE_REGION[1]), (4, KPROBE_REGION[2])]

    def outcome(self, state: object) -> int:
        return 1

    def initial(self) -> object:
        return "plain"


# ---------------------------------------------------------------------------- ops
class Op(abc.ABC):
    """One patching operation the patcher CPU performs, and its effect on the sites."""

    @abc.abstractmethod
    def asm(self, index: int) -> str: ...

    def apply(self, site: Site, state: object) -> object:
        return state

    def validate(self, sites: Sequence[Site]) -> str | None:
        """What is wrong with this op on these sites, before anything is assembled."""
        return None


@dataclass
class StaticKey(Op):
    key: str
    enabled: bool

    def asm(self, index: int) -> str:
        return (f"    mov rdi, KEY_{self.key}\n    mov esi, {int(self.enabled)}\n"
                "    call static_key_set\n")

    def apply(self, site: Site, state: object) -> object:
        return self.enabled if isinstance(site, JumpLabel) and site.key == self.key else state


@dataclass
class StaticCallUpdate(Op):
    key: str
    func: str

    def asm(self, index: int) -> str:
        return (f"    mov rdi, KEY_{self.key}\n    lea rsi, [rip + {self.func}]\n"
                "    call static_call_update\n")

    def apply(self, site: Site, state: object) -> object:
        if isinstance(site, CallSite) and site.key == self.key:
            return list(site.funcs).index(self.func)
        return state


@dataclass
class Kprobe(Op):
    """arm | optimize | unoptimize | disarm | arm_bp (arm through text_poke_bp with INT3 as
    the new instruction, as the pre-2019 optprobe code did)."""

    name: str
    action: str

    _NEXT = {"arm": "armed", "arm_bp": "armed", "optimize": "optimized",
             "unoptimize": "armed", "disarm": "plain"}

    def asm(self, index: int) -> str:
        if self.action == "arm_bp":
            return (f"    mov qword ptr [KPROBE_{self.name} + KPROBE_ARMED], 1\n"
                    f"    lea rdi, [rip + site_{self.name}]\n    lea rsi, [rip + kp_int3]\n"
                    "    mov edx, 1\n    xor ecx, ecx\n    call text_poke_bp\n")
        return f"    mov rdi, KPROBE_{self.name}\n    call kprobe_{self.action}\n"

    def apply(self, site: Site, state: object) -> object:
        if isinstance(site, KprobeSite) and site.name == self.name:
            return self._NEXT[self.action]
        return state


@dataclass
class Raw(Op):
    """Scenario-specific patcher code (labels get the op index appended via {i})."""

    code: str
    effect: Mapping[str, object] = field(default_factory=dict)  # site name -> new state

    def asm(self, index: int) -> str:
        return self.code.replace("{i}", str(index))

    def apply(self, site: Site, state: object) -> object:
        return self.effect.get(site.name, state)


# The one-site building blocks of guest_code/users.S, by step name; True: takes the poke (tp).
POKE_STEPS: dict[str, tuple[str, bool]] = {
    "int3": ("poke_int3", True), "tail": ("poke_tail", True), "record": ("poke_record", True),
    "first": ("poke_first", True), "sync": ("text_poke_sync", False),
    "retire": ("poke_retire", False)}


@dataclass
class PokeSteps(Op):
    """A user's own order of steps for turning one jump label's NOP5 into its JMP32, over the
    building blocks: int3 (INT3 on the first byte), tail (bytes 1..4), record (the
    PERF_RECORD_TEXT_POKE), first (the new first byte), sync (text_poke_sync on every CPU),
    retire (drop the descriptor once no INT3 handler holds it). The descriptor is published
    first (poke_prepare_jmp), so an INT3 hit is emulated as the new JMP meanwhile."""

    site: str
    steps: Sequence[str]

    def validate(self, sites: Sequence[Site]) -> str | None:
        if not any(isinstance(s, JumpLabel) and s.name == self.site for s in sites):
            return f"PokeSteps: no jump label named {self.site!r}"
        bad = [s for s in self.steps if s not in POKE_STEPS]
        if bad:
            return (f"PokeSteps({self.site!r}): unknown step {bad[0]!r}; known: "
                    f"{', '.join(POKE_STEPS)}")
        return None

    def asm(self, index: int) -> str:
        lines = ["    sub rsp, POKE_STEPS_STACK", "    mov rdi, rsp",
                 f"    lea rsi, [rip + site_{self.site}]",
                 f"    lea rdx, [rip + {self.site}_yes]", "    call poke_prepare_jmp"]
        for step in self.steps:
            routine, takes_tp = POKE_STEPS[step]
            lines += (["    mov rdi, rsp"] if takes_tp else []) + [f"    call {routine}"]
        return "\n".join(lines + ["    add rsp, POKE_STEPS_STACK"]) + "\n"

    def apply(self, site: Site, state: object) -> object:
        return True if isinstance(site, JumpLabel) and site.name == self.site else state


# ---------------------------------------------------------------------------- scenarios
GENERIC_VARIANTS: dict[str, Cfg] = {
    "correct": Cfg(0),
    "no_sync1": Cfg.NO_SYNC1,
    "record_early": Cfg.RECORD_EARLY,
    "record_late": Cfg.RECORD_LATE,
    "no_refwait": Cfg.NO_REFWAIT,
    "no_int3": Cfg.NO_INT3,
    "no_qs_wait": Cfg.NO_QS_WAIT,
    "no_gap": Cfg.NO_GAP,
    "unsorted": Cfg.UNSORTED,
    "call_as_nop": Cfg.CALL_AS_NOP,
    "no_sync3": Cfg.NO_SYNC3,
}


@dataclass(frozen=True)
class Variant:
    cfg: Cfg
    expect: str | None = None  # failure kinds a buggy variant shows ("a|b"); None: must pass

    def __post_init__(self) -> None:
        self.expected  # noqa: B018 - a misspelt kind is a ValueError here, not a lost failure

    @property
    def expected(self) -> frozenset[VerdictKind]:
        return frozenset(map(VerdictKind, self.expect.split("|"))) if self.expect else \
            frozenset()

    def accepts(self, kind: VerdictKind) -> bool:
        return kind in self.expected


@dataclass
class Scenario:
    name: str
    description: str
    sites: Sequence[Site]
    ops: Sequence[Op]
    cpus: int = 4
    variants: Mapping[str, Variant] = field(default_factory=dict)
    default_variant: str = "correct"
    jump_order: str = "sorted"  # or "descending" (Z6)
    extra_asm: str = ""
    grain: str = "byte"
    max_quantum: int = 16
    insn_budget: int = 400_000
    observer_nmis: int = 0  # spontaneous NMIs each observer may take (preemption, Z1)
    nmi_rarity: int = 2
    nmi_handler: str | None = None
    passes_after: int = 2
    initial_wait: int = 1  # observer passes the patcher waits for before its first op
    min_cpus: int = 2
    card: str | None = None  # race-zoo card, e.g. "Z6"

    def variant(self, name: str) -> Variant:
        if name in self.variants:
            return self.variants[name]
        if name in GENERIC_VARIANTS:
            return Variant(GENERIC_VARIANTS[name])
        raise ScenarioError(f"scenario {self.name}: unknown variant {name!r}; known: "
                            f"{', '.join(self.variant_names())}")

    def variant_names(self) -> list[str]:
        return list(self.variants) + [v for v in GENERIC_VARIANTS if v not in self.variants]

    # ------------------------------------------------------------------ building
    def keys(self) -> list[str]:
        keys: list[str] = []
        for s in self.sites:
            k = getattr(s, "key", None)
            if k is not None and k not in keys:
                keys.append(k)
        return keys

    def generations(self) -> list[list[object]]:
        """Per generation (before any op, after op 1, ...), the state of every site."""
        states = [s.initial() for s in self.sites]
        gens = [list(states)]
        for op in self.ops:
            states = [op.apply(s, st) for s, st in zip(self.sites, states, strict=True)]
            gens.append(list(states))
        return gens

    def source(self) -> str:
        lines = ["# ---- scenario " + self.name, "patcher:",
                 f"    mov edi, {self.initial_wait}", "    call wait_observer_passes"]
        for i, op in enumerate(self.ops):
            lines.append(op.asm(i).rstrip("\n"))
            lines.append(f"op_done_{i}:")
            lines.append("    lock inc qword ptr [V_DONE_GEN]")
        lines += [f"    mov edi, {self.passes_after}", "    call wait_observer_passes",
                  "    mov qword ptr [V_STOP], 1", "    mov eax, HC_FINISH",
                  "    out HC_PORT, eax",
                  "observer:", "    and rsp, -16", "obs_top:",
                  "    mov rax, qword ptr gs:[PERCPU_CPU]",
                  "    lock inc qword ptr [V_QS + rax*8]   # voluntary quiescent point",
                  "    mov eax, HC_QUIESCENT", "    out HC_PORT, eax",
                  "    mov r12, qword ptr [V_DONE_GEN]"]
        for i, s in enumerate(self.sites):
            lines += ["    xor ebx, ebx", s.observer_asm().rstrip("\n"),
                      f"    mov edi, {i}", "    mov esi, ebx", "    mov rdx, r12",
                      "    call check_outcome"]
        lines += ["    mov rax, qword ptr gs:[PERCPU_CPU]",
                  "    lock inc qword ptr [V_PASSES + rax*8]",
                  "    cmp qword ptr [V_STOP], 0", "    je obs_top", "    mov eax, HC_FINISH",
                  "    out HC_PORT, eax"]
        seen: set[str] = set()
        for s in self.sites:
            for f in getattr(s, "funcs", ()):
                if f not in seen and f"\n{f}:" not in "\n" + self.extra_asm:
                    seen.add(f)
                    lines += [f"{f}:", f"    mov ebx, {list(s.funcs).index(f) + 1}", "    ret"]
            lines.append(s.support_asm().rstrip("\n"))
        lines.append(self.extra_asm)
        return "\n".join(lines) + "\n"


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
    if not isinstance(ncpus, int) or not scn.min_cpus <= ncpus <= layout.MAX_CPUS:
        raise ScenarioError(f"scenario {scn.name}: needs {scn.min_cpus}..{layout.MAX_CPUS} "
                            f"CPUs, got {ncpus}")
    keys = scn.keys()
    kprobes = [s for s in scn.sites if isinstance(s, KprobeSite)]
    gens = scn.generations()
    what = f"scenario {scn.name}"
    data = guest.kernel_data(ncpus, len(scn.sites), len(kprobes),
                             sum(isinstance(s, JumpLabel) for s in scn.sites),
                             sum(isinstance(s, CallSite) for s in scn.sites),
                             ngen=len(gens), nkeys=len(keys))
    guest.region_sizes(what, 0, data)  # the data fits, before anything is assembled
    extra = {f"KEY_{k}": data["V_KEYS"] + abi.KEY_SLOT * i for i, k in enumerate(keys)}
    extra |= {f"KPROBE_{s.name}": data["V_KPROBES"] + abi.KPROBE.size * i
              for i, s in enumerate(kprobes)}
    clash = sorted(set(extra) & set(guest.equates(ncpus, data)))
    if clash:
        raise ScenarioError(f"{what}: {clash[0]} names a key or kprobe and a guest equate; "
                            "rename it")
    data.vars.update(extra)
    for op in scn.ops:
        problem = op.validate(scn.sites)
        if problem:
            raise ScenarioError(f"{what}: {problem}")
    try:
        prog = guest.kernel_program(scn.source(), ncpus, data, what)
    except Exception as e:
        msg = str(e)
        raise ScenarioError(msg if msg.startswith(what) else f"{what}: {msg}") from None
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
        (data["V_CFG"], guest.u64s(int(var.cfg))),
        (data["V_ONLINE"], guest.u64s((1 << ncpus) - 1)),
        (data["V_STATE_OUT"],  # u64 [site][NGEN]: what the site reports in each generation
         guest.u64s(*(s.outcome(states[i]) for i, s in enumerate(scn.sites)
                      for states in gens))),
    ]
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
    init = [(va, raw) for va, raw in init if raw]

    nmis = (0,) + (scn.observer_nmis,) * (ncpus - 1)
    # In event mode the visible shared data is the patching protocol's own state: the
    # descriptor the INT3 handler reads and its per-CPU refs, the call-function flags of
    # text_poke_sync, the kprobes.
    watch = ((data["V_BP_VEC"], data["V_BP_NR"] + 8),
             (data["V_CSD"], data["V_CSD"] + 8 * ncpus),
             (data["V_BP_REFS"], data["V_BP_REFS"] + 8 * ncpus))
    if kprobes:
        watch += ((data["V_KPROBES"], data["V_KPROBES"] + abi.KPROBE.size * len(kprobes)),)
    config = MachineConfig(ncpus=ncpus, grain=scn.grain, text_size=text_size, data_size=data_size,
                           max_quantum=5000 if event_mode else scn.max_quantum,
                           insn_budget=scn.insn_budget,
                           spontaneous_nmis=nmis if scn.observer_nmis else (),
                           nmi_rarity=scn.nmi_rarity, event_mode=event_mode,
                           watch=watch if event_mode else ())
    image = GuestImage(programs=[prog], idt=guest.kernel_idt(prog, scn.nmi_handler),
                       boot=[CpuBoot(prog.sym("patcher"))]
                       + [CpuBoot(prog.sym("observer")) for _ in range(ncpus - 1)],
                       data=init)
    return Built(scn, variant, ncpus, prog, image, sites, config, data)


def _check_pokes(scn: Scenario, prog: Program, gens: list[list[object]]) -> None:
    """Every poke the ops will make must pass text_poke_loc_init()'s rules: a clear error now,
    rather than a BUG() in the guest."""
    for g in range(1, len(gens)):
        for i, s in enumerate(scn.sites):
            if gens[g][i] == gens[g - 1][i] or isinstance(s, KprobeSite):
                continue
            new = b"".join(b for _, b in sorted(s.instructions(prog, gens[g][i])))
            text_poke_loc_init(prog.sym(s.label), new, name=f"{scn.name}/{s.name}")


def machine_for(built: Built) -> Machine:
    try:
        return Machine(built.config, built.image)
    except MachineConfigError as e:
        raise ScenarioError(f"scenario {built.scenario.name}: {e}") from None
