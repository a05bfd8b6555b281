"""Clocks. The only place that reads the system time is ``SystemClock``.

Everything else receives ``now`` as a parameter or a ``Clock`` from the composition root.
"""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta, tzinfo


def utc(dt: datetime) -> datetime:
    """Return ``dt`` as an aware UTC datetime (naive input is taken as UTC)."""
    if dt.tzinfo is None:
        return dt.replace(tzinfo=UTC)
    return dt.astimezone(UTC)


def parse_instant(text: str) -> datetime:
    """Parse an ISO-8601 instant; naive values are UTC. Raises ValueError."""
    value = text.strip()
    if value.endswith("Z"):
        value = value[:-1] + "+00:00"
    return utc(datetime.fromisoformat(value))


def isoformat(dt: datetime) -> str:
    """Canonical UTC ISO-8601 text used in the store and in JSON output."""
    return utc(dt).isoformat(timespec="microseconds").replace("+00:00", "Z")


def shown(dt: datetime | None, tz: tzinfo, *, seconds: bool = False) -> str:
    """A time for people: wall time in ``tz`` (the policy's zone, London by default) with the
    zone's name, e.g. ``2026-07-01 02:00 BST``; ``-`` for none. Every time shown to a person
    goes through here (or carries its zone some other way, as ISO-8601 with ``Z`` in JSON)."""
    if dt is None:
        return "-"
    wall = utc(dt).astimezone(tz)
    return wall.strftime("%Y-%m-%d %H:%M:%S %Z" if seconds else "%Y-%m-%d %H:%M %Z")


def parse_local_instant(text: str, tz: tzinfo) -> datetime:
    """Parse an ISO-8601 instant typed by a person: an offset or ``Z`` is honoured; a naive
    value is wall time in ``tz`` (the policy's zone), not UTC. Raises ValueError."""
    value = text.strip()
    if value.endswith(("Z", "z")):
        value = value[:-1] + "+00:00"
    dt = datetime.fromisoformat(value)
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=tz)
    return dt.astimezone(UTC)


class SystemClock:
    """The real wall clock."""

    def now(self) -> datetime:
        return datetime.now(UTC)


class FixedClock:
    """A clock frozen at one instant (``--at``), optionally advanced by hand."""

    def __init__(self, at: datetime) -> None:
        self._at = utc(at)
        self._lock = threading.Lock()

    def now(self) -> datetime:
        with self._lock:
            return self._at

    def set(self, at: datetime) -> None:
        with self._lock:
            self._at = utc(at)

    def advance(self, delta: timedelta) -> datetime:
        with self._lock:
            self._at = self._at + delta
            return self._at


class AtClock(FixedClock):
    """The clock frozen by ``--at`` (drills and what-if questions). The operator check refuses
    changes made with it on a database a watcher uses, unless ``live_ok`` (the explicit
    ``--at-on-live-database``); the audit trail records the real wall time beside it anyway."""

    def __init__(self, at: datetime, *, text: str = "", live_ok: bool = False) -> None:
        super().__init__(at)
        self.text = text or isoformat(at)
        self.live_ok = live_ok


def is_naive(text: str) -> bool:
    """True if an ISO-8601 instant carries no offset (and no ``Z``). Raises ValueError."""
    value = text.strip()
    if value.endswith(("Z", "z")):
        return False
    return datetime.fromisoformat(value).tzinfo is None
