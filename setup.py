"""The native engine's C extensions (emu/engine.py). Each is `optional`: where it cannot be
compiled, `pip install` still succeeds and the harness runs the reference engine, saying so.
Each carries the digest of the sources it was compiled from (emu/native_build.py)."""

import importlib.util
import sys
from pathlib import Path

from setuptools import Extension, setup


def _native_build():
    """emu/native_build.py, loaded by its path: the package is not importable while pip
    builds it (its dependencies are not installed yet)."""
    path = Path(__file__).resolve().parent / "emu" / "native_build.py"
    spec = importlib.util.spec_from_file_location("_textpoke_native_build", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # (its NamedTuple looks its module up)
    spec.loader.exec_module(module)
    return module


nb = _native_build()
NATIVE: list[Extension] = [
    Extension(part.module, list(part.sources), depends=list(part.depends), optional=True,
              define_macros=[(nb.DIGEST_MACRO, f'"{nb.source_digest(part)}"')],
              extra_compile_args=["-O2"])
    for part in nb.NATIVE_PARTS.values()
]

setup(ext_modules=NATIVE)
