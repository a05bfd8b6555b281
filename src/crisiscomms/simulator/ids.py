"""Platform-shaped identifiers derived from simulated time.

Ids grow with the simulated clock (like X snowflakes, Mastodon ids and atproto TIDs), so
``since_id`` cursors behave as on the real platforms. Everything here is pure.
"""

from __future__ import annotations

import base64
import hashlib
from datetime import datetime

from crisiscomms.domain.clock import utc

# X snowflakes count milliseconds from this epoch (2010-11-04T01:42:54.657Z).
_X_EPOCH_MS = 1288834974657
_TID_ALPHABET = "234567abcdefghijklmnopqrstuvwxyz"


def _epoch_ms(at: datetime) -> int:
    return int(utc(at).timestamp() * 1000)


def x_snowflake(at: datetime, seq: int) -> str:
    """An X-style tweet id: time in the high bits, a sequence number in the low 22."""
    return str(((_epoch_ms(at) - _X_EPOCH_MS) << 22) + (seq % (1 << 22)))


def mastodon_id(at: datetime, seq: int) -> str:
    """A Mastodon-style status id: milliseconds << 16 plus a sequence number."""
    return str((_epoch_ms(at) << 16) + (seq % (1 << 16)))


def tid(at: datetime, seq: int) -> str:
    """An atproto TID (13 base32-sortable characters) for a record key."""
    micros = int(utc(at).timestamp() * 1_000_000)
    value = (micros << 10) | (seq % 1024)
    chars = []
    for _ in range(13):
        chars.append(_TID_ALPHABET[value & 31])
        value >>= 5
    return "".join(reversed(chars))


def fake_cid(*parts: str) -> str:
    """A deterministic CID-looking string (not a real multihash; clients treat it as opaque)."""
    digest = hashlib.sha256("\x1f".join(parts).encode()).digest()
    return "bafyrei" + base64.b32encode(digest).decode().lower().rstrip("=")[:52]


def did_for(handle: str) -> str:
    """A stable did:plc for a simulated Bluesky handle."""
    digest = hashlib.sha256(handle.lower().encode()).digest()
    return "did:plc:" + base64.b32encode(digest).decode().lower()[:24]


def numeric_id(name: str, base: int = 100_000_000) -> str:
    """A stable numeric id for a simulated account name."""
    digest = hashlib.sha256(name.lower().encode()).digest()
    return str(base + int.from_bytes(digest[:4], "big"))
