"""The hypercall: the one instruction form by which guest code asks the harness for something.

Form: ``out 0x7e, eax`` (bytes ``e7 7e``) with the call number in RAX and arguments in RDI, RSI,
RDX, RCX. Nothing is returned; the instruction completes like any OUT. Port 0x7e is not a device
of this machine, so the form cannot be confused with real I/O.

    FINISH     -                           this CPU has finished; it is not scheduled again
    SEND_IPI   rdi=CPU mask, rsi=vector    an IPI (vector 2: an NMI) becomes pending on each CPU
                                           in the mask
    SIDEBAND   rdi=addr, rsi=&old, rdx=&new, rcx=len
                                           a text-poke sideband record: `len` old and new bytes
                                           read from guest memory now, stamped with the virtual TSC
    QUIESCENT  -                           this CPU passed a quiescent point (for rcu-tasks waits)
    ASSERT     rdi=code, rsi=&message (NUL-terminated, may be 0)
                                           a guest assertion failed: the run ends, guest_assert
    FAULT      rdi=vector, rsi=&frame       a guest exception handler reports a fatal exception
                                           (e.g. the #DF handler): the run ends, guest_fault
    MARK       rdi=tag, rsi=value          records (tag, value) as an event, for checks
    TRAP       rdi=address                 an INT3 at `address` that no handler claimed
                                           (do_int3 -> die): the run ends, unexpected_trap
    SEMANTICS  rdi=site, rsi=outcome, rdx=generation
                                           an execution of a patch site behaved as neither its
                                           old nor its new instruction: the run ends, semantics

Only FINISH and the calls that end the run stop the CPU; the others are served at once, in
the hook, so they do not cut the CPU's quantum short.
"""

from __future__ import annotations

import enum

PORT = 0x7E
INSTRUCTION = bytes([0xE7, PORT])  # out 0x7e, eax


class Hypercall(enum.IntEnum):
    FINISH = 0
    SEND_IPI = 1
    SIDEBAND = 2
    QUIESCENT = 3
    ASSERT = 4
    FAULT = 5
    MARK = 6
    TRAP = 7
    SEMANTICS = 8


# Equates made available to every guest source (see emu.asm).
EQUATES = {f"HC_{h.name}": int(h) for h in Hypercall} | {"HC_PORT": PORT}
