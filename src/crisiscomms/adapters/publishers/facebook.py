"""Facebook Page publisher over httpx (Graph API).

Posts go to ``POST {base}/{version}/{page_id}/feed`` with ``message`` and ``link``; the page
id must be the numeric Page id (a vanity name is not documented to work there). The Graph
version is a setting (``CRISISCOMMS_FACEBOOK_GRAPH_VERSION``): a version expires about two
years after its successor is released, and an expired version's calls silently go to the next
oldest one, so it must be moved on before then.

After a timeout, a crash or "(#506) Duplicate status message", ``find_existing`` reads the
Page's own posts (``GET /{page_id}/published_posts``; ``/feed`` also holds visitors' posts and
posts the Page is tagged in) with fields that exist (``id, message, created_time,
permalink_url``): ``link`` and the other attachment fields of page posts were deprecated in
v3.3 and now answer error code 12.

The Page access token travels in the POST body (and in the ``Authorization`` header for reads),
never in a URL we build, so it cannot land in access logs or in our own log lines. Graph's
``paging.next`` links carry the token in their query string: only their paging parameters are
used, on our own URL, and the links themselves are never logged or requested.

Facebook throttles with HTTP 400/403 and an error code (4, 17, 32, 613, 80001...) rather than
429; both become ``RateLimitedError``. The reset comes from ``Retry-After`` when present, else
from ``X-Business-Use-Case-Usage``'s ``estimated_time_to_regain_access`` (minutes), else a
fixed back-off.
"""

from __future__ import annotations

import functools
import json
import re
from collections.abc import Mapping
from contextlib import AbstractContextManager
from datetime import datetime, timedelta
from typing import Any

import httpx
import structlog
from pydantic import SecretStr

from crisiscomms.adapters.publishers._common import (
    DEFAULT_RESET,
    cannot_tell,
    default_client,
    error_for_status,
    httpx_boundary,
    match_key,
    reset_from_headers,
    secret_values,
    short_reason,
)
from crisiscomms.domain.clock import utc
from crisiscomms.domain.errors import (
    ConfigError,
    PermanentPublishError,
    PublishError,
    RateLimitedError,
    TransientPublishError,
)
from crisiscomms.domain.models import OutboxItem, PublishResult, Update
from crisiscomms.domain.posttext import url_spans
from crisiscomms.ports import Clock
from crisiscomms.retry import call_with_retry

log = structlog.get_logger(__name__)

PLATFORM = "facebook"
DEFAULT_BASE_URL = "https://graph.facebook.com"
# The newest Graph API version in Meta's changelog (v27.0, introduced 2026-11-04); keep in
# step with ``Settings.facebook_graph_version``.
DEFAULT_GRAPH_VERSION = "v27.0"
GRAPH_VERSION_RE = re.compile(r"v\d{1,3}\.\d{1,2}")
# The Page's posts as they can still be read (the link attachment cannot: see the docstring).
POST_FIELDS = "id,message,created_time,permalink_url"
# Paging parameters worth keeping from a ``paging.next`` link (never its access_token).
_PAGING_PARAMS = ("after", "before", "until", "since", "limit", "__paging_token")
# Graph API error codes that mean "slow down" (app, user, page and business-use-case limits).
THROTTLE_CODES = frozenset({4, 17, 32, 613, 80001, 80002, 80004, 80005, 80006, 80008, 80014})
# "Unknown error" and "service temporarily unavailable".
TRANSIENT_CODES = frozenset({1, 2})
THROTTLE_BACKOFF = timedelta(minutes=5)
RECENT_POSTS = 100
MAX_LOOKUP_PAGES = 10
LOOKUP_MARGIN = timedelta(minutes=10)


def regain_access_at(headers: Mapping[str, str], now: datetime) -> datetime | None:
    """``now`` plus the largest ``estimated_time_to_regain_access`` (minutes) in the
    ``X-Business-Use-Case-Usage`` header, or ``None`` when it does not say."""
    raw = {k.lower(): v for k, v in headers.items()}.get("x-business-use-case-usage")
    if not raw:
        return None
    try:
        usage = json.loads(raw)
    except ValueError:
        return None
    minutes = 0.0
    if isinstance(usage, dict):
        for entries in usage.values():
            for entry in entries if isinstance(entries, list) else []:
                if isinstance(entry, dict):
                    value = entry.get("estimated_time_to_regain_access", 0)
                    if isinstance(value, int | float):
                        minutes = max(minutes, float(value))
    return now + timedelta(minutes=minutes) if minutes > 0 else None


def _reset_at(headers: Mapping[str, str], now: datetime, fallback: timedelta) -> datetime:
    """Standard rate-limit headers first, then Facebook's usage header, then ``fallback``."""
    regain = regain_access_at(headers, now)
    # reset_from_headers prefers Retry-After & co. and clamps whatever it returns.
    return reset_from_headers(headers, now, default=regain - now if regain else fallback)


class FacebookPublisher:
    """``Publisher`` for a Facebook Page (``pages_manage_posts``, ``pages_read_engagement``)."""

    def __init__(
        self,
        channel_id: str,
        *,
        page_id: str,
        credentials: Mapping[str, SecretStr],
        clock: Clock,
        base_url: str = DEFAULT_BASE_URL,
        client: httpx.Client | None = None,
        graph_version: str = DEFAULT_GRAPH_VERSION,
    ) -> None:
        token = credentials.get("page_token")
        if token is None or not token.get_secret_value():
            raise ConfigError(f"channel {channel_id}: facebook needs credential 'page_token'")
        if not page_id:
            raise ConfigError(f"channel {channel_id}: facebook needs a page id")
        if not GRAPH_VERSION_RE.fullmatch(graph_version):
            raise ConfigError(
                f"channel {channel_id}: facebook Graph version must look like "
                f"{DEFAULT_GRAPH_VERSION}, got {graph_version!r}"
            )
        if not page_id.isdigit():
            # Only the numeric Page id is documented for /{page-id}/feed.
            log.warning("publisher.page_id_not_numeric", channel=channel_id, page_id=page_id,
                        hint="use the numeric Page id (Page settings > About > Page ID)")
        self.channel_id = channel_id
        root = f"{base_url.rstrip('/')}/{graph_version}/{page_id}"
        self._feed = f"{root}/feed"
        self._published_posts = f"{root}/published_posts"
        self._token = token
        self._secrets = secret_values(credentials)
        self._clock = clock
        self._owns_client = client is None
        self._client = client or default_client()

    def _boundary(self) -> AbstractContextManager[None]:
        """Translate httpx failures and odd answers into the ``PublishError`` tree."""
        return httpx_boundary(PLATFORM, self.channel_id)

    def _raise_for(self, response: httpx.Response) -> None:
        if response.is_success:
            return
        status = response.status_code
        now = self._clock.now()
        error: dict[str, Any] = {}
        try:
            body = response.json()
            if isinstance(body, dict) and isinstance(body.get("error"), dict):
                error = body["error"]
        except ValueError:
            pass
        code = error.get("code")
        reason = short_reason(str(error.get("message") or response.reason_phrase), self._secrets)
        if code is not None:
            reason = f"{reason} (code {code})"
        message = f"{PLATFORM} answered {status}: {reason}"
        if code in THROTTLE_CODES or status == 429:
            fallback = THROTTLE_BACKOFF if code in THROTTLE_CODES else DEFAULT_RESET
            raise RateLimitedError(
                message,
                reset_at=_reset_at(response.headers, now, fallback),
                channel_id=self.channel_id,
                status=status,
            )
        if error.get("is_transient") is True or code in TRANSIENT_CODES:
            raise TransientPublishError(message, channel_id=self.channel_id, status=status)
        if 400 <= status < 500:
            raise PermanentPublishError(message, channel_id=self.channel_id, status=status)
        raise error_for_status(
            status,
            reason,
            platform=PLATFORM,
            channel_id=self.channel_id,
            headers=response.headers,
            now=now,
        )

    def publish(self, item: OutboxItem, update: Update | None) -> PublishResult:
        """Post ``item.body`` with the update's link to the Page feed."""
        data = {"message": item.body, "access_token": self._token.get_secret_value()}
        link = item.url or (update.url if update is not None else "")
        if link:
            data["link"] = link
        with self._boundary():
            response = self._client.post(self._feed, data=data)
            self._raise_for(response)
            post_id = str(response.json()["id"])
        return PublishResult(post_id=post_id, url=f"https://www.facebook.com/{post_id}")

    def find_existing(self, item: OutboxItem, update: Update | None) -> PublishResult | None:
        """A post of the Page, since shortly before the first send, with the same message.

        The words are compared without their URLs (robust to Facebook keeping or dropping a
        URL that is also the link attachment); URLs the post's message does carry must be the
        ones we would have sent (the attachment itself cannot be read back).
        """
        link = item.url or (update.url if update is not None else "")
        posts = self._recent_posts(item.sent_at)
        earliest = item.sent_at - LOOKUP_MARGIN if item.sent_at is not None else None
        for post in posts:
            post_id = post.get("id")
            if not isinstance(post_id, str) or not post_id:
                continue
            if not _same_message(str(post.get("message") or ""), item.body, link):
                continue
            created = _graph_time(post.get("created_time"))
            if earliest is not None and created is not None and created < earliest:
                continue  # an older post with the same words is not this item's
            permalink = post.get("permalink_url")
            if not isinstance(permalink, str) or not permalink.startswith("https://"):
                permalink = f"https://www.facebook.com/{post_id}"
            return PublishResult(post_id=post_id, url=permalink)
        return None

    def _recent_posts(self, sent_at: datetime | None) -> list[dict[str, Any]]:
        """The Page's own posts, newest first, since shortly before ``sent_at`` (every page of
        them, not just the newest: after a crash the next worker may have posted many more)."""
        params: dict[str, Any] = {"fields": POST_FIELDS, "limit": RECENT_POSTS}
        if sent_at is not None:
            params["since"] = int((sent_at - LOOKUP_MARGIN).timestamp())
        headers = {"Authorization": f"Bearer {self._token.get_secret_value()}"}
        posts: list[dict[str, Any]] = []

        def page(params: dict[str, Any]) -> Any:
            with self._boundary():
                response = self._client.get(self._published_posts, params=params,
                                            headers=headers)
                self._raise_for(response)
                return response.json()

        try:
            for _ in range(MAX_LOOKUP_PAGES):
                # A busy Graph fails one page now and then: ask for that page again rather
                # than let a long look-back fail as a whole (a read is safe to repeat).
                body = call_with_retry(functools.partial(page, dict(params)),
                                       what=f"lookup:{self.channel_id}",
                                       retry_on=(TransientPublishError,), attempts=3,
                                       initial_s=1.0, deadline_s=20.0)
                posts += [p for p in body.get("data") or [] if isinstance(p, dict)]
                following = _next_page_params(body.get("paging"))
                if following is None:
                    break
                params = {**params, **following}
        except PublishError as exc:
            raise cannot_tell(exc, platform=PLATFORM, channel_id=self.channel_id) from exc
        return posts

    def close(self) -> None:
        """Close the HTTP client if this publisher created it."""
        if self._owns_client:
            self._client.close()


def _next_page_params(paging: Any) -> dict[str, str] | None:
    """The paging parameters of Graph's ``paging.next`` link, or ``None`` on the last page.

    The link carries the access token in its query string: it is never requested (its host is
    not trusted with the token) nor logged; only the paging parameters are kept.
    """
    if not isinstance(paging, dict) or not isinstance(paging.get("next"), str):
        return None
    try:
        query = httpx.URL(paging["next"]).params
    except (httpx.InvalidURL, ValueError):
        return None
    kept = {name: query[name] for name in _PAGING_PARAMS if name in query}
    return kept or None


def _urls(text: str) -> set[str]:
    return {text[a:b].rstrip("/") for a, b in url_spans(text)}


def _same_message(theirs: str, ours: str, link: str) -> bool:
    """Whether a Page post's ``message`` is the one we send for ``ours`` (with ``link``)."""
    if match_key(theirs) != match_key(ours):
        return False
    shown = _urls(theirs)
    if not shown:
        return True
    sent = _urls(ours) or {link.rstrip("/")} - {""}
    return shown <= sent


def _graph_time(value: Any) -> datetime | None:
    """A Graph ``created_time`` (``2026-12-01T10:00:00+0000``) as UTC, ``None`` if unreadable."""
    if not isinstance(value, str):
        return None
    try:
        return utc(datetime.strptime(value, "%Y-%m-%dT%H:%M:%S%z"))
    except ValueError:
        return None
