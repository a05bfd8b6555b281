"""Facebook Page publisher over httpx (Graph API).

Posts go to ``POST {base}/{version}/{page_id}/feed`` with ``message`` and ``link``. The Page
access token travels in the POST body (and in the ``Authorization`` header for reads), never
in a URL, so it cannot land in access logs or in our own log lines.

Facebook throttles with HTTP 400/403 and an error code (4, 17, 32, 613, 80001...) rather than
429; both become ``RateLimitedError``. The reset comes from ``Retry-After`` when present, else
from ``X-Business-Use-Case-Usage``'s ``estimated_time_to_regain_access`` (minutes), else a
fixed back-off.
"""

from __future__ import annotations

import json
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
from crisiscomms.domain.errors import (
    ConfigError,
    PermanentPublishError,
    PublishError,
    RateLimitedError,
    TransientPublishError,
)
from crisiscomms.domain.models import OutboxItem, PublishResult, Update
from crisiscomms.ports import Clock

log = structlog.get_logger(__name__)

PLATFORM = "facebook"
DEFAULT_BASE_URL = "https://graph.facebook.com"
GRAPH_VERSION = "v19.0"
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
        graph_version: str = GRAPH_VERSION,
    ) -> None:
        token = credentials.get("page_token")
        if token is None or not token.get_secret_value():
            raise ConfigError(f"channel {channel_id}: facebook needs credential 'page_token'")
        if not page_id:
            raise ConfigError(f"channel {channel_id}: facebook needs a page id")
        self.channel_id = channel_id
        self._feed = f"{base_url.rstrip('/')}/{graph_version}/{page_id}/feed"
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
        """A recent Page post with the same message (and link, when both have one)."""
        wanted = match_key(item.body)
        link = (item.url or (update.url if update is not None else "")).rstrip("/")
        params: dict[str, Any] = {"fields": "id,message,link", "limit": RECENT_POSTS}
        if item.sent_at is not None:
            # Every post since shortly before the first send, not just the newest page: after
            # a crash the next worker may have posted many more before this lookup.
            params["since"] = int((item.sent_at - LOOKUP_MARGIN).timestamp())
        posts: list[dict[str, Any]] = []
        try:
            with self._boundary():
                url: str | None = self._feed
                for _ in range(MAX_LOOKUP_PAGES):
                    if url is None:
                        break
                    response = self._client.get(
                        url, params=params if url == self._feed else None,
                        headers={"Authorization": f"Bearer {self._token.get_secret_value()}"},
                    )
                    self._raise_for(response)
                    body = response.json()
                    posts += body.get("data") or []
                    url = (body.get("paging") or {}).get("next")
        except PublishError as exc:
            raise cannot_tell(exc, platform=PLATFORM, channel_id=self.channel_id) from exc
        for post in posts:
            if match_key(str(post.get("message") or "")) != wanted:
                continue
            their_link = str(post.get("link") or "").rstrip("/")
            if link and their_link and their_link != link:
                continue
            post_id = str(post["id"])
            return PublishResult(post_id=post_id, url=f"https://www.facebook.com/{post_id}")
        return None

    def close(self) -> None:
        """Close the HTTP client if this publisher created it."""
        if self._owns_client:
            self._client.close()
