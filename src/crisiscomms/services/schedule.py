"""When each source is due next: a heap of due times, so a tick looks only at what is due.

A key has at most one live due time; setting it again supersedes the older heap entry, which
is skipped (lazily deleted) when it comes to the top. ``pop_due(now)`` costs O(k log n) for
the k keys due, not O(n) for every source at every tick.
"""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Callable
from datetime import datetime


class Schedule:
    """Due times by key (a source's state key)."""

    def __init__(self) -> None:
        self._heap: list[tuple[datetime, int, str]] = []
        self._due: dict[str, tuple[datetime, int]] = {}
        self._seq = itertools.count()

    def __len__(self) -> int:
        return len(self._due)

    def __contains__(self, key: object) -> bool:
        return key in self._due

    def set(self, key: str, at: datetime) -> None:
        """``key`` is due at ``at`` (replacing any earlier due time)."""
        entry = (at, next(self._seq))
        self._due[key] = entry
        heapq.heappush(self._heap, (at, entry[1], key))
        if len(self._heap) > 4 * len(self._due) + 64:  # many superseded entries: compact
            self._heap = [(at, n, k) for k, (at, n) in self._due.items()]
            heapq.heapify(self._heap)

    def discard(self, key: str) -> None:
        """``key`` is not due at all (its heap entry is skipped)."""
        self._due.pop(key, None)

    def clear(self) -> None:
        self._heap.clear()
        self._due.clear()

    def due_at(self, key: str) -> datetime | None:
        entry = self._due.get(key)
        return None if entry is None else entry[0]

    def next_at(self) -> datetime | None:
        """The earliest due time (``None`` when nothing is scheduled)."""
        while self._heap:
            at, n, key = self._heap[0]
            if self._due.get(key) == (at, n):
                return at
            heapq.heappop(self._heap)
        return None

    def pop_due(self, now: datetime, *, limit: int | None = None,
                skip: Callable[[str], bool] | None = None) -> list[str]:
        """The keys due at ``now`` (earliest first), removed from the schedule: at most
        ``limit`` of them (the others stay due); a key ``skip`` names is removed but neither
        returned nor counted."""
        out: list[str] = []
        while self._heap and self._heap[0][0] <= now and (limit is None or len(out) < limit):
            at, n, key = heapq.heappop(self._heap)
            if self._due.get(key) == (at, n):
                del self._due[key]
                if skip is None or not skip(key):
                    out.append(key)
        return out
