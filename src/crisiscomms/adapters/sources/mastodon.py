"""A Mastodon account's own public statuses, over the public REST API.

The account is given as a URL ``https://host/@name`` (``account`` or ``url`` in the
catalogue). Its id is looked up once with ``GET /api/v1/accounts/lookup?acct=name`` and
remembered in ``extra`` (``mastodon_account_id``, keyed by the account URL so a changed
catalogue entry is looked up again). Statuses come from
``GET /api/v1/accounts/:id/statuses?exclude_replies=true&exclude_reblogs=true&limit=40``:

* the first poll (no cursor) reads the newest page only (the watcher's baseline);
* later polls page *forward* with ``min_id`` (the 40 statuses just after the cursor, then
  the 40 after those, ...) until a short page, so more than 40 new statuses in one poll
  leave no gap (``since_id`` would return only the newest 40). At most ``MAX_PAGES`` pages
  per poll; the cursor then stands at the last status read and the next poll goes on
  from there. The cursor passes every status returned, kept or dropped.
* Mastodon's general budget is 300 requests / 5 min per account (or per IP when
  unauthenticated): paging stops when ``X-RateLimit-Remaining`` reaches 0 or a later page
  is refused with 429, and the poll returns what it read with ``rate_limited_until`` set
  to ``X-RateLimit-Reset`` (an ISO timestamp).

Kept: the account's own public/unlisted statuses, including its own threads
(``in_reply_to_account_id`` is the account: ``exclude_replies`` drops only replies to
others). Dropped: boosts, replies to other accounts, statuses by anyone else, non-public
visibilities.

Some instances refuse unauthenticated reads (401). Such a source names an env var in
``sources.yaml`` (``token_env: ESSEX_FIRE_MASTODON_TOKEN``, any account's token with scope
``read:statuses``/``read:accounts``, or ``read``); the builder reads it like channel
credentials and registers it with the log redaction, and it is sent as a Bearer token to
the instance only (never across a redirect to another host). ``api_base`` overrides
``https://host`` (simulator).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any
from urllib.parse import urlsplit

from pydantic import SecretStr

from crisiscomms.adapters.sources.base import (
    SourceRateLimitedError,
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
PAGE_LIMIT = 40  # the API's maximum page size
MAX_PAGES = 10  # per poll: 400 statuses; the cursor carries the rest to the next poll
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


@dataclass(frozen=True, slots=True)
class _Page:
    statuses: list[dict[str, Any]]
    response: FetchResponse | None  # None: refused with 429 after the first page
    limited_until: datetime | None


class MastodonSource:
    """One Mastodon account (``SourceKind.MASTODON``). ``token``: the read token named by
    ``config.token_env`` (``None`` when the source has none or it is not set)."""

    def __init__(
        self,
        config: SourceConfig,
        fetcher: HttpFetcher,
        *,
        api_base: str | None = None,
        max_bytes: int = DEFAULT_MAX_BYTES,
        token: SecretStr | None = None,
    ) -> None:
        self.config = config
        self.key = config.id
        self.source_ids: tuple[str, ...] = (config.id,)
        self.account_url = (config.account or config.url or "").strip()
        host_base, self.username = parse_account_url(self.account_url)
        self.api_base = (api_base or host_base).rstrip("/")
        self.token = token
        self._fetcher = fetcher
        self._max_bytes = max_bytes

    async def _get(
        self, path: str, params: dict[str, str], now: datetime, etag: str | None = None
    ) -> FetchResponse:
        try:
            return await self._fetcher.fetch(
                self.api_base + path, source_id=self.key, params=params, etag=etag,
                max_bytes=self._max_bytes, allow_private=self.config.allow_private_network,
                accept="application/json", now=now, bearer=self.token,
            )
        except PermanentSourceError as exc:
            if exc.error_class != "http_401":
                raise
            raise PermanentSourceError(self._unauthorized(), source_id=self.key,
                                       error_class="http_401") from exc

    def _unauthorized(self) -> str:
        host = urlsplit(self.api_base).netloc
        if self.token is None:
            return (f"{self.key}: {host} refuses unauthenticated reads (HTTP 401); give the "
                    "source a read token: token_env in sources.yaml names its env var")
        return (f"{self.key}: {host} refused the token in {self.config.token_env} (HTTP 401): "
                "expired, revoked or without read scope")

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
        """Fetch every status after the cursor (paging forward) and return the account's
        own posts."""
        with source_boundary(self.key):
            if self.config.token_env and self.token is None:
                raise PermanentSourceError(
                    f"{self.key}: {self.config.token_env} is not set: this source reads with "
                    "a token (token_env in sources.yaml)",
                    source_id=self.key, error_class="no_credentials",
                )
            account_id = self._known_id(state)
            first: FetchResponse | None = None
            if account_id:
                try:
                    first = await self._page(account_id, state.cursor, now, etag=state.etag)
                except PermanentSourceError as exc:
                    if exc.error_class != "http_404":
                        raise
                    account_id = None  # the remembered id is stale: look it up again
            if first is None or account_id is None:
                account_id = await self._lookup(now)
                first = await self._page(account_id, state.cursor, now)
            extra = dict(state.extra)
            extra[ACCOUNT_ID_KEY] = account_id
            extra[ACCOUNT_FOR_KEY] = self.account_url
            if first.not_modified:
                return replace(not_modified_result(state), hints=first.hints)
            pages = [self._read(first)]
            cursor = state.cursor
            while state.cursor and self._more(pages[-1]) and len(pages) < MAX_PAGES:
                after = _newest([cursor, *(as_str(st.get("id"), 100)
                                           for st in pages[-1].statuses)])
                if after == cursor:
                    break  # nothing past the cursor: a server that ignores min_id
                cursor = after
                pages.append(await self._next(account_id, cursor, now))
            unique = {as_str(st.get("id"), 100): st for page in pages for st in page.statuses}
            statuses = list(unique.values())
            updates = [u for st in statuses if (u := self._update(st, account_id, now))]
            cursor = _newest([state.cursor, *(as_str(st.get("id"), 100) for st in statuses)])
            limited = next((p.limited_until for p in pages if p.limited_until), None)
            return PollResult(
                updates=tuple(updates), etag=first.headers.get("etag"),
                last_modified=first.headers.get("last-modified"), cursor=cursor, extra=extra,
                rate_limited_until=limited,
                hints=replace(next((p.response.hints for p in reversed(pages)
                                    if p.response is not None), first.hints),
                              requests=len(pages)),
            )

    async def _page(
        self, account_id: str, cursor: str | None, now: datetime, etag: str | None = None
    ) -> FetchResponse:
        params = {"exclude_replies": "true", "exclude_reblogs": "true",
                  "limit": str(PAGE_LIMIT)}
        if cursor:
            params["min_id"] = cursor
        return await self._get(f"/api/v1/accounts/{account_id}/statuses", params, now, etag)

    async def _next(self, account_id: str, cursor: str | None, now: datetime) -> _Page:
        try:
            return self._read(await self._page(account_id, cursor, now))
        except SourceRateLimitedError as exc:
            # What the earlier pages returned is kept; the cursor resumes after it.
            return _Page([], None, exc.retry_at or now)

    def _read(self, response: FetchResponse) -> _Page:
        statuses = decode_json(response.body, source_id=self.key, what="statuses JSON")
        if not isinstance(statuses, list):
            raise PermanentSourceError(
                f"{self.key}: statuses JSON is not a list", source_id=self.key,
                error_class="parse",
            )
        limited = None
        if response.headers.get("x-ratelimit-remaining", "").strip() == "0":
            limited = rate_limit_reset(response.headers)
        return _Page([as_dict(st) for st in statuses], response, limited)

    @staticmethod
    def _more(page: _Page) -> bool:
        """A full page, and budget left: there may be more right after it."""
        return (page.response is not None and page.limited_until is None
                and len(page.statuses) >= PAGE_LIMIT)

    def _update(self, status: dict[str, Any], account_id: str, now: datetime) -> Update | None:
        status_id = as_str(status.get("id"), 100)
        if not status_id or status.get("reblog"):
            return None
        if as_str(as_dict(status.get("account")).get("id"), 100) != account_id:
            return None
        reply_to = status.get("in_reply_to_account_id")
        if status.get("in_reply_to_id") and as_str(reply_to, 100) != account_id:
            return None  # a reply to someone else (an own thread continues: kept)
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


def _newest(ids: list[str | None]) -> str | None:
    """The greatest platform id among ``ids`` (``None`` when there is none)."""
    present = [i for i in ids if i]
    return max(present, key=id_key) if present else None
