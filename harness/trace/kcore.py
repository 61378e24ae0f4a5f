"""The text as a kcore-like ELF64 core file: PT_LOAD segments hold the bytes at their kernel
virtual addresses (what `perf record --kcore` saves for decoding; `readelf -l` shows them)."""

from __future__ import annotations

import struct

ELF_HEADER = struct.Struct("<16sHHIQQQIHHHHHH")
PHDR = struct.Struct("<IIQQQQQQ")
PT_LOAD, PF_X, PF_R, ET_CORE, EM_X86_64 = 1, 1, 4, 4, 62


class ElfError(Exception):
    pass


def write(segments: list[tuple[int, bytes]]) -> bytes:
    """An ELF64 core file with one read+execute PT_LOAD per (vaddr, bytes)."""
    phoff = ELF_HEADER.size
    data_off = phoff + PHDR.size * len(segments)
    ident = b"\x7fELF" + bytes([2, 1, 1, 0]) + b"\0" * 8  # 64-bit, little-endian, SysV
    out = bytearray(ELF_HEADER.pack(ident, ET_CORE, EM_X86_64, 1, 0, phoff, 0, 0,
                                    ELF_HEADER.size, PHDR.size, len(segments), 0, 0, 0))
    offset = data_off
    for vaddr, raw in segments:
        out += PHDR.pack(PT_LOAD, PF_R | PF_X, offset, vaddr, 0, len(raw), len(raw), 0x1000)
        offset += len(raw)
    for _, raw in segments:
        out += raw
    return bytes(out)


def read(blob: bytes) -> list[tuple[int, bytes]]:
    """(vaddr, bytes) of every PT_LOAD segment."""
    if len(blob) < ELF_HEADER.size or blob[:4] != b"\x7fELF" or blob[4] != 2 or blob[5] != 1:
        raise ElfError("not a little-endian ELF64 file")
    f = ELF_HEADER.unpack_from(blob)
    phoff, phentsize, phnum = f[5], f[9], f[10]
    if phentsize != PHDR.size or phoff + phnum * PHDR.size > len(blob):
        raise ElfError("bad program header table")
    out = []
    for i in range(phnum):
        ptype, _flags, off, vaddr, _paddr, filesz, _memsz, _align = PHDR.unpack_from(
            blob, phoff + i * PHDR.size)
        if ptype == PT_LOAD:
            if off + filesz > len(blob):
                raise ElfError(f"segment {i} runs past the end of the file")
            out.append((vaddr, blob[off:off + filesz]))
    return out
