"""Guest assembly: keystone assembles, capstone checks, labels become symbols.

keystone 0.9.2 mis-encodes some instructions (``nop dword ptr [rax+rax]`` comes out as
``0f 18 24 00``, a PREFETCH), so every assembled routine is disassembled with capstone and
compared with its source, instruction by instruction, and multi-byte NOPs never come from the
assembler: the pseudo-instruction ``KNOP n`` emits the kernel's own NOP bytes
(``x86_nops`` / ``BYTES_NOP1..8`` in arch/x86/include/asm/nops.h).

Source conventions: Intel syntax, ``#`` comments, one statement per line, labels ``name:``.
Every label is exported as a symbol: the source is assembled once with a ``.quad label`` per
label appended, which adds data after the code without moving any of it.
"""

from __future__ import annotations

import bisect
import functools
import importlib.resources
import re
from dataclasses import dataclass

import capstone
import keystone

# arch/x86/include/asm/nops.h, the 64-bit "ideal" NOPs.
KERNEL_NOPS: dict[int, bytes] = {
    1: bytes([0x90]),
    2: bytes([0x66, 0x90]),
    3: bytes([0x0F, 0x1F, 0x00]),
    4: bytes([0x0F, 0x1F, 0x40, 0x00]),
    5: bytes([0x0F, 0x1F, 0x44, 0x00, 0x00]),
    6: bytes([0x66, 0x0F, 0x1F, 0x44, 0x00, 0x00]),
    7: bytes([0x0F, 0x1F, 0x80, 0x00, 0x00, 0x00, 0x00]),
    8: bytes([0x0F, 0x1F, 0x84, 0x00, 0x00, 0x00, 0x00, 0x00]),
}

_ALIASES = {
    "jz": "je", "jnz": "jne", "jc": "jb", "jnae": "jb", "jnc": "jae", "jnb": "jae",
    "jna": "jbe", "jnbe": "ja", "jpe": "jp", "jpo": "jnp", "jnge": "jl", "jnl": "jge",
    "jng": "jle", "jnle": "jg", "setz": "sete", "setnz": "setne", "cmovz": "cmove",
    "cmovnz": "cmovne", "sal": "shl", "movabs": "mov", "int 3": "int3",
}

_LABEL = re.compile(r"^\s*([A-Za-z_][\w.]*):\s*(.*)$")
_DATA_SIZES = {".byte": 1, ".word": 2, ".short": 2, ".long": 4, ".int": 4, ".quad": 8}


_ASM_BASE = 0x4000_0000_0000


class AsmError(Exception):
    """Guest source that does not assemble, or assembles to something else than it says.
    `line` (1-based, in the source given) and `reason` (the message without the location)
    are set when the failing statement is known, so a caller that combined several pieces of
    source can say which piece and which of its lines (harness/scenario/build.py)."""

    def __init__(self, message: str, line: int | None = None, reason: str = "") -> None:
        super().__init__(message)
        self.line = line
        self.reason = reason or message


@dataclass(frozen=True)
class Program:
    base: int
    code: bytes
    symbols: dict[str, int]
    name: str = "<source>"
    starts: frozenset[int] = frozenset()  # addresses where an instruction (or KNOP) starts

    def sym(self, name: str) -> int:
        try:
            return self.symbols[name]
        except KeyError:
            raise AsmError(f"{self.name}: no symbol {name!r}") from None

    @property
    def end(self) -> int:
        return self.base + len(self.code)

    @functools.cached_property
    def _by_address(self) -> tuple[list[int], list[str]]:
        pairs = sorted((a, n) for n, a in self.symbols.items())
        return [a for a, _ in pairs], [n for _, n in pairs]

    def symbolize(self, address: int) -> str:
        """`name+0xoff` for the nearest symbol at or below `address` inside this program (the
        first label, alphabetically, where several share an address), or "" outside it: reports
        name guest code, not raw addresses."""
        if not self.base <= address < self.end:
            return ""
        addrs, names = self._by_address
        i = bisect.bisect_right(addrs, address) - 1
        if i < 0:
            return ""
        first = bisect.bisect_left(addrs, addrs[i])
        off = address - addrs[i]
        return names[first] + (f"+{off:#x}" if off else "")


@dataclass(frozen=True)
class _Line:
    number: int
    text: str  # the statement, labels and comments removed


def load_source(name: str) -> str:
    """The text of guest_code/<name>."""
    try:
        return importlib.resources.files("guest_code").joinpath(name).read_text()
    except FileNotFoundError:
        raise AsmError(f"no guest source guest_code/{name}") from None


def _expand_knop(text: str, number: int) -> str:
    parts = text.split(None, 1)
    if not parts or parts[0].upper() != "KNOP":
        return text
    n = int(parts[1], 0) if len(parts) > 1 else 0
    if n not in KERNEL_NOPS:
        raise AsmError(f"line {number}: KNOP {n}: the kernel has NOPs of 1..8 bytes")
    return ".byte " + ",".join(f"{b:#04x}" for b in KERNEL_NOPS[n])


def _preprocess(source: str) -> tuple[list[str], list[_Line], list[str]]:
    """Cleaned source lines for keystone, the statements for the checker, and the labels."""
    cleaned: list[str] = []
    lines: list[_Line] = []
    labels: list[str] = []
    for number, raw in enumerate(source.splitlines(), 1):
        text = raw.split("#", 1)[0].strip()
        heads = []
        while m := _LABEL.match(text):
            labels.append(m.group(1))
            heads.append(m.group(1) + ":")
            text = m.group(2).strip()
        text = _expand_knop(text, number)
        cleaned.append(" ".join(heads + [text]))
        if text:
            lines.append(_Line(number, text))
    return cleaned, lines, labels


_REG = re.compile(r"\b(r[a-d]x|r[sd]i|r[sb]p|e[a-d]x|e[sd]i|e[sb]p|[a-d][lhx]|[sd]il|[sb]pl|[sd]i|"
                  r"[sb]p|r(?:[89]|1[0-5])[dwb]?|rip|cr[0-8]|dr[0-7]|[c-gs]s|xmm\d+)\b")


_NUMS = re.compile(r"^\s*[-+]?\s*(0x[0-9a-f]+|\d+)(\s*[-+]\s*(0x[0-9a-f]+|\d+))*\s*$")


def _absolute(operands: str) -> int | None:
    """The address in `[number +- number ...]`, if that is what the memory operand is."""
    m = re.search(r"\[([^\]]*)\]", operands.lower())
    if not m or not _NUMS.match(m.group(1)):
        return None
    return sum(int(t.replace(" ", ""), 0) for t in re.findall(r"[-+]?\s*(?:0x[0-9a-f]+|\d+)",
                                                                  m.group(1)))


def _rip_target(insn) -> int | None:
    m = re.search(r"\[rip ([-+]) (0x[0-9a-f]+|\d+)\]", insn.op_str)
    if not m:
        return None
    disp = int(m.group(2), 0) * (-1 if m.group(1) == "-" else 1)
    return (insn.address + insn.size + disp) & (2**64 - 1)


def _registers(operands: str) -> set[str]:
    return set(_REG.findall(operands.lower()))


def _norm(mnemonic: str) -> str:
    m = " ".join(mnemonic.lower().split())
    return _ALIASES.get(m, m)


def _source_mnemonic(text: str) -> str:
    words = text.lower().replace(",", " ").split()
    prefixes = []
    while len(words) > 1 and words[0] in ("lock", "rep", "repe", "repz", "repne", "repnz"):
        prefixes.append(words.pop(0))
    return _norm(" ".join(prefixes + words[:1]))


def _check(program: bytes, base: int, lines: list[_Line], name: str,
           labels: set[str]) -> frozenset[int]:
    """Walk the source and the disassembly together; any disagreement is an AsmError.
    Returns the addresses where instructions start."""
    md = capstone.Cs(capstone.CS_ARCH_X86, capstone.CS_MODE_64)
    pos = 0
    starts: set[int] = set()
    for line in lines:
        try:
            pos = _check_line(md, program, base, pos, line, name, labels, starts)
        except AsmError as e:
            where = f"{name}:{line.number} ({line.text!r}) at {base + pos:#x}"
            raise AsmError(f"{where}: {e}", line.number, str(e)) from None
    if pos != len(program):
        raise AsmError(f"{name}: checker consumed {pos} of {len(program)} bytes")
    return frozenset(starts)


def _check_line(md: capstone.Cs, program: bytes, base: int, pos: int, line: _Line, name: str,
                labels: set[str], starts: set[int]) -> int:
    """Check one statement at `pos`; returns the position after it. Raises AsmError with the
    reason alone (the caller adds where)."""
    word = line.text.split(None, 1)[0].lower()
    if word in _DATA_SIZES:
        items = [x for x in line.text.split(None, 1)[1].split(",") if x.strip()]
        size = _DATA_SIZES[word] * len(items)
        if word == ".byte":
            starts.add(base + pos)
            want = bytes(int(x, 0) & 0xFF for x in items)
            if program[pos:pos + size] != want:
                raise AsmError(f"bytes {program[pos:pos + size].hex()} "
                               f"!= {want.hex()}")
        return pos + size
    if word in (".zero", ".skip", ".space"):
        return pos + int(line.text.split(None, 1)[1].split(",")[0], 0)
    if word in (".align", ".balign", ".p2align"):
        n = int(line.text.split(None, 1)[1].split(",")[0], 0)
        align = 1 << n if word == ".p2align" else n
        return pos + (-(base + pos)) % align
    if word.startswith("."):
        if word in (".equ", ".set"):
            return pos
        raise AsmError(f"directive {word} is not supported by the checker")
    insn = next(md.disasm(program[pos:pos + 15], base + pos, 1), None)
    if insn is None:
        raise AsmError(f"capstone cannot decode {program[pos:pos + 15].hex()}")
    got = _norm(insn.mnemonic)
    want = _source_mnemonic(line.text)
    encoded = bytes(insn.bytes)
    said = f"assembled to {insn.mnemonic} {insn.op_str} [{encoded.hex()}]"
    if got != want:
        raise AsmError(f"{said}, not {want}")
    if got == "nop" and encoded not in KERNEL_NOPS.values():
        raise AsmError(f"{said}: not a kernel NOP; write multi-byte NOPs as KNOP n")
    operands = line.text.split(None, 1)[1] if " " in line.text else ""
    if operands.count("[") != operands.count("]") or \
            ("[" in operands) != ("[" in insn.op_str):
        raise AsmError(f"{said}: memory operand differs from the source")
    if "rip" in _registers(insn.op_str) and "rip" not in _registers(operands):
        # keystone makes a near absolute address RIP-relative: check where it points
        want_ea, got_ea = _absolute(operands), _rip_target(insn)
        if want_ea is None or got_ea != want_ea & (2**64 - 1):
            raise AsmError(f"{said}: RIP-relative operand points elsewhere "
                           f"than the source's {operands}")
    if not got.startswith(("j", "call", "loop")) and "rip" not in _registers(operands) \
            and set(re.findall(r"[A-Za-z_][\w.]*", operands)) & labels:
        raise AsmError("a label used as an absolute address; write "
                       "[rip + label] (code is assembled position-independent)")
    if not _registers(operands) <= _registers(insn.op_str):
        raise AsmError(f"{said}: operands differ from the source")
    starts.add(base + pos)
    return pos + insn.size


_KS_REASON = re.compile(r"\(KS_ERR_\w+\)")
_SIZE_WORDS = {"byte", "word", "dword", "qword", "tbyte", "xmmword", "ptr", "offset"}


def _failing_line(cleaned: list[str], labels: set[str]) -> tuple[int, str] | None:
    """(line number, keystone's reason) of the first statement that does not assemble on its
    own, the program's labels resolved, or None: keystone reports no line of its own."""
    ks = keystone.Ks(keystone.KS_ARCH_X86, keystone.KS_MODE_64)

    def resolve(symbol: bytes | str, value) -> bool:
        name = symbol.decode() if isinstance(symbol, bytes) else symbol
        if name not in labels:
            return False
        value[0] = _ASM_BASE
        return True

    ks.sym_resolver = resolve
    for number, text in enumerate(cleaned, 1):
        statement = _LABEL.sub(lambda m: m.group(2), text).strip()
        while (m := _LABEL.match(statement)):
            statement = m.group(2).strip()
        if not statement:
            continue
        try:
            ks.asm(statement, _ASM_BASE)
        except keystone.KsError as e:
            if e.errno == keystone.KS_ERR_ASM_SYMBOL_MISSING:
                words = set(re.findall(r"[A-Za-z_][\w.]*", statement.split(None, 1)[-1]))
                unknown = sorted(words - labels - _registers(statement) - _SIZE_WORDS)
                if unknown:
                    return number, f"no symbol {unknown[0]!r}"
            code = _KS_REASON.search(str(e))
            plain = _KS_REASON.sub("", str(e)).strip().lower()
            return number, plain + (f" {code.group(0)}" if code else "")
    return None


@functools.lru_cache(maxsize=256)
def _assemble(source: str, base: int, equates: tuple[tuple[str, int], ...], name: str) -> Program:
    cleaned, lines, labels = _preprocess(source)
    if len(set(labels)) != len(labels):
        dup = sorted({x for x in labels if labels.count(x) > 1})
        raise AsmError(f"{name}: duplicate labels {dup}")
    if equates:  # as literals: keystone turns an .equ address into a (wrong) RIP-relative one
        values = dict(equates)
        names = re.compile(r"\b(" + "|".join(map(re.escape, values)) + r")\b")

        def subst(text: str) -> str:
            return names.sub(lambda m: f"{values[m.group(1)]:#x}", text)

        cleaned = [subst(ln) for ln in cleaned]
        lines = [_Line(ln.number, subst(ln.text)) for ln in lines]
    text = "\n".join(cleaned) + "\n" + "".join(f".quad {lbl}\n" for lbl in labels)
    ks = keystone.Ks(keystone.KS_ARCH_X86, keystone.KS_MODE_64)
    try:
        # keystone turns an absolute memory operand within +-2 GiB of the assembly address
        # into a RIP-relative one, sometimes with the absolute value as displacement (wrong).
        # Guest code is position-independent apart from such absolutes, so assemble far from
        # both the kernel half and small addresses (gs:[0]) and relocate the symbols; the
        # capstone check below runs at the real base.
        encoding, _ = ks.asm(text, _ASM_BASE)
    except keystone.KsError as e:
        line = _failing_line(cleaned, set(labels))
        if line is None:
            raise AsmError(f"{name}: keystone: {e}") from None
        number, reason = line
        raise AsmError(f"{name}:{number} ({cleaned[number - 1].strip()!r}): keystone: {reason}",
                       number, reason) from None
    if encoding is None:
        raise AsmError(f"{name}: keystone produced nothing")
    raw = bytes(encoding)
    code = raw[:len(raw) - 8 * len(labels)]
    symbols = {lbl: base - _ASM_BASE + int.from_bytes(
                   raw[len(code) + 8 * i:len(code) + 8 * i + 8], "little")
               for i, lbl in enumerate(labels)}
    starts = _check(code, base, lines, name, set(labels))
    return Program(base=base, code=code, symbols=symbols, name=name, starts=starts)


def assemble(source: str, base: int, equates: dict[str, int] | None = None,
             name: str = "<source>") -> Program:
    """Assemble `source` at `base`; cached, so loading the same routine again is free."""
    eq = tuple(sorted((equates or {}).items()))
    return _assemble(source, base, eq, name)
