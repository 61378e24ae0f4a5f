"""The `textpoke` command line. Exit codes mean one thing each: 0 no failure found, 1 a failure
found (a failing verdict or check), 2 bad input (the message names what and where), 3 an
internal error (a bug in textpoke, or a worker process that died: the traceback goes to stderr),
130 interrupted (Ctrl-C) with nothing failing found, 141 stdout closed under us (`| head`)."""

from __future__ import annotations

import argparse
import functools
import json
import math
import os
import signal
import sys
import traceback
from pathlib import Path
from typing import TYPE_CHECKING

from . import __version__
from .errors import BadInput, WorkerDied

if TYPE_CHECKING:
    from harness.explore.schedule import Plan
    from harness.scenario.load import Origin, ScenarioRef

    from .run import Outcome

NO_FAILURE, FAILURE, BAD_INPUT, INTERNAL_ERROR = 0, 1, 2, 3
WORKER_DIED = INTERNAL_ERROR
INTERRUPTED = 128 + signal.SIGINT  # as a shell reports it
BROKEN_PIPE = 128 + signal.SIGPIPE  # what a Unix tool killed by SIGPIPE reports


def _int_at_least(low: int, what: str):
    """An argparse type: an integer >= low. argparse prefixes the option's name."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"{text!r} is not {what}")
        return value
    return parse


positive_int = _int_at_least(1, "a positive integer")
count = _int_at_least(0, "a count (an integer >= 0)")  # also the exhaustive bounds: a negative
# one cannot be honoured, so it is never reported as a space exhausted


def positive_seconds(text: str) -> float:
    """An argparse type: a finite number of seconds > 0 (`nan` or `inf` would run forever)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if not math.isfinite(value) or value <= 0:
        raise argparse.ArgumentTypeError(f"{text!r} is not a finite number of seconds > 0")
    return value


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # argparse exits 2 with usage; keep that, say why
        self.print_usage(sys.stderr)
        self.exit(2, f"{self.prog}: error: {message}\n")


def _selftest(args: argparse.Namespace) -> int:
    from emu import selftest
    from emu.engine import native_status, resolve

    engine = resolve(_engine(args))
    checks = selftest.run_all(engine)
    if args.json:
        print(json.dumps({"engine": engine.value, "native": native_status().describe(),
                          "checks": [{"name": c.name, "ok": c.ok, "detail": c.detail}
                                     for c in checks]}, indent=2))
    else:
        print(f"engine: {engine.value}; {native_status().describe()}")
        for c in checks:
            print(f"{'ok  ' if c.ok else 'FAIL'} {c.name}: {c.detail}")
        failed = sum(not c.ok for c in checks)
        print(f"{len(checks) - failed} passed, {failed} failed")
    return 0 if all(c.ok for c in checks) else 1


def _bad_input(message: str) -> int:
    print(f"textpoke: error: {message}", file=sys.stderr)
    return BAD_INPUT


def _out_dir(args: argparse.Namespace) -> Path | None:
    """--out checked before the run (not after it): a directory we can write artifacts to."""
    from harness.trace.saved_run import check_out

    return check_out(Path(args.out)) if args.out else None


def _write_out(out: Outcome, seed: int | None, directory: Path) -> Path | None:
    """The artifacts, in place of an earlier run's (never beside them); for a failing run also
    its timeline picture, whose path is returned."""
    from .timeline_draw import write_run

    return write_run(out, seed, directory)


def _timeline_line(picture: Path | None) -> str:
    return "" if picture is None else f"\n  timeline: {picture}"


def _extra(args: argparse.Namespace) -> list[Origin]:
    """The files and modules --scenarios names, loaded once here so that a broken one is bad
    input before any work (exit 2 naming the file and the error)."""
    from harness.scenario.load import origin_of_text, scenarios

    origins = [origin_of_text(text) for text in args.scenarios or ()]
    for origin in origins:
        scenarios(origin)
    return origins


def _ref(args: argparse.Namespace) -> ScenarioRef:
    """The scenario argument: NAME (shipped or from --scenarios), FILE.py::NAME or
    MODULE::NAME; checked (loaded) here."""
    from harness.scenario.load import parse, resolve

    ref = parse(args.scenario, _extra(args))
    resolve(ref)
    return ref


def _scenarios(args: argparse.Namespace) -> int:
    from harness.scenario.load import scenarios
    from harness.scenario.shipped import SCENARIOS

    known = dict(SCENARIOS)
    for origin in _extra(args):
        known.update(scenarios(origin))
    width = max(map(len, known))
    for name, scn in known.items():
        print(f"{name:{width}}  {scn.description}")
        if args.verbose:
            print(f"{'':{width}}  variants: {', '.join(scn.variant_names())}")
    return 0


def _run(args: argparse.Namespace) -> int:
    from harness.scenario.load import resolve
    from harness.scenario.text_poke_loc import ScenarioError

    from .run import Runner

    out_dir = _out_dir(args)
    try:
        runner = Runner(resolve(_ref(args)), args.variant, args.cpus, engine=_engine(args))
    except ScenarioError as e:
        return _bad_input(str(e))
    out = runner.run_seed(args.seed)
    picture = _write_out(out, args.seed, out_dir) if out_dir else None
    print(f"{args.scenario} [{runner.built.variant}] seed {args.seed}: {out.verdict} "
          f"({len(out.result.path)} decisions, {out.result.ticks} instructions)"
          + _timeline_line(picture))
    return 0 if out.ok else 1


def _decode(args: argparse.Namespace) -> int:
    from emu.engine import resolve
    from emu.verdict import VerdictKind
    from harness.trace import verify
    from harness.trace.saved_run import load

    run = load(Path(args.dir))
    report = verify.check(run.streams, run.flows, run.text_start, run.text_end, run.records,
                          backward=args.backward, parsed=run.items or None,
                          engine=resolve(_engine(args)))
    if args.json:  # only JSON on stdout
        print(json.dumps(report.to_json(), indent=2))
    else:
        if report.trace is not None:
            print(f"trace: {report.trace.kind}: {report.trace.detail}")
        for c in report.cpus:
            print(f"cpu{c.cpu}: {c.steps} steps, "
                  + ("exact" if c.verdict is None else f"{c.verdict.kind}: {c.verdict.detail}"))
    bad = report.verdict
    if bad is None:
        return NO_FAILURE
    if bad.kind is VerdictKind.DECODE_ERROR:  # the trace itself is malformed
        return _bad_input(f"{args.dir}: {bad.detail}")
    return FAILURE


def _timeline(args: argparse.Namespace) -> int:
    """Draw a saved run; exit 0 once drawn, whatever the run's verdict (the picture shows it)."""
    from .timeline import from_run_dir
    from .timeline_draw import check_out, draw

    out = check_out(Path(args.out))  # a bad --out costs nothing
    print(draw(from_run_dir(Path(args.dir)), out))
    return NO_FAILURE


def _crosscheck(args: argparse.Namespace) -> int:
    """Exit 0 if every decoder agrees with the ground truth on every CPU, 1 if one does not;
    no decoder to check with (neither libipt nor perf) is bad input (2)."""
    from .crosscheck import crosscheck

    report = crosscheck(Path(args.dir))
    if args.json:
        print(json.dumps(report.to_json(), indent=2))
    else:
        print("\n".join(report.lines()))
    return NO_FAILURE if report.agree else FAILURE


def _dump(args: argparse.Namespace) -> int:
    from harness.trace.pt.dump import dump_lines
    from harness.trace.pt.packets import PacketError

    try:
        stream = Path(args.file).read_bytes()
    except OSError as e:
        return _bad_input(str(e))
    write = sys.stdout.write
    try:
        for line in dump_lines(stream):  # streamed: `dump | head` stops it early
            write(line + "\n")
    except PacketError as e:
        sys.stdout.flush()
        return _bad_input(f"{args.file}: {e}")
    return NO_FAILURE


def _estimate(args: argparse.Namespace, plan: Plan) -> int:
    """`explore --estimate`: the bounded space's size, no search (exit 0: nothing failed)."""
    from harness.explore.explore import estimate
    from harness.scenario.text_poke_loc import ScenarioError

    if args.strategy != "exhaustive":
        return _bad_input(f"--estimate: the space of the exhaustive strategy is estimated, "
                          f"not {args.strategy}'s: add --strategy exhaustive")
    if (args.jobs != 1 or args.cluster or args.db or args.out or args.stop_at_first
            or args.schedules is not None or args.log):
        return _bad_input("--estimate runs its probes in this process and searches nothing: "
                          "without --jobs, --cluster, --db, --out, --stop-at-first, "
                          "--schedules, --log (--time: no new probe after that many seconds)")
    try:
        est = estimate(plan, args.estimate, args.time)
    except ScenarioError as e:
        return _bad_input(str(e))
    if args.json:
        print(json.dumps({"scenario": args.scenario, "variant": args.variant,
                          "preemptions": plan.preemptions, "delays": plan.delays,
                          "interrupts": plan.interrupts, "dpor": plan.dpor,
                          "paths": round(est.paths), "stderr": round(est.stderr),
                          "probes": est.probes, "runs": est.runs, "deepest": est.deepest,
                          "seconds": round(est.seconds, 2)}, indent=2))
    else:
        print(f"{args.scenario}: {est.line()}")
    return NO_FAILURE


def _explore(args: argparse.Namespace) -> int:
    from harness.explore.explore import explore, progress_bar
    from harness.explore.schedule import Plan
    from harness.scenario.text_poke_loc import ScenarioError

    if args.resume and not args.db:
        return _bad_input("--resume needs --db: the file the exploration to continue is in")
    if args.schedules is None and args.time is None and args.strategy != "exhaustive":
        args.schedules = 100  # exhaustive: until the bounded space is exhausted
    out_dir = _out_dir(args)
    try:
        ref = _ref(args)
    except ScenarioError as e:
        return _bad_input(str(e))
    plan = Plan(ref.name, args.variant, args.cpus, args.strategy, args.seed, args.depth,
                shrink=not args.no_shrink, preemptions=args.preemptions, delays=args.delays,
                dpor=args.dpor, interrupts=args.interrupts, origin=ref.origin,
                engine=_engine(args), memo=not args.no_memo)
    tls = None
    if args.tls_cert or args.tls_key or args.tls_ca_file:
        from harness.explore.cluster import Tls

        tls = Tls(args.tls_ca_file or "", args.tls_cert or "", args.tls_key or "")
    if args.strategy == "side-by-side":
        return _side_by_side(args, plan, tls)
    if args.estimate is not None:
        return _estimate(args, plan)
    if args.log:
        log = sys.stderr if args.json else sys.stdout  # --json: only JSON on stdout

        def progress(s):  # one line per finished schedule, for scripts
            r = s.last
            seed = "" if plan.strategy == "exhaustive" else f" seed {r.seed}"
            print(f"schedule {r.idx}{seed} {r.verdict}", file=log, flush=True)
    else:
        progress = progress_bar() if sys.stderr.isatty() else None
    try:
        summary = explore(plan, args.schedules, args.time, args.jobs, args.db, args.resume,
                          stop_at_first=args.stop_at_first, progress=progress,
                          interruptible=True, cluster=args.cluster, tls=tls,
                          keep_results=False)
    except ScenarioError as e:
        return _bad_input(str(e))
    if sys.stderr.isatty() and not args.log:
        sys.stderr.write("\n")
    fails = summary.failures
    exhaustive = plan.strategy == "exhaustive"
    picture = None
    if out_dir and fails:  # the first failure again, shrunk if it was, with its picture
        from harness.explore.explore import replay
        from harness.scenario.load import resolve

        tok, again = replay(fails[0].shrunk or fails[0].token, resolve(ref), plan.engine)
        try:
            picture = _write_out(again, tok.seed, out_dir)
        except BadInput as e:  # the directory went away meanwhile: report what was found
            print(f"textpoke: error: {e}", file=sys.stderr)
    doc = {"scenario": args.scenario, "variant": args.variant, "strategy": args.strategy,
           "schedules": summary.schedules, "resumed": summary.skipped,
           "failures": len(fails), "seconds": round(summary.seconds, 2),
           "first_failure_seconds": None if summary.first_failure_seconds is None else
           round(summary.first_failure_seconds, 2),
           "pct_bound": summary.bound, "exhausted": summary.exhausted, "dpor": plan.dpor,
           "interrupted": summary.interrupted,
           "out": str(out_dir) if picture else None,
           "timeline": str(picture) if picture else None,
           "failed": [{"schedule": f.idx, "seed": None if exhaustive else f.seed,
                       "verdict": f.verdict,
                       "detail": f.detail, "decisions": f.decisions,
                       "deviations": f.deviations, "token": f.token,
                       "shrunk_deviations": f.shrunk_deviations, "shrunk_token": f.shrunk}
                      for f in fails]}
    if args.json:
        print(json.dumps(doc, indent=2))
    else:
        print(f"{args.scenario}: {summary.schedules} schedules ({summary.skipped} from an "
              f"earlier run), {len(fails)} failing, {summary.seconds:.1f}s")
        if summary.exhausted is not None:
            print(f"exhaustive, {plan.bound}"
                  + (" with DPOR" if plan.dpor else "") + ": "
                  + (f"space exhausted after {summary.schedules} schedules"
                     if summary.exhausted else
                     f"NOT exhausted: stopped after {summary.schedules} schedules"
                     + (" (continue it with --resume)" if args.db else "")))
        elif summary.interrupted:
            print(f"interrupted after {summary.schedules} schedules"
                  + (" (continue it with --resume)" if args.db else ""))
        if summary.bound is not None:
            which = "each odd (PCT) schedule" if plan.strategy == "portfolio" else "each schedule"
            print(f"PCT depth {plan.depth}: {which} finds a depth-{plan.depth} bug with "
                  f"probability >= 1/(n*k^(d-1)) = {summary.bound:.3g}")
        for f in fails[:10]:
            print(f"  schedule {f.idx}{'' if exhaustive else f' (seed {f.seed})'}: {f.detail}")
            print(f"    replay: textpoke replay {f.token}")
            if f.shrunk:
                print(f"    shrunk (deviations from the simplest run: {f.deviations} -> "
                      f"{f.shrunk_deviations}): "
                      f"textpoke replay {f.shrunk}")
        if picture is not None:
            print(f"  schedule {fails[0].idx}'s artifacts: {out_dir}; timeline: {picture}")
    return FAILURE if fails else INTERRUPTED if summary.interrupted else NO_FAILURE


def _side_by_side(args: argparse.Namespace, plan, tls) -> int:
    """Random, PCT and exhaustive at once on a cluster; which found what first."""
    from harness.explore.side_by_side import side_by_side

    if args.db:
        return _bad_input("--strategy side-by-side keeps no --db: explore each strategy "
                          "with --db instead")
    entries = side_by_side(plan, args.schedules, args.time, args.jobs, args.cluster, tls,
                           args.stop_at_first, keep_results=False)
    doc = [{"strategy": e.strategy, "schedules": e.summary.schedules,
            "failures": len(e.summary.failures),
            "first_failure_seconds": None if e.first_failure_seconds is None else
            round(e.first_failure_seconds, 2),
            "first_failure": None if not e.summary.failures else
            {"schedule": e.summary.failures[0].idx, "verdict": e.summary.failures[0].verdict,
             "token": e.summary.failures[0].token, "shrunk_token": e.summary.failures[0].shrunk},
            "exhausted": e.summary.exhausted} for e in entries]
    if args.json:
        print(json.dumps({"scenario": args.scenario, "variant": args.variant,
                          "side_by_side": doc}, indent=2))
    else:
        for d in doc:
            f = d["first_failure"]
            print(f"{d['strategy']:10} {d['schedules']} schedules, {d['failures']} failing"
                  + ("" if f is None else f"; first: schedule {f['schedule']} {f['verdict']} "
                     f"after {d['first_failure_seconds']} s: textpoke replay "
                     f"{f['shrunk_token'] or f['token']}"))
    return FAILURE if any(d["failures"] for d in doc) else NO_FAILURE


def _replay(args: argparse.Namespace) -> int:
    from emu.decisions import ReplayError
    from harness.explore.explore import replay
    from harness.explore.token import Token, TokenError
    from harness.scenario.load import ScenarioRef, parse, resolve
    from harness.scenario.text_poke_loc import ScenarioError

    out_dir = _out_dir(args)
    try:
        scenario = None
        if args.scenarios:  # a token without an origin, for a scenario of these files
            tok = Token.decode(args.token)
            ref = ScenarioRef(tok.scenario, tok.origin) if tok.origin else \
                parse(tok.scenario, _extra(args))
            scenario = resolve(ref)
        tok, out = replay(args.token, scenario, _engine(args))
    except (TokenError, ScenarioError, ReplayError) as e:
        return _bad_input(f"cannot replay: {e}")
    picture = _write_out(out, tok.seed, out_dir) if out_dir else None
    print(f"{tok.scenario} [{tok.variant}]: {out.verdict} ({len(out.result.path)} decisions)"
          + _timeline_line(picture))
    return 0 if out.ok else 1


def _ablate(args: argparse.Namespace) -> int:
    """Exit 1 only if the sequence as written fails: a mutant failing is the finding sought."""
    from dataclasses import asdict

    from emu.path import Cost
    from harness.scenario.load import resolve

    from .ablate import ablate, table

    ref = _ref(args)
    rows = ablate(resolve(ref), args.variant, args.schedules,
                  Cost(args.preemptions, args.delays, args.interrupts), args.limit, args.cpus,
                  ref.origin)
    if args.json:
        print(json.dumps([asdict(r) for r in rows], indent=2))
    else:
        print(table(rows))
    return FAILURE if rows[0].verdict is not None else NO_FAILURE


def _zoo(args: argparse.Namespace) -> int:
    from harness.scenario.load import ScenarioRef, scenarios

    from .zoo import table, zoo

    extra = [ScenarioRef(name, origin) for origin in _extra(args)
             for name in scenarios(origin)]
    rows = zoo(args.strategy, args.buggy_budget, args.fixed_budget, args.jobs, extra=extra)
    if args.json:
        from dataclasses import asdict

        print(json.dumps([asdict(r) for r in rows], indent=2))
    else:
        print(table(rows))
    ok = all(r.found and r.fixed_passed == r.fixed_schedules for r in rows)
    return 0 if ok else 1


def _litmus(args: argparse.Namespace) -> int:
    from . import litmus

    results = [litmus.run(lit, args.preemptions, args.delays, interrupts=args.interrupts)
               for lit in litmus.CATALOGUE]
    if args.json:
        print(json.dumps({"preemptions": args.preemptions, "delays": args.delays,
                          "interrupts": args.interrupts, "tests": [
            {"name": r.litmus.name, "description": r.litmus.description,
             "allowed": sorted(r.litmus.allowed), "observed": sorted(r.observed),
             "schedules": r.schedules, "exhausted": r.exhausted, "ok": r.ok}
            for r in results]}, indent=2))
    else:
        for r in results:
            print(f"{'ok  ' if r.ok else 'FAIL'} {r.litmus.name:10} observed "
                  f"{{{', '.join(sorted(r.observed))}}} allowed "
                  f"{{{', '.join(sorted(r.litmus.allowed))}}} ({r.schedules} schedules, "
                  f"{'exhausted' if r.exhausted else 'NOT exhausted'}): {r.litmus.description}")
    return 0 if all(r.ok for r in results) else 1


def _engine_option(p: argparse.ArgumentParser) -> None:
    from emu.engine import Engine

    p.add_argument("--engine", choices=[e.value for e in Engine], default=None,
                   help="fast (the default, native code) or reference (the pure-Python "
                        "implementation the fast one is checked against)")


def _engine(args: argparse.Namespace):
    from emu.engine import Engine

    return Engine(args.engine) if getattr(args, "engine", None) else None


def _scenarios_option(p: argparse.ArgumentParser) -> None:
    p.add_argument("--scenarios", action="append", metavar="FILE.py|MODULE",
                   help="add the scenarios a Python file or module defines (repeatable); a "
                        "scenario can also be named as FILE.py::NAME or MODULE::NAME")


def build_parser() -> argparse.ArgumentParser:
    from harness.explore.strategies import DEFAULT_STRATEGY, STRATEGIES

    p = _Parser(prog="textpoke", description=__doc__)
    p.add_argument("--version", action="version", version=f"textpoke {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    st = sub.add_parser("selftest", help="run the emulated machine's self-checks")
    _engine_option(st)
    st.add_argument("--json", action="store_true", help="print the checks as JSON")
    st.set_defaults(func=_selftest)
    sc = sub.add_parser("scenarios", help="list the shipped scenarios")
    sc.add_argument("-v", "--verbose", action="store_true", help="also list their variants")
    _scenarios_option(sc)
    sc.set_defaults(func=_scenarios)
    run = sub.add_parser("run", help="run one schedule of a scenario")
    _engine_option(run)
    run.add_argument("scenario", help="NAME, FILE.py::NAME or MODULE::NAME")
    run.add_argument("--variant", help="the patching sequence variant (default: the correct one)")
    run.add_argument("--cpus", type=int, help="CPUs (1 patcher + observers)")
    run.add_argument("--seed", type=count, default=0, help="seed of the decision stream")
    run.add_argument("--out", help="directory for verdict.json and the ground truth")
    _scenarios_option(run)
    run.set_defaults(func=_run)
    dec = sub.add_parser("decode", help="re-decode and re-verify a saved run directory")
    dec.add_argument("dir")
    dec.add_argument("--backward", action="store_true",
                     help="decode from the end snapshot, undoing the text-poke records")
    dec.add_argument("--json", action="store_true")
    _engine_option(dec)
    dec.set_defaults(func=_decode)
    tl = sub.add_parser("timeline", help="draw a saved run directory: one lane per CPU over "
                                          "virtual time (SVG or PNG)")
    tl.add_argument("dir", help="a run directory (run/replay --out)")
    tl.add_argument("--out", required=True, metavar="FILE.svg|FILE.png")
    tl.set_defaults(func=_timeline)


    cc = sub.add_parser("crosscheck", help="decode a saved run with libipt and perf script too, "
                        "and compare each with the ground truth")
    cc.add_argument("dir")
    cc.add_argument("--json", action="store_true")
    cc.set_defaults(func=_crosscheck)
    dmp = sub.add_parser("dump", help="print the packets of a PT stream with their offsets")
    dmp.add_argument("file")
    dmp.set_defaults(func=_dump)
    ex = sub.add_parser("explore", help="explore many schedules of a scenario")
    _engine_option(ex)
    ex.add_argument("scenario", help="NAME, FILE.py::NAME or MODULE::NAME")
    ex.add_argument("--variant")
    ex.add_argument("--cpus", type=int)  # the scenario names its range
    ex.add_argument("--strategy", choices=[*STRATEGIES, "side-by-side"],
                    default=DEFAULT_STRATEGY,
                    help="portfolio (default): even schedules random, odd ones PCT; "
                         "side-by-side: random, PCT and exhaustive at once on a cluster")
    ex.add_argument("--preemptions", type=count, default=2,
                    help="exhaustive: at most P non-simplest CPU choices")
    ex.add_argument("--delays", type=count, default=2,
                    help="exhaustive: at most V delayed fetch-view updates")
    ex.add_argument("--interrupts", type=count, default=1,
                    help="exhaustive: at most I interrupt deviations (a spontaneous NMI "
                         "raised before some instruction, an interrupt left pending)")
    ex.add_argument("--dpor", action="store_true",
                    help="exhaustive: one schedule per order of dependent steps (fewer "
                         "schedules; under the bounds it may miss some, see README)")
    ex.add_argument("--estimate", type=positive_int, metavar="PROBES",
                    help="exhaustive: do not search; estimate how many paths the bounded "
                         "space holds from PROBES random probes (Knuth's estimator; with "
                         "--dpor the search makes at most that many); with --time, fewer "
                         "probes if the time runs out")
    ex.add_argument("--schedules", type=positive_int,
                    help="how many (default 100; exhaustive: until the space is exhausted)")
    ex.add_argument("--time", type=positive_seconds, help="seconds to explore for")
    ex.add_argument("--jobs", type=positive_int, default=1,
                    help="worker processes of a local Dask cluster on 127.0.0.1 (1: this "
                         "process alone)")
    ex.add_argument("--cluster", metavar="tcp://HOST:PORT",
                    help="run on this Dask scheduler (default $TEXTPOKE_CLUSTER); a scheduler "
                         "runs whatever its clients send: never on an untrusted network")
    ex.add_argument("--tls-ca-file", help="tls:// cluster: the CA certificate (Dask Security)")
    ex.add_argument("--tls-cert", help="tls:// cluster: this client's certificate")
    ex.add_argument("--tls-key", help="tls:// cluster: this client's private key")
    ex.add_argument("--seed", type=count, default=0, help="schedule i uses seed SEED+i")
    ex.add_argument("--depth", type=positive_int, default=3, help="PCT bug depth d (>= 1)")
    ex.add_argument("--db", help="SQLite file the results are written to as they are found "
                    "(a failure at once, others about every second)")
    ex.add_argument("--resume", action="store_true", help="continue the exploration in --db")
    ex.add_argument("--no-shrink", action="store_true")
    ex.add_argument("--no-memo", action="store_true",
                    help="check every schedule in full: take no CPU's part of a check from "
                         "the memo of earlier schedules' parts (found by an XXH3-128 digest "
                         "of all it reads; about 10 %% slower on exhaustive searches)")
    ex.add_argument("--stop-at-first", action="store_true",
                    help="stop at the first failure and shrink only it (on a cluster, every "
                         "worker stops; random/PCT: the lowest-numbered failure)")
    ex.add_argument("--log", action="store_true", help="a line per finished schedule")
    ex.add_argument("--out", help="directory for the first failure's artifacts (shrunk, as "
                                  "`replay --out` writes them) and its timeline.svg")
    ex.add_argument("--json", action="store_true")
    _scenarios_option(ex)
    ex.set_defaults(func=_explore)
    rp = sub.add_parser("replay", help="reproduce a schedule from its replay token")
    _engine_option(rp)
    rp.add_argument("token")
    rp.add_argument("--out", help="directory for the artifacts, as `run --out` writes them")
    _scenarios_option(rp)
    rp.set_defaults(func=_replay)
    zo = sub.add_parser("zoo", help="every race-zoo card: buggy found? fixed passes?")
    zo.add_argument("--strategy", choices=[s for s in STRATEGIES if s != "exhaustive"],
                    default=DEFAULT_STRATEGY)
    zo.add_argument("--buggy-budget", type=positive_int, default=300)
    zo.add_argument("--fixed-budget", type=positive_int, default=40)
    zo.add_argument("--jobs", type=positive_int, default=1)
    zo.add_argument("--json", action="store_true")
    _scenarios_option(zo)
    zo.set_defaults(func=_zoo)
    ab = sub.add_parser("ablate", help="drop and swap the steps of a poking sequence and "
                                       "explore every mutant")
    ab.add_argument("scenario")
    ab.add_argument("--variant")
    ab.add_argument("--cpus", type=positive_int)
    ab.add_argument("--schedules", type=positive_int, default=40,
                    help=f"{DEFAULT_STRATEGY} schedules per mutant before the exhaustive search")
    ab.add_argument("--preemptions", type=count, default=1)
    ab.add_argument("--delays", type=count, default=1)
    ab.add_argument("--interrupts", type=count, default=0)
    ab.add_argument("--limit", type=positive_int, default=300,
                    help="exhaustive schedules per mutant at most")
    ab.add_argument("--json", action="store_true")
    _scenarios_option(ab)
    ab.set_defaults(func=_ablate)
    li = sub.add_parser("litmus", help="cross-modifying-code litmus tests, explored exhaustively")
    li.add_argument("--preemptions", type=count, default=2)
    li.add_argument("--delays", type=count, default=4)
    li.add_argument("--interrupts", type=count, default=1)
    li.add_argument("--json", action="store_true")
    li.set_defaults(func=_litmus)
    return p


def _bad_input_types() -> tuple[type[Exception], ...]:
    """Every error that means "the user's input cannot be used", besides BadInput."""
    from emu.decisions import ReplayError
    from harness.explore.exhaustive import SearchError
    from harness.explore.token import TokenError
    from harness.scenario.text_poke_loc import ScenarioError

    return (BadInput, ScenarioError, TokenError, ReplayError, SearchError)


def _stdout_gone() -> None:
    """The reader of stdout went away (`textpoke dump | head`): point stdout at /dev/null so
    that the interpreter's last flush does not print a BrokenPipeError of its own."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError, AttributeError):  # stdout without a file descriptor
        pass


@functools.cache
def _parser() -> argparse.ArgumentParser:
    """The parser, built once per process: argparse's gettext calls make building it cost
    milliseconds, which a test calling `main` thousands of times pays each time."""
    return build_parser()


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help(sys.stderr)
        return BAD_INPUT
    try:
        if hasattr(args, "engine"):  # said once, by the front-end (not by every worker)
            from emu.engine import fallback_notice

            notice = fallback_notice(_engine(args))
            if notice:
                print(f"textpoke: {notice}", file=sys.stderr)
        return args.func(args)
    except KeyboardInterrupt:  # `explore` handles it itself and reports what it found
        print(f"textpoke {args.command}: interrupted", file=sys.stderr)
        return INTERRUPTED
    except WorkerDied as e:  # Dask gave up: the task's workers kept dying (out of memory)
        print(f"textpoke {args.command}: error: a cluster worker process died under the same "
              f"task too often ({e}); the schedules finished before are kept in --db "
              "(continue with --resume)", file=sys.stderr)
        return WORKER_DIED
    except BrokenPipeError:
        _stdout_gone()
        return BROKEN_PIPE
    except Exception as e:
        if isinstance(e, _bad_input_types()):
            return _bad_input(str(e))
        traceback.print_exc(file=sys.stderr)
        print(f"textpoke {args.command}: internal error: this is a bug in textpoke (exit 3); "
              "the traceback is above", file=sys.stderr)
        return INTERNAL_ERROR


if __name__ == "__main__":
    sys.exit(main())
