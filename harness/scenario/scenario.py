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

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from emu import x86
from emu.verdict import VerdictKind

from .guest import Cfg
from .op import Op, site_states
from .site import Site
from .text_poke_loc import ScenarioError

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
    "no_sync2": Cfg.NO_SYNC2,
    "no_sync3": Cfg.NO_SYNC3,
}
# ... and those of a scenario with several patchers (Scenario.patchers)
SEVERAL_PATCHERS_VARIANTS: dict[str, Cfg] = {"no_text_mutex": Cfg.NO_TEXT_MUTEX}


# The vectors a scenario may give its own handler (`Scenario.handlers`), by name.
HANDLER_VECTORS: dict[str, int] = {"bp": x86.BP, "ud": x86.UD, "nmi": x86.NMI,
                                   "sync_ipi": x86.CALL_FUNCTION_VECTOR, "gp": x86.GP,
                                   "pf": x86.PF, "df": x86.DF}
FIRST_OWN_FLAG = 16  # a scenario's own flags take V_CFG bits from here up (Cfg uses the low ones)


@dataclass(frozen=True)
class Variant:
    """One patching sequence of a scenario: the kernel's variant bits (`cfg`), the scenario's
    own flags by name (`flags`, declared in `Scenario.flags`), and the failure kinds a buggy
    variant must show."""

    cfg: Cfg = Cfg(0)
    expect: str | None = None  # failure kinds a buggy variant shows ("a|b"); None: must pass
    flags: Sequence[str] = ()

    def __post_init__(self) -> None:
        self.expected  # noqa: B018 - a misspelt kind is a ValueError here, not a lost failure

    @property
    def expected(self) -> frozenset[VerdictKind]:
        return frozenset(map(VerdictKind, self.expect.split("|"))) if self.expect else \
            frozenset()

    def accepts(self, kind: VerdictKind) -> bool:
        return kind in self.expected


def patcher_label(p: int) -> str:
    """The guest label patcher CPU `p` starts at."""
    return "patcher" if p == 0 else f"patcher_{p}"


@dataclass
class Scenario:
    name: str
    description: str
    sites: Sequence[Site]
    ops: Sequence[Op] = ()  # the patcher's (CPU 0's) ops
    # several patcher CPUs, each with its own ops (CPU 0, 1, ...; `ops` empty): each op runs
    # under text_mutex; a site is changed by one patcher's ops only (guest_code/patchers.S)
    patchers: Sequence[Sequence[Op]] = ()
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
    # where the exhaustive search lets a spontaneous NMI arrive inside a run: "every"
    # instruction (sound for any handler), or only before instructions in the scenario's
    # "sites" (and at step starts): enough when the NMI handler reads nothing but its own frame
    # and per-CPU state, so arrival elsewhere in a step is as arrival at the step's start
    nmi_points: str = "every"
    # own exception/interrupt handlers, by HANDLER_VECTORS name -> guest label (the INT3 entry
    # template is guest_code/alternative.S: int3_entry)
    handlers: Mapping[str, str] = field(default_factory=dict)
    # own variant flags, by name: CFG_<name> in assembly, a bit of V_CFG (Variant.flags)
    flags: Sequence[str] = ()
    # own shared variables: name -> size in bytes (zeroed) or initial bytes; the name is the
    # address in assembly; every access is a scheduling point of the exhaustive search
    variables: Mapping[str, int | bytes] = field(default_factory=dict)
    passes_after: int = 2
    initial_wait: int = 1  # observer passes the patcher waits for before its first op
    min_cpus: int = 2
    card: str | None = None  # race-zoo card, e.g. "Z6"

    def patcher_ops(self) -> list[list[Op]]:
        """Each patcher CPU's ops, CPU 0 first."""
        if self.patchers and self.ops:
            raise ScenarioError(f"scenario {self.name}: give `ops` (one patcher) or `patchers` "
                                "(each patcher's ops), not both")
        return [list(ops) for ops in self.patchers] if self.patchers else [list(self.ops)]

    def all_ops(self) -> list[Op]:
        """Every op, numbered as in the guest (op_done_<i>): patcher 0's, then patcher 1's..."""
        return [op for ops in self.patcher_ops() for op in ops]

    def site_patchers(self) -> list[int]:
        """Per site, the patcher whose ops change it (0 for a site no op changes). Two
        patchers' ops that may change one site have no order the outcome check could follow
        (the kernel's callers would race on it under text_mutex): a ScenarioError."""
        owners = []
        for site in self.sites:
            changing = set()
            for p, ops in enumerate(self.patcher_ops()):
                state = site.initial()
                for op in ops:  # any state the site can be in, or the ones this patcher makes
                    states = site_states(site) or (state,)
                    if any(op.apply(site, st) != st for st in states):
                        changing.add(p)
                    state = op.apply(site, state)
            if len(changing) > 1:
                raise ScenarioError(f"scenario {self.name}: site {site.name!r} is changed by "
                                    f"patchers {sorted(changing)}; give each site to one")
            owners.append(min(changing, default=0))
        return owners

    def gen_strides(self) -> list[tuple[int, int]]:
        """Per patcher, (stride, radix) of its digit in V_DONE_GEN (guest_code/patchers.S)."""
        out, stride = [], 1
        for ops in self.patcher_ops():
            out.append((stride, len(ops) + 1))
            stride *= len(ops) + 1
        return out

    def variant(self, name: str) -> Variant:
        if name in self.variants:
            return self.variants[name]
        if name in self.generic_variants():
            return Variant(self.generic_variants()[name])
        raise ScenarioError(f"scenario {self.name}: unknown variant {name!r}; known: "
                            f"{', '.join(self.variant_names())}")

    def cfg_value(self, var: Variant) -> int:
        """V_CFG for a variant: its kernel bits and its own flags' bits."""
        unknown = [f for f in var.flags if f not in self.flags]
        if unknown:
            raise ScenarioError(f"scenario {self.name}: variant flag {unknown[0]!r} is not "
                                f"one of the scenario's flags ({', '.join(self.flags) or 'none'})")
        return int(var.cfg) | sum(self.flag_bit(f) for f in var.flags)

    def flag_bit(self, name: str) -> int:
        return 1 << (FIRST_OWN_FLAG + list(self.flags).index(name))

    def generic_variants(self) -> dict[str, Cfg]:
        several = len(self.patcher_ops()) > 1
        return GENERIC_VARIANTS | (SEVERAL_PATCHERS_VARIANTS if several else {})

    def variant_names(self) -> list[str]:
        return list(self.variants) + [v for v in self.generic_variants()
                                      if v not in self.variants]

    def keys(self) -> list[str]:
        keys: list[str] = []
        for s in self.sites:
            k = getattr(s, "key", None)
            if k is not None and k not in keys:
                keys.append(k)
        return keys

    def generations(self) -> list[list[object]]:
        """Per generation (before any op, after op 1, ...), the state of every site. With
        several patchers, generation k of a site is its own patcher's first k ops (the site
        stays in its last state past them)."""
        per = self.patcher_ops()
        owners = self.site_patchers() if len(per) > 1 else [0] * len(self.sites)
        rows = [[s.initial() for s in self.sites]]
        for k in range(max(len(ops) for ops in per)):
            prev = rows[-1]
            rows.append([per[p][k].apply(s, st) if k < len(per[p]) else st
                         for s, st, p in zip(self.sites, prev, owners, strict=True)])
        return rows

    def source(self) -> str:
        per = self.patcher_ops()
        lines = ["# ---- scenario " + self.name]
        if len(per) == 1:
            lines += ["patcher:", f"    mov edi, {self.initial_wait}",
                      "    call wait_observer_passes"]
            for i, op in enumerate(per[0]):
                lines.append(op.asm(i).rstrip("\n"))
                lines.append(f"op_done_{i}:")
                lines.append("    lock inc qword ptr [V_DONE_GEN]")
            lines += [f"    mov edi, {self.passes_after}", "    call wait_observer_passes",
                      "    mov qword ptr [V_STOP], 1", "    mov eax, HC_FINISH",
                      "    out HC_PORT, eax"]
        else:  # guest_code/patchers.S
            i = 0
            for p, ops in enumerate(per):
                stride = self.gen_strides()[p][0]
                lines += [patcher_label(p) + ":", f"    mov edi, {self.initial_wait}",
                          "    call patcher_wait_passes"]
                for op in ops:
                    lines += ["    call text_mutex_lock", op.asm(i).rstrip("\n"),
                              "    call text_mutex_unlock", f"op_done_{i}:",
                              f"    lock add qword ptr [V_DONE_GEN], {stride}"]
                    i += 1
                lines += [f"    mov edi, {self.passes_after}", "    call patcher_wait_passes",
                          "    jmp patcher_finish"]
        check = "check_outcome" if len(per) == 1 else "check_outcome_gens"
        lines += ["observer:", "    and rsp, -16", "obs_top:",
                  "    mov rax, qword ptr gs:[PERCPU_CPU]",
                  "    lock inc qword ptr [V_QS + rax*8]   # voluntary quiescent point",
                  "    mov eax, HC_QUIESCENT", "    out HC_PORT, eax",
                  "    mov r12, qword ptr [V_DONE_GEN]"]
        for i, s in enumerate(self.sites):
            lines += ["    xor ebx, ebx", s.observer_asm().rstrip("\n"),
                      f"    mov edi, {i}", "    mov esi, ebx", "    mov rdx, r12",
                      f"    call {check}"]
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


