"""Pieces every publisher adapter shares: error classification, rate-limit resets, redaction,
and the text normalisation used to recognise a post we made earlier.

Each adapter still owns its one boundary context manager; these are the pure parts of it.
"""

from __future__ import annotations

import email.utils
import hashlib
import html
import unicodedata
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from html.parser import HTMLParser

import httpx
from pydantic import SecretStr

from crisiscomms.domain.clock import parse_instant, utc
from crisiscomms.domain.errors import (
    OutcomeUnknownError,
    PermanentPublishError,
    PublishError,
    RateLimitedError,
    TransientPublishError,
)
from crisiscomms.domain.posttext import URL_RE, collapse_whitespace

DEFAULT_RESET = timedelta(seconds=60)
# A bogus or skewed reset header must not silence a crisis channel for days.
MAX_RESET = timedelta(hours=24)
_EPOCH_THRESHOLD = 1_000_000_000  # numbers this large are epoch seconds, smaller ones deltas
_MAX_REASON = 300
USER_AGENT = "crisiscomms/0.1"
DEFAULT_TIMEOUT = httpx.Timeout(15.0, connect=5.0)


def secret_values(credentials: Mapping[str, SecretStr]) -> tuple[str, ...]:
    """The plain secret strings, longest first, for ``redact`` (never log this tuple)."""
    values = {c.get_secret_value() for c in credentials.values()}
    return tuple(sorted((v for v in values if len(v) >= 4), key=len, reverse=True))


def redact(text: str, secrets: Iterable[str]) -> str:
    """Replace every secret value in ``text`` with ``***`` (platforms sometimes echo tokens)."""
    for value in secrets:
        if value:
            text = text.replace(value, "***")
    return text


def short_reason(text: str, secrets: Iterable[str]) -> str:
    """A platform's error text made safe for a message: one line, bounded, redacted."""
    reason = collapse_whitespace(redact(text, secrets))
    return reason if len(reason) <= _MAX_REASON else reason[: _MAX_REASON - 1] + "…"


def _parse_reset_value(value: str, now: datetime) -> datetime | None:
    value = value.strip()
    if not value:
        return None
    try:
        number = float(value)
    except ValueError:
        pass
    else:
        try:
            if number >= _EPOCH_THRESHOLD:
                return datetime.fromtimestamp(number, tz=UTC)
            return now + timedelta(seconds=max(number, 0.0))
        except (OverflowError, OSError, ValueError):
            return None
    try:
        return parse_instant(value)  # ISO 8601 (Mastodon X-RateLimit-Reset)
    except ValueError:
        pass
    try:
        return utc(email.utils.parsedate_to_datetime(value))  # HTTP date (Retry-After)
    except (TypeError, ValueError, IndexError):
        return None


def reset_from_headers(
    headers: Mapping[str, str], now: datetime, *, default: timedelta = DEFAULT_RESET
) -> datetime:
    """When a rate limit ends, from whichever header the platform sent.

    Looks at ``x-rate-limit-reset`` (X, epoch seconds), ``x-ratelimit-reset`` (Mastodon, ISO
    timestamp), ``ratelimit-reset`` (Bluesky, epoch seconds) and ``retry-after`` (seconds or an
    HTTP date); numbers of 10^9 or more are epoch seconds, smaller ones delays. Falls back to
    ``now + default``. The result is clamped to between one second and 24 hours from ``now``.
    """
    now = utc(now)
    lowered = {k.lower(): v for k, v in headers.items()}
    reset: datetime | None = None
    for name in ("x-rate-limit-reset", "x-ratelimit-reset", "ratelimit-reset", "retry-after"):
        if name in lowered:
            reset = _parse_reset_value(lowered[name], now)
            if reset is not None:
                break
    if reset is None:
        reset = now + default
    reset = utc(reset)
    return min(max(reset, now + timedelta(seconds=1)), now + MAX_RESET)


def error_for_status(
    status: int,
    reason: str,
    *,
    platform: str,
    channel_id: str,
    headers: Mapping[str, str],
    now: datetime,
) -> PublishError:
    """The ``PublishError`` for a non-2xx answer. ``reason`` must already be safe to show."""
    message = f"{platform} answered {status}" + (f": {reason}" if reason else "")
    if status == 429:
        reset_at = reset_from_headers(headers, now)
        return RateLimitedError(message, reset_at=reset_at, channel_id=channel_id, status=status)
    if status >= 500 or status == 408:
        return TransientPublishError(message, channel_id=channel_id, status=status)
    return PermanentPublishError(message, channel_id=channel_id, status=status)


def error_for_transport(
    exc: httpx.TransportError, *, platform: str, channel_id: str
) -> PublishError:
    """Classify an httpx failure by whether the request can have reached the platform."""
    kind = type(exc).__name__
    if isinstance(exc, httpx.UnsupportedProtocol):
        return PermanentPublishError(
            f"{platform}: base URL not usable ({kind})", channel_id=channel_id
        )
    not_sent = (
        httpx.ConnectError,
        httpx.ConnectTimeout,
        httpx.PoolTimeout,
        httpx.ProxyError,
        httpx.LocalProtocolError,
        # A failed write means the platform never got the whole request.
        httpx.WriteError,
        httpx.WriteTimeout,
    )
    if isinstance(exc, not_sent):
        return TransientPublishError(
            f"{platform}: request not sent ({kind})", channel_id=channel_id
        )
    # ReadTimeout, ReadError, RemoteProtocolError (disconnected after send) and anything else:
    # the platform may have acted on the request.
    return OutcomeUnknownError(
        f"{platform}: no answer after the request was sent ({kind})", channel_id=channel_id
    )


def cannot_tell(exc: PublishError, *, platform: str, channel_id: str) -> OutcomeUnknownError:
    """``find_existing`` could not look: whatever went wrong, the answer is "unknown"."""
    if isinstance(exc, OutcomeUnknownError):
        return exc
    return OutcomeUnknownError(
        f"{platform}: could not check for an earlier post: {exc}",
        channel_id=channel_id,
        status=exc.status,
    )


def stable_key(dedupe_key: str, length: int = 32) -> str:
    """A short, stable, non-reversible token for an outbox item (Idempotency-Key, rkeys)."""
    return hashlib.sha256(dedupe_key.encode("utf-8")).hexdigest()[:length]


class _TextExtractor(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.parts: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in {"br", "p"}:
            self.parts.append(" ")

    def handle_endtag(self, tag: str) -> None:
        if tag == "p":
            self.parts.append(" ")

    def handle_data(self, data: str) -> None:
        self.parts.append(data)


def html_to_text(markup: str) -> str:
    """Plain text of a Mastodon status's HTML ``content``."""
    parser = _TextExtractor()
    parser.feed(markup)
    parser.close()
    return "".join(parser.parts)


def match_key(text: str) -> str:
    """What to compare when recognising our own earlier post: entities decoded, URLs removed
    (X rewrites them to t.co, Mastodon splits them), whitespace collapsed, NFC."""
    text = unicodedata.normalize("NFC", html.unescape(text))
    return collapse_whitespace(URL_RE.sub(" ", text))


@contextmanager
def httpx_boundary(platform: str, channel_id: str) -> Iterator[None]:
    """Translate httpx failures and odd answers into the ``PublishError`` tree (the one
    boundary of the httpx publishers: Facebook, Mastodon, Bluesky)."""
    try:
        yield
    except PublishError:
        raise
    except httpx.TransportError as exc:
        raise error_for_transport(exc, platform=platform, channel_id=channel_id) from exc
    except (httpx.HTTPError, ValueError, KeyError, TypeError) as exc:
        # A 2xx we cannot read: the action may well have happened.
        raise OutcomeUnknownError(
            f"{platform}: unexpected answer ({type(exc).__name__})", channel_id=channel_id
        ) from exc


def default_client() -> httpx.Client:
    """The client an httpx publisher makes for itself when none is injected."""
    return httpx.Client(timeout=DEFAULT_TIMEOUT, headers={"User-Agent": USER_AGENT})
