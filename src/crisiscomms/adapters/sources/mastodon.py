"""A Mastodon account's own public statuses, over the public REST API (no token needed).

The account is given as a URL ``https://host/@name`` (``account`` or ``url`` in the
catalogue). Its id is looked up once with ``GET /api/v1/accounts/lookup?acct=name`` and
remembered in ``extra`` (``mastodon_account_id``, keyed by the account URL so a changed
catalogue entry is looked up again). Statuses come from
``GET /api/v1/accounts/:id/statuses?exclude_replies=true&exclude_reblogs=true&since_id=``
with the newest id seen kept as the cursor. Boosts, replies, statuses by anyone else and
non-public visibilities are dropped. ``api_base`` overrides ``https://host`` (simulator).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any
from urllib.parse import urlsplit

from crisiscomms.adapters.sources.base import (
    as_dict,
    as_str,
    decode_json,
    id_key,
    parse_time,
    source_boundary,
)
from crisiscomms.adapters.sources.http import (
    DEFAULT_MAX_BYTES,
    FetchResponse,
    HttpFetcher,
    rate_limit_reset,
)
from crisiscomms.adapters.sources.rss import http_url, not_modified_result
from crisiscomms.adapters.sources.text import html_to_text, title_from_text
from crisiscomms.domain.config import SourceConfig
from crisiscomms.domain.errors import ConfigError, PermanentSourceError
from crisiscomms.domain.models import (
    NativeRef,
    Platform,
    PollResult,
    SourceKind,
    SourceState,
    Update,
)

ACCOUNT_ID_KEY = "mastodon_account_id"
ACCOUNT_FOR_KEY = "mastodon_account"
PAGE_LIMIT = 40
_PUBLIC = frozenset({"public", "unlisted", ""})


def parse_account_url(account: str) -> tuple[str, str]:
    """``https://host/@name`` (or ``@name@host``) -> (``https://host``, ``name``)."""
    value = account.strip()
    if value.startswith("@") and value.count("@") == 2:
        name, host = value[1:].split("@")
        return f"https://{host}", name
    parts = urlsplit(value)
    segment = parts.path.strip("/").split("/")[0] if parts.path else ""
    if parts.scheme not in ("http", "https") or not parts.netloc or not segment.startswith("@"):
        raise ConfigError(f"mastodon account must look like https://host/@name, got {account!r}")
    return f"{parts.scheme}://{parts.netloc}", segment[1:]


class MastodonSource:
    """One Mastodon account (``SourceKind.MASTODON``)."""

    def __init__(
        self,
        config: SourceConfig,
        fetcher: HttpFetcher,
        *,
        api_base: str | None = None,
        max_bytes: int = DEFAULT_MAX_BYTES,
    ) -> None:
        self.config = config
        self.key = config.id
        self.source_ids: tuple[str, ...] = (config.id,)
        self.account_url = (config.account or config.url or "").strip()
        host_base, self.username = parse_account_url(self.account_url)
        self.api_base = (api_base or host_base).rstrip("/")
        self._fetcher = fetcher
        self._max_bytes = max_bytes

    async def _get(
        self, path: str, params: dict[str, str], now: datetime, etag: str | None = None
    ) -> FetchResponse:
        return await self._fetcher.fetch(
            self.api_base + path, source_id=self.key, params=params, etag=etag,
            max_bytes=self._max_bytes, allow_private=self.config.allow_private_network,
            accept="application/json", now=now,
        )

    def _known_id(self, state: SourceState) -> str | None:
        known = state.extra.get(ACCOUNT_ID_KEY)
        same_account = state.extra.get(ACCOUNT_FOR_KEY) == self.account_url
        if isinstance(known, str) and known and same_account:
            return known
        return None

    async def _lookup(self, now: datetime) -> str:
        response = await self._get("/api/v1/accounts/lookup", {"acct": self.username}, now)
        account = as_dict(decode_json(response.body, source_id=self.key, what="account JSON"))
        account_id = as_str(account.get("id"), 100)
        if not account_id:
            raise PermanentSourceError(
                f"{self.key}: account lookup returned no id", source_id=self.key,
                error_class="parse",
            )
        return account_id

    async def poll(self, state: SourceState, now: datetime) -> PollResult:
        """Fetch statuses newer than the cursor and return the account's own posts."""
        with source_boundary(self.key):
            params = {"exclude_replies": "true", "exclude_reblogs": "true",
                      "limit": str(PAGE_LIMIT)}
            if state.cursor:
                params["since_id"] = state.cursor
            account_id = self._known_id(state)
            response = None
            if account_id:
                try:
                    response = await self._get(
                        f"/api/v1/accounts/{account_id}/statuses", params, now, etag=state.etag
                    )
                except PermanentSourceError as exc:
                    if exc.error_class != "http_404":
                        raise
                    account_id = None  # the remembered id is stale: look it up again
            if response is None or account_id is None:
                account_id = await self._lookup(now)
                response = await self._get(
                    f"/api/v1/accounts/{account_id}/statuses", params, now
                )
            extra = dict(state.extra)
            extra[ACCOUNT_ID_KEY] = account_id
            extra[ACCOUNT_FOR_KEY] = self.account_url
            if response.not_modified:
                return not_modified_result(state)
            statuses = decode_json(response.body, source_id=self.key, what="statuses JSON")
            if not isinstance(statuses, list):
                raise PermanentSourceError(
                    f"{self.key}: statuses JSON is not a list", source_id=self.key,
                    error_class="parse",
                )
            updates = [u for s in statuses if (u := self._update(as_dict(s), account_id, now))]
            ids = [u.external_id for u in updates] + ([state.cursor] if state.cursor else [])
            cursor = max(ids, key=id_key) if ids else None
            # Mastodon allows 300 requests / 5 min; at zero, say when to come back.
            limited = None
            if response.headers.get("x-ratelimit-remaining", "").strip() == "0":
                limited = rate_limit_reset(response.headers)
            return PollResult(
                updates=tuple(updates), etag=response.headers.get("etag"),
                last_modified=response.headers.get("last-modified"), cursor=cursor, extra=extra,
                rate_limited_until=limited,
            )

    def _update(self, status: dict[str, Any], account_id: str, now: datetime) -> Update | None:
        status_id = as_str(status.get("id"), 100)
        if not status_id or status.get("reblog") or status.get("in_reply_to_id"):
            return None
        if as_str(as_dict(status.get("account")).get("id"), 100) != account_id:
            return None
        if as_str(status.get("visibility"), 20) not in _PUBLIC:
            return None
        text = html_to_text(as_str(status.get("content"), 100_000))
        warning = html_to_text(as_str(status.get("spoiler_text"), 2_000))
        if warning:
            text = f"{warning}\n\n{text}" if text else warning
        url = http_url(as_str(status.get("url"), 2000), as_str(status.get("uri"), 2000))
        title = title_from_text(text) or "(no text)"
        return Update(
            source_id=self.key, agency=self.config.agency, kind=SourceKind.MASTODON,
            external_id=status_id, url=url, title=title, text=text or title,
            published_at=parse_time(status.get("created_at")) or now, fetched_at=now,
            native=NativeRef(platform=Platform.MASTODON, id=status_id, url=url,
                             uri=as_str(status.get("uri"), 2000)),
        ).with_hash()

    async def aclose(self) -> None:
        """Nothing to release: the HTTP client belongs to the caller."""

