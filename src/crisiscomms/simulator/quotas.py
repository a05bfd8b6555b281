"""Per-endpoint request quotas in simulated time, in fixed windows like the platforms' own.

Not thread-safe on its own: ``World`` calls it under its lock.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from crisiscomms.domain.clock import utc


@dataclass(frozen=True, slots=True)
class Quota:
    """``limit`` units per ``window`` of simulated time. ``aligned`` windows start at whole
    multiples of ``window`` since the epoch (Mastodon's limiter: a recorded post at 13:53
    resets at 15:00 in a 3-hour window) instead of at the first request."""

    limit: int
    window: timedelta
    aligned: bool = False


@dataclass(frozen=True, slots=True)
class QuotaDecision:
    """Outcome of spending from a quota; ``reset_at`` is simulated time."""

    allowed: bool
    limit: int
    remaining: int
    reset_at: datetime


_15_MIN = timedelta(minutes=15)

# Defaults from shared/reference/platform-facts.md (X pay-per-use per-user limits; Mastodon
# 300 requests / 5 min per account for the API in general, and a separate 300 / 3 h per
# account that posting and boosting share, both epoch-aligned as recorded in
# shared/recorded/mastodon/; Bluesky 5,000 points / h with create = 3 points).
DEFAULT_QUOTAS: dict[str, Quota] = {
    "x:POST /2/tweets": Quota(100, _15_MIN),
    # X's 24-hour windows (x-app-limit-24hour-*; "<key> user-24h" for x-user-limit-24hour-*,
    # none by default: the legacy tiers had e.g. 17 posts / 24 h per user on Free).
    "x:POST /2/tweets app-24h": Quota(10_000, timedelta(hours=24)),
    "x:POST /2/users/:id/retweets": Quota(50, _15_MIN),
    "x:GET /2/users/:id/tweets": Quota(900, _15_MIN),
    "x:GET /2/tweets/search/recent": Quota(450, _15_MIN),
    "x:GET /2/tweets/:id": Quota(900, _15_MIN),
    "x:GET /2/users/me": Quota(75, _15_MIN),
    "x:GET /2/users/by/username/:username": Quota(900, _15_MIN),
    "mastodon:account": Quota(300, timedelta(minutes=5), aligned=True),
    "mastodon:statuses": Quota(300, timedelta(hours=3), aligned=True),
    "bluesky:points": Quota(5000, timedelta(hours=1)),
    "bluesky:createSession": Quota(30, timedelta(minutes=5)),
    "facebook:page": Quota(4800, timedelta(hours=24)),
}


class QuotaBook:
    """Fixed windows that start at the first request after the previous window ended."""

    def __init__(self, quotas: dict[str, Quota] | None = None) -> None:
        self._quotas = dict(DEFAULT_QUOTAS if quotas is None else quotas)
        self._windows: dict[str, tuple[datetime, int]] = {}

    def set(self, key: str, quota: Quota | None) -> None:
        """Replace (or with ``None`` remove) the quota for ``key`` and restart its window."""
        if quota is None:
            self._quotas.pop(key, None)
        else:
            self._quotas[key] = quota
        self._windows.pop(key, None)

    def get(self, key: str) -> Quota | None:
        """The quota configured for ``key``, if any."""
        return self._quotas.get(key)

    def _window(self, key: str, quota: Quota, now: datetime) -> tuple[datetime, int]:
        if quota.aligned:
            step = quota.window.total_seconds()
            begun = datetime.fromtimestamp(now.timestamp() // step * step, now.tzinfo)
            start, used = self._windows.get(key, (begun, 0))
            return (start, used) if start == begun else (begun, 0)
        start, used = self._windows.get(key, (now, 0))
        if now >= start + quota.window:
            start, used = now, 0
        return start, used

    def peek(self, key: str, now: datetime) -> QuotaDecision | None:
        """The current state without spending; ``None`` when ``key`` has no quota."""
        quota = self._quotas.get(key)
        if quota is None:
            return None
        start, used = self._window(key, quota, utc(now))
        return QuotaDecision(
            used < quota.limit, quota.limit, max(quota.limit - used, 0), start + quota.window
        )

    def spend(self, key: str, now: datetime, cost: int = 1) -> QuotaDecision | None:
        """Spend ``cost`` units if they fit; ``None`` when ``key`` has no quota."""
        quota = self._quotas.get(key)
        if quota is None:
            return None
        now = utc(now)
        start, used = self._window(key, quota, now)
        allowed = used + cost <= quota.limit
        if allowed:
            used += cost
        self._windows[key] = (start, used)
        return QuotaDecision(allowed, quota.limit, max(quota.limit - used, 0), start + quota.window)
