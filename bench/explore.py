"""Explorer benchmark (issue 5), in one run and one process:
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

Usage: python bench/explore.py [--json] [--schedules N] [--z1] [--cluster-only]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time

from harness.explore.exhaustive import ExhaustiveSource
from harness.explore.explore import Plan, explore
from harness.run import Runner
from harness.scenario.shipped import SCENARIOS


def rate(runner: Runner, n: int) -> float:
    t = time.perf_counter()
    for seed in range(n):
        assert runner.run_seed(seed).ok
    return n / (time.perf_counter() - t)


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
    args = ap.parse_args()
    cluster = cluster_bench(max(args.schedules * 4, 40))
    if args.cluster_only:
        print(json.dumps(cluster, indent=2) if args.json else _cluster_lines(cluster))
        return
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
    out = {"static_key_schedules_per_s": round(ours, 2),
           "naive_one_insn_schedules_per_s": round(naive, 3),
           "speedup_over_naive": round(ours / naive, 1),
           "event_run_ms": round(plain_ms, 1), "event_run_with_footprints_ms": round(fp_ms, 1),
           "footprint_cost_ratio": round(fp_ms / plain_ms, 2), "cluster": cluster,
           "first_failure": cards, "z1_exhaustive": z1_exhaustive() if args.z1 else None}
    if args.json:
        print(json.dumps(out, indent=2))
        return
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
