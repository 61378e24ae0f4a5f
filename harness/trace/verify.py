"""Tracing and verification of a run: per CPU, encode its flow as PT, decode it over the image
(forward from the start snapshot, backward from the end one) and compare, instruction by
instruction, with what the CPU really executed."""

from __future__ import annotations

from dataclasses import dataclass, field

from emu import layout
from emu.engine import Engine
from emu.text_poke_record import TextPokeRecord
from emu.truth import GroundTruth
from emu.verdict import Verdict, VerdictKind
from harness.trace.pt import native
from harness.trace.pt.decoder import Ambiguous, DecodeResult, Step, decode
from harness.trace.pt.encoder import TraceConfig, encode_cpu
from harness.trace.pt.flow import AsyncEvent, FlowItem, async_events, cpu_flow
from harness.trace.pt.image import Image, ImageError, check_records
from harness.trace.pt.packed_flow import Flow, PackedFlow
from harness.trace.pt.query import items_until_error

__all__ = ["check", "check_both", "check_cpu", "compare", "encode_all", "flows"]


@dataclass
class CpuCheck:
    cpu: int
    steps: int
    verdict: Verdict | None  # None: decoded exactly


@dataclass
class DecodeReport:
    direction: str
    cpus: list[CpuCheck] = field(default_factory=list)
    trace: Verdict | None = None  # the records do not fit the snapshots: nothing decoded

    @property
    def verdict(self) -> Verdict | None:
        if self.trace is not None:
            return self.trace
        return next((c.verdict for c in self.cpus if c.verdict is not None), None)

    def to_json(self) -> dict:
        return {"direction": self.direction,
                "result": "exact" if self.verdict is None else self.verdict.kind,
                **({} if self.trace is None else {"detail": self.trace.detail}),
                "cpus": [{"cpu": c.cpu, "steps": c.steps,
                          "result": "exact" if c.verdict is None else c.verdict.kind,
                          **({} if c.verdict is None else {"detail": c.verdict.detail})}
                         for c in self.cpus]}


def compare(cpu: int, flow: Flow, res: DecodeResult) -> Verdict | None:
    """The first place where the decoded flow and the real one part."""
    for item, step in zip(flow, res.steps, strict=False):
        if item.ip != step.ip or item.code != step.code:
            return _diverged(cpu, item, step)
    return _ending(cpu, flow, len(res.steps), res.error, res.ended)


def _diverged(cpu: int, item: FlowItem, step: Step) -> Verdict:
    want = "async branch" if not item.code else item.code.hex(" ")
    got = "async branch" if not step.code else step.code.hex(" ")
    return Verdict(VerdictKind.DECODE_DIVERGENCE,
                   f"cpu{cpu} tick {item.tick}, packet offset {step.offset:#x}: executed "
                   f"{want} at {item.ip:#x}, decoded {got} at {step.ip:#x}",
                   cpu=cpu, rip=item.ip, fetched=item.code, event="decode",
                   extra={"tick": item.tick, "offset": step.offset,
                          "decoded_ip": step.ip, "decoded": step.code.hex()})


def _ending(cpu: int, flow: Flow, steps: int, error: Exception | None,
            ended: bool) -> Verdict | None:
    """After the steps that agree: the decoder's error, or steps missing or left over."""
    if error is not None:
        kind = VerdictKind.AMBIGUOUS if isinstance(error, Ambiguous) else \
            VerdictKind.DECODE_ERROR
        return Verdict(kind, f"cpu{cpu}: {error}", cpu=cpu,
                       rip=getattr(error, "ip", None), event="decode",
                       extra={"offset": getattr(error, "offset", None)})
    if steps != len(flow) or not ended:
        tick = flow[steps].tick if steps < len(flow) else None
        return Verdict(VerdictKind.DECODE_DIVERGENCE, f"cpu{cpu}: decoded {steps} "
                       f"steps, the CPU executed {len(flow)} (first missing at tick {tick})",
                       cpu=cpu, event="decode")
    return None


def flows(truth: GroundTruth, final_rips: list[int],
          engine: Engine = Engine.REFERENCE) -> list[Flow]:
    """Each CPU's flow (flow.py); packed (packed_flow.py) where the native pipeline runs."""
    return [flow_of(truth, c, rip, engine) for c, rip in enumerate(final_rips)]


def flow_of(truth: GroundTruth, cpu: int, final_rip: int,
            engine: Engine = Engine.REFERENCE, events: list[AsyncEvent] | None = None) -> Flow:
    """One CPU's flow (`events`: its async_events, when the caller has them)."""
    if events is None:
        events = async_events(truth.events, cpu)
    if native.available(engine):
        return native.cpu_flow(truth.retired[cpu], events, final_rip)
    return cpu_flow(truth.retired[cpu], events, final_rip)


def encode_all(flows: list[Flow], final_rips: list[int],
               config: TraceConfig, engine: Engine = Engine.REFERENCE) -> list[bytes]:
    return [encode_flow(f, rip, config, engine) for f, rip in zip(flows, final_rips, strict=True)]


def encode_flow(flow: Flow, final_rip: int, config: TraceConfig,
                engine: Engine = Engine.REFERENCE) -> bytes:
    """One CPU's PT stream."""
    if native.available(engine):
        return native.encode_cpu(_packed(flow), final_rip, config)
    return encode_cpu(flow, final_rip, config)


def _packed(flow: Flow) -> PackedFlow:
    return flow if isinstance(flow, PackedFlow) else PackedFlow.from_items(flow)


def check_both(streams: list[bytes], flows: list[Flow], text_start: bytes,
               text_end: bytes, records: list[TextPokeRecord],
               engine: Engine = Engine.REFERENCE) -> list[DecodeReport]:
    """`check` forward, then backward, each stream's packets parsed once for both. This is a
    live run's check: its records are what the guest emitted, so a record that misleads the
    decoder is a verdict where the decoded flow leaves the executed one (a divergence with its
    packet offset), not a malformed input (see `check`'s `check_records`)."""
    if native.available(engine):  # parsing in C costs less than keeping the items
        return [check(streams, flows, text_start, text_end, records, backward, None, False,
                      engine) for backward in (False, True)]
    parsed = [items_until_error(s) for s in streams]
    return [check(streams, flows, text_start, text_end, records, backward, parsed, False)
            for backward in (False, True)]


def records_error(text_start: bytes, text_end: bytes,
                  records: list[TextPokeRecord]) -> Verdict | None:
    """A decode error if the text-poke records do not take the start snapshot to the end one
    (harness/trace/pt/image.py: check_records): decoding over them would be decoding over a lie."""
    try:
        check_records(layout.TEXT_BASE, text_start, text_end, records)
    except ImageError as e:
        return Verdict(VerdictKind.DECODE_ERROR, f"sideband: {e}", event="decode",
                       extra={"record": e.index})
    return None


def check(streams: list[bytes], flows: list[Flow], text_start: bytes,
          text_end: bytes, records: list[TextPokeRecord], backward: bool = False,
          parsed: list | None = None, check_records: bool = True,
          engine: Engine = Engine.REFERENCE) -> DecodeReport:
    """Decode every CPU's stream over the image, forward from the start snapshot or backward
    from the end one, and compare with the flow it ran. With `check_records` (a saved run:
    the trace is input) first check that the records take the one snapshot to the other, and
    decode nothing over records that do not. `parsed`: each stream's items, when the caller
    decodes both ways. Under the fast engine the native pipeline decodes and compares."""
    report = DecodeReport("backward" if backward else "forward")
    if check_records:
        report.trace = records_error(text_start, text_end, records)
        if report.trace is not None:
            return report
    text = text_end if backward else text_start
    report.cpus = [check_cpu(cpu, stream, flow, text, records, backward,
                             parsed[cpu] if parsed else None, engine)
                   for cpu, (stream, flow) in enumerate(zip(streams, flows, strict=True))]
    return report


def check_cpu(cpu: int, stream: bytes, flow: Flow, text: bytes,
              records: list[TextPokeRecord], backward: bool, parsed: list | None = None,
              engine: Engine = Engine.REFERENCE) -> CpuCheck:
    """One CPU of `check`: its stream decoded over the image of `text` (the start snapshot,
    or the end one `backward`) and compared with its flow."""
    if native.available(engine):
        try:
            return _check_native(cpu, stream, flow, text, records, backward)
        except native.TooMuchDoubt:  # more records in doubt than C takes: the reference
            pass
    try:
        image = Image(layout.TEXT_BASE, text, records, backward)
    except ImageError as e:  # undoing a record outside the text
        return CpuCheck(cpu, 0, Verdict(VerdictKind.DECODE_ERROR, f"cpu{cpu}: {e}", cpu=cpu,
                                        event="decode"))
    res = decode(stream, image, len(flow) + 16, parsed)
    return CpuCheck(cpu, len(res.steps), compare(cpu, flow, res))


def _check_native(cpu: int, stream: bytes, flow: Flow, text: bytes,
                  records: list[TextPokeRecord], backward: bool) -> CpuCheck:
    """One CPU of `check`'s loop, decoded and compared in C: the same CpuCheck."""
    packed = _packed(flow)
    try:
        res = native.decode(stream, layout.TEXT_BASE, text, records, backward,
                            len(packed) + 16, packed)
    except ImageError as e:  # undoing a record outside the text
        return CpuCheck(cpu, 0, Verdict(VerdictKind.DECODE_ERROR, f"cpu{cpu}: {e}", cpu=cpu,
                                        event="decode"))
    if res.divergence is not None:
        index, step = res.divergence
        return CpuCheck(cpu, res.steps, _diverged(cpu, packed[index], step))
    return CpuCheck(cpu, res.steps, _ending(cpu, packed, res.steps, res.error, res.ended))
