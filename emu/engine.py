"""Which engine runs a schedule: the native fast path (the default), or the pure-Python
reference. Both must give the same path, ground truth, events, PT streams, decode steps, errors
and verdicts for the same decisions (tests/test_engines.py runs both on every scenario); the
reference is kept as the simple implementation the fast one is checked against.

The native parts are C extensions compiled when the package is installed (setup.py); where
that was impossible, or the module was built from other sources than the tree now holds
(emu/native_build.py), that part runs its reference code, and says so once."""

from __future__ import annotations

import functools
import importlib
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from types import ModuleType

from .native_build import NATIVE_PARTS, ROOT, NativePart, source_digest


class Engine(StrEnum):
    FAST = "fast"
    REFERENCE = "reference"


@dataclass(frozen=True)
class NativeStatus:
    """What native code this installation has: each part's module, or why it is missing."""

    missing: tuple[tuple[str, str], ...]  # (part, why)

    @property
    def complete(self) -> bool:
        return not self.missing

    def describe(self) -> str:
        if self.complete:
            return "fast (native: " + ", ".join(p.module for p in NATIVE_PARTS.values()) + ")"
        return "partly reference (native code unavailable: " + "; ".join(
            f"{part}: {why}" for part, why in self.missing) + ")"


@functools.cache
def _import(part: str) -> tuple[ModuleType | None, str]:
    native = NATIVE_PARTS[part]
    try:
        module = importlib.import_module(native.module)
    except ImportError as e:
        return None, f"{native.module}: {e}"
    stale = stale_build(module, native)
    return (None, stale) if stale else (module, "")


def stale_build(module: ModuleType, native: NativePart, root: Path = ROOT) -> str:
    """Why `module` is not the build of `native`'s sources as they are under `root`; "" if
    it is, or if they are not there to compare (an installation without sources)."""
    want = source_digest(native, root)
    if want is None:
        return ""
    have = getattr(module, "SOURCE_DIGEST", None)  # (None: built before builds carried it)
    if have == want:
        return ""
    return (f"{native.module} was built from other sources than {', '.join(native.sources)}"
            f" now hold (digest {have or 'none'}, sources {want}): rebuild it with "
            f"`pip install -e .`")


def native_module(part: str) -> ModuleType | None:
    """The native module of `part` ("machine", "trace" or "search"), imported once per
    process; None where it is not installed (that part then runs its reference code)."""
    return _import(part)[0]


def native_status() -> NativeStatus:
    return NativeStatus(tuple((part, _import(part)[1]) for part in NATIVE_PARTS
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
