"""Which engine runs a schedule: the native fast path (the default), or the pure-Python
reference. Both must give the same path, ground truth, events, PT streams, decode steps, errors
and verdicts for the same decisions (tests/test_engines.py runs both on every scenario); the
reference is kept as the simple implementation the fast one is checked against.

The native parts are C extensions compiled when the package is installed (setup.py); a machine
where that was impossible runs the reference engine, and says so once."""

from __future__ import annotations

import functools
import importlib
import sys
from dataclasses import dataclass
from enum import StrEnum


class Engine(StrEnum):
    FAST = "fast"
    REFERENCE = "reference"


# the native modules, by the part of a schedule they run
NATIVE_MODULES = {"machine": "emu._native", "trace": "harness.trace.pt._native"}


@dataclass(frozen=True)
class NativeStatus:
    """What native code this installation has: each part's module, or why it is missing."""

    missing: tuple[tuple[str, str], ...]  # (part, why)

    @property
    def complete(self) -> bool:
        return not self.missing

    def describe(self) -> str:
        if self.complete:
            return "fast (native: " + ", ".join(NATIVE_MODULES.values()) + ")"
        return "reference (native code unavailable: " + "; ".join(
            f"{part}: {why}" for part, why in self.missing) + ")"


@functools.cache
def native_status() -> NativeStatus:
    """Import each native module once per process."""
    missing = []
    for part, module in NATIVE_MODULES.items():
        try:
            importlib.import_module(module)
        except ImportError as e:
            missing.append((part, f"{module}: {e}"))
    return NativeStatus(tuple(missing))


@functools.cache
def _said_once() -> None:
    print(f"textpoke: running the reference engine: {native_status().describe()}",
          file=sys.stderr)


def resolve(requested: Engine | None) -> Engine:
    """The engine to run: the requested one, or the fast one when its native code is
    installed. Asking for the fast engine where it is missing runs the reference (and says
    so once): the results are the same, only slower."""
    if requested is Engine.REFERENCE:
        return Engine.REFERENCE
    if native_status().complete:
        return Engine.FAST
    _said_once()
    return Engine.REFERENCE
