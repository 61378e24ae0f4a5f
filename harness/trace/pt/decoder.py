"""The PT decoder: branch items (query.py) -> instruction flow over the image.

Like libipt's instruction flow decoder, it walks the image from TIP.PGE, consuming the items
the query layer made of the packets. Before each instruction it checks for a FUP at the
current IP: that is an asynchronous branch, taken *before* anything at that IP is decoded, so the
INT3 byte of a poke never needs to be in the image. Text-poke records are applied when the
decoder's time passes theirs; an instruction whose bytes a record changes, but whose time the
trace cannot place before or after that record, is `Ambiguous`, never a guess.

Time bounds of an instruction: it executed after the last TSC consumed (lo) and no later than
the next TSC in the stream (hi); records with time < lo are applied, records with time > hi are
not, and a record in [lo, hi] that changes what the instruction decodes to is ambiguous.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

from emu.text_poke_record import TextPokeRecord

from .image import INSN_MAX, Image, ImageError
from .insn import Cls, classify
from .insn_cache import InsnCache
from .query import INFINITY, DecodeError, Item, ItemKind, items_until_error


class Ambiguous(Exception):
    def __init__(self, offset: int, ip: int, record: TextPokeRecord, lo: int, hi: int) -> None:
        upper = "the end of the trace" if hi >= INFINITY else str(hi)
        super().__init__(f"offset {offset:#x}, ip {ip:#x}: the trace places this instruction "
                         f"in [{lo}, {upper}] and the text-poke record at {record.addr:#x} "
                         f"(time {record.tick}) inside that interval changes it")
        self.offset, self.ip, self.record = offset, ip, record


class Step(NamedTuple):
    """One decoded element: an instruction (code = its bytes in the image) or an
    asynchronous branch at `ip` (code empty, target = where it went). A named tuple: the
    decoder makes one per instruction, about three times faster than a frozen dataclass."""

    ip: int
    code: bytes
    offset: int  # the packet offset the decoder was at
    target: int | None = None


@dataclass
class DecodeResult:
    steps: list[Step]
    error: Exception | None = None  # DecodeError, PacketError or Ambiguous
    ended: bool = False  # reached TIP.PGD


def decode(stream: bytes, image: Image, max_steps: int,
           parsed: tuple[list[Item], Exception | None] | None = None) -> DecodeResult:
    """Decode one CPU's stream; stops at the first error, keeping what was decoded. `parsed`
    is the stream's `items_until_error`, when it is decoded more than once (the walk only
    reads the items)."""
    res = DecodeResult([])
    its, bad_packet = parsed if parsed is not None else items_until_error(stream)
    walker = _Walker(its, image, max_steps, res.steps)
    try:
        walker.run()
        res.ended = True
    except ImageError as e:  # a record outside the text, applied when its time came
        res.error = DecodeError(its[min(walker.k, len(its) - 1)].offset if its else 0,
                                str(e), walker.ip)
    except (DecodeError, Ambiguous) as e:
        # running out of items because a packet was malformed: that packet is the error
        res.error = bad_packet if bad_packet is not None and isinstance(e, DecodeError) and \
            e.offset >= (its[-1].offset if its else 0) else e
    return res


LOOKAHEAD = 400  # steps a candidate image must decode consistently to stay possible


class _Walker:
    """The flow layer. Cloneable, so that candidates the timing cannot separate can each be
    tried against the packets that follow."""

    def __init__(self, its: list[Item], image: Image, max_steps: int, steps: list[Step],
                 speculative: bool = False) -> None:
        self.its, self.image, self.max_steps, self.steps = its, image, max_steps, steps
        self.speculative = speculative
        self.k = 0
        self.ip: int | None = None
        self.lo, self.hi = 0, INFINITY
        self.stack: list[int] = []
        self.cache = InsnCache()

    def clone(self) -> _Walker:
        w = _Walker(self.its, self.image.copy(), self.max_steps, list(self.steps), True)
        w.k, w.ip, w.lo, w.hi, w.stack = self.k, self.ip, self.lo, self.hi, list(self.stack)
        return w

    def take(self, kind: ItemKind, why: str) -> Item:
        its = self.its
        if self.k >= len(its):
            raise DecodeError(its[-1].offset if its else 0,
                              f"trace ends; {why} needs a {kind.value}", self.ip)
        it = its[self.k]
        if it.kind is not kind:
            raise DecodeError(it.offset, f"{why} needs a {kind.value}, the trace has "
                                         f"{it.kind.value}", self.ip)
        self.k += 1
        self.lo, self.hi = it.time, it.next_tsc
        return it

    def run(self, limit: int | None = None) -> None:
        its = self.its
        if self.ip is None:  # sync (a walker cloned mid-stream is past it: _consistent)
            while self.k < len(its) and its[self.k].kind is not ItemKind.PGE:
                if its[self.k].kind in (ItemKind.BIT, ItemKind.TIP, ItemKind.FUP):
                    raise DecodeError(its[self.k].offset,
                                      f"{its[self.k].kind.value} before TIP.PGE")
                self.k += 1
            if self.k == len(its):
                raise DecodeError(0, "no TIP.PGE: tracing never starts")
            self.ip = self.take(ItemKind.PGE, "start").ip
        done = 0
        while self.step():
            done += 1
            if limit is not None and done >= limit:
                return

    def step(self, forced: tuple[bytes, object] | None = None) -> bool:
        """One instruction or asynchronous branch; False at the end of the trace."""
        its, n = self.its, len(self.its)
        while self.k < n and its[self.k].kind in (ItemKind.PSB, ItemKind.STATUS_FUP):
            it = its[self.k]
            if it.kind is ItemKind.PSB:
                self.stack.clear()
            elif it.ip != self.ip:
                raise DecodeError(it.offset, f"PSB+ says the flow is at {it.ip:#x}", self.ip)
            self.k += 1
        if self.k >= n:
            raise DecodeError(its[-1].offset if its else 0, "trace ends without TIP.PGD",
                              self.ip)
        nxt = its[self.k]
        ip = self.ip
        if forced is None and nxt.kind is ItemKind.FUP and nxt.ip == ip:  # async, here
            self.take(ItemKind.FUP, "async")
            if self.k < n and its[self.k].kind is ItemKind.PGD:
                self.take(ItemKind.PGD, "end")
                return False
            to = self.take(ItemKind.TIP, f"the FUP at {ip:#x}").ip
            self.steps.append(Step(ip, b"", nxt.offset, to))
            self.ip = to
            return True
        if len(self.steps) >= self.max_steps:
            raise DecodeError(nxt.offset, f"more than {self.max_steps} steps without reaching "
                                          "the end of the trace", ip)
        if forced is not None:
            code, insn = forced
        else:
            code, insn = self.fetch(ip, nxt.offset)
        if insn is None:
            raise DecodeError(nxt.offset, f"bytes {code.hex()} in the image do not decode", ip)
        self.steps.append(Step(ip, code[:insn.size], nxt.offset))
        nlip = ip + insn.size
        c = insn.cls
        if c is Cls.OTHER or c is Cls.COND or c is Cls.JMP:
            if c is Cls.COND:
                self.ip = nlip + insn.rel if self.take(ItemKind.BIT, insn.text).bit else nlip
            else:
                self.ip = nlip + insn.rel  # rel is 0 for OTHER
            if forced is None and not self.speculative:
                self._straight_on()
        elif c is Cls.CALL:
            if insn.rel:
                self.stack.append(nlip)
                del self.stack[:-64]
            self.ip = nlip + insn.rel
        elif c in (Cls.IJMP, Cls.ICALL, Cls.IRET):
            if c is Cls.ICALL:
                self.stack.append(nlip)
                del self.stack[:-64]
            self.ip = self.take(ItemKind.TIP, insn.text).ip
        elif c is Cls.RET:
            if self.k < n and its[self.k].kind is ItemKind.BIT:
                if not self.take(ItemKind.BIT, "ret").bit or not self.stack:
                    raise DecodeError(its[self.k - 1].offset, "bad return compression", ip)
                self.ip = self.stack.pop()
            else:
                self.ip = self.take(ItemKind.TIP, "ret").ip
        else:  # INT3 / INT n in the image where the trace has no FUP for it
            raise DecodeError(nxt.offset, f"{insn.text} in the image but no FUP in the trace",
                              ip)
        return True

    def _straight_on(self) -> None:
        """Go on for as long as each next step is one `step` would take with nothing to check:
        an instruction already fetched and not written since (no record pending up to `hi`)
        that cannot branch, is a direct jump, or is a conditional branch with its TNT bit
        next. A bit with new time bounds moves the window as `take` does and applies records
        as the next `fetch` would; if that unsettles the image, or anything else comes (a FUP
        at the IP, a PSB+, the step limit), `step` goes on. Not in a speculative clone, whose
        lookahead counts `step` calls."""
        if not self._settle(self.lo, self.hi):  # as the next `fetch` would; only forward
            return
        insns, steps, limit, its = self.cache.by_ip, self.steps, self.max_steps, self.its
        n = len(its)
        k, ip, lo, hi = self.k, self.ip, self.lo, self.hi
        other, cond, jmp = Cls.OTHER, Cls.COND, Cls.JMP
        bit, fup, psb, status = ItemKind.BIT, ItemKind.FUP, ItemKind.PSB, ItemKind.STATUS_FUP
        while k < n and len(steps) < limit:
            nxt = its[k]
            kind = nxt.kind
            if (kind is fup and nxt.ip == ip) or kind is psb or kind is status:
                break
            hit = insns.get(ip)
            if hit is None or hit[1] is None:
                break
            code, insn = hit
            c = insn.cls
            if c is cond:
                if kind is not bit:
                    break
                steps.append(Step(ip, code[:insn.size], nxt.offset))
                k += 1
                ip += insn.size + insn.rel if nxt.bit else insn.size
                if nxt.time != lo or nxt.next_tsc != hi:  # `take`'s new bounds, then `fetch`'s
                    lo, hi = nxt.time, nxt.next_tsc
                    if not self._settle(lo, hi):
                        break
            elif c is other or c is jmp:
                steps.append(Step(ip, code[:insn.size], nxt.offset))
                ip += insn.size + insn.rel
            else:
                break
        self.k, self.ip, self.lo, self.hi = k, ip, lo, hi

    def _settle(self, lo: int, hi: int) -> bool:
        """Apply the records emitted before `lo`; True if none is left up to `hi`, every byte
        then certain and the instruction cache brought to the image's version."""
        image = self.image
        image.advance(lo)
        if not image.settled(hi):
            return False
        if image.version != self.cache.version:
            self.cache.sync(image)
        return True

    def fetch(self, ip: int, offset: int):
        """The instruction at `ip` as of the decoder's time. Records in [lo, hi] touching it
        may or may not have been applied: any prefix of them is a candidate image. A
        candidate with an INT3 here is impossible (no FUP here, and an INT3 always traps: the
        INT3 guard around a record). Candidates that still differ are each decoded against the
        packets that follow; one the trace contradicts is impossible too. Only if more than one
        stays possible is the result ambiguous."""
        image = self.image
        settled = self._settle(self.lo, self.hi)
        if settled:  # the common case: the same bytes decode the same way until a write
            hit = self.cache.by_ip.get(ip)
            if hit is not None:
                return hit
        code = image.read(ip)
        if not code:
            raise DecodeError(offset, "the flow left the image", ip)
        if settled:
            self.cache.by_ip[ip] = hit = (code, classify(code))
            return hit
        doubt = image.uncertain(self.lo, self.hi, ip)
        if not doubt:
            return code, classify(code)
        cands: list[tuple[bytes, object]] = []
        for j in range(len(doubt) + 1):
            c = image.read_with(ip, INSN_MAX, doubt[:j]) if j else code
            i = classify(c)
            key = c[:i.size] if i else c
            if (i is None or i.cls is not Cls.INT) and key not in (k for k, _, _ in cands):
                cands.append((key, (c, i), j))
        if not cands:
            return code, classify(code)  # INT3 whichever way: the FUP is missing
        if len(cands) > 1 and not self.speculative:
            alive = [cand for cand in cands if self._consistent(cand[1])]
            cands = alive or cands
        if len(cands) > 1:
            raise Ambiguous(offset, ip, doubt[max(cands[1][2] - 1, 0)], self.lo, self.hi)
        return cands[0][1]

    def _consistent(self, forced) -> bool:
        """Whether the packets that follow allow `forced` as this instruction's decoding: a
        clone decodes on from it for LOOKAHEAD steps. Only a decode error contradicts it; a
        later instruction that is itself in doubt (Ambiguous) does not."""
        w = self.clone()
        try:
            if w.step(forced):
                w.run(LOOKAHEAD)
        except DecodeError:
            return False
        except Ambiguous:
            return True
        return True


