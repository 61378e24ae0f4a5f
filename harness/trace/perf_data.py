"""A run as `perf.data`: what `perf record --kcore -e intel_pt//k` would have written, so that
`perf script -i DIR/perf.data --vmlinux DIR/vmlinux --itrace=i0ns` decodes every CPU's PT
stream over the guest's text with the text-poke records applied at their times.

Layouts from the kernel and perf (tools/perf/Documentation/perf.data-file-format.txt;
include/uapi/linux/perf_event.h of Linux 6.1; tools/perf/util/intel-pt.h for the
AUXTRACE_INFO words), in file order:

    struct perf_file_header  magic PERFILE2, sizes, attrs/data/event_types sections, features
    struct perf_file_attr    { struct perf_event_attr attr (PERF_ATTR_SIZE_VER7 = 128);
                               struct perf_file_section ids; }, then the ids
    data: PERF_RECORD_AUXTRACE_INFO, PERF_RECORD_MMAP of the kernel text,
          PERF_RECORD_TEXT_POKE per record (harness/trace/sideband.py, with the event id:
          sample_type has PERF_SAMPLE_IDENTIFIER, without which perf 6.1 cannot tell a
          record's event from the `instructions` event it synthesizes and fails "Bad address"),
          per CPU one PERF_RECORD_AUXTRACE followed by its PT bytes, PERF_RECORD_FINISHED_ROUND
    feature sections: HEADER_NRCPUS (so that `perf script -C N` works)

Time: perf time is the virtual TSC itself (TIME_SHIFT 0, TIME_MULT 1, TIME_ZERO 0 with
CAP_USER_TIME_ZERO set: perf_time_to_tsc is the identity), so a record's sample time is the
tick its CPU emitted it at, the value its TSC packets carry. The traps that make perf decode
silently wrongly (a timeless decoding, a wrong AUXTRACE reference) are avoided here; see
/work/shared/reference/perf-data.md."""

from __future__ import annotations

import struct
from dataclasses import dataclass
from enum import IntEnum, IntFlag

from emu import layout
from emu.text_poke_record import TextPokeRecord

from . import sideband
from .pt.packets import TscPacket, iter_packets

MAGIC = b"PERFILE2"
FILE_HEADER = struct.Struct("<8sQQ QQ QQ QQ 32s")  # perf_file_header: 104 bytes
ATTR = struct.Struct("<IIQQQQQIIQQQQIiQIHHIIQ")  # perf_event_attr, PERF_ATTR_SIZE_VER7
SECTION = struct.Struct("<QQ")  # perf_file_section: offset, size
HEADER = sideband.HEADER  # perf_event_header: type, misc, size
SAMPLE_ID = sideband.SAMPLE_ID  # sample_id_all for TID|TIME|CPU: pid, tid, time, cpu, res
AUXTRACE = struct.Struct("<QQQIIII")  # size, offset, reference, idx, tid, cpu, reserved
ATTR_ID = 42  # the one event's id (intel_pt_evsel() needs the evsel to have one)
PMU_TYPE = 8  # intel_pt's PMU type number; any value equal in attr.type and priv[PMU_TYPE]


class Record(IntEnum):
    """perf_event_type (include/uapi/linux/perf_event.h) and perf's user types
    (tools/lib/perf/include/perf/event.h)."""

    MMAP = 1
    TEXT_POKE = sideband.PERF_RECORD_TEXT_POKE
    FINISHED_ROUND = 68
    AUXTRACE_INFO = 70
    AUXTRACE = 71


class SampleType(IntFlag):
    IP = 1 << 0
    TID = 1 << 1
    TIME = 1 << 2
    ADDR = 1 << 3
    CPU = 1 << 7
    IDENTIFIER = 1 << 16  # perf finds a record's event by it once it adds its own events


class AttrFlag(IntFlag):
    """The perf_event_attr bit-field word (offset 40)."""

    DISABLED = 1 << 0
    EXCLUDE_USER = 1 << 4
    SAMPLE_ID_ALL = 1 << 18  # without it: "Intel Processor Trace requires ordered events"
    TEXT_POKE = 1 << 33


class PtConfig(IntFlag):
    """attr.config of intel_pt (/sys/bus/event_source/devices/intel_pt/format)."""

    PT = 1 << 0
    TSC = 1 << 10  # without it perf decodes "timeless": every poke applied before decoding
    NORETCOMP = 1 << 11
    BRANCH = 1 << 13  # without it FUPs are no branches to perf


class Priv(IntEnum):
    """AUXTRACE_INFO priv[] indices (tools/perf/util/intel-pt.h: enum INTEL_PT_...)."""

    PMU_TYPE = 0
    TIME_SHIFT = 1
    TIME_MULT = 2
    TIME_ZERO = 3
    CAP_USER_TIME_ZERO = 4
    TSC_BIT = 5
    NORETCOMP_BIT = 6
    HAVE_SCHED_SWITCH = 7
    SNAPSHOT_MODE = 8
    PER_CPU_MMAPS = 9
    MTC_BIT = 10
    MTC_FREQ_BITS = 11
    TSC_CTC_N = 12
    TSC_CTC_D = 13
    CYC_BIT = 14
    MAX_NONTURBO_RATIO = 15
    FILTER_STR_LEN = 16


PERF_AUXTRACE_INTEL_PT = 1
HEADER_NRCPUS = 7  # feature bit (tools/perf/util/header.h: HEADER_NRCPUS)
KERNEL_MAP = "[kernel.kallsyms]_text"  # machine__process_kernel_mmap_event: ref symbol `_text`


@dataclass(frozen=True)
class Trace:
    """What a perf.data file holds for one run: per CPU its PT stream, the text-poke records,
    and the kernel text's extent (the MMAP record)."""

    streams: list[bytes]
    records: list[TextPokeRecord]
    text_size: int
    end_tick: int  # the last tick of the run: each AUXTRACE record's reference


def _record(rtype: Record, body: bytes, misc: int = 0) -> bytes:
    return HEADER.pack(rtype, misc, HEADER.size + len(body)) + body


def _auxtrace_info() -> bytes:
    priv = [0] * len(Priv)
    priv[Priv.PMU_TYPE] = PMU_TYPE
    priv[Priv.TIME_MULT] = 1
    priv[Priv.CAP_USER_TIME_ZERO] = 1
    priv[Priv.TSC_BIT] = PtConfig.TSC
    priv[Priv.NORETCOMP_BIT] = PtConfig.NORETCOMP
    priv[Priv.PER_CPU_MMAPS] = 1
    priv[Priv.MTC_BIT], priv[Priv.MTC_FREQ_BITS] = 0x200, 0x3C000
    priv[Priv.TSC_CTC_N], priv[Priv.TSC_CTC_D], priv[Priv.CYC_BIT] = 2, 1, 0x2
    return _record(Record.AUXTRACE_INFO,
                   struct.pack("<II", PERF_AUXTRACE_INTEL_PT, 0)
                   + struct.pack(f"<{len(priv)}Q", *priv))


def _mmap(text_size: int) -> bytes:
    """The kernel text map (struct perf_record_mmap): pid -1, tid 0, pgoff = `_text`, at time 0,
    before every sample."""
    name = KERNEL_MAP.encode() + b"\0"
    name += bytes((-len(name)) % 8)
    body = struct.pack("<iiQQQ", -1, 0, layout.TEXT_BASE, text_size, layout.TEXT_BASE) + name
    return _record(Record.MMAP, body + SAMPLE_ID.pack(0xFFFFFFFF, 0, 0, 0, 0)
                   + struct.pack("<Q", ATTR_ID), sideband.PERF_RECORD_MISC_KERNEL)


def _first_tsc_nonzero(stream: bytes) -> bytes:
    """The stream with a first TSC packet of 0 made 1. perf 6.1 takes a timestamp of 0 for
    "none" and crashes (SIGSEGV) decoding a buffer that starts at TSC 0, as a run's trace does
    (its first PSB+ precedes tick 1). Tick 0 holds no instruction and no record, so 1 places
    everything as 0 did."""
    for off, pkt in iter_packets(stream):
        if isinstance(pkt, TscPacket):
            if pkt.tsc == 0:
                return stream[:off + 1] + (1).to_bytes(7, "little") + stream[off + 8:]
            break
    return stream


def _auxtrace(cpu: int, stream: bytes, reference: int) -> bytes:
    """One CPU's whole stream as one AUX buffer of queue `cpu`, padded to 8 bytes with PAD
    packets (perf's __auxtrace_mmap__read pads the same way). `reference` gives perf TSC bits
    63:56 for the buffer's first TSC packet; 0 crashes perf 6.1, so it is never 0."""
    data = _first_tsc_nonzero(stream)
    data += bytes((-len(data)) % 8)
    head = AUXTRACE.pack(len(data), 0, reference, cpu, 0xFFFFFFFF, cpu, 0)
    return HEADER.pack(Record.AUXTRACE, 0, HEADER.size + AUXTRACE.size) + head + data


def write(trace: Trace) -> bytes:
    """The perf.data file of one run. The config leaves NORETCOMP clear: return compression
    allowed, which perf decodes whether or not the stream uses it."""
    ncpus = len(trace.streams)
    attr_flags = (AttrFlag.DISABLED | AttrFlag.EXCLUDE_USER | AttrFlag.SAMPLE_ID_ALL
                  | AttrFlag.TEXT_POKE)
    config = PtConfig.PT | PtConfig.TSC | PtConfig.BRANCH
    sample_type = (SampleType.IP | SampleType.TID | SampleType.TIME | SampleType.ADDR
                   | SampleType.CPU | SampleType.IDENTIFIER)
    attr = ATTR.pack(PMU_TYPE, ATTR.size, config, 0, sample_type, 0, attr_flags,
                     0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0)
    attrs_off = FILE_HEADER.size
    attr_size = ATTR.size + SECTION.size
    ids_off = attrs_off + attr_size
    data_off = ids_off + 8
    reference = max(trace.end_tick, 1)
    data = b"".join([_auxtrace_info(), _mmap(trace.text_size),
                     *(sideband.encode(r, ATTR_ID) for r in trace.records),
                     *(_auxtrace(c, s, reference) for c, s in enumerate(trace.streams)),
                     _record(Record.FINISHED_ROUND, b"")])
    feat_off = data_off + len(data)
    nrcpus = struct.pack("<II", ncpus, ncpus)  # nr_cpus_available, nr_cpus_online
    features = SECTION.pack(feat_off + SECTION.size, len(nrcpus)) + nrcpus
    bitmap = (1 << HEADER_NRCPUS).to_bytes(32, "little")
    header = FILE_HEADER.pack(MAGIC, FILE_HEADER.size, attr_size, attrs_off, attr_size,
                              data_off, len(data), 0, 0, bitmap)
    return (header + attr + SECTION.pack(ids_off, 8) + struct.pack("<Q", ATTR_ID) + data
            + features)
