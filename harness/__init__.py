"""textpoke-harness: run real live-patching code on emulated SMP x86-64 and check it."""

__version__ = "0.1.0"
