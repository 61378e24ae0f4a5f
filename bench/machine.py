"""Machine benchmark (issues 2 and 15): prints, from one run in one process,
- raw guest MIPS (ground truth off, long quanta) and instructions/s with ground truth on, on
  the fast engine and on the reference engine; against Unicorn on the same loop with no hook
  of ours (only the TLB fill, a few calls) and with only its native instruction counter,
- the cost of a reset against building the machine anew,
- decision steps per second (4 CPUs, one instruction per step).

Usage: python bench/machine.py [--json]. Figures vary with the host; compare ratios.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import time

from emu import hypercall, layout
from emu.asm import assemble
from emu.config import MachineConfig
from emu.decisions import RandomSource
from emu.engine import Engine
from emu.loader import CpuBoot, GuestImage
from emu.machine import Machine

LOOP = """
entry:
    mov ecx, {n}
loop:
    add rax, rcx
    xor rbx, rax
    mov qword ptr [V], rbx
    dec ecx
    jnz loop
done:
    mov eax, HC_FINISH
    out HC_PORT, eax
"""


def machine(ncpus: int, n: int, engine: Engine = Engine.REFERENCE, **config) -> Machine:
    prog = assemble(LOOP.format(n=n), layout.TEXT_BASE,
                    hypercall.EQUATES | {"V": layout.DATA_BASE + layout.GUEST_DATA_OFFSET})
    image = GuestImage([prog], [CpuBoot(prog.sym("entry"))] * ncpus)
    return Machine(MachineConfig(ncpus=ncpus, insn_budget=10**9, **config), image, engine)


def bare_unicorn(count: bool, n: int = 200_000) -> float:
    """Instructions/s of the same loop on a Unicorn engine set up as the machine's CPU 0 (its
    memory, view, TLB fill and registers) with no other hook: up to `done` by `until`, or with
    `count` by Unicorn's own instruction counter (emu_start's count)."""
    from unicorn import UC_HOOK_TLB_FILL, Uc
    from unicorn import x86_const as X
    from unicorn.unicorn_const import UC_ARCH_X86, UC_MODE_64, UC_PROT_ALL, UC_TLB_VIRTUAL

    m = machine(1, n)
    cpu = m.cpus[0]
    u = Uc(UC_ARCH_X86, UC_MODE_64)
    u.ctl_set_tlb_mode(UC_TLB_VIRTUAL)
    u.hook_add(UC_HOOK_TLB_FILL, cpu._on_tlb_fill)
    for base, buf in m.mem.banks():
        u.mem_map_ptr(base, len(buf), UC_PROT_ALL, ctypes.addressof(buf))
    u.mem_map_ptr(layout.PHYS_VIEW, len(cpu.view.buf), UC_PROT_ALL,
                  ctypes.addressof(cpu.view.buf))
    start = cpu.uc.context_save()
    rip, done, ticks = cpu.reg("rip"), m.symbol("done"), 1 + 5 * n
    best = 0.0
    for _ in range(2):  # the first one translates
        u.context_restore(start)
        t = time.perf_counter()
        u.emu_start(rip, 0, 0, ticks) if count else u.emu_start(rip, done, 0, 0)
        best = max(best, ticks / (time.perf_counter() - t))
        assert u.reg_read(X.UC_X86_REG_RIP) == done
    return best


def rate(m: Machine, seed: int = 1) -> tuple[float, int, int]:
    """The best of three runs (the host is shared), after one that warms the caches."""
    m.run(RandomSource(seed))  # warm the translation cache
    dt = float("inf")
    for _ in range(3):
        t = time.perf_counter()
        res = m.run(RandomSource(seed))
        dt = min(dt, time.perf_counter() - t)
    return res.ticks / dt, res.ticks, res.steps


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    out: dict[str, object] = {}
    for e in Engine:
        raw, ticks, _ = rate(machine(1, 200_000, e, truth=False, max_quantum=100_000))
        traced, _, _ = rate(machine(1, 200_000, e, truth=True, max_quantum=100_000))
        out[f"{e.value}_raw_guest_mips"] = round(raw / 1e6, 3)
        out[f"{e.value}_truth_on_insn_per_s"] = round(traced)
        out[f"{e.value}_truth_cost_ratio"] = round(raw / traced, 2)
    out["fast_over_reference_truth_on"] = round(out["fast_truth_on_insn_per_s"]
                                                / out["reference_truth_on_insn_per_s"], 1)
    out["unicorn_no_hooks_mips"] = round(bare_unicorn(False) / 1e6, 1)
    out["unicorn_native_counter_mips"] = round(bare_unicorn(True) / 1e6, 1)
    m4 = machine(4, 5_000, max_quantum=1)
    steps_rate_insn, _, steps = rate(m4)
    m4f = machine(4, 5_000, Engine.FAST, max_quantum=1)
    steps_rate_fast, _, _ = rate(m4f)
    t = time.perf_counter()
    for _ in range(20):
        fresh = machine(4, 5_000)
    build_ms = (time.perf_counter() - t) / 20 * 1e3
    fresh.run(RandomSource(1))
    t = time.perf_counter()
    for _ in range(200):
        fresh.reset()
    reset_ms = (time.perf_counter() - t) / 200 * 1e3
    out |= {
        "build_4cpu_ms": round(build_ms, 3),
        "reset_4cpu_ms": round(reset_ms, 4),
        "reset_speedup": round(build_ms / reset_ms, 1),
        "decision_steps_per_s": round(steps_rate_insn),  # one instruction per step
        "decision_steps_per_s_fast": round(steps_rate_fast),
        "instructions_per_run": ticks,
    }
    if args.json:
        print(json.dumps(out, indent=2))
    else:
        for k, v in out.items():
            print(f"{k:32} {v}")


if __name__ == "__main__":
    main()
