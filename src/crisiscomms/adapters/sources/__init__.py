"""Source adapters: they poll official sources and return normalised ``Update`` objects.

Each adapter implements ``crisiscomms.ports.Source``; ``build_sources`` is what the
composition root calls. Shared, caller-owned resources:

* ``httpx.AsyncClient``  from ``make_async_client()`` (close it with ``aclose()``)
* ``FeedParserPool``      bounded feedparser workers (``close()`` it)
* ``FetchLimits``         per-host / global concurrency bounds
* an X client factory     ``() -> tweepy.Client(bearer_token=..., return_type=requests.Response,
                          wait_on_rate_limit=False)``; the ``XSource`` owns and closes it

Every ``poll`` raises only ``SourceError`` subclasses; ``SourceRateLimitedError`` (a
``TransientSourceError``) carries ``retry_at``.

A Mastodon source may name an env var holding a read token (``token_env``); the builder
reads it through ``credentials`` (``ports.Credentials``, by default the environment,
``.env`` and secret files like channel credentials) and registers it with the log
redaction before any request is made.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping, Sequence
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from crisiscomms.domain.errors import ConfigError
from crisiscomms.domain.models import SourceKind

if TYPE_CHECKING:
    import httpx
    from pydantic import SecretStr

    from crisiscomms.adapters.sources.base import SourceRateLimitedError
    from crisiscomms.adapters.sources.bluesky import BlueskySource
    from crisiscomms.adapters.sources.cap import CapSource
    from crisiscomms.adapters.sources.ea_floods import EaFloodsSource
    from crisiscomms.adapters.sources.http import (
        FetchLimits,
        FetchResponse,
        HttpFetcher,
        Resolver,
        make_async_client,
    )
    from crisiscomms.adapters.sources.mastodon import MastodonSource
    from crisiscomms.adapters.sources.parsing import FeedParserPool, ParsedFeed
    from crisiscomms.adapters.sources.push import (
        PUSH_KINDS,
        PushConnection,
        PushContext,
        build_push_listeners,
    )
    from crisiscomms.adapters.sources.rss import RssSource
    from crisiscomms.adapters.sources.x import XSearchClient, XSource
    from crisiscomms.adapters.xhttp import mount_base_url
    from crisiscomms.domain.config import SourceConfig
    from crisiscomms.ports import Credentials, Source

__all__ = [
    "PUSH_KINDS",
    "BlueskySource",
    "CapSource",
    "EaFloodsSource",
    "FeedParserPool",
    "FetchLimits",
    "FetchResponse",
    "HttpFetcher",
    "MastodonSource",
    "ParsedFeed",
    "PushConnection",
    "PushContext",
    "RssSource",
    "SourceRateLimitedError",
    "XSource",
    "build_push_listeners",
    "build_sources",
    "make_async_client",
    "mount_base_url",
]

# Each name above is imported from its module on first use (PEP 562), not with the package: a
# watcher of RSS feeds never loads tweepy, requests or the Bluesky and Mastodon adapters, and
# `watch --once` (a cron-style single cycle) pays only for the kinds its playbooks list.
_LAZY = {
    "SourceRateLimitedError": "base",
    "BlueskySource": "bluesky",
    "CapSource": "cap",
    "EaFloodsSource": "ea_floods",
    "FetchLimits": "http",
    "FetchResponse": "http",
    "HttpFetcher": "http",
    "make_async_client": "http",
    "MastodonSource": "mastodon",
    "FeedParserPool": "parsing",
    "ParsedFeed": "parsing",
    "PUSH_KINDS": "push",
    "PushConnection": "push",
    "PushContext": "push",
    "build_push_listeners": "push",
    "RssSource": "rss",
    "XSource": "x",
}


def __getattr__(name: str) -> Any:
    if name == "mount_base_url":
        from crisiscomms.adapters.xhttp import mount_base_url

        return mount_base_url
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value  # later look-ups are plain attribute reads
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})


def build_sources(
    catalog_sources: Sequence[SourceConfig],
    *,
    client: httpx.AsyncClient,
    parser: FeedParserPool | None = None,
    x_client_factory: Callable[[], XSearchClient] | None = None,
    limits: FetchLimits | None = None,
    base_urls: Mapping[str, str] | None = None,
    resolver: Resolver | None = None,
    credentials: Credentials | None = None,
    x_backfill: timedelta | None = None,
    x_cap_reset_day: int = 1,
    start_parsers: bool = True,
) -> list[Source]:
    """Build one adapter per catalogue source, and one ``XSource`` for all X sources.

    ``base_urls`` overrides API roots for simulators/staging: keys ``"x"`` (mounted on
    the X client's requests session), ``"mastodon"`` and ``"bluesky"``. ``resolver``
    replaces DNS for the private-address check (tests). ``credentials`` resolves the env var
    names of source tokens (default: ``crisiscomms.settings.channel_secret``, the same
    lookup as channel credentials). When ``parser`` is omitted a
    ``FeedParserPool`` is created and shared; it stops when the sources are dropped.
    ``start_parsers`` (the long-running watcher) boots the parser workers now; without it
    (``watch --once``) a worker starts only when a feed body must be parsed (a 304 never is).
    Raises ``ConfigError`` if X sources are listed but no ``x_client_factory`` is given,
    or an account locator is malformed. ``x_backfill`` bounds how far back an X poll whose
    cursor is too old for recent search reads (the playbooks' backfill window);
    ``x_cap_reset_day`` is the day of the month X's usage cap resets.
    """
    from crisiscomms.adapters.sources.http import FetchLimits, HttpFetcher

    overrides = dict(base_urls or {})
    fetcher = HttpFetcher(client, limits or FetchLimits(), resolver=resolver)
    pool: FeedParserPool | None = parser
    sources: list[Source] = []
    x_configs = [c for c in catalog_sources if c.kind is SourceKind.X]
    x_placed = False
    for config in catalog_sources:
        kind = config.kind
        if kind is SourceKind.X:
            if x_placed:
                continue
            x_placed = True
            if x_client_factory is None:
                raise ConfigError(
                    f"sources.yaml: X source {config.id!r} listed but no X client is configured"
                )
            sources.append(_x_source(x_configs, x_client_factory(), overrides.get("x"),
                                     x_backfill, x_cap_reset_day))
        elif kind is SourceKind.RSS:
            from crisiscomms.adapters.sources.rss import RssSource

            pool = pool or _new_pool()
            sources.append(RssSource(config, fetcher, pool))
        elif kind is SourceKind.CAP:
            from crisiscomms.adapters.sources.cap import CapSource

            pool = pool or _new_pool()
            sources.append(CapSource(config, fetcher, pool))
        elif kind is SourceKind.MASTODON:
            from crisiscomms.adapters.sources.mastodon import MastodonSource

            sources.append(MastodonSource(config, fetcher, api_base=overrides.get("mastodon"),
                                          token=_source_token(config, credentials)))
        elif kind is SourceKind.BLUESKY:
            from crisiscomms.adapters.sources.bluesky import BlueskySource

            sources.append(BlueskySource(config, fetcher, base_url=overrides.get("bluesky")))
        elif kind is SourceKind.EA_FLOODS:
            from crisiscomms.adapters.sources.ea_floods import EaFloodsSource

            sources.append(EaFloodsSource(config, fetcher))
        else:  # pragma: no cover - a new SourceKind without an adapter
            raise ConfigError(f"sources.yaml: no adapter for kind {kind!r} ({config.id})")
    if start_parsers and pool is not None and any(
            c.kind in (SourceKind.RSS, SourceKind.CAP) for c in catalog_sources):
        # Every parser worker boots now, in the pool's threads (not on the event loop): the
        # first update after start-up is parsed as fast as the others.
        pool.start()
    return sources


def _new_pool() -> FeedParserPool:
    from crisiscomms.adapters.sources.parsing import FeedParserPool

    return FeedParserPool()


def _x_source(configs: list[SourceConfig], x_client: XSearchClient, base_url: str | None,
              backfill: timedelta | None, cap_reset_day: int) -> Source:
    """The one ``XSource`` of every X source; its requests session mounted on ``base_url``."""
    import requests

    from crisiscomms.adapters.sources.x import DEFAULT_BACKFILL, XSource
    from crisiscomms.adapters.xhttp import mount_base_url

    session = getattr(x_client, "session", None)
    if isinstance(session, requests.Session):
        mount_base_url(session, base_url)
    return XSource(configs, x_client, backfill=backfill or DEFAULT_BACKFILL,
                   cap_reset_day=cap_reset_day)


def _source_token(config: SourceConfig, credentials: Credentials | None) -> SecretStr | None:
    """The secret named by ``config.token_env`` (``None`` if none is named or it is unset),
    registered with the log redaction so it can never be printed."""
    if not config.token_env:
        return None
    from crisiscomms.logs import register_secrets
    from crisiscomms.settings import channel_secret

    token = credentials.get(config.token_env) if credentials else channel_secret(
        config.token_env)
    register_secrets([token])
    return token
