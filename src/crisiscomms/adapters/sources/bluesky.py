"""A Bluesky account's own posts via the public AppView (no login).

``GET {base}/xrpc/app.bsky.feed.getAuthorFeed?actor=HANDLE&filter=posts_and_author_threads``
(the account's posts and its own threads: a reply is kept only when its parent is the same
account, so "1/4 ... 2/4" comes through and replies to others do not)
(base ``https://public.api.bsky.app`` unless overridden). Items with a ``reason``
(reposts, pinned posts) and posts by any other author are skipped. The account's DID
is remembered in ``extra["bluesky_did"]`` on the first poll; if the handle later points at
a different DID (a handle taken over) the poll fails with ``identity_changed`` rather than
relay posts from someone else. Every post in the page is returned (the watcher dedupes).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any
from urllib.parse import quote, urlsplit

from crisiscomms.adapters.sources.base import (
    as_dict,
    as_str,
    decode_json,
    parse_time,
    source_boundary,
)
from crisiscomms.adapters.sources.http import DEFAULT_MAX_BYTES, HttpFetcher
from crisiscomms.adapters.sources.rss import not_modified_result
from crisiscomms.adapters.sources.text import tidy, title_from_text
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

DEFAULT_BASE_URL = "https://public.api.bsky.app"
DID_KEY = "bluesky_did"
DID_FOR_KEY = "bluesky_handle"
PAGE_LIMIT = 50


def parse_actor(account: str) -> str:
    """``https://bsky.app/profile/HANDLE``, ``@HANDLE`` or ``HANDLE`` -> ``HANDLE``."""
    value = account.strip()
    if value.startswith(("https://", "http://")):
        parts = [p for p in urlsplit(value).path.split("/") if p]
        if len(parts) >= 2 and parts[0] == "profile":
            return parts[1].lower()
        raise ConfigError(
            f"bluesky account URL must be https://bsky.app/profile/HANDLE, got {account!r}"
        )
    value = value.lstrip("@")
    if not value or "/" in value or " " in value:
        raise ConfigError(f"invalid bluesky handle {account!r}")
    return value.lower()


class BlueskySource:
    """One Bluesky account (``SourceKind.BLUESKY``)."""

    def __init__(
        self,
        config: SourceConfig,
        fetcher: HttpFetcher,
        *,
        base_url: str | None = None,
        max_bytes: int = DEFAULT_MAX_BYTES,
    ) -> None:
        self.config = config
        self.key = config.id
        self.source_ids: tuple[str, ...] = (config.id,)
        self.actor = parse_actor(config.account or config.url or "")
        self.by_did = self.actor.startswith("did:")
        self.base_url = (base_url or DEFAULT_BASE_URL).rstrip("/")
        self._fetcher = fetcher
        self._max_bytes = max_bytes

    async def poll(self, state: SourceState, now: datetime) -> PollResult:
        """Fetch the newest page of the author feed and return the account's own posts."""
        with source_boundary(self.key):
            sid = self.key
            response = await self._fetcher.fetch(
                f"{self.base_url}/xrpc/app.bsky.feed.getAuthorFeed", source_id=sid,
                params={"actor": self.actor, "filter": "posts_and_author_threads",
                        "limit": str(PAGE_LIMIT)},
                etag=state.etag, max_bytes=self._max_bytes,
                allow_private=self.config.allow_private_network,
                accept="application/json", now=now,
            )
            if response.not_modified:
                return not_modified_result(state, response)
            data = decode_json(response.body, source_id=sid, what="author feed JSON")
            feed = data.get("feed") if isinstance(data, dict) else None
            if not isinstance(feed, list):
                raise PermanentSourceError(
                    f"{sid}: author feed JSON without a 'feed' list", source_id=sid,
                    error_class="parse",
                )
            known = state.extra.get(DID_KEY) if state.extra.get(DID_FOR_KEY) == self.actor else None
            did = known if isinstance(known, str) and known else None
            updates: list[Update] = []
            for item in feed:
                item = as_dict(item)
                if item.get("reason") is not None:
                    continue
                post = as_dict(item.get("post"))
                author = as_dict(post.get("author"))
                # The account is named by its handle, or pinned by its DID (no handle change
                # can move it then): its posts are the author's with that name.
                named = as_str(author.get("did" if self.by_did else "handle"), 300)
                if named.lower() != self.actor:
                    continue
                author_did = as_str(author.get("did"), 300)
                if did is None:
                    did = author_did
                elif author_did != did:
                    raise PermanentSourceError(
                        f"{sid}: @{self.actor} now belongs to another account (DID changed)",
                        source_id=sid, error_class="identity_changed",
                    )
                update = self._update(post, now)
                if update is not None:
                    updates.append(update)
            extra = dict(state.extra)
            if did:
                extra[DID_KEY] = did
                extra[DID_FOR_KEY] = self.actor
            return PollResult(
                updates=tuple(updates), etag=response.headers.get("etag"),
                last_modified=response.headers.get("last-modified"), cursor=state.cursor,
                extra=extra, hints=response.hints,
            )

    def _update(self, post: dict[str, Any], now: datetime) -> Update | None:
        uri = as_str(post.get("uri"), 500)
        cid = as_str(post.get("cid"), 200)
        if not uri.startswith("at://") or not cid:
            return None
        record = as_dict(post.get("record"))
        reply = as_dict(record.get("reply"))
        if reply:
            # Only the account's own thread: the parent must be a post of the same DID.
            author = as_str(as_dict(post.get("author")).get("did"), 200)
            parent = as_str(as_dict(reply.get("parent")).get("uri"), 500)
            if not author or not parent.startswith(f"at://{author}/"):
                return None
        rkey = uri.rstrip("/").rsplit("/", 1)[-1]
        url = f"https://bsky.app/profile/{quote(self.actor)}/post/{quote(rkey)}"
        text = tidy(as_str(record.get("text"), 20_000))
        title = title_from_text(text) or "(no text)"
        published = parse_time(record.get("createdAt")) or parse_time(post.get("indexedAt"))
        return Update(
            source_id=self.key, agency=self.config.agency, kind=SourceKind.BLUESKY,
            external_id=uri, url=url, title=title, text=text or title,
            published_at=published or now, fetched_at=now,
            native=NativeRef(platform=Platform.BLUESKY, id=rkey, uri=uri, cid=cid, url=url),
        ).with_hash()

    async def aclose(self) -> None:
        """Nothing to release: the HTTP client belongs to the caller."""
