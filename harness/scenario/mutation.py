"""Mutants of a poking sequence (harness/ablate.py explores them), each named by an id that
`mutate` turns back into the same scenario, so a mutant's replay token (its scenario named
`NAME~ID`) replays from the shell like any other.

Ids: `p<P>.op<J>.drop<I>` / `p<P>.op<J>.swap<I>` drop step I / swap steps I and I+1 of the
PokeSteps op J of patcher P; `k.<bit>.<variant>` runs `variant` with the kernel-step bit `bit`
(a Cfg name, lower case) added, as variant `ablate_<bit>`."""

from __future__ import annotations

import dataclasses
import re

from .guest import Cfg
from .op import PokeSteps
from .scenario import Scenario, Variant
from .text_poke_loc import ScenarioError

SEP = "~"  # NAME~ID: a mutant of scenario NAME
_STEPS = re.compile(r"p(\d+)\.op(\d+)\.(drop|swap)(\d+)")
_KERNEL = re.compile(r"k\.([a-z0-9_]+)\.(.+)")


def step_edits(steps: list[str]) -> list[tuple[str, str, list[str]]]:
    """(id suffix, what, new steps) of every drop and every adjacent swap of `steps`."""
    out = [(f"drop{i}", f"drop {steps[i]!r} (step {i})", steps[:i] + steps[i + 1:])
           for i in range(len(steps))]
    out += [(f"swap{i}", f"swap {steps[i]!r} and {steps[i + 1]!r} (steps {i}, {i + 1})",
             steps[:i] + [steps[i + 1], steps[i]] + steps[i + 2:])
            for i in range(len(steps) - 1) if steps[i] != steps[i + 1]]
    return out


def kernel_variant(bit: Cfg) -> str:
    return f"ablate_{bit.name.lower()}"


def mutate(scn: Scenario, mid: str) -> Scenario:
    """The mutant `mid` of `scn`, named `scn.name~mid`; a ScenarioError for an id that names
    no mutation of it."""
    bad = ScenarioError(f"scenario {scn.name}: {mid!r} names no mutation of its sequence")
    name = f"{scn.name}{SEP}{mid}"
    if m := _STEPS.fullmatch(mid):
        p, j, how, i = int(m[1]), int(m[2]), m[3], int(m[4])
        per = scn.patcher_ops()
        if p >= len(per) or j >= len(per[p]) or not isinstance(per[p][j], PokeSteps):
            raise bad
        op: PokeSteps = per[p][j]  # type: ignore[assignment]
        edit = {e[0]: e[2] for e in step_edits(list(op.steps))}.get(f"{how}{i}")
        if edit is None:
            raise bad
        per[p][j] = PokeSteps(op.site, edit)
        changed = {"ops": per[0]} if not scn.patchers else {"patchers": per}
        return dataclasses.replace(scn, name=name, **changed)
    if m := _KERNEL.fullmatch(mid):
        bit = next((c for c in Cfg if c.name and c.name.lower() == m[1]), None)
        if bit is None:
            raise bad
        base = scn.variant(m[2])  # a ScenarioError for an unknown variant
        changed = Variant(base.cfg | bit, None, tuple(base.flags))
        return dataclasses.replace(scn, name=name,
                                   variants={**scn.variants, kernel_variant(bit): changed})
    raise bad
