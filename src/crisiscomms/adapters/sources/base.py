"""What every source adapter shares: the error boundary and small safe decoders.

``source_boundary`` is the one place where anything that is not already a
``SourceError`` becomes one, so ``Source.poll`` keeps its promise to raise only
``SourceError`` subclasses. Vendor-specific translation (httpx, tweepy/requests) happens
closer to the call, in ``http.py`` and ``x.py``; this is the last net.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any

import structlog

from crisiscomms.domain.clock import parse_instant
from crisiscomms.domain.errors import PermanentSourceError, SourceError, TransientSourceError

log = structlog.get_logger(__name__)


class SourceRateLimitedError(TransientSourceError):
    """The source said "not before ``retry_at``" (429 / Retry-After / X rate-limit reset).

    A ``TransientSourceError``, so callers that only know the core tree treat it right;
    the watcher should also read ``retry_at`` (``getattr(exc, "retry_at", None)``) and send
    nothing to the source before then.
    """

    def __init__(
        self,
        message: str,
        *,
        retry_at: datetime | None,
        source_id: str = "",
        error_class: str = "http_429",
    ) -> None:
        super().__init__(message, source_id=source_id, error_class=error_class,
                         retry_at=retry_at)


@contextmanager
def source_boundary(source_id: str) -> Iterator[None]:
    """Let ``SourceError`` through (with ``source_id`` filled in); wrap anything else.

    An unexpected exception is a bug or an input we did not foresee: it is logged with its
    traceback and reported as ``PermanentSourceError(error_class="unexpected")`` so one bad
    feed cannot stop the watcher. ``BaseException`` (cancellation, Ctrl-C) passes untouched.
    """
    try:
        yield
    except SourceError as exc:
        if not exc.source_id:
            exc.source_id = source_id
        raise
    except Exception as exc:
        log.error("source.unexpected_error", source_id=source_id, exc_info=True)
        raise PermanentSourceError(
            f"{source_id}: unexpected {type(exc).__name__} while polling",
            source_id=source_id,
            error_class="unexpected",
        ) from exc


def looks_like_json(body: bytes) -> bool:
    """True when the body starts like a JSON document (after a BOM and whitespace)."""
    head = body[:64].lstrip(b"\xef\xbb\xbf \t\r\n")
    return head[:1] in (b"{", b"[")


def looks_like_xml_or_html(body: bytes) -> bool:
    """True when the body starts with ``<`` (after a BOM and whitespace)."""
    head = body[:64].lstrip(b"\xef\xbb\xbf \t\r\n")
    if head.startswith((b"\xff\xfe", b"\xfe\xff")):  # UTF-16 XML
        return True
    return head[:1] == b"<"


def decode_json(body: bytes, *, source_id: str, what: str = "JSON") -> Any:
    """Parse a JSON body or raise ``PermanentSourceError`` naming why."""
    if not body.strip():
        raise PermanentSourceError(
            f"{source_id}: empty body where {what} was expected",
            source_id=source_id, error_class="empty",
        )
    if not looks_like_json(body):
        cls = "not_json" if looks_like_xml_or_html(body) else "parse"
        raise PermanentSourceError(
            f"{source_id}: body is not {what}", source_id=source_id, error_class=cls
        )
    try:
        return json.loads(body)
    except (ValueError, RecursionError) as exc:  # UnicodeDecodeError is a ValueError
        raise PermanentSourceError(
            f"{source_id}: invalid {what}: {type(exc).__name__}",
            source_id=source_id, error_class="parse",
        ) from exc


def parse_time(value: object) -> datetime | None:
    """An ISO-8601 or RFC 2822 instant as aware UTC, or ``None`` when absent or invalid."""
    if not isinstance(value, str) or not value.strip() or len(value) > 64:
        return None
    try:
        return parse_instant(value)
    except (ValueError, OverflowError):
        pass
    try:
        parsed = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    return parsed.replace(tzinfo=UTC) if parsed.tzinfo is None else parsed.astimezone(UTC)


def as_str(value: object, limit: int = 10_000) -> str:
    """``value`` if it is a string (capped), else ``""``: hostile JSON may put anything anywhere."""
    return value[:limit] if isinstance(value, str) else ""


def as_dict(value: object) -> dict[str, Any]:
    """``value`` if it is a JSON object, else an empty dict."""
    return value if isinstance(value, dict) else {}


def as_list(value: object) -> list[Any]:
    """``value`` if it is a JSON array, else an empty list."""
    return value if isinstance(value, list) else []


def id_key(value: str) -> tuple[int, int | str]:
    """Sort key for platform ids: numeric ids by value, others after them as text."""
    return (0, int(value)) if value.isdigit() and len(value) < 40 else (1, value)
