"""The native engine's C extensions (emu/engine.py). Each is `optional`: where it cannot be
compiled, `pip install` still succeeds and the harness runs the reference engine, saying so."""

from setuptools import Extension, setup

NATIVE: list[Extension] = [
    Extension("emu._native", ["emu/_native.c", "emu/fetch_pages.c"], optional=True,
              depends=["emu/fetch_pages.h"], extra_compile_args=["-O2"]),
    Extension("harness.trace.pt._native", ["harness/trace/pt/_native.c"], optional=True,
              extra_compile_args=["-O2"]),
    Extension("harness.explore._dpor", ["harness/explore/_dpor.c"], optional=True,
              extra_compile_args=["-O2"]),
]

setup(ext_modules=NATIVE)
