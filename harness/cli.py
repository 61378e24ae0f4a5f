"""The `textpoke` command line. Exit codes: 0 pass, 1 a failing verdict or check, 2 bad input."""

from __future__ import annotations

import argparse
import json
import sys

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


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="textpoke", description=__doc__)
    p.add_argument("--version", action="version", version=f"textpoke {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    st = sub.add_parser("selftest", help="run the emulated machine's self-checks")
    st.add_argument("--json", action="store_true", help="print the checks as JSON")
    st.set_defaults(func=_selftest)
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
