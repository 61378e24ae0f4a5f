"""The `textpoke` command line. Exit codes: 0 pass, 1 a failing verdict or check, 2 bad input."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from . import __version__


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # argparse exits 2 with usage; keep that, say why
        self.print_usage(sys.stderr)
        self.exit(2, f"{self.prog}: error: {message}\n")


def _selftest(args: argparse.Namespace) -> int:
    from emu import selftest

    checks = selftest.run_all()
    if args.json:
        print(json.dumps({"checks": [{"name": c.name, "ok": c.ok, "detail": c.detail}
                                     for c in checks]}, indent=2))
    else:
        for c in checks:
            print(f"{'ok  ' if c.ok else 'FAIL'} {c.name}: {c.detail}")
        failed = sum(not c.ok for c in checks)
        print(f"{len(checks) - failed} passed, {failed} failed")
    return 0 if all(c.ok for c in checks) else 1


def _bad_input(message: str) -> int:
    print(f"textpoke: error: {message}", file=sys.stderr)
    return 2


def _scenarios(args: argparse.Namespace) -> int:
    from .scenarios import SCENARIOS

    width = max(map(len, SCENARIOS))
    for name, scn in SCENARIOS.items():
        print(f"{name:{width}}  {scn.description}")
        if args.verbose:
            print(f"{'':{width}}  variants: {', '.join(scn.variant_names())}")
    return 0


def _run(args: argparse.Namespace) -> int:
    from .run import Runner, write_artifacts
    from .scenarios import get
    from .text_poke_loc import ScenarioError

    try:
        runner = Runner(get(args.scenario), args.variant, args.cpus)
    except ScenarioError as e:
        return _bad_input(str(e))
    out = runner.run_seed(args.seed)
    if args.out:
        write_artifacts(out, args.seed, Path(args.out))
    print(f"{args.scenario} [{runner.built.variant}] seed {args.seed}: {out.verdict} "
          f"({len(out.result.path)} decisions, {out.result.ticks} instructions)")
    return 0 if out.ok else 1


def _decode(args: argparse.Namespace) -> int:
    from . import verify
    from .saved_run import RunDirError, load

    try:
        run = load(Path(args.dir))
    except RunDirError as e:
        return _bad_input(str(e))
    report = verify.check(run.streams, run.flows, run.text_start, run.text_end, run.records,
                          backward=args.backward)
    for c in report.cpus:
        print(f"cpu{c.cpu}: {c.steps} steps, "
              + ("exact" if c.verdict is None else f"{c.verdict.kind}: {c.verdict.detail}"))
    if args.json:
        print(json.dumps(report.to_json(), indent=2))
    bad = report.verdict
    if bad is None:
        return 0
    if bad.kind == verify.DECODE_ERROR:  # the trace itself is malformed
        print(f"textpoke: error: {bad.detail}", file=sys.stderr)
        return 2
    return 1


def _dump(args: argparse.Namespace) -> int:
    from .pt.decoder import dump
    from .pt.packets import PacketError

    try:
        stream = Path(args.file).read_bytes()
    except OSError as e:
        return _bad_input(str(e))
    lines: list[str] = []
    try:
        for line in dump(stream):
            lines.append(line)
    except PacketError as e:
        print("\n".join(lines))
        return _bad_input(f"{args.file}: {e}")
    print("\n".join(lines))
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="textpoke", description=__doc__)
    p.add_argument("--version", action="version", version=f"textpoke {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    st = sub.add_parser("selftest", help="run the emulated machine's self-checks")
    st.add_argument("--json", action="store_true", help="print the checks as JSON")
    st.set_defaults(func=_selftest)
    sc = sub.add_parser("scenarios", help="list the shipped scenarios")
    sc.add_argument("-v", "--verbose", action="store_true", help="also list their variants")
    sc.set_defaults(func=_scenarios)
    run = sub.add_parser("run", help="run one schedule of a scenario")
    run.add_argument("scenario")
    run.add_argument("--variant", help="the patching sequence variant (default: the correct one)")
    run.add_argument("--cpus", type=int, help="CPUs (1 patcher + observers)")
    run.add_argument("--seed", type=int, default=0, help="seed of the decision stream")
    run.add_argument("--out", help="directory for verdict.json and the ground truth")
    run.set_defaults(func=_run)
    dec = sub.add_parser("decode", help="re-decode and re-verify a saved run directory")
    dec.add_argument("dir")
    dec.add_argument("--backward", action="store_true",
                     help="decode from the end snapshot, undoing the text-poke records")
    dec.add_argument("--json", action="store_true")
    dec.set_defaults(func=_decode)
    dmp = sub.add_parser("dump", help="print the packets of a PT stream with their offsets")
    dmp.add_argument("file")
    dmp.set_defaults(func=_dump)
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help(sys.stderr)
        return 2
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
