"""X conformance: the X calls our adapters make, held against the real answers recorded by
tweepy's own test suite (shared/recorded/x/, vcrpy cassettes).

One test per recorded call the adapters use (each names its recording, ``Interaction.name``):

* the recorded response is served (``responses``) to the adapter, through a real
  ``tweepy.Client``, and the adapter must read every field it relies on from it;
* the simulator is asked the same thing, the same way, and its answer must have the recorded
  shape (``cassettes.shape``: field names, types, nesting), status and relevant headers
  (``content-type``; ``x-rate-limit-limit/remaining/reset`` as numbers; ``Location`` on a
  create).

The calls: recent search (XSource), and create, retweet, get me and a user's posts
(XPublisher: posting, quoting, retweeting, and ``find_existing``).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from email.utils import parsedate_to_datetime
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
import requests
import responses
import tweepy
from pydantic import SecretStr

from crisiscomms.adapters.publishers.x import XPublisher
from crisiscomms.adapters.sources.x import RATE_LIMIT_KEY, XSource
from crisiscomms.domain.clock import FixedClock
from crisiscomms.domain.config import SourceConfig
from crisiscomms.domain.models import (
    ActionKind,
    ItemState,
    NativeRef,
    OutboxItem,
    Platform,
    SourceKind,
    SourceState,
)
from crisiscomms.simulator import RunningSimulator, World, serve

from .cassettes import Interaction, interaction, shape

SEARCH = "x/test_client_search_recent_tweets.yaml"
TIMELINE = "x/test_client_get_users_tweets.yaml"
CREATE = "x/test_client_create_and_delete_tweet.yaml"
RETWEET = "x/test_client_retweet_and_unretweet.yaml"
ME = "x/test_client_get_me.yaml"
API = "https://api.twitter.com"
RATE_HEADERS = ("x-rate-limit-limit", "x-rate-limit-remaining", "x-rate-limit-reset")
SERVED = ("content-type", *RATE_HEADERS, "location")  # what we pass on from a recording
T0 = datetime(2026, 1, 5, 10, 0, tzinfo=UTC)  # the simulator's time


def recorded_at(rec: Interaction) -> datetime:
    return parsedate_to_datetime(rec.headers["date"]).astimezone(UTC)


def serve_recorded(rsps: responses.RequestsMock, rec: Interaction) -> None:
    """Answer the recorded request with the recorded response (body already decompressed)."""
    headers = {k: v for k, v in rec.headers.items() if k in SERVED and k != "content-type"}
    rsps.add(rec.method, API + rec.path, body=rec.body, status=rec.status, headers=headers,
             content_type=rec.headers["content-type"])


@pytest.fixture
def rsps() -> Iterator[responses.RequestsMock]:
    with responses.RequestsMock(assert_all_requests_are_fired=False) as mock:
        yield mock


def publisher(me: str, clock_at: datetime) -> XPublisher:
    credentials = {"consumer_key": SecretStr("ck-conformance"),
                   "consumer_secret": SecretStr("cs-conformance"),
                   # tweepy takes our user id from the access token's prefix.
                   "access_token": SecretStr(f"{me}-conformance"),
                   "access_token_secret": SecretStr("ats-conformance")}
    return XPublisher("x-main", credentials=credentials, clock=FixedClock(clock_at),
                      account="TweepyDev")


def item(body: str, *, action: ActionKind = ActionKind.POST, native: NativeRef | None = None,
         sent_at: datetime | None = None) -> OutboxItem:
    return OutboxItem(id=1, dedupe_key="conformance:1", channel_id="x-main", action=action,
                      text=body, state=ItemState.SENDING, created_at=T0, native=native,
                      sent_at=sent_at)


# -- the simulator --------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def sim() -> Iterator[RunningSimulator]:
    with serve(World(FixedClock(T0))) as running:
        yield running


@pytest.fixture
def world(sim: RunningSimulator) -> World:
    w = World(FixedClock(T0), x_me_id="1072250532645998596", x_me_username="TweepyDev")
    w.add_x_user("783214", "Twitter")
    for minute in range(12):  # more than a page, so the answer carries a next_token
        w.add_item("783214", "x", T0 - timedelta(minutes=30 - minute),
                   {"text": f"{minute} tweepy https://t.co/3OQ4eGsUku"})
    w.add_item("783214", "x", T0 - timedelta(hours=2),
               {"id": "1415348607813832708", "text": "The tweet the recording retweets"})
    sim.replace_world(w)
    return w


@pytest.fixture
def client(sim: RunningSimulator, world: World) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=sim.url_for("x"), timeout=5,
                      headers={"Authorization": "Bearer conformance"}) as c:
        yield c


def assert_like_recording(rec: Interaction, got: httpx.Response) -> None:
    assert got.status_code == rec.status, (rec.name, got.text[:300])
    assert shape(got.json()) == shape(rec.json()), f"{rec.name}: the simulator's shape differs"
    assert got.headers["content-type"] == rec.headers["content-type"], rec.name
    for name in RATE_HEADERS:
        assert rec.headers[name].isdigit(), f"{rec.name}: {name} recorded"
        assert got.headers.get(name, "").isdigit(), f"simulator lacks {name} ({rec.name})"
    reset = datetime.fromtimestamp(int(got.headers["x-rate-limit-reset"]), UTC)
    assert T0 < reset <= T0 + timedelta(minutes=15), rec.name  # epoch seconds, the window


# -- GET /2/tweets/search/recent (XSource) ------------------------------------------------------
def pinned(author: str) -> SourceConfig:
    return SourceConfig(id="tweepy-x", agency="Tweepy", kind=SourceKind.X, handle="TweepyDev",
                        x_user_id=author)


def test_search_recent_is_read_as_recorded(rsps: responses.RequestsMock) -> None:
    """XSource reads the recorded recent-search answer: data[].id, text, meta.next_token and
    the x-rate-limit headers."""
    rec = interaction(SEARCH, "GET", "/2/tweets/search/recent")
    now = recorded_at(rec)
    recorded = rec.json()
    serve_recorded(rsps, rec)
    rsps.get(API + rec.path, json={"meta": {"result_count": 0}})
    client = tweepy.Client(bearer_token="conformance", return_type=requests.Response)
    source = XSource([pinned("2244994945")], client)
    result = asyncio.run(source.poll(SourceState(source_id="x"), now))
    # The recording asked for no tweet.fields, so no author_id: nothing is relayed, and every
    # recorded post is refused by its recorded id.
    assert result.updates == (), rec.name
    assert [r.split()[1] for r in result.refused] == [t["id"] for t in recorded["data"]]
    assert result.cursor == recorded["meta"]["newest_id"], rec.name
    second = parse_qs(urlsplit(rsps.calls[1].request.url).query)
    assert second["next_token"] == [recorded["meta"]["next_token"]], rec.name
    assert result.rate_limited_until is None  # x-rate-limit-remaining: 448

    # The same posts by a pinned author: their recorded ids and texts become the updates.
    with_author = {**recorded, "data": [{**t, "author_id": "2244994945"}
                                        for t in recorded["data"]]}
    rsps.replace(responses.GET, API + rec.path, json=with_author,
                 headers={"x-rate-limit-remaining": "0",
                          "x-rate-limit-reset": rec.headers["x-rate-limit-reset"]})
    again = asyncio.run(XSource([pinned("2244994945")], client).poll(
        SourceState(source_id="x"), now))
    assert [(u.external_id, u.text) for u in again.updates] == \
        [(t["id"], t["text"]) for t in recorded["data"]], rec.name
    reset = datetime.fromtimestamp(int(rec.headers["x-rate-limit-reset"]), UTC)
    assert again.rate_limited_until == reset and again.extra[RATE_LIMIT_KEY] == reset.isoformat()
    client.session.close()


def test_search_recent_simulated_like_recorded(client: httpx.Client) -> None:
    """The simulator answers the recorded recent search with the recorded shape."""
    rec = interaction(SEARCH, "GET", "/2/tweets/search/recent")
    got = client.get("/2/tweets/search/recent", params=rec.query)
    assert_like_recording(rec, got)
    assert got.json()["meta"]["result_count"] == rec.json()["meta"]["result_count"]


# -- GET /2/users/me and GET /2/users/:id/tweets (XPublisher.find_existing) --------------------
def test_get_me_and_users_tweets_are_read_as_recorded(rsps: responses.RequestsMock) -> None:
    """find_existing reads our id from the recorded /2/users/me (data.id) and our posts from the
    recorded timeline (data[].id, data[].text with its t.co links, meta.next_token)."""
    me = interaction(ME, "GET", "/2/users/me")
    timeline = interaction(TIMELINE, "GET", "/2/users/")
    my_id = me.json()["data"]["id"]
    posted = timeline.json()["data"][0]
    serve_recorded(rsps, me)
    rsps.add(responses.GET, f"{API}/2/users/{my_id}/tweets", body=timeline.body,
             status=timeline.status, content_type=timeline.headers["content-type"])
    rsps.add(responses.GET, f"{API}/2/users/{my_id}/tweets", json={"meta": {"result_count": 0}})
    now = recorded_at(timeline)
    pub = publisher(my_id, now)
    # What we sent: the recorded text with the links as we wrote them (X shows them as t.co).
    body = posted["text"].replace("https://t.co/3OQ4eGsUku", "https://example.com/media") \
        .replace("https://t.co/LVVolAQPZi", "https://x.com/i/status/1")
    found = pub.find_existing(item(body, sent_at=now - timedelta(days=3)), None)
    assert found is not None and found.post_id == posted["id"], (me.name, timeline.name)
    calls = [c.request.url for c in rsps.calls]
    assert calls[0].startswith(f"{API}/2/users/me"), me.name
    assert f"pagination_token={timeline.json()['meta']['next_token']}" in calls[2], \
        timeline.name
    pub.close()


def test_get_me_simulated_like_recorded(client: httpx.Client) -> None:
    rec = interaction(ME, "GET", "/2/users/me")
    assert_like_recording(rec, client.get("/2/users/me"))


def test_users_tweets_simulated_like_recorded(client: httpx.Client) -> None:
    rec = interaction(TIMELINE, "GET", "/2/users/")
    assert_like_recording(rec, client.get(rec.path))


# -- POST /2/tweets (XPublisher.publish: post and quote) ---------------------------------------
def test_create_tweet_is_read_as_recorded(rsps: responses.RequestsMock) -> None:
    """publish sends the recorded request body and reads data.id from the recorded 201."""
    rec = interaction(CREATE, "POST", "/2/tweets")
    serve_recorded(rsps, rec)
    pub = publisher("1072250532645998596", recorded_at(rec))
    sent = json.loads(rec.request_body or "{}")
    result = pub.publish(item(sent["text"]), None)
    assert result.post_id == rec.json()["data"]["id"], rec.name
    assert json.loads(rsps.calls[0].request.body) == sent, rec.name
    pub.close()


def test_create_tweet_simulated_like_recorded(client: httpx.Client) -> None:
    rec = interaction(CREATE, "POST", "/2/tweets")
    got = client.post("/2/tweets", json=json.loads(rec.request_body or "{}"))
    assert_like_recording(rec, got)
    assert rec.headers["location"].endswith(rec.json()["data"]["id"])
    assert got.headers["location"] == f"{API}/2/tweets/{got.json()['data']['id']}", rec.name


# -- POST /2/users/:id/retweets (XPublisher.publish: retweet) ----------------------------------
def test_retweet_is_read_as_recorded(rsps: responses.RequestsMock) -> None:
    """A retweet goes to our recorded user id with the recorded body; data.retweeted is read."""
    rec = interaction(RETWEET, "POST", "/retweets")
    me = rec.path.split("/")[3]
    tweet_id = json.loads(rec.request_body or "{}")["tweet_id"]
    serve_recorded(rsps, rec)
    pub = publisher(me, recorded_at(rec))
    native = NativeRef(Platform.X, id=tweet_id, url=f"https://x.com/i/status/{tweet_id}")
    result = pub.publish(item("", action=ActionKind.RETWEET, native=native), None)
    assert result.post_id == f"rt:{tweet_id}", rec.name
    assert json.loads(rsps.calls[0].request.body) == {"tweet_id": tweet_id}, rec.name
    pub.close()


def test_retweet_simulated_like_recorded(client: httpx.Client) -> None:
    rec = interaction(RETWEET, "POST", "/retweets")
    got = client.post(rec.path, json=json.loads(rec.request_body or "{}"))
    assert_like_recording(rec, got)
