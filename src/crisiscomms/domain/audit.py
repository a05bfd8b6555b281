"""The audit trail's hash chain: how an event is linked to the one before it, and how a chain
is checked. Pure; the stores persist the links (each under a lock that serialises the chain)."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

GENESIS = "0" * 64


def canonical(event: dict[str, Any]) -> bytes:
    """The canonical JSON of an event: sorted keys, no spaces, UTF-8."""
    return json.dumps(event, sort_keys=True, ensure_ascii=False, separators=(",", ":")).encode()


def details_text(details: dict[str, Any] | None) -> str:
    """The stored (and hashed) form of an event's details."""
    return json.dumps(details or {}, sort_keys=True, ensure_ascii=False, separators=(",", ":"),
                      default=str)


def event_hash(seq: int, at: str, actor: str, action: str, subject: str, reason: str,
               details: str, prev_hash: str) -> str:
    """SHA-256 over the canonical JSON of the event including the previous link's hash."""
    body = {"seq": seq, "at": at, "actor": actor, "action": action, "subject": subject,
            "reason": reason, "details": json.loads(details), "prev_hash": prev_hash}
    return hashlib.sha256(canonical(body)).hexdigest()


@dataclass(frozen=True)
class StoredLink:
    """One audit row as stored: ``at`` and ``details`` in their hashed text forms."""

    seq: int
    at: str
    actor: str
    action: str
    subject: str
    reason: str
    details: str
    prev_hash: str
    hash: str


@dataclass(frozen=True)
class ChainReport:
    """The result of walking the audit chain."""

    ok: bool
    count: int
    head_hash: str
    problem: str = ""
    bad_seq: int | None = None


def verify_chain(links: Iterable[StoredLink], head: tuple[int, str] | None) -> ChainReport:
    """Walk the chain in ``seq`` order; name the first broken, missing or reordered link.
    ``head`` is the stored (count, hash) of the last link, kept apart so truncation shows."""
    prev = GENESIS
    expected_seq = 1
    count = 0
    for r in links:
        if r.seq != expected_seq:
            return ChainReport(False, count, prev,
                               f"event {expected_seq} is missing (next is {r.seq})", expected_seq)
        if r.prev_hash != prev:
            return ChainReport(False, count, prev,
                               f"event {r.seq}: previous-hash link broken (deleted, reordered "
                               "or edited event before it)", r.seq)
        try:
            h = event_hash(r.seq, r.at, r.actor, r.action, r.subject, r.reason, r.details,
                           r.prev_hash)
        except (ValueError, TypeError):
            h = ""
        if h != r.hash:
            return ChainReport(False, count, prev,
                               f"event {r.seq}: content does not match its hash "
                               f"(edited; action {r.action!r})", r.seq)
        prev = r.hash
        count += 1
        expected_seq += 1
    if head is not None and head[0] == 0 and count == 0:
        return ChainReport(True, 0, prev)
    if head is not None and (head[0] != count or head[1] != prev):
        return ChainReport(False, count, prev,
                           f"chain ends at event {count} but the head records event "
                           f"{head[0]}: events after {count} were deleted", count + 1)
    if head is None and count:
        return ChainReport(False, count, prev, "the chain head record is missing", None)
    return ChainReport(True, count, prev)
