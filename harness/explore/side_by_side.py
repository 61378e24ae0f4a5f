"""Random, PCT and exhaustive side by side on one cluster, reporting which found what first
(shuttle's PortfolioRunner runs several schedulers in parallel and stops at the first
failure). Not the `portfolio` strategy: that one alternates random and PCT schedule by
schedule in one exploration (strategies.source_for) and stays the default; this one runs
three explorations at once, each on its share of the cluster's workers, and with
--stop-at-first all three stop when any of them records a failure.

It needs a cluster (--jobs N > 1 or --cluster): in one process the three would share one
machine."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, replace

from harness.errors import BadInput

from .explore import Summary, explore
from .schedule import Plan

STRATEGIES = ("random", "pct", "exhaustive")


@dataclass
class Entry:
    """One strategy's exploration and when it found its first failure."""

    strategy: str
    summary: Summary
    first_failure_seconds: float | None  # since the three started


def side_by_side(plan: Plan, schedules: int | None = None, seconds: float | None = None,
                 jobs: int = 1, cluster: str | None = None, tls: object | None = None,
                 stop_at_first: bool = False, client: object | None = None,
                 keep_results: bool = True) -> list[Entry]:
    """The three explorations of `plan`'s scenario at once (random and PCT with `schedules`
    or `seconds`; exhaustive within the plan's bounds, and the same budget); entries in the
    order their first failures came, those that found none last. `keep_results`: as
    explore's."""
    from .cluster import ClusterSpec, connect, spec_from

    if client is None and jobs <= 1 and not cluster:
        raise BadInput("--strategy side-by-side needs a cluster: --jobs N (N > 1) or --cluster")
    if schedules is None and seconds is None:
        raise BadInput("--strategy side-by-side: give --schedules or --time")
    found = threading.Event()
    start = time.perf_counter()
    firsts: dict[str, float] = {}
    out: dict[str, Summary] = {}
    errors: list[BaseException] = []

    spec = spec_from(jobs, cluster, tls) if client is None else ClusterSpec()
    with connect(spec, client) as cl:
        share = max(1, cl.workers // len(STRATEGIES))  # tasks each keeps in flight
        flag = cl.flag() if stop_at_first else None  # one for the three: 0 stops them all

        def progress_of(strategy: str):
            def progress(s: Summary) -> None:
                if s.failed and strategy not in firsts:
                    firsts[strategy] = time.perf_counter() - start
                    found.set()
                    if flag is not None:
                        cl.raise_flag(flag, 0)
            return progress

        def one(strategy: str) -> None:
            try:
                out[strategy] = explore(
                    replace(plan, strategy=strategy), schedules, seconds,
                    jobs=share if share > 1 else 2, stop_at_first=stop_at_first,
                    progress=progress_of(strategy), client=cl.client,
                    stop=found.is_set if stop_at_first else None, flag=flag,
                    keep_results=keep_results)
            except BaseException as e:  # re-raised in the caller's thread
                errors.append(e)
                found.set()
        threads = [threading.Thread(target=one, args=(s,)) for s in STRATEGIES]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    if errors:
        raise errors[0]
    entries = [Entry(s, out[s], firsts.get(s)) for s in STRATEGIES]
    return sorted(entries, key=lambda e: (e.first_failure_seconds is None,
                                          e.first_failure_seconds or 0.0))
