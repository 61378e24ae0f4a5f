"""The walker's decoded instructions, by IP, for one version of the image.

The same bytes decode the same way until a text-poke record writes them, so the walker
(decoder.py) classifies an instruction once per image version, not once per execution; a
record applied drops exactly the instructions whose bytes it touched.
"""

from __future__ import annotations

from .image import INSN_MAX, Image
from .insn import Insn


class InsnCache:
    def __init__(self) -> None:
        self.by_ip: dict[int, tuple[bytes, Insn | None]] = {}  # ip -> (bytes read there, decoded)
        self.version = -1  # the image version `by_ip` holds; -1: none yet

    def sync(self, image: Image) -> None:
        """Bring the cache to the image's version: drop what a write since then touched (the
        bytes `fetch` read at the instruction's IP); the rest reads the same."""
        insns, since = self.by_ip, self.version
        if since < 0:
            insns.clear()
        else:
            for addr, end in image.writes[since:]:
                for ip in [ip for ip in insns if ip < end and addr < ip + INSN_MAX]:
                    del insns[ip]
        self.version = image.version
