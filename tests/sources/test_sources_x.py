"""XSource: a real tweepy.Client routed by mount_base_url, HTTP served by `responses`."""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
import requests
import responses
import tweepy

from crisiscomms.adapters.sources.base import SourceRateLimitedError
from crisiscomms.adapters.sources.x import RATE_LIMIT_KEY, XSource, build_queries
from crisiscomms.adapters.xhttp import mount_base_url
from crisiscomms.domain.errors import PermanentSourceError, SourceError, TransientSourceError
from crisiscomms.domain.models import Platform, SourceKind

from .sources_helpers import NOW, make_config, state_for

pytestmark = pytest.mark.anyio
BASE = "http://127.0.0.1:9/x"
SEARCH = BASE + "/2/tweets/search/recent"
TOKEN = "super-secret-bearer-token"
RESET = int(datetime(2026, 2, 10, 15, 15, tzinfo=UTC).timestamp())


def tweet(tid: str, author: str, text: str = "Update", **kw: Any) -> dict[str, Any]:
    return {"id": tid, "author_id": author, "text": text,
            "created_at": "2026-02-10T14:00:00.000Z", "edit_history_tweet_ids": [tid], **kw}


def page(*tweets: dict[str, Any], users: list[dict[str, str]] | None = None,
         next_token: str | None = None) -> dict[str, Any]:
    meta: dict[str, Any] = {"result_count": len(tweets)}
    if next_token:
        meta["next_token"] = next_token
    body: dict[str, Any] = {"data": list(tweets), "meta": meta}
    if users:
        body["includes"] = {"users": users}
    return body


@pytest.fixture
def rsps() -> Iterator[responses.RequestsMock]:
    with responses.RequestsMock(assert_all_requests_are_fired=False) as mock:
        yield mock


@pytest.fixture
def client() -> Iterator[tweepy.Client]:
    c = tweepy.Client(bearer_token=TOKEN, return_type=requests.Response,
                      wait_on_rate_limit=False)
    mount_base_url(c.session, BASE)
    yield c
    c.session.close()


def configs() -> list[Any]:
    return [
        make_config(SourceKind.X, id="essex-police", handle="EssexPoliceUK", x_user_id="1000"),
        make_config(SourceKind.X, id="essex-fire", handle="ECFRS", x_user_id="2000"),
        make_config(SourceKind.X, id="unpinned", handle="SomeoneElse", x_user_id=None),
    ]


def sent_params(call: Any) -> dict[str, list[str]]:
    return parse_qs(urlsplit(call.request.url).query)


def test_build_queries_split_under_the_limit() -> None:
    ids = [str(10**18 + i) for i in range(40)]
    queries = build_queries(ids, 512)
    assert len(queries) > 1 and all(len(q) <= 512 for q in queries)
    assert all(q.endswith(" -is:reply -is:retweet") for q in queries)
    joined = " ".join(queries)
    assert all(f"from:{i}" in joined for i in ids)
    assert build_queries(["1", "2"]) == ["(from:1 OR from:2) -is:reply -is:retweet"]


async def test_poll_filters_authors_and_sets_cursor(
    rsps: responses.RequestsMock, client: tweepy.Client
) -> None:
    rsps.get(SEARCH, json=page(
        tweet("1500", "1000", "Road closed &amp; diversions in place\nMore later"),
        tweet("1499", "2000", "Fire in Basildon"),
        tweet("1498", "6666", "I am not pinned"),
        tweet("1497", "1000", "a reply", referenced_tweets=[{"type": "replied_to", "id": "1"}]),
        users=[{"id": "1000", "username": "EssexPoliceNew", "name": "Essex Police"}],
    ), headers={"x-rate-limit-remaining": "59", "x-rate-limit-reset": str(RESET)})
    src = XSource(configs(), client)
    assert src.key == "x" and src.source_ids == ("essex-police", "essex-fire", "unpinned")
    result = await src.poll(state_for("x"), NOW)
    (call,) = rsps.calls
    params = sent_params(call)
    assert params["query"] == ["(from:1000 OR from:2000) -is:reply -is:retweet"]
    assert "since_id" not in params
    assert params["expansions"] == ["author_id"]
    assert call.request.headers["Authorization"] == f"Bearer {TOKEN}"
    police, fire = result.updates
    assert (police.source_id, fire.source_id) == ("essex-police", "essex-fire")
    assert police.text == "Road closed & diversions in place\nMore later"
    assert police.title == "Road closed & diversions in place"
    assert police.native is not None and police.native.platform is Platform.X
    assert police.url == "https://x.com/EssexPoliceNew/status/1500"
    assert fire.url == "https://x.com/ECFRS/status/1499"
    assert police.published_at == datetime(2026, 2, 10, 14, 0, tzinfo=UTC)
    assert result.cursor == "1500" and result.rate_limited_until is None


async def test_since_id_and_pagination(
    rsps: responses.RequestsMock, client: tweepy.Client
) -> None:
    rsps.get(SEARCH, json=page(tweet("1600", "1000"), next_token="t2"))
    rsps.get(SEARCH, json=page(tweet("1550", "2000")))
    src = XSource(configs(), client)
    result = await src.poll(state_for("x", cursor="1500"), NOW)
    assert [u.external_id for u in result.updates] == ["1600", "1550"]
    assert sent_params(rsps.calls[0])["since_id"] == ["1500"]
    assert sent_params(rsps.calls[1])["next_token"] == ["t2"]
    assert result.cursor == "1600"


async def test_remaining_zero_pauses_until_reset(
    rsps: responses.RequestsMock, client: tweepy.Client
) -> None:
    rsps.get(SEARCH, json=page(tweet("1700", "1000")),
             headers={"x-rate-limit-remaining": "0", "x-rate-limit-reset": str(RESET)})
    src = XSource(configs(), client)
    result = await src.poll(state_for("x", cursor="1600"), NOW)
    reset = datetime.fromtimestamp(RESET, UTC)
    assert result.rate_limited_until == reset
    assert result.extra[RATE_LIMIT_KEY] == reset.isoformat()
    assert result.cursor == "1700"  # the only query finished
    before = await src.poll(state_for("x", cursor="1700", extra=result.extra),
                            NOW + timedelta(minutes=5))
    assert len(rsps.calls) == 1 and before.updates == () and before.rate_limited_until == reset
    rsps.get(SEARCH, json=page())
    after = await src.poll(state_for("x", cursor="1700", extra=result.extra), reset)
    assert len(rsps.calls) == 2 and RATE_LIMIT_KEY not in after.extra


async def test_rate_limit_mid_poll_keeps_cursor(rsps: responses.RequestsMock,
                                                client: tweepy.Client) -> None:
    many = [make_config(SourceKind.X, id=f"s{i}", handle=f"h{i}", x_user_id=str(10**17 + i))
            for i in range(40)]
    src = XSource(many, client)
    assert len(src.queries) > 1
    rsps.get(SEARCH, json=page(tweet("1800", str(10**17))),
             headers={"x-rate-limit-remaining": "0", "x-rate-limit-reset": str(RESET)})
    result = await src.poll(state_for("x", cursor="1700"), NOW)
    assert len(rsps.calls) == 1
    assert [u.external_id for u in result.updates] == ["1800"]
    assert result.cursor == "1700"  # later queries not read yet: do not skip past them


@pytest.mark.parametrize(
    ("status", "kind", "error_class"),
    [(401, PermanentSourceError, "http_401"), (403, PermanentSourceError, "http_403"),
     (400, PermanentSourceError, "http_400"), (500, TransientSourceError, "http_500"),
     (503, TransientSourceError, "http_503")],
)
async def test_http_errors(rsps: responses.RequestsMock, client: tweepy.Client, status: int,
                           kind: type[SourceError], error_class: str) -> None:
    rsps.get(SEARCH, json={"title": "nope", "detail": TOKEN}, status=status)
    src = XSource(configs(), client)
    with pytest.raises(kind) as info:
        await src.poll(state_for("x"), NOW)
    assert info.value.error_class == error_class
    assert TOKEN not in str(info.value) and info.value.source_id == "x"


async def test_429_gives_retry_at(rsps: responses.RequestsMock, client: tweepy.Client) -> None:
    rsps.get(SEARCH, json={"title": "Too Many Requests"}, status=429,
             headers={"x-rate-limit-reset": str(RESET)})
    src = XSource(configs(), client)
    with pytest.raises(SourceRateLimitedError) as info:
        await src.poll(state_for("x"), NOW)
    assert info.value.retry_at == datetime.fromtimestamp(RESET, UTC)


@pytest.mark.parametrize(
    ("exc", "error_class"),
    [(requests.exceptions.ConnectTimeout("t"), "timeout"),
     (requests.exceptions.ConnectionError("refused"), "connect"),
     (requests.exceptions.SSLError("bad cert"), "tls")],
)
async def test_network_errors(rsps: responses.RequestsMock, client: tweepy.Client,
                              exc: Exception, error_class: str) -> None:
    rsps.get(SEARCH, body=exc)
    src = XSource(configs(), client)
    with pytest.raises(TransientSourceError) as info:
        await src.poll(state_for("x"), NOW)
    assert info.value.error_class == error_class


async def test_invalid_json(rsps: responses.RequestsMock, client: tweepy.Client) -> None:
    rsps.get(SEARCH, body="<html>oops</html>", content_type="text/html")
    with pytest.raises(PermanentSourceError) as info:
        await XSource(configs(), client).poll(state_for("x"), NOW)
    assert info.value.error_class == "parse"


class FakeClient:
    """An injected client with tweepy's default return type (no headers)."""

    def __init__(self, result: Any) -> None:
        self.result = result
        self.queries: list[str] = []

    def search_recent_tweets(self, query: str, **params: Any) -> Any:
        self.queries.append(query)
        return self.result


async def test_fake_client_with_tweepy_response_and_dict() -> None:
    data = [tweepy.Tweet(tweet("42", "2000", "hello")), tweepy.Tweet(tweet("43", "7", "x"))]
    fake = FakeClient(tweepy.Response(data, {}, [], {"result_count": 2}))
    result = await XSource(configs(), fake).poll(state_for("x"), NOW)
    assert [u.external_id for u in result.updates] == ["42"]
    assert fake.queries == ["(from:1000 OR from:2000) -is:reply -is:retweet"]
    fake_dict = FakeClient(page(tweet("44", "1000")))
    result = await XSource(configs(), fake_dict).poll(state_for("x", cursor="43"), NOW)
    assert result.cursor == "44"


async def test_no_pinned_sources_sends_nothing() -> None:
    fake = FakeClient(page())
    src = XSource([make_config(SourceKind.X, id="u", x_user_id=None)], fake)
    assert (await src.poll(state_for("x"), NOW)).updates == ()
    assert fake.queries == []


def test_mount_base_url_applies_a_timeout(rsps: responses.RequestsMock) -> None:
    session = requests.Session()
    mount_base_url(session)  # production: no rewrite, but a default timeout
    rsps.get("https://api.twitter.com/2/ping", json={})
    started = time.monotonic()
    session.get("https://api.twitter.com/2/ping")
    session.close()
    assert time.monotonic() - started < 1
    assert rsps.calls[0].request.url.startswith("https://api.twitter.com/")
