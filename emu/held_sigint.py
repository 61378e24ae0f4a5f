"""Ctrl-C held until the machine is between steps.

Python runs a signal's handler at the next bytecode the main thread executes. While Unicorn
emulates, that is the first bytecode of one of our hook callbacks, and a KeyboardInterrupt
raised on entry to a ctypes callback is printed ("Exception ignored on calling ctypes callback
function") and dropped: the run went on as if no Ctrl-C had come, and an interrupted
exploration finished and exited 0. So for the length of a run SIGINT only marks itself, and the
machine raises KeyboardInterrupt itself once the step in progress is over.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Callable
from types import FrameType
from typing import Any


class HeldSigint:
    """A context manager around a run. `pending` turns true on SIGINT; `check()` raises
    KeyboardInterrupt if so, as does leaving the context. It takes SIGINT over only where
    Python's default handler has it (the main thread, nobody else's handler, not ignored as in
    the explorer's workers), so a caller's own handling is left alone."""

    def __init__(self) -> None:
        self.pending = False
        self._previous: Callable[[int, FrameType | None], Any] | int | None = None

    def _hold(self, _signum: int, _frame: FrameType | None) -> None:
        self.pending = True

    def check(self) -> None:
        if self.pending:
            self.pending = False
            raise KeyboardInterrupt

    def __enter__(self) -> HeldSigint:
        if (threading.current_thread() is threading.main_thread()
                and signal.getsignal(signal.SIGINT) is signal.default_int_handler):
            self._previous = signal.signal(signal.SIGINT, self._hold)
        return self

    def __exit__(self, exc_type, _exc, _tb) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)
            self._previous = None
        if exc_type is None:
            self.check()
