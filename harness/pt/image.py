"""The decoder's code image: text bytes at their kernel addresses plus the text-poke records,
applied when the decoder's time passes theirs. Forward: from the start snapshot, applying new
bytes. Backward: from the end snapshot, first undoing every record with its old bytes."""

from __future__ import annotations

from emu.text_poke_record import TextPokeRecord

INSN_MAX = 15  # bytes read for one x86 instruction: the longest there is


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
            raise ValueError(f"text-poke record at {addr:#x} is outside the image")
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
