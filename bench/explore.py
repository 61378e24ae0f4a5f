"""Explorer benchmark (issues 5 and 15), in one run and one process:
- the engines (issue 15): fully verified static_key (1+3) schedules/s on the fast engine and on
  the reference engine, side by side, and the Python time per scheduling step of each machine
  (machine time less the CPU time inside Unicorn, with the Python hooks inside counted back);
- fully verified schedules/s on static_key (1 patcher + 3 observers), against the same with
  naive one-instruction-at-a-time interleaving (a scheduling decision before every instruction);
- per zoo card, schedules and seconds to the first failure of its buggy variant, random vs PCT;
- the exhaustive explorer's event-mode machine run on static_key (2 observers, default path,
  no verification) with step footprints measured (what --dpor needs) against without;
- on a Dask LocalCluster of 2 worker processes (issue 18) against one process: random
  (static_key) and exhaustive (z4_bytewise fixed, P=1 V=1 I=0) speed-ups, the per-task
  overhead (a no-op task's round trip; this process's CPU time per task), and a projection
  for 16 and 64 workers from them (`--cluster-only`: this part alone);
- with --z1: the exhaustive search's first failure on z1_optprobe_shadow buggy at P=1 V=0 I=1
  (an early preemption and an NMI inside the probed region), without and with --dpor (minutes).

- with --growth (issue 15): the fully verified time per retired instruction on the fast engine
  (and the machine's alone on both engines) from 2 to 16 CPUs (static_key) and from 4 to 1,024
  jump-label sites on one key (2 CPUs).

Usage: python bench/explore.py [--json] [--schedules N] [--z1] [--engines-only] [--growth]
       [--cluster-only]
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import time
from collections.abc import Iterator

from emu.cpu import Cpu
from emu.decisions import RandomSource
from emu.engine import Engine, native_status
from emu.machine import Machine
from emu.native_cpu import NativeCpu
from harness.explore.exhaustive import ExhaustiveSource
from harness.explore.explore import explore
from harness.explore.schedule import Plan
from harness.run import Runner
from harness.scenario.op import StaticKey
from harness.scenario.scenario import Scenario
from harness.scenario.shipped import SCENARIOS
from harness.scenario.site import JumpLabel


def rate(runner: Runner, n: int) -> float:
    t = time.perf_counter()
    for seed in range(n):
        assert runner.run_seed(seed).ok
    return n / (time.perf_counter() - t)


# the Python hooks Unicorn calls inside a run (ctypes callbacks), and the NMI decision the
# native code hook asks Python for
PYTHON_HOOKS = [(Cpu, n) for n in ("_on_tlb_fill", "_on_intr", "_on_out", "_on_text_store",
                                   "_on_watched", "_on_tracked", "_on_text_read",
                                   "_on_foreign_stack")] + [(Machine, "_nmi_point")] + [
    (NativeCpu, n) for n in ("_on_tlb_fill", "_on_intr", "_on_out", "_on_text_store")]


@contextlib.contextmanager
def timed_python_hooks(spent: list[float]) -> Iterator[None]:
    """Every Python hook of machines built inside, timed (CPU seconds, into spent[0]; nested
    ones once). Hooks are bound when a machine is built, so build it inside."""
    saved = [(cls, name, getattr(cls, name)) for cls, name in PYTHON_HOOKS]
    depth = [0]

    def timed(f):
        def hook(*args):
            depth[0] += 1
            t = time.process_time()
            try:
                return f(*args)
            finally:
                depth[0] -= 1
                if not depth[0]:
                    spent[0] += time.process_time() - t
        return hook

    for cls, name, f in saved:
        setattr(cls, name, timed(f))
    try:
        yield
    finally:
        for cls, name, f in saved:
            setattr(cls, name, f)


def machine_times(machines: dict[Engine, Machine], schedules: int
                  ) -> dict[Engine, tuple[float, int, int]]:
    """Per engine, CPU seconds, scheduling steps and instructions of `schedules` runs of the
    machine alone (seeds 1.., after seed 0 warms the caches), the engines' runs interleaved."""
    for machine in machines.values():
        machine.run(RandomSource(0))
        for cpu in machine.cpus:
            if isinstance(cpu, NativeCpu):
                cpu._nat.unicorn_ns = 0
    out = {e: (0.0, 0, 0) for e in machines}
    for seed in range(1, schedules + 1):
        for e, machine in machines.items():
            t = time.process_time()
            res = machine.run(RandomSource(seed))
            spent, steps, ticks = out[e]
            out[e] = (spent + time.process_time() - t, steps + res.steps, ticks + res.ticks)
    return out


def engines(schedules: int) -> dict:
    """static_key (1+3), fully verified, on each engine: schedules/s (CPU time of this process,
    the engines' schedules interleaved so that load on the host hits both alike); and per
    scheduling step of the machine alone, its time and (in a second, instrumented pass: the CPU
    time inside uc_emu_start, and the Python hooks inside it) the part spent in Python."""
    scn = SCENARIOS["static_key"]
    runners = {e: Runner(scn, engine=e) for e in Engine}
    spent = {e: 0.0 for e in Engine}
    for seed in range(schedules + 1):
        for e, runner in runners.items():
            t = time.process_time()
            assert runner.run_seed(seed).ok
            if seed:  # the first one warms the translation caches
                spent[e] += time.process_time() - t
    out: dict = {"native": native_status().describe()}
    plain = machine_times({e: Runner(scn, engine=e, decode=False).machine for e in Engine},
                          schedules)
    for e in Engine:
        total, steps, ticks = plain[e]
        out[e.value] = {"schedules_per_s": round(schedules / spent[e], 2),
                        "machine_us_per_step": round(total / steps * 1e6, 2),
                        "machine_ns_per_instruction": round(total / ticks * 1e9, 1),
                        "steps_per_schedule": steps // schedules}
    hooks = [0.0]
    with timed_python_hooks(hooks):
        machine = Runner(scn, engine=Engine.FAST, decode=False).machine
    if isinstance(machine.cpus[0], NativeCpu):  # what is not Unicorn's C (nor ours) is Python
        for cpu in machine.cpus:
            cpu._nat.timing = 1
        total, steps, _ = machine_times({Engine.FAST: machine}, schedules)[Engine.FAST]
        unicorn = sum(c._nat.unicorn_ns for c in machine.cpus) / 1e9 - hooks[0]
        out["fast"]["python_us_per_step"] = round((total - unicorn) / steps * 1e6, 2)
        out["fast"]["python_hooks_us_per_step"] = round(hooks[0] / steps * 1e6, 2)
        out["fast"]["instrumented_us_per_step"] = round(total / steps * 1e6, 2)
    out["ratio"] = round(out["fast"]["schedules_per_s"] / out["reference"]["schedules_per_s"],
                         2)
    return out


def per_instruction(runner: Runner, seeds: range, verify: bool) -> float:
    """CPU µs per retired instruction of `runner`'s schedules (fully verified, or the machine
    alone), after one that warms the caches."""
    runner.run_seed(seeds.start + 1000)
    ticks, spent = 0, 0.0
    for seed in seeds:
        t = time.process_time()
        if verify:
            out = runner.run_seed(seed)
            assert out.ok, out.verdict
            ticks += out.result.ticks
        else:
            ticks += runner.machine.run(RandomSource(seed)).ticks
        spent += time.process_time() - t
    return round(spent / ticks * 1e6, 3)


def growth() -> list[dict]:
    """µs per retired instruction against CPUs and sites (issue 15: flat within 1.3x)."""
    scn = SCENARIOS["static_key"]
    cases = [(f"{n} CPUs, 4 sites", scn, n) for n in (2, 4, 8, 16)]
    cases += [(f"2 CPUs, {n} sites", Scenario(
        f"static_key_{n}", f"one key, {n} jump-label sites, enabled then disabled",
        sites=[JumpLabel(f"jl{i}", key="k0") for i in range(n)],
        ops=[StaticKey("k0", True), StaticKey("k0", False)], insn_budget=4_000_000,
        passes_after=1), 2) for n in (4, 16, 64, 256, 1024)]
    rows = []
    for label, s, cpus in cases:
        seeds = range(1, 4 if s.sites and len(s.sites) <= 64 else 2)
        row = {"case": label}
        for e in Engine:
            runner = Runner(s, cpus=cpus, engine=e, decode=e is Engine.FAST)
            row[f"{e.value}_machine_us_per_insn"] = per_instruction(runner, seeds, False)
            if e is Engine.FAST:
                row["fast_verified_us_per_insn"] = per_instruction(runner, seeds, True)
        rows.append(row)
    return rows


def print_engines(e: dict) -> None:
    fast, ref = e["fast"], e["reference"]
    print(f"engines ({e['native']}): static_key fully verified, fast {fast['schedules_per_s']} "
          f"schedules/s, reference {ref['schedules_per_s']} schedules/s ({e['ratio']}x)")
    for name, row in (("fast", fast), ("reference", ref)):
        extra = ""
        if "python_us_per_step" in row:
            extra = (f"; instrumented {row['instrumented_us_per_step']} us per step, of it "
                     f"Python {row['python_us_per_step']} (hooks inside runs "
                     f"{row['python_hooks_us_per_step']})")
        print(f"  {name} machine: {row['machine_us_per_step']} us per step "
              f"({row['steps_per_schedule']} steps per schedule), "
              f"{row['machine_ns_per_instruction']} ns per instruction{extra}")


def event_run_ms(runner: Runner, footprints: bool, n: int = 10) -> float:
    """Best of 5 batches: one default event-mode run of the machine alone, in ms."""
    best = float("inf")
    for _ in range(5):
        t = time.perf_counter()
        for _ in range(n):
            runner.machine.run(ExhaustiveSource([], footprints=footprints))
        best = min(best, (time.perf_counter() - t) / n)
    return best * 1000


def _noop(i: int) -> int:
    return i


def speedup_projection(task_s: float, overhead_s: float, client_s: float,
                       workers: int) -> float:
    """A projection, not a measurement: W workers each run tasks of `task_s` seconds of work
    with `overhead_s` of round trip each, and the one client spends `client_s` of CPU per
    task (submitting, checking, recording): the speed-up over one process is W * t / (t + o),
    until the client saturates at t / c."""
    return min(workers * task_s / (task_s + overhead_s), task_s / client_s)


def cluster_bench(schedules: int) -> dict:
    """1 against 2 workers (a LocalCluster) for random and exhaustive, the per-task overhead,
    and the projection for 16 and 64 workers (the cluster's start is not counted)."""
    import logging

    from distributed import Client, LocalCluster

    from harness.explore.cluster import WORKER_SETUP

    local = LocalCluster(n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1",
                         dashboard_address=None, silence_logs=logging.ERROR,
                         preload=[WORKER_SETUP])
    client = Client(local)
    out: dict = {}
    try:
        client.wait_for_workers(2, timeout=120)
        rnd = Plan("static_key", strategy="random", shrink=False)
        ex = Plan("z4_bytewise", "fixed", strategy="exhaustive", preemptions=1, delays=1,
                  interrupts=0, shrink=False)
        for name, plan, n in (("random static_key", rnd, schedules), ("exhaustive z4_bytewise "
                                                                      "P=1 V=1", ex, None)):
            explore(plan, schedules=2, client=client)  # the workers build their runners
            explore(plan, schedules=2)
            one = explore(plan, schedules=n)
            cpu = time.process_time()
            two = explore(plan, schedules=n, client=client)
            cpu = time.process_time() - cpu
            assert len(one.results) == len(two.results)
            out[name] = {"schedules": len(one.results), "one_process_s": round(one.seconds, 2),
                         "two_workers_s": round(two.seconds, 2),
                         "speedup": round(one.seconds / two.seconds, 2), "tasks": two.tasks,
                         "task_s": round(2 * two.seconds / max(two.tasks, 1), 3),
                         "client_cpu_per_task_ms": round(1000 * cpu / max(two.tasks, 1), 2)}
        t = time.perf_counter()
        for i in range(50):
            client.submit(_noop, i, pure=False).result()
        roundtrip = (time.perf_counter() - t) / 50
        t = time.perf_counter()
        client.gather(client.map(_noop, range(500), pure=False))
        throughput = (time.perf_counter() - t) / 500
        out["noop_task_roundtrip_ms"] = round(1000 * roundtrip, 2)
        out["noop_task_pipelined_ms"] = round(1000 * throughput, 3)
        for row in (v for v in out.values() if isinstance(v, dict)):
            row["projection"] = {str(w): round(speedup_projection(
                row["task_s"], roundtrip, row["client_cpu_per_task_ms"] / 1000, w), 1)
                for w in (16, 64)}
    finally:
        client.close()
        local.close()
    return out


def exhaustive_engines(schedules: int) -> dict:
    """The exhaustive static_key search (3 CPUs, P=2 V=2 I=1, --dpor, fully verified) in one
    process on each engine: its first `schedules` schedules, which must be the same paths;
    schedules/s and the ratio, measured in this process."""
    rows: dict = {}
    digests = {}
    for engine in (Engine.FAST, Engine.REFERENCE):
        plan = Plan("static_key", cpus=3, strategy="exhaustive", preemptions=2, delays=2,
                    interrupts=1, dpor=True, shrink=False, engine=engine)
        explore(plan, schedules=2)  # the runner is built once per process
        found = explore(plan, schedules=schedules)
        digests[engine] = [r.path for r in found.results]
        rows[engine.value] = round(len(found.results) / found.seconds, 2)
    if digests[Engine.FAST] != digests[Engine.REFERENCE]:
        raise SystemExit("the engines' exhaustive searches took different paths")
    rows["ratio"] = round(rows[Engine.FAST.value] / rows[Engine.REFERENCE.value], 2)
    rows["schedules"] = schedules
    return rows


def z1_exhaustive() -> list[dict]:
    """Schedules and seconds to the exhaustive search's first Z1 failure (issue 14)."""
    rows = []
    for dpor in (False, True):
        plan = Plan("z1_optprobe_shadow", "buggy", strategy="exhaustive", preemptions=1,
                    delays=0, interrupts=1, dpor=dpor, shrink=False)
        found = explore(plan, schedules=5000, stop_at_first=True)
        first = found.failures[0] if found.failures else None
        rows.append({"dpor": dpor, "schedule": first.idx if first else None,
                     "seconds": round(found.seconds, 1)})
    return rows


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--schedules", type=int, default=10)
    ap.add_argument("--z1", action="store_true", help="also time the exhaustive search on Z1")
    ap.add_argument("--cluster-only", action="store_true", help="only the cluster part")
    ap.add_argument("--engines-only", action="store_true",
                    help="only the fast engine against the reference (issue 15)")
    ap.add_argument("--exhaustive", type=int, metavar="N", default=0,
                    help="only the exhaustive static_key search's first N schedules on each "
                    "engine (issue 15)")
    ap.add_argument("--growth", action="store_true",
                    help="only the time per instruction against CPUs and sites (issue 15)")
    args = ap.parse_args()
    if args.exhaustive:
        ex = exhaustive_engines(args.exhaustive)
        if args.json:
            print(json.dumps({"exhaustive": ex}, indent=2))
            return
        print(f"exhaustive static_key, 3 CPUs, P=2 V=2 I=1 --dpor, fully verified, first "
              f"{ex['schedules']} schedules (the same paths): fast {ex['fast']} schedules/s, "
              f"reference {ex['reference']} schedules/s ({ex['ratio']}x)")
        return
    if args.growth:
        rows = growth()
        if args.json:
            print(json.dumps({"growth": rows}, indent=2))
            return
        for r in rows:
            print(f"{r['case']:22} fully verified (fast) {r['fast_verified_us_per_insn']} us/insn;"
                  f" machine fast {r['fast_machine_us_per_insn']}, reference "
                  f"{r['reference_machine_us_per_insn']} us/insn")
        return
    if args.cluster_only:
        cluster = cluster_bench(max(args.schedules * 4, 40))
        print(json.dumps(cluster, indent=2) if args.json else _cluster_lines(cluster))
        return
    engine_rows = engines(args.schedules)
    if args.engines_only:
        if args.json:
            print(json.dumps({"engines": engine_rows}, indent=2))
        else:
            print_engines(engine_rows)
        return
    cluster = cluster_bench(max(args.schedules * 4, 40))
    scn = SCENARIOS["static_key"]
    ours = rate(Runner(scn), args.schedules)
    naive = rate(Runner(dataclasses.replace(scn, max_quantum=1)), max(args.schedules // 5, 2))
    event = Runner(scn, cpus=3, decode=False, event_mode=True)
    plain_ms, fp_ms = event_run_ms(event, False), event_run_ms(event, True)
    cards = []
    for s in sorted((s for s in SCENARIOS.values() if s.card), key=lambda s: s.card):
        row = {"card": s.card, "scenario": s.name}
        for strategy in ("random", "pct"):
            sm = explore(Plan(s.name, "buggy", strategy=strategy, shrink=False),
                         schedules=200, stop_at_first=True)
            first = sm.failures[0] if sm.failures else None
            row[strategy] = {"schedules": first.idx + 1 if first else None,
                             "seconds": round(sm.seconds, 2) if first else None}
        cards.append(row)
    out = {"engines": engine_rows, "static_key_schedules_per_s": round(ours, 2),
           "naive_one_insn_schedules_per_s": round(naive, 3),
           "speedup_over_naive": round(ours / naive, 1),
           "event_run_ms": round(plain_ms, 1), "event_run_with_footprints_ms": round(fp_ms, 1),
           "footprint_cost_ratio": round(fp_ms / plain_ms, 2), "cluster": cluster,
           "first_failure": cards, "z1_exhaustive": z1_exhaustive() if args.z1 else None}
    if args.json:
        print(json.dumps(out, indent=2))
        return
    print_engines(engine_rows)
    for row in out["z1_exhaustive"] or []:
        print(f"exhaustive z1_optprobe_shadow buggy P=1 V=0 I=1{' --dpor' if row['dpor'] else ''}: "
              f"first failure at schedule {row['schedule']} after {row['seconds']} s")
    print(f"static_key, fully verified: {ours:.2f} schedules/s; naive one-instruction "
          f"interleaving: {naive:.3f} schedules/s ({ours / naive:.1f}x)")
    print(f"event-mode run (static_key, 3 CPUs): {plain_ms:.1f} ms; with footprints "
          f"{fp_ms:.1f} ms ({fp_ms / plain_ms:.2f}x)")
    print(_cluster_lines(cluster))
    print(f"{'card':5} {'scenario':24} {'random: sched / s':>20} {'pct: sched / s':>18}")
    for r in cards:
        a, b = r["random"], r["pct"]
        print(f"{r['card']:5} {r['scenario']:24} {str(a['schedules']):>8} / "
              f"{str(a['seconds']):>7}   {str(b['schedules']):>6} / {str(b['seconds']):>7}")


def _cluster_lines(c: dict) -> str:
    lines = []
    for name, r in c.items():
        if isinstance(r, dict):
            lines.append(f"{name}, {r['schedules']} schedules: one process {r['one_process_s']} "
                         f"s, 2 workers {r['two_workers_s']} s ({r['speedup']}x); "
                         f"{r['tasks']} tasks of {r['task_s']} s, client CPU "
                         f"{r['client_cpu_per_task_ms']} ms/task; projected (not measured) "
                         f"16 workers {r['projection']['16']}x, 64 workers "
                         f"{r['projection']['64']}x")
    lines.append(f"no-op Dask task: {c['noop_task_roundtrip_ms']} ms round trip, "
                 f"{c['noop_task_pipelined_ms']} ms each when pipelined")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
