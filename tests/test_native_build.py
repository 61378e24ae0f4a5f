"""A native module is used only as the build of the sources the tree holds (emu/native_build.py):
one built from other bytes runs as not installed, its part on the reference code, said once.
Where CI requires its tools (TEXTPOKE_REQUIRE_TOOLS=1), a native part missing or stale fails
here: the modules' differential tests skip without their module, and the fast engine would
quietly run the reference."""

from __future__ import annotations

import importlib
import shutil
import sys
import types
from pathlib import Path

import pytest

from emu import engine as engines
from emu.engine import Engine, NativeStatus, fallback_notice, native_status, stale_build
from emu.native_build import NATIVE_PARTS, ROOT, NativePart, source_digest
from tests import required
from tests.required import need


def _built(native: NativePart) -> types.ModuleType:
    try:
        return importlib.import_module(native.module)
    except ImportError as e:
        need(False, f"{native.module} is not built ({e})")
        raise  # (not reached)


def test_every_native_part_is_in_use():
    """Each part runs its native module: built, and built from the sources beside it."""
    status = native_status()
    need(status.complete, f"the engine is {status.describe()}")


def test_a_missing_part_skips_or_fails(monkeypatch):
    """The switch CI sets: without it a missing part skips, with it the test fails."""
    missing = NativeStatus((("trace", "harness.trace.pt._native: not built"),))
    monkeypatch.setattr(sys.modules[__name__], "native_status", lambda: missing)
    monkeypatch.setattr(required, "REQUIRE", False)
    with pytest.raises(pytest.skip.Exception, match="partly reference"):
        test_every_native_part_is_in_use()
    monkeypatch.setattr(required, "REQUIRE", True)
    with pytest.raises(pytest.fail.Exception, match="TEXTPOKE_REQUIRE_TOOLS=1"):
        test_every_native_part_is_in_use()


def _copy(native: NativePart, into: Path) -> None:
    for name in native.files:
        (into / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(ROOT / name, into / name)


@pytest.mark.parametrize("part", sorted(NATIVE_PARTS))
def test_each_native_module_is_the_build_of_the_sources_beside_it(part):
    native = NATIVE_PARTS[part]
    module = _built(native)
    digest = source_digest(native)
    assert digest is not None and len(digest) == 32
    assert module.SOURCE_DIGEST == digest  # what setup.py handed the compiler
    assert stale_build(module, native) == ""
    assert engines.native_module(part) is module


@pytest.mark.parametrize("part", sorted(NATIVE_PARTS))
def test_a_module_built_from_other_sources_is_stale(part, tmp_path):
    native = NATIVE_PARTS[part]
    module = _built(native)
    _copy(native, tmp_path)
    assert stale_build(module, native, tmp_path) == ""  # the same bytes elsewhere: the build
    for name in native.files:  # one byte changed in any of its files
        edited = tmp_path / name
        data = edited.read_bytes()
        edited.write_bytes(data[:-1] + bytes([data[-1] ^ 1]))
        why = stale_build(module, native, tmp_path)
        assert native.module in why and "pip install -e ." in why, name
        edited.write_bytes(data)
    (tmp_path / native.files[-1]).unlink()  # no sources to compare: taken as its own build
    assert stale_build(module, native, tmp_path) == ""


def test_a_build_older_than_the_digest_or_without_one_is_stale():
    native = NATIVE_PARTS["search"]
    assert "digest none" in stale_build(types.ModuleType("old"), native)
    empty = types.ModuleType("manual")
    empty.SOURCE_DIGEST = ""  # compiled without setup.py's define
    assert "digest none" in stale_build(empty, native)


def test_the_digest_reads_paths_and_lengths_as_well_as_bytes(tmp_path):
    a = NativePart("m", ("a.c", "b.c"))
    (tmp_path / "a.c").write_bytes(b"xy")
    (tmp_path / "b.c").write_bytes(b"z")
    before = source_digest(a, tmp_path)
    (tmp_path / "a.c").write_bytes(b"x")
    (tmp_path / "b.c").write_bytes(b"yz")  # the same bytes in all, split otherwise
    assert source_digest(a, tmp_path) != before
    assert source_digest(NativePart("m", ("a.c", "missing.c")), tmp_path) is None


@pytest.fixture
def fresh_imports(monkeypatch):
    """engine._import's cache emptied before and after (its results are per process)."""
    engines._import.cache_clear()
    yield monkeypatch
    monkeypatch.undo()
    engines._import.cache_clear()


def test_a_stale_part_runs_as_not_installed_and_is_said(fresh_imports):
    _built(NATIVE_PARTS["search"])
    fresh_imports.setattr(engines, "stale_build", lambda module, native: (
        f"{native.module} was built from other sources" if native.module.endswith("_dpor")
        else ""))
    assert engines.native_module("search") is None
    missing = dict(native_status().missing)
    assert missing["search"].startswith("harness.explore._dpor was built from other")
    notice = fallback_notice(Engine.FAST)
    assert notice is not None and "harness.explore._dpor was built from other" in notice
    assert fallback_notice(Engine.REFERENCE) is None
