"""Physical memory: host buffers shared by every CPU, and the harness's own virtual access.

Every Unicorn instance maps the same host buffers for text memory, data and stacks
(`mem_map_ptr`), so a store by one CPU is visible to the next load by any other. The harness
reads and writes guest memory straight in these buffers, translating with the same `Layout` the
CPUs' TLB fill hook uses, so it never goes through (or perturbs) a CPU.
"""

from __future__ import annotations

import ctypes

from .layout import (
    PAGE,
    PHYS_DATA,
    PHYS_STACKS,
    PHYS_TEXT_MEM,
    Access,
    Layout,
)


class GuestMemoryError(Exception):
    """The harness touched a guest address that the access would fault on."""

    def __init__(self, va: int, access: Access) -> None:
        super().__init__(f"{access.name.lower()} of {va:#x} faults")
        self.va = va
        self.access = access


class SharedMemory:
    def __init__(self, layout: Layout) -> None:
        self.layout = layout
        self.text = ctypes.create_string_buffer(layout.text_size)
        self.data = ctypes.create_string_buffer(layout.data_size)
        self.stacks = ctypes.create_string_buffer(layout.stacks_size)
        self._banks = ((PHYS_TEXT_MEM, self.text), (PHYS_DATA, self.data),
                       (PHYS_STACKS, self.stacks))

    def banks(self) -> tuple[tuple[int, ctypes.Array], ...]:
        """(physical base, buffer) of every shared bank, for mapping into each CPU."""
        return self._banks

    def _locate(self, va: int, access: Access) -> tuple[ctypes.Array, int]:
        pa = self.layout.translate(va, access)
        if pa is None:
            raise GuestMemoryError(va, access)
        for base, buf in self._banks:
            if base <= pa < base + len(buf):
                return buf, pa - base
        raise GuestMemoryError(va, access)  # pragma: no cover - layout and banks agree

    def read(self, va: int, size: int) -> bytes:
        """Data read, as a CPU's load sees it (text reads see memory, not a view)."""
        out = bytearray()
        while size > 0:
            buf, off = self._locate(va, Access.READ)
            n = min(size, PAGE - va % PAGE)
            out += buf[off:off + n]
            va, size = va + n, size - n
        return bytes(out)

    def write(self, va: int, data: bytes) -> None:
        """Data write, as a CPU's store would do it (never through the executable mapping)."""
        pos = 0
        while pos < len(data):
            buf, off = self._locate(va + pos, Access.WRITE)
            n = min(len(data) - pos, PAGE - (va + pos) % PAGE)
            ctypes.memmove(ctypes.addressof(buf) + off, data[pos:pos + n], n)
            pos += n

    def read_u64(self, va: int) -> int:
        return int.from_bytes(self.read(va, 8), "little")

    def read_cstring(self, va: int, limit: int = 256) -> str:
        out = bytearray()
        while len(out) < limit:
            b = self.read(va + len(out), 1)
            if b == b"\0":
                break
            out += b
        return out.decode("utf-8", "replace")

    def snapshot(self) -> tuple[bytes, bytes, bytes]:
        return bytes(self.text), bytes(self.data), bytes(self.stacks)

    def restore(self, snap: tuple[bytes, bytes, bytes]) -> None:
        for buf, raw in zip((self.text, self.data, self.stacks), snap, strict=True):
            ctypes.memmove(buf, raw, len(raw))
