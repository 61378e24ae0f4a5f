"""Ops: one patching operation the patcher CPU performs through the guest kernel, and the state
it leaves each site in (static_key_enable/disable, static_call_update, the kprobe transitions,
a user's own order of poke steps, or raw patcher code).
"""

from __future__ import annotations

import abc
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from .site import CallSite, JumpLabel, KprobeSite, Site


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

    def validate(self, sites: Sequence[Site]) -> str | None:
        """A typo in `effect` would silently leave the oracle expecting the old state."""
        by_name = {s.name: s for s in sites}
        for name, state in self.effect.items():
            site = by_name.get(name)
            if site is None:
                return (f"Raw: effect names no site {name!r}; sites: "
                        f"{', '.join(map(repr, by_name)) or 'none'}")
            allowed = site_states(site)
            if allowed is not None and not any(type(state) is type(a) and state == a
                                               for a in allowed):
                return (f"Raw: effect puts site {name!r} in state {state!r}, which a "
                        f"{type(site).__name__} cannot be in; its states: "
                        f"{', '.join(map(repr, allowed))}")
        return None


def site_states(site: Site) -> tuple[object, ...] | None:
    """Every state a shipped site can be in (None: a user's own Site, whose states only its
    own code knows): a JumpLabel's key off or on, a CallSite's target index, a kprobe's."""
    if isinstance(site, JumpLabel):
        return (False, True)
    if isinstance(site, CallSite):
        return tuple(range(len(site.funcs)))
    if isinstance(site, KprobeSite):
        return ("plain", "armed", "optimized")
    return None


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
