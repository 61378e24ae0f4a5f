"""The decoder's code image: text bytes at their kernel addresses plus the text-poke records,
applied when the decoder's time passes theirs. Forward: from the start snapshot, applying new
bytes. Backward: from the end snapshot, first undoing every record with its old bytes."""

from __future__ import annotations

from emu.text_poke_record import TextPokeRecord

INSN_MAX = 15  # bytes read for one x86 instruction: the longest there is


class ImageError(ValueError):
    """Text-poke records that do not fit the text they patch: the trace is malformed. `index`
    is the record's position in the sideband (None: the snapshots themselves)."""

    def __init__(self, index: int | None, message: str) -> None:
        super().__init__(message if index is None else f"text-poke record {index}: {message}")
        self.index = index


def check_records(base: int, start: bytes, end: bytes, records: list[TextPokeRecord]) -> None:
    """ImageError unless the records, in sideband order, describe the text from the start
    snapshot to the end one. perf applies a PERF_RECORD_TEXT_POKE's new bytes in time order and
    never reads its old ones (tools/perf/util/machine.c: machine__process_text_poke), so a
    record that lies is decoded silently; the kernel emits each one with the bytes it
    replaces (kernel/events/core.c: perf_event_text_poke, called from text_poke_bp_batch). So:
    times never run backwards (perf requires ordered events); each record lies inside the text
    and replaces as many bytes as it writes; its old bytes are the text at its time (the start
    snapshot plus every record before it); and all of them applied give the end snapshot."""
    if len(start) != len(end):
        raise ImageError(None, f"the start snapshot has {len(start)} bytes of text, the end "
                               f"snapshot {len(end)}")
    mem = bytearray(start)
    last = None
    for i, r in enumerate(records):
        where = f"(tick {r.tick}, addr {r.addr:#x})"
        if last is not None and r.tick < last:
            raise ImageError(i, f"{where}: time runs backwards (the record before is at {last})")
        last = r.tick
        if len(r.old) != len(r.new) or not r.new:
            raise ImageError(i, f"{where}: replaces {len(r.old)} bytes with {len(r.new)}")
        off = r.addr - base
        if off < 0 or off + len(r.new) > len(mem):
            raise ImageError(i, f"{where}: {len(r.new)} bytes outside the text "
                                f"[{base:#x}, {base + len(mem):#x})")
        here = bytes(mem[off:off + len(r.old)])
        if here != r.old:
            raise ImageError(i, f"{where}: old bytes {r.old.hex(' ')}, the text at its time "
                                f"has {here.hex(' ')}")
        mem[off:off + len(r.new)] = r.new
    if mem != end:
        off = next(k for k, (a, b) in enumerate(zip(mem, end, strict=True)) if a != b)
        raise ImageError(None, f"the start snapshot plus the {len(records)} text-poke records "
                               f"is not the end snapshot: at {base + off:#x} they give "
                               f"{mem[off]:02x}, the end snapshot has {end[off]:02x}")


class Image:
    def __init__(self, base: int, text: bytes, records: list[TextPokeRecord],
                 backward: bool = False) -> None:
        self.base = base
        self.mem = bytearray(text)
        self.records = sorted(records, key=lambda r: r.tick)
        self.writes: list[tuple[int, int]] = []  # [addr, end) of every write, in order
        if backward:  # the end snapshot minus every record, newest first
            for r in reversed(self.records):
                self._write(r.addr, r.old)
        self.applied = 0  # records[:applied] are in self.mem

    def copy(self) -> Image:
        other = Image.__new__(Image)
        other.base, other.mem, other.records = self.base, bytearray(self.mem), self.records
        other.applied, other.writes = self.applied, list(self.writes)
        return other

    @property
    def version(self) -> int:
        """Changes with every write, so readers may cache what they decoded (`writes` says
        what changed since their version)."""
        return len(self.writes)

    def _write(self, addr: int, data: bytes) -> None:
        off = addr - self.base
        if off < 0 or off + len(data) > len(self.mem):
            raise ImageError(None, f"text-poke record at {addr:#x} is outside the image")
        self.mem[off:off + len(data)] = data
        self.writes.append((addr, addr + len(data)))

    def advance(self, time: int) -> None:
        """Apply every record emitted before `time`."""
        while self.applied < len(self.records) and self.records[self.applied].tick < time:
            r = self.records[self.applied]
            self._write(r.addr, r.new)
            self.applied += 1

    def read(self, ip: int, n: int = INSN_MAX) -> bytes:
        off = ip - self.base
        if not 0 <= off < len(self.mem):
            return b""
        return bytes(self.mem[off:off + n])

    def settled(self, hi: int) -> bool:
        """No record left to apply is within the window ending at `hi` (after `advance`):
        every byte is certain."""
        return self.applied == len(self.records) or self.records[self.applied].tick > hi

    def uncertain(self, lo: int, hi: int, ip: int, n: int = INSN_MAX) -> list[TextPokeRecord]:
        """Records not yet applied whose time is within [lo, hi] and which touch [ip, ip+n)."""
        out = []
        for r in self.records[self.applied:]:
            if r.tick > hi:
                break
            if r.tick >= lo and r.addr < ip + n and ip < r.addr + len(r.new):
                out.append(r)
        return out

    def read_with(self, ip: int, n: int, extra: list[TextPokeRecord]) -> bytes:
        data = bytearray(self.read(ip, n))
        for r in extra:
            for k, b in enumerate(r.new):
                pos = r.addr + k - ip
                if 0 <= pos < len(data):
                    data[pos] = b
        return bytes(data)
