"""Bluesky Jetstream: one WebSocket for all the catalogue's Bluesky sources (no account).

Jetstream (bluesky-social/jetstream) turns the AT Protocol firehose into JSON over a
WebSocket, filtered by the query: ``wantedCollections=app.bsky.feed.post`` and one
``wantedDids=<did>`` per source account. Each frame is one event::

    {"did": "did:plc:...", "time_us": 1725911162329308, "kind": "commit",
     "commit": {"operation": "create", "collection": "app.bsky.feed.post", "rkey": "...", ...}}

* a post created or edited by a source's DID rings that source with
  ``expect_id="at://<did>/app.bsky.feed.post/<rkey>"`` (the URI the polling adapter takes as
  the update's ``external_id``); an ``identity`` event for the DID rings it too (the poll
  checks a handle taken over); deletes, other collections, other DIDs and any frame that is
  not a well-formed event are ignored, and never end the connection;
* DIDs: a source's ``account`` (``https://bsky.app/profile/<handle or did>``) gives a DID
  (``did:plc:``/``did:web:`` only) used as it is, or a handle resolved through the AppView
  the polling adapter uses (``com.atproto.identity.resolveHandle``) at every (re)connection,
  because handles move. A handle that does not resolve is left out (named in the status's
  ``last_error``; it is still polled); the others connect. No DID at all: no connection (an
  unfiltered Jetstream is the whole network);
* Jetstream allows at most 10,000 DIDs per connection (query or ``options_update`` alike).
  Up to ``QUERY_DIDS`` go in the query; more are sent in an ``options_update`` message on a
  ``requireHello=true`` connection (a URL with thousands of DIDs is too long for proxies).
  More than 10,000 Bluesky accounts are refused at ``build`` with an error line: they are
  polled only;
* liveness: Jetstream sends no heartbeat of its own and a stream filtered to a few quiet
  accounts can be silent for hours, so no idle timeout is applied to the stream. WebSocket
  pings are: one every ``idle_timeout_seconds / 2``, and a pong missing for as long again
  ends the session (a half-open connection is found within ``idle_timeout_seconds``, plus
  the close handshake's wait, at most 5 s);
* the last ``time_us`` seen is kept; a reconnection asks for ``cursor=`` a few seconds before
  it, so Jetstream replays the gap. Duplicates are harmless (push only rings; the poll decides
  what is new); the catch-up poll on every connection is what guarantees nothing is missed.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import random
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from typing import Any
from urllib.parse import urlencode, urlsplit, urlunsplit

import httpx

from crisiscomms.adapters.sources.bluesky import DEFAULT_BASE_URL as APPVIEW_URL
from crisiscomms.adapters.sources.bluesky import parse_actor
from crisiscomms.adapters.sources.http import (
    USER_AGENT,
    FetchLimits,
    HttpFetcher,
    Resolver,
    make_async_client,
)
from crisiscomms.adapters.sources.push.base import PushConnection, PushContext
from crisiscomms.domain.config import SourceConfig
from crisiscomms.domain.errors import ConfigError, PermanentSourceError, SourceError
from crisiscomms.domain.models import SourceKind
from crisiscomms.logs import get_logger
from crisiscomms.settings import PushSettings

__all__ = [
    "KINDS",
    "MAX_DIDS",
    "JetstreamConnection",
    "build",
    "check_url",
    "is_did",
    "subscribe_url",
]

log = get_logger(__name__)

KINDS: tuple[SourceKind, ...] = (SourceKind.BLUESKY,)
POST = "app.bsky.feed.post"
MAX_DIDS = 10_000  # Jetstream's limit per connection
QUERY_DIDS = 100  # more than this: sent in an options_update, not in the URL
MAX_FRAME = 1 << 20  # events are small; Jetstream is asked to skip larger ones
CURSOR_REWIND_US = 5_000_000  # reconnect this far before the last event seen
OPEN_TIMEOUT = 10.0
CLOSE_TIMEOUT = 5.0
RESOLVE_MAX_BYTES = 64_000
RESOLVE_CONCURRENCY = 4

_DID_RE = re.compile(r"did:plc:[a-z2-7]{24}|did:web:[a-z0-9](?:[a-z0-9.-]{0,251}[a-z0-9])?"
                     r"(?:%3[aA][0-9]{1,5})?")
_RKEY_RE = re.compile(r"[A-Za-z0-9._:~-]{1,512}")


def is_did(value: str) -> bool:
    """Whether ``value`` is a ``did:plc:`` or ``did:web:`` DID (the two atproto accepts)."""
    return _DID_RE.fullmatch(value) is not None


def _is_rkey(value: object) -> bool:
    return isinstance(value, str) and value not in (".", "..") and bool(_RKEY_RE.fullmatch(value))


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_url(url: str, *, allow_private: bool) -> str:
    """Why ``url`` may not be used as the Jetstream endpoint ("" if it may): ``wss://`` only,
    or ``ws://`` to a loopback address when private hosts are allowed (the simulator)."""
    try:
        parts = urlsplit(url)
        host = parts.hostname or ""
    except ValueError:
        return "not a URL"
    if not host:
        return "no host"
    if parts.scheme == "wss":
        return ""
    if parts.scheme == "ws":
        if allow_private and _is_loopback(host):
            return ""
        return "ws:// (unencrypted) is allowed only to the local simulator; use wss://"
    return f"scheme {parts.scheme!r} is not wss://"


def subscribe_url(base: str, dids: Sequence[str], cursor: int | None) -> tuple[str, bool]:
    """The subscription URL for ``dids`` and whether the DIDs must follow in an
    ``options_update`` (``requireHello=true``: more than ``QUERY_DIDS``)."""
    parts = urlsplit(base)
    hello = len(dids) > QUERY_DIDS
    query: list[tuple[str, str]] = [("wantedCollections", POST)]
    if hello:
        query.append(("requireHello", "true"))
    else:
        query += [("wantedDids", did) for did in dids]
    query.append(("maxMessageSizeBytes", str(MAX_FRAME)))
    if cursor is not None:
        query.append(("cursor", str(cursor)))
    joined = "&".join(q for q in (parts.query, urlencode(query, safe=":%")) if q)
    return urlunsplit((parts.scheme, parts.netloc, parts.path, joined, "")), hello


def options_update(dids: Sequence[str]) -> str:
    """The subscriber-sourced message that sets the filters of a ``requireHello`` connection."""
    return json.dumps({"type": "options_update", "payload": {
        "wantedCollections": [POST], "wantedDids": list(dids),
        "maxMessageSizeBytes": MAX_FRAME}})


class JetstreamConnection(PushConnection):
    """The Jetstream connection for ``actors`` (handle or DID -> catalogue source ids)."""

    kind = "jetstream"

    def __init__(
        self,
        actors: Mapping[str, tuple[str, ...]],
        *,
        url: str,
        settings: PushSettings,
        appview: str = APPVIEW_URL,
        allow_private: bool = False,
        resolver: Resolver | None = None,
        client_factory: Callable[[], httpx.AsyncClient] | None = None,
        open_timeout: float = OPEN_TIMEOUT,
        rng: random.Random | None = None,
        key: str = "jetstream",
    ) -> None:
        ids = tuple(dict.fromkeys(s for group in actors.values() for s in group))
        super().__init__(key, ids, settings=settings, rng=rng)
        self.actors = {a: tuple(group) for a, group in actors.items()}
        self.url = url
        self.appview = appview.rstrip("/")
        self.allow_private = allow_private
        self.open_timeout = open_timeout
        self.last_time_us: int | None = None
        self.ignored_frames = 0
        self.unresolved: tuple[str, ...] = ()
        self._resolver = resolver
        self._client_factory = client_factory or (lambda: make_async_client(timeout=10.0))
        self._dids: dict[str, tuple[str, ...]] = {}  # DID -> source ids, this session
        self._known: dict[str, str] = {}  # handle -> the DID it last resolved to

    # -- DIDs ----------------------------------------------------------------------------
    async def resolve(self) -> dict[str, tuple[str, ...]]:
        """DID -> source ids for this (re)connection; sets ``unresolved`` (the handles left
        out). A handle the AppView says does not resolve is dropped; one the AppView cannot
        answer for now (network, 5xx, 429) keeps the DID it last resolved to, if any."""
        handles = [a for a in self.actors if not a.startswith("did:")]
        found: dict[str, str | None] = {}
        if handles:
            client = self._client_factory()
            try:
                fetcher = HttpFetcher(client, FetchLimits(per_host=RESOLVE_CONCURRENCY),
                                      resolver=self._resolver)
                results = await asyncio.gather(*(self._resolve_one(fetcher, h)
                                                 for h in handles))
            finally:
                # aclose, not ``async with``: the client's __aexit__ leaves the lean
                # transport's private pool (the simulator's) open.
                await client.aclose()
            found = dict(zip(handles, results, strict=True))
        dids: dict[str, tuple[str, ...]] = {}
        missing: list[str] = []
        for actor, ids in self.actors.items():
            did = actor if actor.startswith("did:") else found.get(actor)
            if did is None:
                missing.append(actor)
                continue
            dids[did] = tuple(dict.fromkeys(dids.get(did, ()) + ids))
        self.unresolved = tuple(missing)
        return dids

    async def _resolve_one(self, fetcher: HttpFetcher, handle: str) -> str | None:
        sid = self.actors[handle][0]
        try:
            response = await fetcher.fetch(
                f"{self.appview}/xrpc/com.atproto.identity.resolveHandle", source_id=sid,
                params={"handle": handle}, allow_private=self.allow_private,
                accept="application/json", max_bytes=RESOLVE_MAX_BYTES,
            )
        except PermanentSourceError as exc:  # 400 "Unable to resolve handle", 404, ...
            log.warning("push.jetstream.unresolved", handle=handle, error=str(exc))
            self._known.pop(handle, None)
            return None
        except SourceError as exc:  # the AppView cannot answer now
            known = self._known.get(handle)
            log.warning("push.jetstream.resolve_failed", handle=handle, error=str(exc),
                        using=known or "nothing")
            return known
        try:
            data = json.loads(response.body)
        except (ValueError, RecursionError):
            data = None
        did = data.get("did") if isinstance(data, dict) else None
        if not isinstance(did, str) or not is_did(did):
            log.warning("push.jetstream.unresolved", handle=handle,
                        error="resolveHandle answered no did:plc:/did:web: DID")
            self._known.pop(handle, None)
            return None
        self._known[handle] = did
        return did

    # -- the session ---------------------------------------------------------------------
    def ping_interval(self) -> float:
        """Seconds between WebSocket pings (and the most a pong may take)."""
        return self.idle() / 2

    def cursor(self) -> int | None:
        """Where a (re)connection asks Jetstream to replay from (unix microseconds)."""
        if self.last_time_us is None:
            return None
        return max(0, self.last_time_us - CURSOR_REWIND_US)

    async def session(self) -> None:
        # Imported here: the CLI's commands that never open a stream do not pay for it.
        from websockets.asyncio.client import connect

        self._dids = await self.resolve()
        if not self._dids:
            raise ConnectionError("no Bluesky DID to listen for (handles did not resolve: "
                                  + ", ".join(f"@{h}" for h in self.unresolved) + ")")
        dids = sorted(self._dids)
        url, hello = subscribe_url(self.url, dids, self.cursor())
        ignored_before = self.ignored_frames
        async with connect(
            url, open_timeout=self.open_timeout, ping_interval=self.ping_interval(),
            ping_timeout=self.ping_interval(),
            close_timeout=min(CLOSE_TIMEOUT, self.ping_interval()),
            max_size=MAX_FRAME, proxy=None, user_agent_header=USER_AGENT,
        ) as ws:
            if hello:
                await ws.send(options_update(dids))
            self.connected()
            if self.unresolved:
                self._status = replace(self._status, last_error=(
                    "not listening for (handle did not resolve; still polled): "
                    + ", ".join(f"@{h}" for h in self.unresolved))[:300])
            try:
                async for message in ws:
                    self.on_frame(message)
            finally:
                if self.ignored_frames > ignored_before:
                    log.warning("push.jetstream.frames_ignored", connection=self.key,
                                count=self.ignored_frames - ignored_before)
            code, reason = ws.close_code, ws.close_reason
        raise ConnectionError(f"Jetstream closed the stream (code {code} {reason or ''})".strip())

    def on_frame(self, message: str | bytes) -> None:
        """Ring for one frame if it is a post or identity event of one of our DIDs."""
        event = _event(message)
        did = event.get("did") if event is not None else None
        ids = self._dids.get(did) if isinstance(did, str) else None
        if event is None or ids is None:
            self.ignored_frames += 1
            return
        time_us = event.get("time_us")
        if isinstance(time_us, int) and not isinstance(time_us, bool) and time_us > 0:
            self.last_time_us = max(time_us, self.last_time_us or 0)
        kind = event.get("kind")
        if kind == "identity":
            self.pushed(ids)
            return
        commit = event.get("commit")
        if kind != "commit" or not isinstance(commit, dict):
            if kind != "account":
                self.ignored_frames += 1
            return
        rkey = commit.get("rkey")
        if (commit.get("collection") != POST or commit.get("operation") not in
                ("create", "update") or not _is_rkey(rkey)):
            return  # a delete, another collection: nothing to relay
        self.pushed(ids, expect_id=f"at://{did}/{POST}/{rkey}")


def _event(message: str | bytes) -> dict[str, Any] | None:
    if not isinstance(message, str):
        return None  # binary: zstd frames we never asked for
    try:
        event = json.loads(message)
    except (ValueError, RecursionError):
        return None
    return event if isinstance(event, dict) else None


def _actors(sources: Sequence[SourceConfig]) -> dict[str, tuple[str, ...]]:
    actors: dict[str, tuple[str, ...]] = {}
    for source in sources:
        if source.kind is not SourceKind.BLUESKY:
            continue
        try:
            actor = parse_actor(source.account or source.url or "")
        except ConfigError as exc:
            log.warning("push.jetstream.source_skipped", source=source.id, error=str(exc))
            continue
        if actor.startswith("did:") and not is_did(actor):
            log.warning("push.jetstream.source_skipped", source=source.id,
                        error=f"{actor!r} is not a did:plc: or did:web: DID")
            continue
        actors[actor] = (*actors.get(actor, ()), source.id)
    return actors


def build(sources: Sequence[SourceConfig], ctx: PushContext) -> list[PushConnection]:
    """One Jetstream connection for all the Bluesky sources (none when ``jetstream_url`` is
    empty, the URL is refused, there are more accounts than Jetstream allows, or the AppView
    is a local simulator while the Jetstream is not)."""
    actors = _actors(sources)
    if not actors:
        return []
    url = ctx.settings.jetstream_url
    if not url:
        log.info("push.jetstream.off", sources=sum(map(len, actors.values())),
                 note="jetstream_url is empty: Bluesky sources are polled only")
        return []
    appview = ctx.base_urls.get("bluesky") or APPVIEW_URL
    if not ctx.base_urls.get("jetstream") and _is_loopback(urlsplit(appview).hostname or ""):
        # The accounts are the simulator's: never listen for them on the public network.
        log.info("push.jetstream.off", sources=sum(map(len, actors.values())),
                 note="the AppView is local (a simulator) and no local Jetstream is set "
                      "(base_urls['jetstream']): Bluesky sources are polled only")
        return []
    url = ctx.base_urls.get("jetstream") or url
    problem = check_url(url, allow_private=ctx.allow_private)
    if problem:
        log.error("push.jetstream.refused", url=url.split("?", 1)[0], error=problem,
                  note="Bluesky sources are polled only")
        return []
    if len(actors) > MAX_DIDS:
        log.error("push.jetstream.refused", accounts=len(actors),
                  error=f"Jetstream listens for at most {MAX_DIDS} DIDs per connection",
                  note="Bluesky sources are polled only")
        return []
    return [JetstreamConnection(actors, url=url, settings=ctx.settings, appview=appview,
                                allow_private=ctx.allow_private)]
