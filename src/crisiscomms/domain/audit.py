"""The audit trail's hash chain: how an event is linked to the one before it, and how a chain
is checked. Pure; the stores persist the links (each under a lock that serialises the chain).

Three schemes, recorded on every event so a trail of mixed ages still verifies:

* ``sha256`` (events written before schema 8): SHA-256 over the event and the previous hash.
* ``sha256-v2``: the same, also covering the real wall-clock time the store recorded
  (``recorded_at``) and the scheme. Anyone can recompute it: it shows accidents and careless
  edits, not a deliberate rewrite.
* ``hmac-sha256``: HMAC-SHA256 keyed with ``CRISISCOMMS_AUDIT_KEY``. Without the key nobody can
  forge, edit or recompute an event undetected; truncation needs an outside witness of the head
  (``audit verify --expect-head``).
"""

from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

GENESIS = "0" * 64
LEGACY = "sha256"
PLAIN = "sha256-v2"
KEYED = "hmac-sha256"
SCHEMES = (LEGACY, PLAIN, KEYED)
# Wall time may step back this much between two events before verify calls it backwards (two
# hosts' clocks on one PostgreSQL database are never exactly in step).
BACKWARDS_TOLERANCE = timedelta(seconds=5)
# An event whose claimed ``at`` is further than this from its wall time is named by verify.
DRIFT_TOLERANCE = timedelta(minutes=5)


def canonical(event: dict[str, Any]) -> bytes:
    """The canonical JSON of an event: sorted keys, no spaces, UTF-8."""
    return json.dumps(event, sort_keys=True, ensure_ascii=False, separators=(",", ":")).encode()


def details_text(details: dict[str, Any] | None) -> str:
    """The stored (and hashed) form of an event's details."""
    return json.dumps(details or {}, sort_keys=True, ensure_ascii=False, separators=(",", ":"),
                      default=str)


def event_hash(seq: int, at: str, actor: str, action: str, subject: str, reason: str,
               details: str, prev_hash: str, *, recorded_at: str | None = None,
               scheme: str = LEGACY, key: bytes | None = None) -> str:
    """The hash of one event, including the previous link's hash, under ``scheme``.
    ``hmac-sha256`` needs ``key`` (ValueError without it)."""
    body: dict[str, Any] = {"seq": seq, "at": at, "actor": actor, "action": action,
                            "subject": subject, "reason": reason,
                            "details": json.loads(details), "prev_hash": prev_hash}
    if scheme == LEGACY:
        return hashlib.sha256(canonical(body)).hexdigest()
    body.update(recorded_at=recorded_at, scheme=scheme)
    if scheme == PLAIN:
        return hashlib.sha256(canonical(body)).hexdigest()
    if scheme == KEYED:
        if not key:
            raise ValueError("the hmac-sha256 scheme needs the audit key")
        return hmac.new(key, canonical(body), hashlib.sha256).hexdigest()
    raise ValueError(f"unknown audit hash scheme {scheme!r}")


def scheme_for(key: bytes | None) -> str:
    """The scheme new events are written with."""
    return KEYED if key else PLAIN


@dataclass(frozen=True)
class StoredLink:
    """One audit row as stored: ``at``, ``recorded_at`` and ``details`` in their hashed text
    forms. ``recorded_at`` is the real wall-clock time the store wrote it (None before 8)."""

    seq: int
    at: str
    actor: str
    action: str
    subject: str
    reason: str
    details: str
    prev_hash: str
    hash: str
    recorded_at: str | None = None
    scheme: str = LEGACY


@dataclass(frozen=True)
class ChainReport:
    """The result of walking the audit chain.

    ``ok`` is the chain's integrity as far as it could be checked: every link present, in
    order, its content matching its hash, the head matching the last link (and the expected
    head, if one was given, found in the chain). ``unchecked`` counts keyed events whose
    content could not be checked because no key was given. With a key, every event up to the
    last keyed one is protected by it (each keyed hash covers the link before it); the events
    after it are ``unprotected`` (written without the key, from before the key was set, or a
    rewrite by someone without it). ``legacy`` counts events written before wall times were
    recorded; ``old_after_new`` names those written after newer-format ones (a process of the
    version before schema 8 still running after the migration, or a rolling upgrade of
    PostgreSQL watchers: its INSERT leaves ``scheme`` at its default); their links and hashes
    are checked under the old scheme, and ``old_tail`` counts those not yet followed by a
    newer-format event (an old version is still writing). ``backwards`` names events whose
    recorded wall time is before the previous event's (beyond ``BACKWARDS_TOLERANCE``) and
    ``drifted`` events whose claimed ``at`` is far from their wall time (``--at``): both are
    warnings to read, not failures (a clock stepped back once must not fail verify for ever).
    ``fully_checked`` is what an operator can rely on: intact, every event's content checked,
    every event protected by the key where one is used, no old version still writing."""

    ok: bool
    count: int
    head_hash: str
    problem: str = ""
    bad_seq: int | None = None
    unchecked: int = 0
    legacy: int = 0
    keyed: int = 0
    backwards: tuple[int, ...] = ()
    drifted: tuple[int, ...] = ()
    unprotected: int = 0
    old_after_new: tuple[int, ...] = ()
    old_tail: int = 0

    @property
    def head(self) -> str:
        """The head as an outside copy should keep it: ``COUNT:HASH``."""
        return f"{self.count}:{self.head_hash}"

    @property
    def fully_checked(self) -> bool:
        return self.ok and not self.unchecked and not self.unprotected and not self.old_tail

    def not_fully_checked(self) -> list[str]:
        """Why an intact chain is not fully checked, one phrase each (empty when it is)."""
        out = []
        if self.unchecked:
            out.append(f"{self.unchecked} keyed events not checked (CRISISCOMMS_AUDIT_KEY is "
                       "not set here)")
        if self.unprotected:
            out.append(f"the last {self.unprotected} events are not yet protected by the key")
        if self.old_tail:
            out.append(f"the last {self.old_tail} events are in the old format (a process of "
                       "an older version is still writing)")
        return out


def parse_expected_head(text: str) -> tuple[int | None, str]:
    """``HASH`` or ``COUNT:HASH`` (as ``audit verify`` prints it). Raises ValueError."""
    value = text.strip()
    count: int | None = None
    if ":" in value:
        left, value = value.split(":", 1)
        if not left.strip().isdigit():
            raise ValueError(f"{text!r}: COUNT must be a whole number")
        count = int(left)
    value = value.strip().lower()
    if len(value) != 64 or any(c not in "0123456789abcdef" for c in value):
        raise ValueError(f"{text!r}: HASH must be 64 hexadecimal characters")
    return count, value


def _instant(text: str | None) -> datetime | None:
    if not text:
        return None
    try:
        return datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None


def verify_chain(links: Iterable[StoredLink], head: tuple[int, str] | None, *,
                 key: bytes | None = None,
                 expect_head: tuple[int | None, str] | None = None) -> ChainReport:
    """Walk the chain in ``seq`` order; name the first broken, missing or reordered link.
    ``head`` is the stored (count, hash) of the last link, kept apart so truncation shows;
    ``expect_head`` is a head witnessed earlier (count or None, hash): it must be in the chain,
    or events were deleted or rewritten since. ``key`` checks keyed events."""
    prev = GENESIS
    expected_seq = 1
    count = unchecked = legacy = keyed = since_keyed = 0
    backwards: list[int] = []
    drifted: list[int] = []
    seen_new = False
    old_after_new: list[int] = []
    old_tail = 0
    last_wall: datetime | None = None
    # The genesis (a new, empty trail's head) is in every chain: the first link points at it.
    witnessed = expect_head is None or (expect_head[1] == GENESIS
                                        and expect_head[0] in (None, 0))

    def broken(problem: str, bad: int | None) -> ChainReport:
        return ChainReport(False, count, prev, problem, bad, unchecked, legacy, keyed,
                           tuple(backwards), tuple(drifted), since_keyed if key else 0,
                           tuple(old_after_new), old_tail)

    for r in links:
        if r.seq != expected_seq:
            return broken(f"event {expected_seq} is missing (next is {r.seq})", expected_seq)
        if r.prev_hash != prev:
            return broken(f"event {r.seq}: previous-hash link broken (deleted, reordered "
                          "or edited event before it)", r.seq)
        if r.scheme not in SCHEMES:
            return broken(f"event {r.seq}: unknown hash scheme {r.scheme!r}", r.seq)
        if r.scheme == LEGACY:
            # After newer ones: an old version still writing. Its link and hash are checked
            # below like any other; under a key it is unprotected until a keyed event follows.
            if seen_new:
                old_after_new.append(r.seq)
                old_tail += 1
            legacy += 1
        else:
            seen_new = True
            old_tail = 0
        if r.scheme == KEYED:
            keyed += 1
            since_keyed = 0
        else:
            since_keyed += 1
        if r.scheme == KEYED and not key:
            unchecked += 1
        else:
            try:
                h = event_hash(r.seq, r.at, r.actor, r.action, r.subject, r.reason, r.details,
                               r.prev_hash, recorded_at=r.recorded_at, scheme=r.scheme, key=key)
            except (ValueError, TypeError):
                h = ""
            if not hmac.compare_digest(h, r.hash):
                what = ("does not match its key (edited, or keyed with another key)"
                        if r.scheme == KEYED else "does not match its hash (edited)")
                return broken(f"event {r.seq}: content {what}; action {r.action!r}", r.seq)
        wall = _instant(r.recorded_at)
        if wall is not None:
            if last_wall is not None and wall < last_wall - BACKWARDS_TOLERANCE:
                backwards.append(r.seq)
            last_wall = wall if last_wall is None else max(last_wall, wall)
            at = _instant(r.at)
            if at is not None and abs(at - wall) > DRIFT_TOLERANCE:
                drifted.append(r.seq)
        prev = r.hash
        count += 1
        expected_seq += 1
        if expect_head is not None and not witnessed and r.hash == expect_head[1]:
            if expect_head[0] is not None and expect_head[0] != r.seq:
                return broken(f"the expected head {expect_head[0]}:{expect_head[1]} is event "
                              f"{r.seq} here: events before it were deleted or added", r.seq)
            witnessed = True
    if head is not None and (head[0] != count or head[1] != prev) \
            and not (head[0] == 0 and count == 0):
        return broken(f"chain ends at event {count} but the head records event "
                      f"{head[0]}: events after {count} were deleted", count + 1)
    if head is None and count:
        return broken("the chain head record is missing", None)
    if not witnessed and expect_head is not None:
        n, h = expect_head
        where = f"event {n}" if n is not None else "an event"
        return broken(f"the expected head ({where} with hash {h[:16]}...) is not in the chain "
                      f"of {count} events: events were deleted or rewritten since it was "
                      "witnessed", (n if n is not None and n <= count else count + 1))
    return ChainReport(True, count, prev, "", None, unchecked, legacy, keyed, tuple(backwards),
                       tuple(drifted), since_keyed if key else 0, tuple(old_after_new),
                       old_tail)
