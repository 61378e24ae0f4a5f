"""Intel's libipt 2.0.5 (Debian `libipt2`) through ctypes: its instruction-flow (`pt_insn`) and
block (`pt_blk`) decoders over one CPU's stream, the memory served by a callback from the start
text with the text-poke records applied at their times as perf applies them.

Layouts from libipt v2.0.5 `libipt/include/intel-pt.h.in` (the installed `intel-pt.h`; the
library ships no Python binding and Debian no header with `libipt2`):

    struct pt_config  280 bytes: size_t size; uint8_t *begin, *end; ... (zeroed otherwise, as
                      pt_config_init does: no errata, no MTC/CYC calibration)
    struct pt_insn    40 bytes: u64 ip; int isid; enum mode; enum iclass; u8 raw[15]; u8 size;
                      u32 speculative:1, truncated:1
    struct pt_block   48 bytes: u64 ip, end_ip; int isid; enum mode; enum iclass; u16 ninsn;
                      u8 raw[15]; u8 size; then the bit-fields in byte 46 (they share a storage
                      unit with raw and size: ctypes bit-fields would misplace them)
    struct pt_event   64 bytes: enum type; u32 flags; u64 tsc; u32 lost_mtc, lost_cyc;
                      u64 reserved[2]; the variant at offset 40 (async_branch: u64 from, to)

When a record applies: perf decodes every CPU's queue until it produced a sample at or after
the record's time, then writes the new bytes into its copy of the text
(tools/perf/util/intel-pt.c: intel_pt_process_event, intel_pt_text_poke; machine.c:
machine__process_text_poke). Here, before each `pt_insn_next`/`pt_blk_next`, every record
whose time is at or before the decoder's time (`pt_insn_time`: the last timing packet
consumed) is applied. libipt reads memory through the callback afresh for every instruction
(it caches decoded blocks for file sections only), so an applied record takes effect at once."""

from __future__ import annotations

import ctypes
import ctypes.util
from dataclasses import dataclass, field
from enum import IntEnum
from typing import NamedTuple

from emu.text_poke_record import TextPokeRecord
from harness.trace.pt.insn import Cls, classify

LIBRARY = "libipt.so.2"
CONFIG_SIZE = 280
INSN_SIZE = 40
BLOCK_SIZE = 48
EVENT_SIZE = 64
MAX_INSN = 15


class Pte(IntEnum):
    """enum pt_error_code (the negated return values)."""

    OK = 0
    INTERNAL = 1
    INVALID = 2
    NOSYNC = 3
    BAD_OPC = 4
    BAD_PACKET = 5
    BAD_CONTEXT = 6
    EOS = 7
    BAD_QUERY = 8
    NOMEM = 9
    BAD_CONFIG = 10
    NOIP = 11
    IP_SUPPRESSED = 12
    NOMAP = 13
    BAD_INSN = 14
    NO_TIME = 15
    NO_CBR = 16
    BAD_IMAGE = 17
    BAD_LOCK = 18
    NOT_SUPPORTED = 19
    RETSTACK_EMPTY = 20
    BAD_RETCOMP = 21
    BAD_STATUS_UPDATE = 22
    NO_ENABLE = 23
    EVENT_IGNORED = 24


class Pts(IntEnum):
    """enum pt_status_flag."""

    EVENT_PENDING = 1 << 0
    IP_SUPPRESSED = 1 << 1
    EOS = 1 << 2


class Ptev(IntEnum):
    """enum pt_event_type (the ones a run's trace holds)."""

    ENABLED = 0
    DISABLED = 1
    ASYNC_DISABLED = 2
    ASYNC_BRANCH = 3


class Flavour(IntEnum):
    """Which of libipt's two flow decoders."""

    INSN = 0  # pt_insn: one instruction at a time
    BLOCK = 1  # pt_blk: runs of sequential instructions


@dataclass(frozen=True)
class LibiptMissing:
    """libipt could not be loaded: the reason, said plainly, in place of a binding."""

    reason: str

    def __str__(self) -> str:
        return f"libipt is not available ({self.reason}; Debian: apt-get install libipt2)"


@dataclass(frozen=True)
class LibiptError:
    """An error libipt reported: its code, its message, and where (packet offset, IP)."""

    code: Pte
    message: str
    offset: int
    ip: int | None

    def __str__(self) -> str:
        at = f", ip {self.ip:#x}" if self.ip is not None else ""
        return f"libipt {self.code.name.lower()} ({self.message}) at offset {self.offset:#x}{at}"


class Step(NamedTuple):
    """An instruction, or an asynchronous branch at `ip` (code b""), and the packet offset the
    decoder was at."""

    ip: int
    code: bytes
    offset: int


@dataclass
class Decoded:
    """One stream's decoding: the steps, in order, and the error that ended it, if any."""

    steps: list[Step] = field(default_factory=list)
    error: LibiptError | None = None
    ended: bool = False  # tracing was disabled (TIP.PGD) and the stream ran out


_READ_MEMORY = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.POINTER(ctypes.c_uint8), ctypes.c_size_t,
                                ctypes.c_void_p, ctypes.c_uint64, ctypes.c_void_p)


class Libipt:
    """The loaded library, its functions typed."""

    def __init__(self, lib: ctypes.CDLL) -> None:
        self.lib = lib
        vp, i, u64p = ctypes.c_void_p, ctypes.c_int, ctypes.POINTER(ctypes.c_uint64)
        sig = {"pt_errstr": (ctypes.c_char_p, [i]),
               "pt_image_alloc": (vp, [ctypes.c_char_p]),
               "pt_image_free": (None, [vp]),
               "pt_image_set_callback": (i, [vp, _READ_MEMORY, vp])}
        for p in ("pt_insn", "pt_blk"):
            sig |= {f"{p}_alloc_decoder": (vp, [vp]), f"{p}_free_decoder": (None, [vp]),
                    f"{p}_sync_forward": (i, [vp]), f"{p}_set_image": (i, [vp, vp]),
                    f"{p}_next": (i, [vp, vp, ctypes.c_size_t]),
                    f"{p}_event": (i, [vp, vp, ctypes.c_size_t]),
                    f"{p}_time": (i, [vp, u64p, vp, vp]),
                    f"{p}_get_offset": (i, [vp, u64p])}
        for name, (res, args) in sig.items():
            fn = getattr(lib, name)
            fn.restype, fn.argtypes = res, args

    def errstr(self, code: int) -> str:
        return self.lib.pt_errstr(code).decode()


def load() -> Libipt | LibiptMissing:
    """The library, or why not (no exception: a missing tool is a value the caller reports)."""
    try:
        return Libipt(ctypes.CDLL(LIBRARY))
    except OSError as e:
        return LibiptMissing(str(e))
    except AttributeError as e:  # another libipt without these functions
        return LibiptMissing(f"{LIBRARY} lacks a function: {e}")


class _Memory:
    """The text as the decoder reads it: the start snapshot with the records applied in time
    order, up to the decoder's time."""

    def __init__(self, base: int, text: bytes, records: list[TextPokeRecord]) -> None:
        self.base = base
        self.text = bytearray(text)
        self.pending = sorted(records, key=lambda r: r.tick)  # stable: emission order kept
        self.next = 0

    def advance(self, time: int) -> None:
        while self.next < len(self.pending) and self.pending[self.next].tick <= time:
            r = self.pending[self.next]
            at = r.addr - self.base
            if 0 <= at and at + len(r.new) <= len(self.text):  # perf ignores one off its map
                self.text[at:at + len(r.new)] = r.new
            self.next += 1

    def read(self, buf, size: int, _asid, ip: int, _ctx) -> int:
        at = ip - self.base
        if not 0 <= at < len(self.text):
            return -Pte.NOMAP
        n = min(size, len(self.text) - at)
        ctypes.memmove(buf, bytes(self.text[at:at + n]), n)
        return n


def decode(ipt: Libipt, stream: bytes, base: int, text: bytes,
           records: list[TextPokeRecord], max_steps: int,
           flavour: Flavour = Flavour.INSN) -> Decoded:
    """Decode one CPU's stream with libipt over `text` at `base` (the start snapshot) with the
    records applied at their times; stops at the first error or after `max_steps` steps."""
    lib, p = ipt.lib, "pt_insn" if flavour is Flavour.INSN else "pt_blk"
    fn = {n: getattr(lib, f"{p}_{n}") for n in ("alloc_decoder", "free_decoder", "sync_forward",
                                                "set_image", "next", "event", "time",
                                                "get_offset")}
    buf = (ctypes.c_uint8 * max(len(stream), 1)).from_buffer_copy(stream or b"\0")
    config = (ctypes.c_uint8 * CONFIG_SIZE)()
    ctypes.c_size_t.from_buffer(config, 0).value = CONFIG_SIZE
    ctypes.c_void_p.from_buffer(config, 8).value = ctypes.addressof(buf)
    ctypes.c_void_p.from_buffer(config, 16).value = ctypes.addressof(buf) + len(stream)
    memory = _Memory(base, text, records)
    callback = _READ_MEMORY(memory.read)  # kept alive until the decoder is freed
    image = lib.pt_image_alloc(b"text")
    dec = fn["alloc_decoder"](ctypes.addressof(config))
    out = Decoded()
    try:
        if not dec or not image:
            out.error = LibiptError(Pte.NOMEM, "could not allocate a decoder", 0, None)
            return out
        lib.pt_image_set_callback(image, callback, None)
        fn["set_image"](dec, image)
        _walk(ipt, fn, dec, memory, out, max_steps, flavour)
    finally:
        if dec:
            fn["free_decoder"](dec)
        if image:
            lib.pt_image_free(image)
    return out


def _walk(ipt: Libipt, fn: dict, dec: int, memory: _Memory, out: Decoded, max_steps: int,
          flavour: Flavour) -> None:
    item = (ctypes.c_uint8 * (INSN_SIZE if flavour is Flavour.INSN else BLOCK_SIZE))()
    event = (ctypes.c_uint8 * EVENT_SIZE)()
    offset, time = ctypes.c_uint64(), ctypes.c_uint64()
    u64 = ctypes.c_uint64.from_buffer

    def fail(status: int, ip: int | None) -> None:
        fn["get_offset"](dec, ctypes.byref(offset))
        try:
            code = Pte(-status)
        except ValueError:  # a code newer than 2.0.5's
            code = Pte.INTERNAL
        out.error = LibiptError(code, ipt.errstr(-status), offset.value, ip)

    status = fn["sync_forward"](dec)
    last_ip: int | None = None
    while len(out.steps) < max_steps:
        if status < 0:
            if status != -Pte.EOS or not out.ended:  # eos before tracing was disabled: cut
                fail(status, last_ip)
            return
        while status & Pts.EVENT_PENDING:
            status = fn["event"](dec, event, EVENT_SIZE)
            if status < 0:
                fail(status, last_ip)
                return
            kind = ctypes.c_int.from_buffer(event, 0).value
            if kind == Ptev.ASYNC_BRANCH:
                fn["get_offset"](dec, ctypes.byref(offset))
                out.steps.append(Step(u64(event, 40).value, b"", offset.value))
            elif kind in (Ptev.DISABLED, Ptev.ASYNC_DISABLED):
                out.ended = True
        if status & Pts.EOS:
            return
        if fn["time"](dec, ctypes.byref(time), None, None) >= 0:
            memory.advance(time.value)
        ctypes.memset(item, 0, len(item))  # pt_*_next may return early, leaving it stale
        status = fn["next"](dec, item, len(item))
        if status < 0:
            continue
        fn["get_offset"](dec, ctypes.byref(offset))
        if flavour is Flavour.INSN:
            ip = u64(item, 0).value
            size = item[35]
            out.steps.append(Step(ip, bytes(item[20:20 + size]), offset.value))
            last_ip = ip
        else:
            _block_steps(memory, item, offset.value, out)
            last_ip = u64(item, 8).value
            if out.error is not None:
                return


def _block_steps(memory: _Memory, block, offset: int, out: Decoded) -> None:
    """A block's instructions, one step each: libipt gives the first and the last IP and the
    count; the instructions between need no trace (sequential, or direct JMP/CALL, which a
    block follows), so they come from the text the block was decoded over (raw and size are
    valid only for a truncated block)."""
    ip = ctypes.c_uint64.from_buffer(block, 0).value
    end_ip = ctypes.c_uint64.from_buffer(block, 8).value
    ninsn = ctypes.c_uint16.from_buffer(block, 28).value
    last = None
    for _ in range(ninsn):
        at = ip - memory.base
        code = bytes(memory.text[at:at + MAX_INSN])
        insn = classify(code)
        size = insn.size if insn is not None else 1
        out.steps.append(Step(ip, code[:size], offset))
        last = ip
        ip += size + (insn.rel if insn is not None and insn.cls in (Cls.JMP, Cls.CALL) else 0)
    if last is not None and last != end_ip:  # the rebuild is not libipt's block: say so
        out.error = LibiptError(Pte.INTERNAL, f"pt_blk's block ends at {end_ip:#x}, its "
                                f"{ninsn} instructions rebuilt from the text end at "
                                f"{last:#x}", offset, last)
