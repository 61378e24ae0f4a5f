"""Bad input: what the user gave cannot be used. The command line maps it to exit 2 and prints
its message, which names what is wrong and where; anything else that escapes a command is a bug
in textpoke (exit 3), never a failure found (exit 1)."""

from __future__ import annotations


class BadInput(Exception):
    """Input the user can fix (a file, an option, a saved exploration); the message says which
    and where."""


class WorkerDied(RuntimeError):
    """A cluster gave up on a task whose workers kept dying under it (Dask's
    `distributed.scheduler.allowed-failures`): out of memory, or killed; not the user's input
    and not a failure found (exit 3), what was recorded before it stays."""
