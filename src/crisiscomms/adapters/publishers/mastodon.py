"""Mastodon publisher over httpx: boosts official posts, or posts our own text.

A post carries ``Idempotency-Key: crisiscomms-<hash of the item's dedupe key>``, which Mastodon
honours for an hour, so resending the same item after a lost answer cannot post twice.

Auth is a Bearer token of our account with scopes ``write:statuses`` (post, boost) and
``read`` (or, narrower, ``read:search`` to resolve a remote status before boosting it, plus
``read:accounts read:statuses`` for ``find_existing``). A search refused for want of scope is
reported as such.

Budgets (Mastodon's own limiter): posting and boosting share 300 per 3 hours per account, and
their answers carry that budget's ``X-RateLimit-*`` headers; every call also counts against
the general 300 requests per 5 minutes. A 429 becomes ``RateLimitedError`` whose ``reset_at``
is the ISO ``X-RateLimit-Reset`` (up to three hours away for posts), so the channel waits for
the budget's reset rather than retrying into it.
"""

from __future__ import annotations

from collections.abc import Mapping
from contextlib import AbstractContextManager
from typing import Any
from urllib.parse import urlsplit

import httpx
import structlog
from pydantic import SecretStr

from crisiscomms.adapters.publishers._common import (
    cannot_tell,
    default_client,
    error_for_status,
    html_to_text,
    httpx_boundary,
    match_key,
    secret_values,
    short_reason,
    stable_key,
)
from crisiscomms.domain.errors import ConfigError, PublishError
from crisiscomms.domain.models import (
    ActionKind,
    NativeRef,
    OutboxItem,
    Platform,
    PublishResult,
    Update,
)
from crisiscomms.ports import Clock

log = structlog.get_logger(__name__)

PLATFORM = "mastodon"
RECENT_STATUSES = 40  # the API's maximum page size
_NATIVE_ACTIONS = frozenset({ActionKind.BOOST, ActionKind.RETWEET, ActionKind.REPOST})


def idempotency_key(item: OutboxItem) -> str:
    """The ``Idempotency-Key`` for ``item``: stable per item, reveals nothing about it."""
    return f"crisiscomms-{stable_key(item.dedupe_key)}"


def instance_url(account: str) -> str | None:
    """``https://host`` for an account written ``@name@host`` (``None`` if there is no host)."""
    parts = account.lstrip("@").split("@")
    return f"https://{parts[1]}" if len(parts) == 2 and parts[1] else None


class MastodonPublisher:
    """``Publisher`` for a Mastodon account. ``base_url`` is the account's instance."""

    def __init__(
        self,
        channel_id: str,
        *,
        base_url: str,
        credentials: Mapping[str, SecretStr],
        clock: Clock,
        client: httpx.Client | None = None,
        visibility: str = "public",
    ) -> None:
        token = credentials.get("access_token")
        if token is None or not token.get_secret_value():
            raise ConfigError(f"channel {channel_id}: mastodon needs credential 'access_token'")
        self.channel_id = channel_id
        self._base = base_url.rstrip("/")
        self._host = urlsplit(self._base).netloc.lower()
        self._token = token
        self._secrets = secret_values(credentials)
        self._clock = clock
        self._visibility = visibility
        self._owns_client = client is None
        self._client = client or default_client()
        self._account_id: str | None = None

    # -- the boundary -------------------------------------------------------------------------

    def _boundary(self) -> AbstractContextManager[None]:
        """Translate httpx failures and odd answers into the ``PublishError`` tree."""
        return httpx_boundary(PLATFORM, self.channel_id)

    def _request(
        self,
        method: str,
        path: str,
        *,
        json: dict[str, Any] | None = None,
        params: dict[str, str | int] | None = None,
        headers: dict[str, str] | None = None,
    ) -> httpx.Response:
        auth = {"Authorization": f"Bearer {self._token.get_secret_value()}"}
        return self._client.request(
            method, self._base + path, json=json, params=params, headers={**auth, **(headers or {})}
        )

    def _raise_for(self, response: httpx.Response, *, forbidden: str = "") -> None:
        """Raise the error for a non-2xx answer; ``forbidden`` is said after a 403's reason."""
        if response.is_success:
            return
        reason = response.reason_phrase
        try:
            body = response.json()
            if isinstance(body, dict) and body.get("error"):
                reason = str(body["error"])
        except ValueError:
            pass
        reason = short_reason(reason, self._secrets)
        if response.status_code == 403 and forbidden:
            reason = f"{reason} ({forbidden})"
        raise error_for_status(
            response.status_code,
            reason,
            platform=PLATFORM,
            channel_id=self.channel_id,
            headers=response.headers,
            now=self._clock.now(),
        )

    def _json(self, response: httpx.Response) -> Any:
        self._raise_for(response)
        return response.json()

    # -- Publisher ----------------------------------------------------------------------------

    def publish(self, item: OutboxItem, update: Update | None) -> PublishResult:
        """Boost the official post when we can reach it, else post ``item.body``."""
        with self._boundary():
            native = _boostable(item)
            if native is not None:
                local_id = self._local_id(native)
                if local_id is not None:
                    return self._boost(local_id, native)
                log.warning(
                    "publisher.fallback",
                    channel=self.channel_id,
                    item=item.id,
                    reason="status not reachable from our instance",
                )
            return self._post(item)

    def find_existing(self, item: OutboxItem, update: Update | None) -> PublishResult | None:
        """Our boost of the status (``reblogged``), or a recent status of ours with this text."""
        try:
            with self._boundary():
                native = _boostable(item)
                if native is not None:
                    local_id = self._local_id(native)
                    if local_id is not None:
                        return self._boosted(local_id)
                return self._find_post(item)
        except PublishError as exc:
            raise cannot_tell(exc, platform=PLATFORM, channel_id=self.channel_id) from exc

    def close(self) -> None:
        """Close the HTTP client if this publisher created it."""
        if self._owns_client:
            self._client.close()

    # -- helpers ------------------------------------------------------------------------------

    def _local_id(self, native: NativeRef) -> str | None:
        """The status id on our instance: the same id if it lives here, else via a search."""
        where = native.url or native.uri
        if native.id and (not where or urlsplit(where).netloc.lower() == self._host):
            return native.id
        if not where:
            return None
        response = self._request(
            "GET",
            "/api/v2/search",
            params={"q": where, "resolve": "true", "type": "statuses", "limit": 1},
        )
        self._raise_for(response, forbidden="boosting a remote status needs a token with "
                                            "scope read or read:search")
        found = response.json()
        statuses = found.get("statuses") or []
        return str(statuses[0]["id"]) if statuses else None

    def _boost(self, local_id: str, native: NativeRef) -> PublishResult:
        body = self._json(self._request("POST", f"/api/v1/statuses/{local_id}/reblog"))
        original = body.get("reblog") or {}
        return PublishResult(
            post_id=str(body["id"]), url=str(original.get("url") or native.url or "")
        )

    def _boosted(self, local_id: str) -> PublishResult | None:
        response = self._request("GET", f"/api/v1/statuses/{local_id}")
        if response.status_code == 404:
            return None
        status = self._json(response)
        if not status.get("reblogged"):
            return None
        url = str(status.get("url") or "")
        # This answer lacks the boost's own id (what publish returned): look for it among our
        # recent statuses, and fall back to naming the boost by the original.
        for mine in self._my_statuses(exclude_reblogs=False):
            reblog = mine.get("reblog") or {}
            if str(reblog.get("id")) == local_id:
                return PublishResult(post_id=str(mine["id"]), url=url)
        return PublishResult(post_id=f"reblog:{local_id}", url=url)

    def _post(self, item: OutboxItem) -> PublishResult:
        body = self._json(
            self._request(
                "POST",
                "/api/v1/statuses",
                json={"status": item.body, "visibility": self._visibility,
                      # A CAP follow-up answers our own status of the alert, in its thread.
                      **({"in_reply_to_id": item.reply_to} if item.reply_to else {})},
                headers={"Idempotency-Key": idempotency_key(item)},
            )
        )
        return PublishResult(post_id=str(body["id"]), url=str(body.get("url") or ""))

    def _my_statuses(self, *, exclude_reblogs: bool) -> list[dict[str, Any]]:
        if self._account_id is None:
            me = self._json(self._request("GET", "/api/v1/accounts/verify_credentials"))
            self._account_id = str(me["id"])
        statuses = self._json(
            self._request(
                "GET",
                f"/api/v1/accounts/{self._account_id}/statuses",
                params={
                    "limit": RECENT_STATUSES,
                    "exclude_reblogs": "true" if exclude_reblogs else "false",
                },
            )
        )
        return [s for s in statuses if isinstance(s, dict)]

    def _find_post(self, item: OutboxItem) -> PublishResult | None:
        wanted = match_key(item.body)
        for status in self._my_statuses(exclude_reblogs=True):
            if match_key(html_to_text(str(status.get("content") or ""))) == wanted:
                return PublishResult(post_id=str(status["id"]), url=str(status.get("url") or ""))
        return None


def _boostable(item: OutboxItem) -> NativeRef | None:
    """The Mastodon status to boost, or ``None`` when the item must be posted as text."""
    native = item.native
    if item.action not in _NATIVE_ACTIONS or native is None:
        return None
    if native.platform is not Platform.MASTODON or not (native.id or native.url or native.uri):
        return None
    return native
