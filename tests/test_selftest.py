"""Every machine self-check passes, through the library and through the CLI."""

import json
import subprocess
import sys

import pytest

from emu import selftest
from tests.conftest import one_changed

NAMES = [fn.__name__.removeprefix("check_") for fn in selftest.CHECKS]
REQUIRED = {"stale_fetch_until_sync", "torn_fetch_byte_grain", "no_torn_fetch_after_sync",
            "own_writes_visible", "int3_handler_iret", "ud_from_invalid_bytes", "ipi_serializes",
            "nmi_delivery", "write_via_exec_mapping_faults", "rdtsc_virtual", "determinism",
            "reset_restores", "hang_budget"}


def test_every_required_check_exists():
    assert REQUIRED <= set(NAMES)


@pytest.mark.parametrize("fn", selftest.CHECKS, ids=NAMES)
def test_check_passes(fn):
    check = fn()
    assert check.ok, check.detail


def test_determinism_check_fails_when_the_replay_differs():
    """The replay the check compares, with one decision changed: the check reports failure."""
    check = selftest.check_determinism(lambda path: one_changed(path))
    assert not check.ok and "same=False" in check.detail and "same=True" in check.detail


def test_cli_selftest_json():
    out = subprocess.run([sys.executable, "-m", "harness", "selftest", "--json"],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    checks = json.loads(out.stdout)["checks"]
    assert {c["name"] for c in checks} == set(NAMES)
    assert all(c["ok"] is True and c["detail"] for c in checks)
