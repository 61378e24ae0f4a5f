"""The guest's text as an ELF64 image: PT_LOAD segments hold the bytes at their kernel virtual
addresses (what `perf record --kcore` saves for decoding; `readelf -l` shows them), and a
`.text` section with a symbol table names the guest's labels, so that `readelf -s`,
`objdump -d`, gdb and `perf script --vmlinux` show guest function names.

One writer for every ELF a run directory holds: `text-start.elf`, `text-end.elf` and `vmlinux`
(the start text: perf applies the text-poke records forward from it). The image is an
executable (ET_EXEC), as vmlinux is, not a core file: binutils disassemble only the sections
of an object, and perf's vmlinux loader (tools/perf/util/symbol-elf.c: dso__load_sym) wants
`.text` and the kernel's reference symbols `_text`, `_stext` and `_etext`
(`[kernel.kallsyms]_text` in the MMAP record names the one perf relocates by)."""

from __future__ import annotations

import bisect
import struct
from collections.abc import Mapping

ELF_HEADER = struct.Struct("<16sHHIQQQIHHHHHH")
PHDR = struct.Struct("<IIQQQQQQ")
SHDR = struct.Struct("<IIQQQQIIQQ")  # Elf64_Shdr
SYM = struct.Struct("<IBBHQQ")  # Elf64_Sym: name, info, other, shndx, value, size
PT_LOAD, PF_X, PF_R, ET_EXEC, EM_X86_64 = 1, 1, 4, 2, 62
SHT_PROGBITS, SHT_SYMTAB, SHT_STRTAB = 1, 2, 3
SHF_ALLOC, SHF_EXECINSTR = 2, 4
STB_LOCAL, STB_GLOBAL, STT_NOTYPE, STT_FUNC, STT_SECTION = 0, 1, 0, 2, 3
PAGE = 0x1000
# The kernel's reference symbols (include/asm-generic/sections.h); perf needs `_text`.
REFERENCE_SYMBOLS = ("_text", "_stext", "_etext")


class ElfError(Exception):
    pass


def _align(n: int, to: int) -> int:
    return n + (-n) % to


class _Strings:
    """An ELF string table: offset 0 is the empty name."""

    def __init__(self) -> None:
        self.blob = bytearray(b"\0")

    def add(self, name: str) -> int:
        off = len(self.blob)
        self.blob += name.encode() + b"\0"
        return off


def _symtab(segments: list[tuple[int, bytes]], symbols: Mapping[str, int],
            strtab: _Strings) -> bytes:
    """Elf64_Sym entries: the null symbol, one STT_SECTION per segment, then every label
    inside a segment as a global STT_FUNC sized up to the next label at a higher address (as
    gdb and objdump group instructions under it), and the kernel's reference symbols."""
    out = bytearray(SYM.size)
    for i, _ in enumerate(segments, 1):
        out += SYM.pack(0, (STB_LOCAL << 4) | STT_SECTION, 0, i, segments[i - 1][0], 0)
    first, code = segments[0]
    marks = {"_text": first, "_stext": first, "_etext": first + len(code)}
    addrs = sorted(set(symbols.values()))
    for name, addr in sorted(symbols.items(), key=lambda kv: (kv[1], kv[0])):
        shndx = next((i for i, (base, raw) in enumerate(segments, 1)
                      if base <= addr < base + len(raw)), 0)
        if not shndx or name in marks:
            continue
        base, raw = segments[shndx - 1]
        j = bisect.bisect_right(addrs, addr)
        end = min(addrs[j] if j < len(addrs) else base + len(raw), base + len(raw))
        out += SYM.pack(strtab.add(name), (STB_GLOBAL << 4) | STT_FUNC, 0, shndx, addr,
                        end - addr)
    for name, addr in marks.items():
        out += SYM.pack(strtab.add(name), (STB_GLOBAL << 4) | STT_NOTYPE, 0, 1, addr, 0)
    return bytes(out)


def write(segments: list[tuple[int, bytes]], symbols: Mapping[str, int] | None = None) -> bytes:
    """An ELF64 executable with one read+execute PT_LOAD and one `.text` section per
    (vaddr, bytes), each at a page-aligned file offset congruent to its address, and a symbol
    table of `symbols` (label -> address; those outside every segment are left out)."""
    phoff = ELF_HEADER.size
    offset = _align(phoff + PHDR.size * len(segments), PAGE)
    placed = []
    for vaddr, raw in segments:
        offset += (vaddr - offset) % PAGE
        placed.append(offset)
        offset += len(raw)
    shstr, strtab = _Strings(), _Strings()
    names = [shstr.add(".text" if i == 0 else f".text.{i}") for i in range(len(segments))]
    symtab = _symtab(segments, symbols or {}, strtab) if segments else b""
    sym_off = _align(offset, 8)
    str_off = sym_off + len(symtab)
    shstr_names = (shstr.add(".symtab"), shstr.add(".strtab"), shstr.add(".shstrtab"))
    shstr_off = str_off + len(strtab.blob)
    shoff = _align(shstr_off + len(shstr.blob), 8)
    nsect = 1 + len(segments) + 3
    ident = b"\x7fELF" + bytes([2, 1, 1, 0]) + b"\0" * 8  # 64-bit, little-endian, SysV
    entry = segments[0][0] if segments else 0
    out = bytearray(ELF_HEADER.pack(ident, ET_EXEC, EM_X86_64, 1, entry, phoff, shoff, 0,
                                    ELF_HEADER.size, PHDR.size, len(segments), SHDR.size,
                                    nsect, nsect - 1))
    for (vaddr, raw), off in zip(segments, placed, strict=True):
        out += PHDR.pack(PT_LOAD, PF_R | PF_X, off, vaddr, 0, len(raw), len(raw), PAGE)
    for (_, raw), off in zip(segments, placed, strict=True):
        out += bytes(off - len(out)) + raw
    out += bytes(sym_off - len(out)) + symtab + strtab.blob + shstr.blob
    out += bytes(shoff - len(out)) + bytes(SHDR.size)
    for (vaddr, raw), off, name in zip(segments, placed, names, strict=True):
        out += SHDR.pack(name, SHT_PROGBITS, SHF_ALLOC | SHF_EXECINSTR, vaddr, off, len(raw),
                         0, 0, 16, 0)
    nlocal = 1 + len(segments)
    out += SHDR.pack(shstr_names[0], SHT_SYMTAB, 0, 0, sym_off, len(symtab), nsect - 2,
                     nlocal, 8, SYM.size)
    out += SHDR.pack(shstr_names[1], SHT_STRTAB, 0, 0, str_off, len(strtab.blob), 0, 0, 1, 0)
    out += SHDR.pack(shstr_names[2], SHT_STRTAB, 0, 0, shstr_off, len(shstr.blob), 0, 0, 1, 0)
    return bytes(out)


def _header(blob: bytes) -> tuple:
    if len(blob) < ELF_HEADER.size or blob[:4] != b"\x7fELF" or blob[4] != 2 or blob[5] != 1:
        raise ElfError("not a little-endian ELF64 file")
    return ELF_HEADER.unpack_from(blob)


def read(blob: bytes) -> list[tuple[int, bytes]]:
    """(vaddr, bytes) of every PT_LOAD segment."""
    f = _header(blob)
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


def read_symbols(blob: bytes) -> dict[str, int]:
    """The STT_FUNC symbols of the image's symbol table (label -> address); empty for an
    image without one (a run directory written before snapshots had symbols)."""
    f = _header(blob)
    shoff, shentsize, shnum = f[6], f[11], f[12]
    if shnum == 0:
        return {}
    if shentsize != SHDR.size or shoff + shnum * SHDR.size > len(blob):
        raise ElfError("bad section header table")
    shdrs = [SHDR.unpack_from(blob, shoff + i * SHDR.size) for i in range(shnum)]
    out: dict[str, int] = {}
    for _name, stype, _fl, _addr, off, size, link, _info, _al, entsize in shdrs:
        if stype != SHT_SYMTAB:
            continue
        if entsize != SYM.size or off + size > len(blob) or link >= shnum:
            raise ElfError("bad symbol table")
        s_off, s_size = shdrs[link][4], shdrs[link][5]
        strings = blob[s_off:s_off + s_size]
        for k in range(off, off + size - SYM.size + 1, SYM.size):
            name, info, _other, _shndx, value, _size = SYM.unpack_from(blob, k)
            if info & 0xF == STT_FUNC:
                end = strings.find(b"\0", name)
                if end < 0:
                    raise ElfError("symbol name runs past its string table")
                out[strings[name:end].decode(errors="replace")] = value
    return out
