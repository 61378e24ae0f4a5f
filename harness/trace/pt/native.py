"""The native trace pipeline's Python side (issue 15): the calls into `_native` (C) for flow
building, encoding, parsing + decoding + comparing, and the results as the reference's own
types (`PackedFlow`, bytes, `DecodeResult`, the reference's exceptions with the same messages).

Instruction classes come from the reference classifier (insn.py: capstone), asked once per
distinct byte string by the C class table, so both engines agree on what every byte string
is. `available(engine)` says whether the fast engine runs this part natively."""

from __future__ import annotations

import functools
from array import array
from typing import NamedTuple

from emu.engine import Engine, native_module
from emu.retired import Retired
from emu.text_poke_record import TextPokeRecord

from .decoder import Ambiguous, DecodeResult, Step
from .encoder import TraceConfig
from .flow import AsyncEvent
from .image import ImageError
from .insn import Cls, classify
from .packed_flow import PackedFlow
from .packets import PacketError
from .query import INFINITY, DecodeError

_CLS_INDEX = {c: i for i, c in enumerate(Cls)}  # the C side's enum order
_U64_MAX = (1 << 64) - 1  # the C side's "no TSC after it" (query.py: INFINITY)


def available(engine: Engine) -> bool:
    return engine is Engine.FAST and native_module("trace") is not None


class _NoNativeDecoder(RuntimeError):
    """Stands for TooMuchDoubt where the native module is missing (never raised)."""


# Raised by the native decoder past its limit of records in doubt at one instruction (the
# reference has none): the caller decodes that stream with the reference.
TooMuchDoubt: type[Exception] = getattr(native_module("trace"), "TooMuchDoubt",
                                        _NoNativeDecoder)


def _insn(code: bytes) -> tuple[int, int, int, str] | None:
    i = classify(code)
    return None if i is None else (i.size, _CLS_INDEX[i.cls], i.rel, i.text)


@functools.cache
def _table():
    """The class table of this process (as insn.classify's own cache is)."""
    return native_module("trace").InsnTable(_insn)


def _array(code: str, raw: bytes) -> array:
    a = array(code)
    a.frombytes(raw)
    return a


def cpu_flow(retired: Retired, events: list[AsyncEvent], final_rip: int) -> PackedFlow:
    """flow.cpu_flow, packed."""
    raw = native_module("trace").flow(
        retired.ticks, retired.ips, retired.ends, retired.code, events, final_rip)
    return PackedFlow(*(_array(c, r) for c, r in zip("QQQIIi", raw, strict=True)),
                      retired.code, events)


def encode_cpu(flow: PackedFlow, final_rip: int, config: TraceConfig) -> bytes:
    """encoder.encode_cpu."""
    return native_module("trace").encode(
        flow.arrays(), final_rip, (config.tsc_period, config.psb_period,
                                   config.ret_compression, config.long_tnt, config.cbr),
        _table())


class Divergence(NamedTuple):
    """The first decoded step that differs from the flow (verify.compare's zip)."""

    index: int
    step: Step


class NativeDecode(NamedTuple):
    steps: int
    ended: bool
    error: Exception | None  # as decoder.decode's: DecodeError, PacketError or Ambiguous
    divergence: Divergence | None
    step_list: list[Step] | None  # only when asked for (tests)


def decode(stream: bytes, base: int, text: bytes, records: list[TextPokeRecord],
           backward: bool, max_steps: int, flow: PackedFlow | None,
           want_steps: bool = False) -> NativeDecode:
    """decoder.decode over Image(base, text, records, backward), compared step by step with
    `flow` as it goes. ImageError if undoing a record (backward) leaves the text, as Image()."""
    ordered = sorted(records, key=lambda r: r.tick)  # Image's order
    n, ended, err, div, steps = native_module("trace").decode(
        stream, base, text, [(r.tick, r.addr, r.old, r.new) for r in ordered], backward,
        max_steps, None if flow is None else flow.arrays(), _table(), want_steps)
    error: Exception | None = None
    if err is not None:
        kind, offset, ip, message, rec, lo, hi = err
        if kind == "image":
            raise ImageError(None, message)
        if kind == "packet":
            error = PacketError(offset, message)
        elif kind == "ambiguous":
            error = Ambiguous(offset, ip, ordered[rec], lo, INFINITY if hi == _U64_MAX else hi)
        else:
            error = DecodeError(offset, message, ip)
    divergence = None
    if div is not None:
        index, ip, code, offset = div
        divergence = Divergence(index, Step(ip, code, offset))
    return NativeDecode(n, ended, error, divergence,
                        None if steps is None else [Step(*s) for s in steps])


def decode_result(stream: bytes, base: int, text: bytes, records: list[TextPokeRecord],
                  backward: bool, max_steps: int) -> DecodeResult:
    """The native decoder's steps as the reference's DecodeResult (for the differential
    tests: per-instruction objects, not the fast path)."""
    res = decode(stream, base, text, records, backward, max_steps, None, True)
    return DecodeResult(res.step_list or [], res.error, res.ended)


def inside(ips: array, ranges: list[tuple[int, int]]) -> list[int]:
    """Indices i of `ips` with ips[i] in one of the [start, end) `ranges` (any order, may
    overlap)."""
    merged: list[list[int]] = []
    for a, b in sorted(r for r in ranges if r[0] < r[1]):
        if merged and a <= merged[-1][1]:
            merged[-1][1] = max(merged[-1][1], b)
        else:
            merged.append([a, b])
    flat = array("Q", (x for r in merged for x in r))
    return list(_array("q", native_module("trace").inside(ips, flat)))
