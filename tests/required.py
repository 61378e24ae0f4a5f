"""What CI requires of a test's surroundings (`.ci/run` sets TEXTPOKE_REQUIRE_TOOLS=1): a test
whose tool (perf, libipt) or native module is missing skips, except there, where it fails, so
that a skip never hides a CI problem."""

from __future__ import annotations

import os

import pytest

REQUIRE = os.environ.get("TEXTPOKE_REQUIRE_TOOLS") == "1"


def need(present: bool, why: str) -> None:
    """Nothing if `present`; else skip for `why`, or fail where CI requires it."""
    if present:
        return
    if REQUIRE:
        pytest.fail(f"{why}, and TEXTPOKE_REQUIRE_TOOLS=1")
    pytest.skip(why)
