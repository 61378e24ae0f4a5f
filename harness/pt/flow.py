"""A CPU's real control flow as PT sees it: retired instructions interleaved with asynchronous
branches (exceptions, interrupts), in order. The encoder turns it into packets; the verifier
compares the decoder's output with it. A trapped INT3 is an asynchronous branch at its own
address, not an instruction; a faulting instruction never retired, only its event appears."""

from __future__ import annotations

import bisect
from dataclasses import dataclass
from typing import NamedTuple

from emu.truth import Event


@dataclass(frozen=True)
class AsyncEvent:
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
    return [AsyncEvent(e.tick, int(e.data["source"], 16), int(e.data["rip"], 16),
                       int(e.data["handler"], 16))
            for e in events if e.cpu == cpu and e.kind in ("exception", "interrupt")]


def cpu_flow(retired: list[tuple[int, int, bytes]], events: list[AsyncEvent],
             final_rip: int) -> list[FlowItem]:
    ticks = [t for t, _, _ in retired]
    at: dict[int, list[AsyncEvent]] = {}
    for ev in events:  # an event comes after every instruction this CPU retired by its tick
        at.setdefault(bisect.bisect_right(ticks, ev.tick), []).append(ev)
    out: list[FlowItem] = []
    n = len(retired)
    for i in range(n + 1):
        out += [FlowItem(ev.tick, ev.source, b"", ev.handler, ev) for ev in at.get(i, ())]
        if i == n:
            break
        tick, ip, code = retired[i]
        after = at.get(i + 1)
        if code[:1] in (b"\xcc", b"\xcd") and after and after[0].source == ip:
            continue  # the trapped INT3 / INT n: its event follows
        cont = after[0].resume if after else (retired[i + 1][1] if i + 1 < n else final_rip)
        out.append(FlowItem(tick, ip, code, cont))
    return out
