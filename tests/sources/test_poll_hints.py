"""The adapters surface what an answer says about when to ask again (PollResult.hints):
Cache-Control max-age (less Age), Expires, no-cache, Retry-After, and the platforms' read
budgets (Mastodon X-RateLimit-*, X x-rate-limit-* / x-app-limit-24hour-*)."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import httpx
import pytest
import requests
import responses
import respx
import tweepy

from crisiscomms.adapters.sources.ea_floods import EaFloodsSource
from crisiscomms.adapters.sources.http import HttpFetcher, freshness, poll_hints
from crisiscomms.adapters.sources.mastodon import MastodonSource
from crisiscomms.adapters.sources.parsing import FeedParserPool
from crisiscomms.adapters.sources.rss import RssSource
from crisiscomms.adapters.sources.x import XSource
from crisiscomms.adapters.xhttp import mount_base_url
from crisiscomms.domain.models import ReadBudget, SourceKind

from .sources_helpers import FEED_URL, NOW, fixture_bytes, make_config, state_for

pytestmark = pytest.mark.anyio
EA_URL = "https://environment.data.gov.uk/flood-monitoring/id/floods"
RSS = (b"<?xml version='1.0'?><rss version='2.0'><channel><title>t</title>"
       b"<item><guid>a</guid><title>A</title></item></channel></rss>")
HTTP_NOW = "Tue, 10 Feb 2026 15:00:00 GMT"  # NOW as an HTTP date


@pytest.mark.parametrize(("headers", "fresh"), [
    ({}, None),
    ({"cache-control": "public, max-age=60"}, 60.0),
    ({"cache-control": "max-age=60", "age": "45"}, 15.0),
    ({"cache-control": "max-age=60", "age": "90"}, 0.0),
    ({"cache-control": "no-cache"}, 0.0),
    ({"cache-control": "private, no-store, max-age=60"}, 0.0),
    ({"cache-control": 'max-age="30"'}, 30.0),
    ({"expires": "Tue, 10 Feb 2026 15:02:00 GMT", "date": HTTP_NOW}, 120.0),
    ({"expires": "Tue, 10 Feb 2026 15:00:30 GMT"}, 30.0),  # no Date: from now
    ({"expires": "0"}, 0.0),  # invalid Expires: already expired
    ({"cache-control": "max-age=10", "expires": "Tue, 10 Feb 2026 16:00:00 GMT"}, 10.0),
])
def test_freshness(headers: dict[str, str], fresh: float | None) -> None:
    assert freshness(headers, NOW) == fresh


def test_retry_after_on_an_answer_in_seconds_or_as_a_date() -> None:
    assert poll_hints({"retry-after": "120"}, NOW).retry_after == NOW + timedelta(seconds=120)
    assert poll_hints({"retry-after": "Tue, 10 Feb 2026 15:10:00 GMT"}, NOW).retry_after == \
        datetime(2026, 2, 10, 15, 10, tzinfo=UTC)
    assert poll_hints({}, NOW).retry_after is None


async def test_rss_surfaces_max_age_on_200_and_on_304(
        fetcher: HttpFetcher, mock: respx.MockRouter, pool: FeedParserPool) -> None:
    route = mock.get(FEED_URL).mock(return_value=httpx.Response(
        200, content=RSS, headers={"Cache-Control": "max-age=20", "ETag": '"v1"',
                                   "Content-Type": "application/rss+xml"}))
    src = RssSource(make_config(SourceKind.RSS), fetcher, pool)
    first = await src.poll(state_for(src.key), NOW)
    assert first.hints.max_age_seconds == 20.0 and first.etag == '"v1"'
    route.mock(return_value=httpx.Response(304, headers={"Cache-Control": "max-age=20",
                                                         "Age": "5"}))
    again = await src.poll(state_for(src.key, etag='"v1"'), NOW)
    assert again.not_modified and again.hints.max_age_seconds == 15.0
    assert route.calls[-1].request.headers["If-None-Match"] == '"v1"'  # conditional GET kept


async def test_ea_floods_surfaces_expires(fetcher: HttpFetcher, mock: respx.MockRouter) -> None:
    mock.get(EA_URL).mock(return_value=httpx.Response(200, json={"items": []}, headers={
        "Date": HTTP_NOW, "Expires": "Tue, 10 Feb 2026 15:01:00 GMT"}))
    src = EaFloodsSource(make_config(SourceKind.EA_FLOODS), fetcher)
    result = await src.poll(state_for(src.key), NOW)
    assert result.hints.max_age_seconds == 60.0 and result.hints.budgets == ()


async def test_mastodon_surfaces_its_read_budget(fetcher: HttpFetcher,
                                                 mock: respx.MockRouter) -> None:
    mock.get("https://mastodon.example/api/v1/accounts/lookup").mock(
        return_value=httpx.Response(200, content=fixture_bytes("mastodon_account.json")))
    mock.get("https://mastodon.example/api/v1/accounts/109876543210/statuses").mock(
        return_value=httpx.Response(200, json=[], headers={
            "X-RateLimit-Limit": "300", "X-RateLimit-Remaining": "250",
            "X-RateLimit-Reset": "2026-02-10T15:05:00.000Z"}))
    src = MastodonSource(make_config(SourceKind.MASTODON), fetcher)
    result = await src.poll(state_for(src.key), NOW)
    assert result.hints.budgets == (ReadBudget(250, datetime(2026, 2, 10, 15, 5, tzinfo=UTC)),)
    assert result.hints.requests == 1


@pytest.fixture
def rsps() -> Iterator[responses.RequestsMock]:
    with responses.RequestsMock(assert_all_requests_are_fired=False) as mock:
        yield mock


async def test_x_surfaces_every_limit_window_and_the_requests_it_made(
        rsps: responses.RequestsMock) -> None:
    base = "http://127.0.0.1:9/x"
    reset15 = int((NOW + timedelta(minutes=10)).timestamp())
    reset24 = int((NOW + timedelta(hours=20)).timestamp())
    client = tweepy.Client(bearer_token="t", return_type=requests.Response,
                           wait_on_rate_limit=False)
    mount_base_url(client.session, base)
    search = base + "/2/tweets/search/recent"
    rsps.get(search, json={"data": [], "meta": {"result_count": 0, "next_token": "n"}},
             headers={"x-rate-limit-remaining": "300", "x-rate-limit-reset": str(reset15)})
    rsps.get(search, json={"data": [], "meta": {"result_count": 0}},
             headers={"x-rate-limit-remaining": "299", "x-rate-limit-reset": str(reset15),
                      "x-app-limit-24hour-remaining": "9000",
                      "x-app-limit-24hour-reset": str(reset24)})
    src = XSource([make_config(SourceKind.X, id="police", x_user_id="1000")], client)
    try:
        result = await src.poll(state_for("x"), NOW)
    finally:
        client.session.close()
    assert result.hints.requests == 2
    assert set(result.hints.budgets) == {
        ReadBudget(299, datetime.fromtimestamp(reset15, UTC)),
        ReadBudget(9000, datetime.fromtimestamp(reset24, UTC))}
