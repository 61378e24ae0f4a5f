"""The guest's data structures, each declared once.

Guest code (guest_code/*.S) and the harness that builds its initial data must agree on every
offset and size; an offset written twice drifts (the kprobe walk once stepped 32 bytes through
64-byte entries, so a second kprobe was never found). So each structure is declared here as a
typed list of fields with C's layout rules, and both sides are generated from the declaration:
the assembly equates (`TPL_LEN`, `KPROBE_SIZE`, ...) that harness/scenario/guest.py passes to the
assembler, and the `struct` format the harness packs initial data with.

Where the kernel has the structure, the declaration follows Linux 5.15 and says where the
guest's differs (absolute u64 addresses instead of the kernel's relative s32 ones, for one).
"""

from __future__ import annotations

import enum
import struct
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from emu import layout


class Scalar(enum.Enum):
    """A C scalar: its `struct` code and size (its alignment too, as on x86-64)."""

    U8 = ("B", 1)
    S32 = ("i", 4)
    U32 = ("I", 4)
    U64 = ("Q", 8)

    def __init__(self, code: str, size: int) -> None:
        self.code = code
        self.size = size


@dataclass(frozen=True)
class Field:
    """One member: a scalar, an array of scalars (`count`), or an embedded structure."""

    name: str
    kind: Scalar | Struct
    count: int = 1

    @property
    def align(self) -> int:
        return self.kind.align if isinstance(self.kind, Struct) else self.kind.size

    @property
    def size(self) -> int:
        return self.kind.size * self.count


@dataclass(frozen=True)
class Struct:
    """A C structure with x86-64 layout: each member at its natural alignment (none when
    `packed`), the size rounded up to the largest alignment, or padded to `size_to`."""

    cname: str  # the C name, for messages and docs
    prefix: str  # the equates' prefix: <prefix>_<FIELD> offsets, <prefix>_SIZE
    fields: tuple[Field, ...]
    packed: bool = False
    size_to: int = 0
    offsets: Mapping[str, int] = field(init=False, repr=False, compare=False)
    size: int = field(init=False, compare=False)
    align: int = field(init=False, compare=False)

    def __post_init__(self) -> None:
        offsets: dict[str, int] = {}
        cursor, align = 0, 1
        for f in self.fields:
            if f.name in offsets:
                raise ValueError(f"struct {self.cname}: duplicate field {f.name}")
            a = 1 if self.packed else f.align
            cursor += -cursor % a
            offsets[f.name] = cursor
            cursor += f.size
            align = max(align, a)
        cursor += -cursor % align
        if self.size_to:
            if self.size_to < cursor or self.size_to % align:
                raise ValueError(f"struct {self.cname}: {cursor} bytes do not pad to "
                                 f"{self.size_to}")
            cursor = self.size_to
        object.__setattr__(self, "offsets", offsets)
        object.__setattr__(self, "size", cursor)
        object.__setattr__(self, "align", align)

    def offset(self, name: str) -> int:
        try:
            return self.offsets[name]
        except KeyError:
            raise KeyError(f"struct {self.cname} has no field {name!r}") from None

    def equates(self) -> dict[str, int]:
        """<PREFIX>_<FIELD> for every member's offset, <PREFIX>_SIZE for the size."""
        out = {f"{self.prefix}_{f.name.upper()}": self.offsets[f.name] for f in self.fields}
        return out | {f"{self.prefix}_SIZE": self.size}

    @property
    def format(self) -> str:
        """The `struct` format of the whole structure, padding included ('x')."""
        parts, cursor = ["<"], 0
        for f in self.fields:
            off = self.offsets[f.name]
            if off > cursor:
                parts.append(f"{off - cursor}x")
            if isinstance(f.kind, Struct) or f.kind is Scalar.U8 and f.count > 1:
                parts.append(f"{f.size}s")  # bytes: an embedded structure or a u8 array
            else:
                parts.append(f"{f.count}{f.kind.code}" if f.count > 1 else f.kind.code)
            cursor = off + f.size
        if self.size > cursor:
            parts.append(f"{self.size - cursor}x")
        return "".join(parts)

    def pack(self, **values: int | bytes | Sequence[int]) -> bytes:
        """The structure's bytes; members not given are zero."""
        unknown = set(values) - set(self.offsets)
        if unknown:
            raise TypeError(f"struct {self.cname} has no field {sorted(unknown)[0]!r}")
        args: list[object] = []
        for f in self.fields:
            v = values.get(f.name)
            if isinstance(f.kind, Struct) or f.kind is Scalar.U8 and f.count > 1:
                raw = bytes(v) if v is not None else b""  # type: ignore[arg-type]
                if len(raw) > f.size:
                    raise ValueError(f"{self.cname}.{f.name}: {len(raw)} bytes > {f.size}")
                args.append(raw)
            elif f.count > 1:
                seq = list(v) if v is not None else []  # type: ignore[arg-type]
                args += seq + [0] * (f.count - len(seq))
            else:
                args.append(v or 0)
        return struct.pack(self.format, *args)

    def unpack(self, raw: bytes) -> dict[str, int | bytes | tuple[int, ...]]:
        """Each member's value from the structure's bytes (for checks on guest memory)."""
        flat = list(struct.unpack(self.format, raw[:self.size]))
        out: dict[str, int | bytes | tuple[int, ...]] = {}
        for f in self.fields:
            if isinstance(f.kind, Struct) or f.kind is Scalar.U8 and f.count > 1 or f.count == 1:
                out[f.name] = flat.pop(0)
            else:
                out[f.name] = tuple(flat.pop(0) for _ in range(f.count))
        return out


def u64s(*names: str) -> tuple[Field, ...]:
    return tuple(Field(n, Scalar.U64) for n in names)


# ------------------------------------------------------------------ text patching
POKE_MAX_OPCODE_SIZE = 5


class Insn(enum.IntEnum):
    """The instructions text_poke_bp() emulates, by opcode (arch/x86/include/asm/
    text-patching.h: <NAME>_INSN_OPCODE); equates <NAME>_INSN_OPCODE and <NAME>_INSN_SIZE."""

    INT3 = 0xCC
    RET = 0xC3
    CALL = 0xE8
    JMP32 = 0xE9
    JMP8 = 0xEB

    @property
    def size(self) -> int:
        return {Insn.INT3: 1, Insn.RET: 1, Insn.CALL: 5, Insn.JMP32: 5, Insn.JMP8: 2}[self]


# arch/x86/kernel/alternative.c (5.15): struct text_poke_loc, addr := _stext + rel_addr.
TEXT_POKE_LOC = Struct("text_poke_loc", "TPL", (
    Field("rel_addr", Scalar.S32), Field("disp", Scalar.S32), Field("len", Scalar.U8),
    Field("opcode", Scalar.U8), Field("text", Scalar.U8, POKE_MAX_OPCODE_SIZE),
    Field("old", Scalar.U8)))

# union text_poke_insn: the 5 bytes of a CALL / JMP32, opcode then rel32 (packed).
TEXT_POKE_INSN = Struct("text_poke_insn", "TPI", (
    Field("opcode", Scalar.U8), Field("disp", Scalar.S32)), packed=True)

# struct bp_patching_desc: the batch the INT3 handler consults. Its references are not in it:
# since 2025 they are per CPU (DEFINE_PER_CPU(atomic_t, bp_refs), V_BP_REFS in scenario/guest.py).
BP_PATCHING_DESC = Struct("bp_patching_desc", "BPD", u64s("vec", "nr_entries"))

# The one-site building blocks of guest_code/users.S: a text_poke_loc and the site's old bytes
# (for the text-poke record), on the caller's stack.
POKE_STEPS = Struct("poke_steps", "PS", (
    Field("tp", TEXT_POKE_LOC), Field("old", Scalar.U8, 8)))

# ------------------------------------------------------------------ the users
# struct jump_entry, with absolute addresses (the kernel's are s32 relative to the entry):
# the site, where it jumps when enabled, and its key.
JUMP_ENTRY = Struct("jump_entry", "JUMP", u64s("code", "target", "key"))

# struct static_call_site, absolute as above: the CALL and its key.
STATIC_CALL_SITE = Struct("static_call_site", "SCS", u64s("addr", "key"))

# struct static_key (the enabled count) and struct static_call_key (the current function):
# one V_KEYS slot each, as the guest has only these members.
STATIC_KEY = Struct("static_key", "KEY", u64s("enabled"))
STATIC_CALL_KEY = Struct("static_call_key", "SCK", u64s("func"))
KEY_SLOT = max(STATIC_KEY.size, STATIC_CALL_KEY.size)

# A kprobe as the guest has it (a few members of struct kprobe and struct optimized_kprobe):
# the probed address, the instruction slot an INT3 hit resumes in, armed, the hit count, the
# optimized detour buffer, the original first byte (kprobe.opcode) and the copied tail of the
# region the JMP32 covers. Padded to a cache line, one per kprobe.
KPROBE = Struct("kprobe", "KPROBE", (
    *u64s("addr", "slot", "armed", "hits", "detour"), Field("opcode", Scalar.U8),
    Field("copied", Scalar.U8, 4)), size_to=64)

# ------------------------------------------------------------------ CPUs and exceptions
# The per-CPU area GS_BASE points at (emu/layout.py PERCPU_*; emu/loader.py: load fills it): the
# CPU's number (smp_processor_id()) and its stack top.
PERCPU = Struct("percpu", "PERCPU", u64s("cpu", "stack_top"), size_to=layout.PERCPU_SIZE)

# The hardware interrupt frame, as in the tail of struct pt_regs.
IRET_FRAME = Struct("iret_frame", "FRAME", u64s("ip", "cs", "flags", "sp", "ss"))

# What int3_entry pushes below the frame (lowest address first) before it calls the handlers.
INT3_REGS = Struct("int3_regs", "INT3_REGS", (
    *u64s("r11", "r10", "r9", "r8", "rdi", "rsi", "rdx", "rcx", "rax"),
    Field("frame", IRET_FRAME)))

# Z1's preemption: one per CPU, the preempted task's frame and scratch registers.
TASK_SLOT = Struct("task_slot", "TASK", (
    Field("in_idle", Scalar.U64), Field("frame", IRET_FRAME), *u64s("rcx", "rdx", "rax")))

# ------------------------------------------------------------------ scenario scratch (V_SCRATCH)
# int3_selftest(): the text_poke_loc of the emulated CALL and the `val` int3_magic() sets.
INT3_SELFTEST = Struct("int3_selftest", "I3ST", (
    Field("tp", TEXT_POKE_LOC), Field("val", Scalar.U64)))

# Z7: the trampoline image's users (percpu_ref), the traced function's first-call flag, the
# sleeper's state and its wake-up.
TRAMPOLINE = Struct("trampoline", "TRAMP", u64s("users", "called", "asleep", "wake"))

STRUCTS: tuple[Struct, ...] = (
    TEXT_POKE_LOC, TEXT_POKE_INSN, BP_PATCHING_DESC, POKE_STEPS, JUMP_ENTRY, STATIC_CALL_SITE,
    STATIC_KEY, STATIC_CALL_KEY, KPROBE, PERCPU, IRET_FRAME, INT3_REGS, TASK_SLOT,
    INT3_SELFTEST, TRAMPOLINE)


def equates(structs: Iterable[Struct] = STRUCTS) -> dict[str, int]:
    """Every structure's field offsets and size, and the emulated instructions' opcodes and
    sizes, for the assembler."""
    out: dict[str, int] = {}
    for insn in Insn:
        out |= {f"{insn.name}_INSN_OPCODE": int(insn), f"{insn.name}_INSN_SIZE": insn.size}
    for s in structs:
        for name, value in s.equates().items():
            if name in out:
                raise ValueError(f"equate {name} declared twice (struct {s.cname})")
            out[name] = value
    return out
