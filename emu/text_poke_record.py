"""A text-poke record: the kernel's report that it changed kernel text, from the guest's
SIDEBAND hypercall through the run's result and `sideband.bin` to the decoder's image.

Linux emits it as PERF_RECORD_TEXT_POKE (kernel/events/core.c: perf_event_text_poke, called by
text_poke_bp_batch and the kprobe optimizer) so that a trace decoder can follow code that
changed under it; harness/trace/sideband.py has its binary layout."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class TextPokeRecord:
    tick: int  # virtual TSC at emission: the record's sample_id time
    cpu: int  # the CPU that emitted it: sample_id cpu
    addr: int
    old: bytes
    new: bytes
