"""PERF_RECORD_TEXT_POKE in the kernel's binary layout (include/uapi/linux/perf_event.h;
kernel/events/core.c: perf_event_text_poke), with sample_id for sample_type TID|TIME|CPU:

    struct perf_event_header { u32 type = 20; u16 misc = PERF_RECORD_MISC_KERNEL; u16 size; }
    u64 addr; u16 old_len; u16 new_len; u8 bytes[old_len + new_len]; u8 pad[] (to 8 bytes)
    struct sample_id { u32 pid, tid; u64 time; u32 cpu, res; }
"""

from __future__ import annotations

import struct

from emu.text_poke_record import TextPokeRecord

PERF_RECORD_TEXT_POKE = 20
PERF_RECORD_MISC_KERNEL = 1
HEADER = struct.Struct("<IHH")
SAMPLE_ID = struct.Struct("<IIQII")


class SidebandError(Exception):
    def __init__(self, offset: int, message: str) -> None:
        super().__init__(f"sideband offset {offset:#x}: {message}")
        self.offset = offset


def encode(rec: TextPokeRecord, identifier: int | None = None) -> bytes:
    """One record; pid and tid are 0, the kernel's idle task, since the guest has no tasks.
    With `identifier` (sample_type with PERF_SAMPLE_IDENTIFIER, as perf.data has it) the
    sample_id ends with that event id."""
    body = struct.pack("<QHH", rec.addr, len(rec.old), len(rec.new)) + rec.old + rec.new
    tot = 4 + len(rec.old) + len(rec.new)
    body += b"\0" * ((-tot) % 8)
    sample = SAMPLE_ID.pack(0, 0, rec.tick, rec.cpu, 0)
    if identifier is not None:
        sample += struct.pack("<Q", identifier)
    size = HEADER.size + len(body) + len(sample)
    return HEADER.pack(PERF_RECORD_TEXT_POKE, PERF_RECORD_MISC_KERNEL, size) + body + sample


def decode(buf: bytes) -> list[TextPokeRecord]:
    out = []
    pos = 0
    while pos < len(buf):
        if pos + HEADER.size > len(buf):
            raise SidebandError(pos, "truncated record header")
        rtype, misc, size = HEADER.unpack_from(buf, pos)
        if rtype != PERF_RECORD_TEXT_POKE:
            raise SidebandError(pos, f"record type {rtype}, not PERF_RECORD_TEXT_POKE (20)")
        if size < HEADER.size + 12 + SAMPLE_ID.size or pos + size > len(buf):
            raise SidebandError(pos, f"bad record size {size}")
        addr, old_len, new_len = struct.unpack_from("<QHH", buf, pos + 8)
        tot = 4 + old_len + new_len
        if HEADER.size + 8 + tot + (-tot) % 8 + SAMPLE_ID.size != size:
            raise SidebandError(pos, f"size {size} does not fit old_len {old_len} and new_len "
                                     f"{new_len}")
        data = buf[pos + 20:pos + 20 + old_len + new_len]
        _pid, _tid, time, cpu, _res = SAMPLE_ID.unpack_from(buf, pos + size - SAMPLE_ID.size)
        out.append(TextPokeRecord(time, cpu, addr, data[:old_len], data[old_len:]))
        pos += size
    return out
