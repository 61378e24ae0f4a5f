"""Replay tokens: a compact, versioned, copy-pasteable text for one whole test case.

    tp2.<base64url(zlib(json))>.<crc32 hex>

The JSON holds the scenario, variant, CPU count, trace configuration, the seed (if any), the
whole decision path (emu/path.py codec: a shrunk path too keeps its simplest choices) and a
fingerprint of everything else that determines the run (`fingerprint`). Replay consumes exactly
that path (emu/decisions.ReplaySource). A token of another version, a damaged one, one with a
field out of range, or one whose fingerprint is not this build's is refused with a TokenError.
A user's scenario's token also says where the scenario is defined ("o": file:PATH or
module:NAME, harness/scenario/load.py); a changed file hashes otherwise and is refused too.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import hashlib
import json
import re
import zlib
from dataclasses import dataclass

from emu import layout
from emu.machine import EVENT_MODEL
from emu.path import Choice, decode_path, encode_path
from harness.scenario.build import Built
from harness.scenario.load import Origin
from harness.trace.pt.encoder import TraceConfig

VERSION = "tp2"
_NAME_MAX = 200
_ORIGIN_MAX = 4096  # PATH_MAX
_JSON_MAX = 1 << 24  # bytes: a path of some 800,000 decisions
_BASE64URL = re.compile(r"[A-Za-z0-9_-]+")  # as `encode` writes it: no padding


class TokenError(ValueError):
    pass


def fingerprint(built: Built, trace: TraceConfig) -> str:
    """A hash of all a run depends on besides its path: the guest code, the initial data
    tables, the IDT and boot state, the machine configuration (the event-mode fetch model
    included) and the trace configuration. Tokens and saved searches carry it; a build that
    hashes otherwise would not run the same path the same way."""
    image, config = built.image, built.config
    doc = {
        "code": [[p.base, p.code.hex()] for p in image.programs],
        "data": [[va, raw.hex()] for va, raw in image.data],
        "idt": sorted(image.idt.items()),
        "boot": [[b.entry, sorted(b.regs.items()), b.interrupts] for b in image.boot],
        "machine": {f.name: _plain(getattr(config, f.name))
                    for f in dataclasses.fields(config)},
        "model": EVENT_MODEL if config.event_mode else 0,
        "trace": dataclasses.asdict(trace),
        "layout": [layout.TEXT_BASE, layout.DATA_BASE, layout.STACK_BASE, layout.POKE_BASE,
                   layout.STACK_GUARD],
    }
    raw = json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()
    return hashlib.sha256(raw).hexdigest()[:16]


def _plain(value: object) -> object:
    if isinstance(value, frozenset | set):
        return sorted(value)
    if hasattr(value, "value"):  # an enum
        return value.value
    return value


@dataclass(frozen=True)
class Token:
    scenario: str
    variant: str
    cpus: int
    path: tuple[Choice, ...]
    fingerprint: str  # of the build the path drives (`fingerprint`)
    seed: int | None = None
    tsc_period: int = 1
    psb_period: int = 4096
    ret_compression: bool = True
    event_mode: bool = False  # recorded by the exhaustive explorer (event-driven machine)
    origin: Origin | None = None  # a user's scenario: where it is defined (scenario/load.py)

    @property
    def trace(self) -> TraceConfig:
        return TraceConfig(tsc_period=self.tsc_period, psb_period=self.psb_period,
                           ret_compression=self.ret_compression)

    def encode(self) -> str:
        doc = {"s": self.scenario, "v": self.variant, "c": self.cpus, "g": self.fingerprint,
               "seed": self.seed, "t": [self.tsc_period, self.psb_period,
                                        int(self.ret_compression)],
               "e": int(self.event_mode), "p": encode_path(self.path)}
        if self.origin is not None:  # a shipped scenario's token has no "o"
            doc["o"] = self.origin.encode()
        raw = zlib.compress(json.dumps(doc, separators=(",", ":")).encode(), 9)
        body = base64.urlsafe_b64encode(raw).decode().rstrip("=")
        return f"{VERSION}.{body}.{zlib.crc32(raw):08x}"

    @classmethod
    def decode(cls, text: str) -> Token:
        if not isinstance(text, str):
            raise TokenError("not a replay token (expected text)")
        text = "".join(text.split())  # copy-paste may wrap it
        parts = text.split(".")
        if len(parts) != 3:
            raise TokenError(f"not a replay token (expected {VERSION}.<data>.<checksum>)")
        version, body, crc = parts
        if version != VERSION:
            raise TokenError(f"token version {version[:20]!r}; this textpoke reads {VERSION!r}")
        try:  # b64decode drops characters not in its alphabet: one there is damage too
            if not _BASE64URL.fullmatch(body):
                raise ValueError(body)
            raw = base64.urlsafe_b64decode(body + "=" * (-len(body) % 4))
        except (binascii.Error, ValueError):
            raise TokenError("token damaged: its data is not base64url") from None
        if f"{zlib.crc32(raw):08x}" != crc.lower():
            raise TokenError("token damaged: checksum mismatch")
        try:
            doc = json.loads(_inflate(raw))
        except (zlib.error, ValueError, RecursionError) as e:
            raise TokenError(f"token damaged: {e}") from None
        return cls._from_doc(doc)

    @classmethod
    def _from_doc(cls, doc: object) -> Token:
        if not isinstance(doc, dict):
            raise TokenError("token field: the data is not an object")
        need = {"s", "v", "c", "g", "seed", "t", "e", "p"}
        if set(doc) - {"o"} != need:
            raise TokenError(f"token fields: expected {sorted(need)} (and \"o\" for a user's "
                             f"scenario), got {sorted(doc)[:12]}")
        o = None
        if "o" in doc:
            try:
                if not isinstance(doc["o"], str) or len(doc["o"]) > _ORIGIN_MAX:
                    raise ValueError(f"expected file:PATH or module:NAME, got {_show(doc['o'])}")
                o = Origin.decode(doc["o"])
            except ValueError as err:
                raise TokenError(f"token field origin: {err}") from None
        s, v, c, g, seed, t, e, p = (doc[k] for k in ("s", "v", "c", "g", "seed", "t", "e", "p"))
        for name, val in (("scenario", s), ("variant", v), ("fingerprint", g)):
            if not isinstance(val, str) or not val or len(val) > _NAME_MAX:
                raise TokenError(f"token field {name}: expected a name, got {_show(val)}")
        if not _int(c) or not 1 <= c <= layout.MAX_CPUS:
            raise TokenError(f"token field cpus: expected 1..{layout.MAX_CPUS}, got {_show(c)}")
        if seed is not None and (not _int(seed) or not 0 <= seed < 2**63):
            raise TokenError(f"token field seed: expected 0..2^63-1 or null, got {_show(seed)}")
        if not (isinstance(t, list) and len(t) == 3 and all(map(_int, t)) and t[2] in (0, 1)):
            raise TokenError(f"token field trace: expected [tsc, psb, 0|1], got {_show(t)}")
        if e not in (0, 1) or not _int(e):
            raise TokenError(f"token field event mode: expected 0 or 1, got {_show(e)}")
        try:
            TraceConfig(tsc_period=t[0], psb_period=t[1], ret_compression=bool(t[2]))
        except ValueError as err:
            raise TokenError(f"token field trace: {err}") from None
        try:
            path = tuple(decode_path(p))
        except ValueError as err:
            raise TokenError(f"token field path: {err}") from None
        return cls(s, v, c, path, g, seed, t[0], t[1], bool(t[2]), bool(e), o)


def _inflate(raw: bytes) -> bytes:
    """The JSON of a token's data: one whole zlib stream, nothing after it, and at most
    _JSON_MAX bytes (a few kilobytes of checksum-valid data could inflate to gigabytes)."""
    inflate = zlib.decompressobj()
    out = inflate.decompress(raw, _JSON_MAX)
    if inflate.unconsumed_tail:
        raise ValueError(f"its data inflates to more than {_JSON_MAX} bytes")
    if not inflate.eof:
        raise ValueError("its data is an incomplete or truncated zlib stream")
    if inflate.unused_data:
        raise ValueError(f"{len(inflate.unused_data)} bytes after its zlib stream")
    return out


def _int(x: object) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _show(x: object) -> str:
    text = json.dumps(x)
    return text if len(text) <= 40 else text[:37] + "..."
