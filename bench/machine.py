"""Machine benchmark (issue 2): prints, from one run in one process,
- raw guest MIPS (ground truth off, long quanta),
- instructions/s with ground truth on,
- the cost of a reset against building the machine anew,
- decision steps per second (4 CPUs, one instruction per step).

Usage: python bench/machine.py [--json]. Figures vary with the host; compare ratios.
"""

from __future__ import annotations

import argparse
import json
import time

from emu import hypercall, layout
from emu.asm import assemble
from emu.config import MachineConfig
from emu.decisions import RandomSource
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
    mov eax, HC_FINISH
    out HC_PORT, eax
"""


def machine(ncpus: int, n: int, **config) -> Machine:
    prog = assemble(LOOP.format(n=n), layout.TEXT_BASE,
                    hypercall.EQUATES | {"V": layout.DATA_BASE + layout.GUEST_DATA_OFFSET})
    image = GuestImage([prog], [CpuBoot(prog.sym("entry"))] * ncpus)
    return Machine(MachineConfig(ncpus=ncpus, insn_budget=10**9, **config), image)


def rate(m: Machine, seed: int = 1) -> tuple[float, int, int]:
    m.run(RandomSource(seed))  # warm the translation cache
    t = time.perf_counter()
    res = m.run(RandomSource(seed))
    dt = time.perf_counter() - t
    return res.ticks / dt, res.ticks, res.steps


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    raw, ticks, _ = rate(machine(1, 200_000, truth=False, max_quantum=100_000))
    traced, _, _ = rate(machine(1, 200_000, truth=True, max_quantum=100_000))
    m4 = machine(4, 5_000, max_quantum=1)
    steps_rate_insn, _, steps = rate(m4)
    t = time.perf_counter()
    for _ in range(20):
        fresh = machine(4, 5_000)
    build_ms = (time.perf_counter() - t) / 20 * 1e3
    fresh.run(RandomSource(1))
    t = time.perf_counter()
    for _ in range(200):
        fresh.reset()
    reset_ms = (time.perf_counter() - t) / 200 * 1e3
    out = {
        "raw_guest_mips": round(raw / 1e6, 3),
        "truth_on_insn_per_s": round(traced),
        "truth_cost_ratio": round(raw / traced, 2),
        "build_4cpu_ms": round(build_ms, 3),
        "reset_4cpu_ms": round(reset_ms, 4),
        "reset_speedup": round(build_ms / reset_ms, 1),
        "decision_steps_per_s": round(steps_rate_insn),  # one instruction per step
        "instructions_per_run": ticks,
    }
    if args.json:
        print(json.dumps(out, indent=2))
    else:
        for k, v in out.items():
            print(f"{k:24} {v}")


if __name__ == "__main__":
    main()
