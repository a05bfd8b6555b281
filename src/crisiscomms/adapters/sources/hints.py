"""What an answer's headers say about when to ask again (RFC 9111 freshness, ``Retry-After``,
the platforms' rate-limit windows). Pure functions of the headers (lower-case names) and
``now``; ``HttpFetcher`` turns them into ``PollHints``."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from email.utils import parsedate_to_datetime

from crisiscomms.domain.clock import parse_instant
from crisiscomms.domain.models import PollHints, ReadBudget

__all__ = ["freshness", "poll_hints", "rate_limit_reset", "read_budgets", "retry_at"]


def retry_at(headers: Mapping[str, str], now: datetime | None) -> datetime | None:
    """When the server says to come back: ``Retry-After`` (seconds need ``now``, or an
    HTTP date), else a rate-limit reset header (Mastodon's ISO ``X-RateLimit-Reset``)."""
    value = headers.get("retry-after", "").strip()
    if value.isdigit():
        return None if now is None else now + timedelta(seconds=min(int(value), 86_400))
    if value:
        try:
            when = parsedate_to_datetime(value)
        except (TypeError, ValueError, IndexError):
            return None
        return when.replace(tzinfo=UTC) if when.tzinfo is None else when.astimezone(UTC)
    return rate_limit_reset(headers)


def _http_date(value: str) -> datetime | None:
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    return when.replace(tzinfo=UTC) if when.tzinfo is None else when.astimezone(UTC)


def _seconds(value: str) -> float | None:
    value = value.strip().strip('"')
    return float(min(int(value), 86_400)) if value.isdigit() else None


def freshness(headers: Mapping[str, str], now: datetime | None) -> float | None:
    """How many more seconds the answer stays fresh (RFC 9111 for a private cache):
    ``Cache-Control: max-age`` less ``Age``, else ``Expires`` less ``Date`` (or ``now``); 0 for
    ``no-cache``/``no-store``; ``None`` when the answer says nothing."""
    directives: dict[str, str] = {}
    for part in headers.get("cache-control", "").lower().split(","):
        name, _, value = part.strip().partition("=")
        if name:
            directives[name] = value
    if "no-store" in directives or "no-cache" in directives:
        return 0.0
    age = _seconds(headers.get("age", "")) or 0.0
    max_age = _seconds(directives.get("max-age", ""))
    if max_age is not None:
        return max(0.0, max_age - age)
    expires = headers.get("expires", "").strip()
    if not expires:
        return None
    until = _http_date(expires)
    base = _http_date(headers.get("date", "")) or now
    if until is None or base is None:
        return 0.0  # an invalid Expires means "already expired" (RFC 9111 5.3)
    return max(0.0, min((until - base).total_seconds(), 86_400.0))


def read_budgets(headers: Mapping[str, str]) -> tuple[ReadBudget, ...]:
    """The read-limit window an answer names (``X-RateLimit-Remaining``/``-Reset``, as
    Mastodon sends on every API answer), if any."""
    remaining = headers.get("x-ratelimit-remaining", "").strip()
    reset = rate_limit_reset(headers)
    if not remaining.isdigit() or reset is None:
        return ()
    return (ReadBudget(int(remaining), reset),)


def poll_hints(headers: Mapping[str, str], now: datetime | None, *,
               requests: int = 1) -> PollHints:
    """What an answer's headers say about when to ask again."""
    retry = headers.get("retry-after", "").strip()
    retry_at = None
    if retry:
        secs = _seconds(retry)
        retry_at = (now + timedelta(seconds=secs) if secs is not None and now is not None
                    else None if secs is not None else _http_date(retry))
    return PollHints(max_age_seconds=freshness(headers, now), retry_after=retry_at,
                     budgets=read_budgets(headers), requests=requests)


def rate_limit_reset(headers: Mapping[str, str]) -> datetime | None:
    """``X-RateLimit-Reset`` as aware UTC: an ISO instant (Mastodon) or epoch seconds."""
    value = headers.get("x-ratelimit-reset", headers.get("x-rate-limit-reset", "")).strip()
    if not value or len(value) > 64:
        return None
    try:
        if value.isdigit():
            return datetime.fromtimestamp(int(value), UTC)
        return parse_instant(value)
    except (ValueError, OverflowError, OSError):
        return None


