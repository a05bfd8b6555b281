"""Build a real adapter of each kind, and respx routes that serve one hostile body."""

from __future__ import annotations

from typing import Any

import httpx
import respx

from crisiscomms.adapters.sources.bluesky import BlueskySource
from crisiscomms.adapters.sources.cap import CapSource
from crisiscomms.adapters.sources.ea_floods import EaFloodsSource
from crisiscomms.adapters.sources.mastodon import MastodonSource
from crisiscomms.adapters.sources.parsing import FeedParserPool
from crisiscomms.adapters.sources.rss import RssSource
from crisiscomms.domain.models import SourceKind
from tests.sources.sources_helpers import make_config

from .cases import Case, fixture


def config_for(kind: SourceKind, source_id: str, host: str, **kw: Any) -> Any:
    """A catalogue entry of ``kind`` whose every URL lives on ``host``."""
    loc: dict[str, Any] = {}
    if kind in (SourceKind.RSS, SourceKind.CAP):
        loc["url"] = f"https://{host}/feed.xml"
    elif kind is SourceKind.EA_FLOODS:
        loc["url"] = f"https://{host}/flood-monitoring/id/floods"
    elif kind is SourceKind.MASTODON:
        loc["account"] = f"https://{host}/@EssexFire"
    elif kind is SourceKind.BLUESKY:
        loc["account"] = "https://bsky.app/profile/essexpolice.bsky.social"
    return make_config(kind, id=source_id, **{**loc, **kw})


def build(kind: SourceKind, config: Any, fetcher: Any, pool: FeedParserPool, host: str) -> Any:
    if kind is SourceKind.RSS:
        return RssSource(config, fetcher, pool)
    if kind is SourceKind.CAP:
        return CapSource(config, fetcher, pool)
    if kind is SourceKind.EA_FLOODS:
        return EaFloodsSource(config, fetcher)
    if kind is SourceKind.MASTODON:
        return MastodonSource(config, fetcher)
    return BlueskySource(config, fetcher, base_url=f"https://{host}")


def serve_case(mock: respx.MockRouter, case: Case, host: str | None = None,
               body: bytes | None = None) -> None:
    """Every request to ``host`` (or anywhere) answers the case's body, except the Mastodon
    account lookup, which answers the valid account so the hostile body reaches statuses."""
    body = case.body() if body is None else body
    where: dict[str, Any] = {"host": host} if host else {}
    mock.get(path="/api/v1/accounts/lookup", **where).mock(
        return_value=httpx.Response(200, content=fixture("mastodon_account.json"),
                                    headers={"content-type": "application/json"}))
    mock.route(**where).mock(side_effect=lambda _req: raw_response(body, case.headers))


def raw_response(body: bytes, headers: dict[str, str]) -> httpx.Response:
    """A response whose body is sent as is: httpx would otherwise decode (and so inflate)
    a gzip body while building the mock."""
    return httpx.Response(200, headers=headers, stream=httpx.ByteStream(body))
