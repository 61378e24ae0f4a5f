"""Replay tokens: a compact, versioned, copy-pasteable text for one schedule.

    tp1.<base64url(zlib(json))>.<crc32 hex>

The JSON holds the scenario, variant, CPU count, trace configuration, a hash of the guest code
the path was recorded against, the seed (if any) and the decision path (emu.decisions codec).
Replaying runs the path, then DefaultSource for whatever the path leaves open (a shrunk path).
A token of another version, a damaged one, or one recorded against other guest code is refused.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import zlib
from dataclasses import dataclass

from emu.decisions import Choice, decode_path, encode_path
from emu.machine import EVENT_MODEL

VERSION = "tp1"


class TokenError(ValueError):
    pass


@dataclass(frozen=True)
class Token:
    scenario: str
    variant: str
    cpus: int
    path: tuple[Choice, ...]
    guest: str  # sha256 prefix of the guest program the path drives
    seed: int | None = None
    tsc_period: int = 1
    psb_period: int = 4096
    ret_compression: bool = True
    event_mode: bool = False  # recorded by the exhaustive explorer (event-driven machine)

    def encode(self) -> str:
        doc = {"s": self.scenario, "v": self.variant, "c": self.cpus, "g": self.guest,
               "seed": self.seed, "t": [self.tsc_period, self.psb_period,
                                        int(self.ret_compression)],
               "e": EVENT_MODEL if self.event_mode else 0, "p": encode_path(self.path)}
        raw = zlib.compress(json.dumps(doc, separators=(",", ":")).encode(), 9)
        body = base64.urlsafe_b64encode(raw).decode().rstrip("=")
        return f"{VERSION}.{body}.{zlib.crc32(raw):08x}"

    @classmethod
    def decode(cls, text: str) -> Token:
        text = "".join(text.split())  # copy-paste may wrap it
        parts = text.split(".")
        if len(parts) != 3:
            raise TokenError("not a replay token (expected tp1.<data>.<checksum>)")
        version, body, crc = parts
        if version != VERSION:
            raise TokenError(f"token version {version!r}; this textpoke reads {VERSION!r}")
        try:
            raw = base64.urlsafe_b64decode(body + "=" * (-len(body) % 4))
        except (binascii.Error, ValueError):
            raise TokenError("token damaged: its data is not base64url") from None
        if f"{zlib.crc32(raw):08x}" != crc.lower():
            raise TokenError("token damaged: checksum mismatch")
        try:
            doc = json.loads(zlib.decompress(raw))
            tsc, psb, ret = doc["t"]
            model = int(doc.get("e", 0))
            tok = cls(doc["s"], doc["v"], int(doc["c"]), tuple(decode_path(doc["p"])),
                      doc["g"], doc["seed"], int(tsc), int(psb), bool(ret), bool(model))
        except (zlib.error, ValueError, KeyError, TypeError) as e:
            raise TokenError(f"token damaged: {e}") from None
        if model not in (0, EVENT_MODEL):
            raise TokenError(f"token recorded by the exhaustive explorer's fetch model {model}; "
                             f"this textpoke runs model {EVENT_MODEL} (a fetch-view update is "
                             "decided at each fetch): explore again to get a token")
        return tok


def guest_hash(code: bytes) -> str:
    return hashlib.sha256(code).hexdigest()[:12]
