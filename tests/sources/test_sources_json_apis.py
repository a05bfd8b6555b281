"""EA flood warnings, Mastodon and Bluesky adapters (JSON over httpx)."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import httpx
import pytest
import respx

from crisiscomms.adapters.sources.bluesky import DID_KEY, BlueskySource, parse_actor
from crisiscomms.adapters.sources.ea_floods import EaFloodsSource, uk_local_to_utc
from crisiscomms.adapters.sources.http import HttpFetcher
from crisiscomms.adapters.sources.mastodon import ACCOUNT_ID_KEY, MastodonSource, parse_account_url
from crisiscomms.domain.errors import ConfigError, PermanentSourceError
from crisiscomms.domain.models import Platform, SourceKind

from .sources_helpers import NOW, fixture_bytes, make_config, state_for

pytestmark = pytest.mark.anyio
EA_URL = "https://environment.data.gov.uk/flood-monitoring/id/floods"
M_LOOKUP = "https://mastodon.example/api/v1/accounts/lookup"
M_STATUSES = "https://mastodon.example/api/v1/accounts/109876543210/statuses"
BSKY = "https://public.api.bsky.app/xrpc/app.bsky.feed.getAuthorFeed"


# ------------------------------------------------------------------ Environment Agency


async def test_ea_query_in_url_is_kept(fetcher: HttpFetcher, mock: respx.MockRouter) -> None:
    route = mock.get(EA_URL).mock(return_value=httpx.Response(200, json={"items": []}))
    config = make_config(SourceKind.EA_FLOODS, url=EA_URL + "?min-severity=3")
    result = await EaFloodsSource(config, fetcher).poll(state_for(config.id), NOW)
    assert result.updates == ()
    params = route.calls[0].request.url.params
    assert (params["min-severity"], params["county"]) == ("3", "Essex")


async def test_ea_floods_fixture(fetcher: HttpFetcher, mock: respx.MockRouter) -> None:
    route = mock.get(EA_URL).mock(
        return_value=httpx.Response(200, content=fixture_bytes("ea_floods_essex.json"),
                                    headers={"Content-Type": "application/json"}))
    src = EaFloodsSource(make_config(SourceKind.EA_FLOODS), fetcher)
    result = await src.poll(state_for(src.key), NOW)
    assert route.calls[0].request.url.params["county"] == "Essex"
    by_id = {u.external_id: u for u in result.updates}
    assert set(by_id) == {
        "062FWF46Chelmsfd:2:2026-02-10T10:32:00", "062WAF28Colne:3:2026-07-01T10:00:00",
        "062FWT23Canvey:1:2026-10-25T01:30:00", "062FWF11Maldon:4:2026-02-10T08:00:00",
    }
    warning = by_id["062FWF46Chelmsfd:2:2026-02-10T10:32:00"]
    assert warning.title == "Flood warning: River Chelmer at Chelmsford"
    assert warning.published_at == datetime(2026, 2, 10, 10, 32, tzinfo=UTC)  # GMT
    assert warning.cap is not None and warning.cap.severity == "Severe"
    assert warning.kind is SourceKind.EA_FLOODS and "Act now." in warning.text
    alert = by_id["062WAF28Colne:3:2026-07-01T10:00:00"]
    assert alert.published_at == datetime(2026, 7, 1, 9, 0, tzinfo=UTC)  # BST
    assert alert.cap is not None and alert.cap.severity == "Moderate"
    assert alert.text == alert.title  # empty message falls back to the title
    severe = by_id["062FWT23Canvey:1:2026-10-25T01:30:00"]
    assert severe.cap is not None and severe.cap.severity == "Extreme"
    assert severe.cap.urgency == "Immediate"
    # 01:30 on the autumn change day happens twice: the first (BST) reading is taken
    assert severe.published_at == datetime(2026, 10, 25, 0, 30, tzinfo=UTC)
    ended = by_id["062FWF11Maldon:4:2026-02-10T08:00:00"]
    assert ended.cap is not None and (ended.cap.msg_type, ended.cap.severity) == ("Cancel", "Minor")


def test_uk_local_time_conversion() -> None:
    assert uk_local_to_utc("2026-03-29T01:30:00") is not None  # in the spring gap: still a time
    assert uk_local_to_utc("2026-06-01T12:00:00Z") == datetime(2026, 6, 1, 12, tzinfo=UTC)
    assert uk_local_to_utc("2026-06-01T12:00:00+02:00") == datetime(2026, 6, 1, 10, tzinfo=UTC)
    for bad in ("", "garbage", None, 5, "2026-02-30T10:00:00"):
        assert uk_local_to_utc(bad) is None


@pytest.mark.parametrize(
    ("body", "error_class"),
    [
        (b'<?xml version="1.0"?><rss version="2.0"/>', "not_json"),
        (b"<html><body>maintenance</body></html>", "not_json"),
        (b"", "empty"),
        (b'{"items": {"not": "a list"}}', "parse"),
        (b'{"items": [', "parse"),
        (b'{"items": ["\xff"]}', "parse"),
        (b"[" * 100_000 + b"]" * 100_000, "parse"),
    ],
)
async def test_ea_wrong_content(
    fetcher: HttpFetcher, mock: respx.MockRouter, body: bytes, error_class: str
) -> None:
    mock.get(EA_URL).mock(return_value=httpx.Response(200, content=body))
    src = EaFloodsSource(make_config(SourceKind.EA_FLOODS), fetcher)
    with pytest.raises(PermanentSourceError) as info:
        await src.poll(state_for(src.key), NOW)
    assert info.value.error_class == error_class


# ---------------------------------------------------------------------------- Mastodon


async def test_mastodon_lookup_then_statuses(fetcher: HttpFetcher, mock: respx.MockRouter) -> None:
    lookup = mock.get(M_LOOKUP).mock(
        return_value=httpx.Response(200, content=fixture_bytes("mastodon_account.json")))
    statuses = mock.get(M_STATUSES).mock(
        return_value=httpx.Response(200, content=fixture_bytes("mastodon_statuses.json")))
    src = MastodonSource(make_config(SourceKind.MASTODON), fetcher)
    result = await src.poll(state_for(src.key), NOW)
    assert lookup.calls[0].request.url.params["acct"] == "EssexFire"
    params = statuses.calls[0].request.url.params
    assert params["exclude_replies"] == "true" and params["exclude_reblogs"] == "true"
    assert "since_id" not in params
    (update,) = result.updates  # reply, boost, other account and direct post dropped
    assert update.external_id == "111000000000000003"
    assert update.text.startswith("Crews are at a barn fire near Braintree. Please avoid")
    assert "&amp;" not in update.text and "<" not in update.text
    assert update.native is not None and update.native.platform is Platform.MASTODON
    assert update.native.url == "https://mastodon.example/@EssexFire/111000000000000003"
    assert update.published_at == datetime(2026, 2, 10, 14, 0, tzinfo=UTC)
    assert result.cursor == "111000000000000003"
    assert result.extra[ACCOUNT_ID_KEY] == "109876543210"

    mock.get(M_STATUSES).mock(return_value=httpx.Response(
        200, json=[], headers={"X-RateLimit-Remaining": "0",
                               "X-RateLimit-Reset": "2026-02-10T15:05:00.000Z"}))
    again = await src.poll(state_for(src.key, cursor=result.cursor, extra=result.extra), NOW)
    assert again.updates == () and again.cursor == "111000000000000003"
    assert again.rate_limited_until == datetime(2026, 2, 10, 15, 5, tzinfo=UTC)
    assert lookup.call_count == 1  # the account id was remembered
    assert mock.routes[-1].calls[-1].request.url.params["since_id"] == "111000000000000003"


async def test_mastodon_stale_account_id_is_looked_up_again(
    fetcher: HttpFetcher, mock: respx.MockRouter
) -> None:
    mock.get("https://mastodon.example/api/v1/accounts/1/statuses").mock(
        return_value=httpx.Response(404))
    mock.get(M_LOOKUP).mock(
        return_value=httpx.Response(200, content=fixture_bytes("mastodon_account.json")))
    mock.get(M_STATUSES).mock(return_value=httpx.Response(200, json=[]))
    src = MastodonSource(make_config(SourceKind.MASTODON), fetcher)
    extra = {ACCOUNT_ID_KEY: "1", "mastodon_account": src.account_url}
    result = await src.poll(state_for(src.key, extra=extra), NOW)
    assert result.extra[ACCOUNT_ID_KEY] == "109876543210"


async def test_mastodon_errors(fetcher: HttpFetcher, mock: respx.MockRouter) -> None:
    mock.get(M_LOOKUP).mock(return_value=httpx.Response(200, json={"error": "x"}))
    src = MastodonSource(make_config(SourceKind.MASTODON), fetcher)
    with pytest.raises(PermanentSourceError) as info:
        await src.poll(state_for(src.key), NOW)
    assert info.value.error_class == "parse"
    mock.get(M_LOOKUP).mock(
        return_value=httpx.Response(200, content=fixture_bytes("mastodon_account.json")))
    mock.get(M_STATUSES).mock(return_value=httpx.Response(200, json={"statuses": []}))
    with pytest.raises(PermanentSourceError):
        await src.poll(state_for(src.key), NOW)


def test_mastodon_account_locators() -> None:
    assert parse_account_url("https://m.example/@Name") == ("https://m.example", "Name")
    assert parse_account_url("@Name@m.example") == ("https://m.example", "Name")
    for bad in ("m.example/@x", "https://m.example/users/x", "ftp://m.example/@x"):
        with pytest.raises(ConfigError):
            parse_account_url(bad)


# ----------------------------------------------------------------------------- Bluesky


async def test_bluesky_author_feed(fetcher: HttpFetcher, mock: respx.MockRouter) -> None:
    route = mock.get(BSKY).mock(
        return_value=httpx.Response(200, content=fixture_bytes("bluesky_feed.json")))
    src = BlueskySource(make_config(SourceKind.BLUESKY), fetcher)
    result = await src.poll(state_for(src.key), NOW)
    params = route.calls[0].request.url.params
    assert params["actor"] == "essexpolice.bsky.social"
    assert params["filter"] == "posts_no_replies"
    newest, older = result.updates  # pinned, repost and other authors skipped
    assert newest.external_id == "at://did:plc:essexpolice/app.bsky.feed.post/3kabc0000002"
    assert newest.title.startswith("The A12 is closed northbound")
    assert newest.native is not None and newest.native.cid == "bafyreiabc2"
    assert newest.native.uri == newest.external_id
    assert newest.url == "https://bsky.app/profile/essexpolice.bsky.social/post/3kabc0000002"
    assert newest.published_at == datetime(2026, 2, 10, 14, 10, tzinfo=UTC)
    assert older.published_at == datetime(2026, 2, 10, 12, 0, 1, tzinfo=UTC)  # indexedAt
    assert result.extra[DID_KEY] == "did:plc:essexpolice"


async def test_bluesky_identity_change_is_refused(
    fetcher: HttpFetcher, mock: respx.MockRouter
) -> None:
    mock.get(BSKY).mock(
        return_value=httpx.Response(200, content=fixture_bytes("bluesky_feed.json")))
    src = BlueskySource(make_config(SourceKind.BLUESKY), fetcher)
    extra = {DID_KEY: "did:plc:previousowner", "bluesky_handle": src.actor}
    with pytest.raises(PermanentSourceError) as info:
        await src.poll(state_for(src.key, extra=extra), NOW)
    assert info.value.error_class == "identity_changed"


async def test_bluesky_base_url_override_and_bad_json(
    fetcher: HttpFetcher, mock: respx.MockRouter
) -> None:
    mock.get("http://127.0.0.1:8999/bsky/xrpc/app.bsky.feed.getAuthorFeed").mock(
        return_value=httpx.Response(200, content=json.dumps({"nofeed": 1}).encode()))
    config = make_config(SourceKind.BLUESKY, allow_private_network=True)
    src = BlueskySource(config, fetcher, base_url="http://127.0.0.1:8999/bsky/")
    with pytest.raises(PermanentSourceError) as info:
        await src.poll(state_for(src.key), NOW)
    assert info.value.error_class == "parse"


def test_bluesky_actor_locators() -> None:
    assert parse_actor("https://bsky.app/profile/Foo.bsky.social") == "foo.bsky.social"
    assert parse_actor("@foo.bsky.social") == "foo.bsky.social"
    for bad in ("https://bsky.app/", "", "a b"):
        with pytest.raises(ConfigError):
            parse_actor(bad)
