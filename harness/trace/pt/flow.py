"""A CPU's real control flow as PT sees it: retired instructions interleaved with asynchronous
branches (exceptions, interrupts), in order. The encoder turns it into packets; the verifier
compares the decoder's output with it. A trapped INT3 is an asynchronous branch at its own
address, not an instruction; a faulting instruction never retired, only its event appears."""

from __future__ import annotations

import bisect
from typing import NamedTuple

from emu.events import Delivery, Event


class AsyncEvent(NamedTuple):
    """An exception or interrupt as PT sees it (a named tuple: the native flow builder takes
    these as they are, and a run makes dozens)."""

    tick: int
    source: int  # the FUP IP
    resume: int  # where the interrupted flow continues afterwards (the frame's RIP)
    handler: int


class FlowItem(NamedTuple):
    """One retired instruction or asynchronous branch (a named tuple: one per instruction)."""

    tick: int
    ip: int
    code: bytes  # b"" for an asynchronous branch
    cont: int  # instructions: the IP the flow continued at; async: the handler
    event: AsyncEvent | None = None


def async_events(events: list[Event], cpu: int) -> list[AsyncEvent]:
    """This CPU's exceptions and interrupts, as PT sees them."""
    return [AsyncEvent(e.tick, e.source, e.rip, e.handler)
            for e in events if e.cpu == cpu and isinstance(e, Delivery)]


def async_events_per_cpu(events: list[Event], ncpus: int) -> list[list[AsyncEvent]]:
    """`async_events` of every CPU, in one pass over the events."""
    out: list[list[AsyncEvent]] = [[] for _ in range(ncpus)]
    for e in events:
        if isinstance(e, Delivery):
            out[e.cpu].append(AsyncEvent(e.tick, e.source, e.rip, e.handler))
    return out


def cpu_flow(retired: list[tuple[int, int, bytes]], events: list[AsyncEvent],
             final_rip: int) -> list[FlowItem]:
    ticks = [t for t, _, _ in retired]
    at: dict[int, list[AsyncEvent]] = {}
    for ev in events:  # an event comes after every instruction this CPU retired by its tick
        at.setdefault(bisect.bisect_right(ticks, ev.tick), []).append(ev)
    nxt = [ip for _, ip, _ in retired[1:]]
    nxt.append(final_rip)  # where each instruction's flow went on, if no event came
    out: list[FlowItem] = []
    i = 0
    for b in sorted(at):  # the instructions before events at[b], then those events
        evs = at[b]
        if b > i:
            out += [FlowItem(t, ip, code, nxt[j])
                    for j, (t, ip, code) in enumerate(retired[i:b - 1], i)]
            t, ip, code = retired[b - 1]
            if not (code[:1] in (b"\xcc", b"\xcd") and evs[0].source == ip):
                out.append(FlowItem(t, ip, code, evs[0].resume))
            # else the trapped INT3 / INT n: its event follows
        out += [FlowItem(ev.tick, ev.source, b"", ev.handler, ev) for ev in evs]
        i = b
    out += [FlowItem(t, ip, code, nxt[j]) for j, (t, ip, code) in enumerate(retired[i:], i)]
    return out
