"""Which engine runs a schedule: the native fast path (the default), or the pure-Python
reference. Both must give the same path, ground truth, events, PT streams, decode steps, errors
and verdicts for the same decisions (tests/test_engines.py runs both on every scenario); the
reference is kept as the simple implementation the fast one is checked against.

The native parts are C extensions compiled when the package is installed (setup.py); where
that was impossible, that part runs its reference code, and says so once."""

from __future__ import annotations

import functools
import importlib
from dataclasses import dataclass
from enum import StrEnum
from types import ModuleType


class Engine(StrEnum):
    FAST = "fast"
    REFERENCE = "reference"


# the native modules, by the part of a schedule they run
NATIVE_MODULES = {"machine": "emu._native", "trace": "harness.trace.pt._native",
                  "search": "harness.explore._dpor"}


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
        return "partly reference (native code unavailable: " + "; ".join(
            f"{part}: {why}" for part, why in self.missing) + ")"


@functools.cache
def _import(part: str) -> tuple[ModuleType | None, str]:
    module = NATIVE_MODULES[part]
    try:
        return importlib.import_module(module), ""
    except ImportError as e:
        return None, f"{module}: {e}"


def native_module(part: str) -> ModuleType | None:
    """The native module of `part` ("machine", "trace" or "search"), imported once per
    process; None where it is not installed (that part then runs its reference code)."""
    return _import(part)[0]


def native_status() -> NativeStatus:
    return NativeStatus(tuple((part, _import(part)[1]) for part in NATIVE_MODULES
                              if native_module(part) is None))


def resolve(requested: Engine | None) -> Engine:
    """The engine to run: the requested one, the fast one by default. Under the fast engine
    each part (machine, trace, search) runs its native module where it is installed and its
    reference code where not (the front-ends say so once: `fallback_notice`): the results are
    the same, only slower."""
    return Engine.REFERENCE if requested is Engine.REFERENCE else Engine.FAST


def fallback_notice(requested: Engine | None) -> str | None:
    """What a front-end says once when the fast engine runs partly as the reference."""
    if resolve(requested) is Engine.FAST and not native_status().complete:
        return f"engine: {native_status().describe()}"
    return None
