"""What each native part is compiled from, and the digest of those sources its build carries.

setup.py compiles every part from the files named here (it loads this file by its path: while
pip builds, nothing else of the package can be imported) and hands the compiler the digest of
their bytes, which the module exports as `SOURCE_DIGEST`. Where the sources sit beside the
package (a checkout, an editable install), emu/engine.py computes the digest again when it
imports the module: a module built from other bytes than the tree now holds (the C changed
since the last `pip install -e .`) runs as not installed, so that its part runs the reference
code and the front-ends say so, rather than old native code beside new Python code, which
the engines' differential tests never saw together. Installed without its sources (a wheel),
a module is taken as built from its own.

This file imports nothing of the package."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import NamedTuple

# the checkout (or site-packages, which holds no sources) this file is in
ROOT = Path(__file__).resolve().parent.parent


class NativePart(NamedTuple):
    """One native part: its module, the C files compiled into it and the headers they
    include (paths from ROOT)."""

    module: str
    sources: tuple[str, ...]
    depends: tuple[str, ...] = ()

    @property
    def files(self) -> tuple[str, ...]:
        return (*self.sources, *self.depends)


# the native modules, by the part of a schedule they run
NATIVE_PARTS: dict[str, NativePart] = {
    "machine": NativePart("emu._native", ("emu/_native.c", "emu/fetch_pages.c"),
                          ("emu/fetch_pages.h",)),
    "trace": NativePart("harness.trace.pt._native", ("harness/trace/pt/_native.c",)),
    "search": NativePart("harness.explore._dpor", ("harness/explore/_dpor.c",)),
}

DIGEST_MACRO = "TEXTPOKE_SOURCE_DIGEST"  # the define setup.py passes; the C exports it


def source_digest(part: NativePart, root: Path = ROOT) -> str | None:
    """SHA-256 (32 hex digits) over every file of `part`, each with its path and length
    first; None when one of them is not there (an installation without sources)."""
    h = hashlib.sha256()
    for name in part.files:
        try:
            data = (root / name).read_bytes()
        except OSError:
            return None
        h.update(name.encode() + b"\0" + len(data).to_bytes(8, "little"))
        h.update(data)
    return h.hexdigest()[:32]
