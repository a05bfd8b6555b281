"""build_sources: one adapter per catalogue source, one XSource for all X sources."""

from __future__ import annotations

import httpx
import pytest
import requests
import tweepy

from crisiscomms.adapters.sources import (
    BlueskySource,
    CapSource,
    EaFloodsSource,
    FeedParserPool,
    MastodonSource,
    RssSource,
    XSource,
    build_sources,
)
from crisiscomms.adapters.xhttp import X_API_HOST, BaseUrlAdapter
from crisiscomms.domain.errors import ConfigError
from crisiscomms.domain.models import SourceKind
from crisiscomms.ports import Source

from .sources_helpers import make_config

pytestmark = pytest.mark.anyio


def catalogue() -> list:
    return [
        make_config(SourceKind.X, id="police-x", x_user_id="1"),
        make_config(SourceKind.RSS, id="lfb-rss"),
        make_config(SourceKind.CAP, id="ea-cap"),
        make_config(SourceKind.X, id="fire-x", handle="ECFRS", x_user_id="2"),
        make_config(SourceKind.EA_FLOODS, id="ea-floods"),
        make_config(SourceKind.MASTODON, id="fire-masto"),
        make_config(SourceKind.BLUESKY, id="police-bsky"),
    ]


async def test_build_sources(client: httpx.AsyncClient, pool: FeedParserPool) -> None:
    made: list[tweepy.Client] = []

    def factory() -> tweepy.Client:
        c = tweepy.Client(bearer_token="t", return_type=requests.Response)
        made.append(c)
        return c

    sources = build_sources(
        catalogue(), client=client, parser=pool, x_client_factory=factory,
        base_urls={"x": "http://127.0.0.1:9/x", "mastodon": "http://127.0.0.1:9/m",
                   "bluesky": "http://127.0.0.1:9/b"},
    )
    kinds = [type(s) for s in sources]
    assert kinds == [XSource, RssSource, CapSource, EaFloodsSource, MastodonSource,
                     BlueskySource]
    assert all(isinstance(s, Source) for s in sources)
    x = sources[0]
    assert x.key == "x" and x.source_ids == ("police-x", "fire-x")
    assert len(made) == 1
    adapter = made[0].session.get_adapter(X_API_HOST + "/2/tweets")
    assert isinstance(adapter, BaseUrlAdapter) and adapter.base_url == "http://127.0.0.1:9/x"
    masto = sources[4]
    assert isinstance(masto, MastodonSource) and masto.api_base == "http://127.0.0.1:9/m"
    bsky = sources[5]
    assert isinstance(bsky, BlueskySource) and bsky.base_url == "http://127.0.0.1:9/b"
    assert [s.key for s in sources[1:]] == ["lfb-rss", "ea-cap", "ea-floods", "fire-masto",
                                           "police-bsky"]
    for s in sources:
        await s.aclose()


async def test_x_sources_need_a_client_factory(client: httpx.AsyncClient) -> None:
    with pytest.raises(ConfigError):
        build_sources(catalogue()[:1], client=client)


async def test_default_parser_pool_is_created(client: httpx.AsyncClient) -> None:
    sources = build_sources([make_config(SourceKind.RSS)], client=client)
    (rss,) = sources
    assert isinstance(rss, RssSource)
    rss._parser.close()
