"""X API v2 subset: search, timelines, posting, retweets, quotas, and tweepy against it."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
import requests
import tweepy
from requests.adapters import HTTPAdapter

from crisiscomms.domain.clock import FixedClock
from crisiscomms.simulator import Faults, RunningSimulator, World

T0 = datetime(2026, 1, 5, 10, 0, tzinfo=UTC)
DUP = "You are not allowed to create a Tweet with duplicate content."


class RewriteAdapter(HTTPAdapter):
    """Send tweepy's https://api.twitter.com traffic to the simulator's /x."""

    def __init__(self, base: str) -> None:
        super().__init__()
        self.base = base

    def send(self, request: requests.PreparedRequest, **kwargs: Any) -> requests.Response:
        assert request.url is not None
        request.url = request.url.replace("https://api.twitter.com", self.base, 1)
        return super().send(request, **kwargs)


@pytest.fixture
def tweepy_client(sim: RunningSimulator, world: World) -> Iterator[tweepy.Client]:
    client = tweepy.Client(
        consumer_key="ck",
        consumer_secret="cs",
        access_token=f"{world.accounts.x_me.id}-at",
        access_token_secret="ats",
        wait_on_rate_limit=False,
    )
    client.session.mount("https://api.twitter.com", RewriteAdapter(sim.url_for("x")))
    yield client
    client.session.close()


def _sources(world: World) -> None:
    world.add_x_user("111", "metpoliceuk")
    world.add_x_user("222", "LondonFire")
    world.add_x_user("333", "someoneelse")
    world.add_item("111", "x", T0 - timedelta(minutes=10), {"id": "1001", "text": "Police 1"})
    world.add_item("222", "x", T0 - timedelta(minutes=9), {"id": "1002", "text": "Fire 1"})
    world.add_item("333", "x", T0 - timedelta(minutes=8), {"id": "1003", "text": "Other"})
    world.add_item(
        "111", "x", T0 - timedelta(minutes=7), {"id": "1004", "text": "@x reply", "reply": True}
    )
    world.add_item(
        "111", "x", T0 - timedelta(minutes=6), {"id": "1005", "text": "RT", "retweet_of": "1002"}
    )
    world.add_item("222", "x", T0 + timedelta(minutes=5), {"id": "1006", "text": "Fire 2"})


def test_search_from_or_query(
    world: World, clock: FixedClock, client: httpx.Client, auth: dict[str, str]
) -> None:
    _sources(world)
    query = "(from:metpoliceuk OR from:222) -is:reply -is:retweet"
    params = {"query": query, "tweet.fields": "author_id,created_at", "expansions": "author_id"}
    body = client.get("/x/2/tweets/search/recent", params=params, headers=auth).json()
    assert [t["id"] for t in body["data"]] == ["1002", "1001"]
    assert body["data"][0]["author_id"] == "222"
    assert body["data"][0]["created_at"] == "2026-01-05T09:51:00.000Z"
    assert {u["username"] for u in body["includes"]["users"]} == {"metpoliceuk", "LondonFire"}
    assert body["meta"] == {"newest_id": "1002", "oldest_id": "1001", "result_count": 2}
    clock.advance(timedelta(minutes=5))
    newer = client.get(
        "/x/2/tweets/search/recent", headers=auth, params={**params, "since_id": "1002"}
    ).json()
    assert [t["id"] for t in newer["data"]] == ["1006"]
    bare = client.get(
        "/x/2/tweets/search/recent", headers=auth, params={"query": "from:333"}
    ).json()
    assert bare["data"] == [{"id": "1003", "text": "Other", "edit_history_tweet_ids": ["1003"]}]
    empty = client.get(
        "/x/2/tweets/search/recent", headers=auth, params={**params, "since_id": "1006"}
    ).json()
    assert empty == {"meta": {"result_count": 0}}


def test_user_timeline_exclude_and_unknown(
    world: World, client: httpx.Client, auth: dict[str, str]
) -> None:
    _sources(world)
    body = client.get(
        "/x/2/users/111/tweets",
        headers=auth,
        params={"exclude": "replies,retweets", "max_results": "5"},
    ).json()
    assert [t["id"] for t in body["data"]] == ["1001"]
    missing = client.get("/x/2/users/999/tweets", headers=auth).json()
    assert missing["errors"][0]["title"] == "Not Found Error"
    bad = client.get("/x/2/users/111/tweets", headers=auth, params={"max_results": "3"})
    assert bad.status_code == 400
    assert client.get("/x/2/users/111/tweets").status_code == 401


def test_post_quote_duplicate_and_retweet(
    world: World, client: httpx.Client, auth: dict[str, str]
) -> None:
    _sources(world)
    me = world.accounts.x_me.id
    created = client.post("/x/2/tweets", json={"text": "Hello"}, headers=auth)
    assert created.status_code == 201
    post_id = created.json()["data"]["id"]
    dup = client.post("/x/2/tweets", json={"text": "Hello"}, headers=auth)
    assert dup.status_code == 403
    assert dup.json() == {"detail": DUP, "title": "Forbidden", "status": 403, "type": "about:blank"}
    quote = client.post(
        "/x/2/tweets", json={"text": "Read this", "quote_tweet_id": "1001"}, headers=auth
    )
    assert quote.status_code == 201
    rt = client.post(f"/x/2/users/{me}/retweets", json={"tweet_id": "1002"}, headers=auth)
    assert rt.status_code == 200 and rt.json() == {"data": {"retweeted": True}}
    again = client.post(f"/x/2/users/{me}/retweets", json={"tweet_id": "1002"}, headers=auth)
    assert again.status_code == 403
    assert again.json()["detail"] == "You have already retweeted this Tweet."
    world.x_repeat_retweet_status = 200
    third = client.post(f"/x/2/users/{me}/retweets", json={"tweet_id": "1002"}, headers=auth)
    assert third.json() == {"data": {"retweeted": True}}
    assert [(p.kind, p.ref) for p in world.posts] == [
        ("post", ""),
        ("quote", "1001"),
        ("retweet", "1002"),
    ]
    assert world.posts[0].post_id == post_id and world.duplicates() == []
    mine = client.get(
        f"/x/2/users/{me}/tweets", headers=auth, params={"tweet.fields": "referenced_tweets"}
    ).json()
    assert {t["text"] for t in mine["data"]} == {"Hello", "Read this", "RT @LondonFire: Fire 1"}
    lookup = client.get(f"/x/2/tweets/{post_id}", headers=auth).json()
    assert lookup["data"]["text"] == "Hello"
    assert client.get("/x/2/users/me", headers=auth).json()["data"]["username"] == "nhs_comms"
    assert (
        client.get("/x/2/users/by/username/metpoliceuk", headers=auth).json()["data"]["id"] == "111"
    )


def test_duplicate_text_allowed_after_24h(
    world: World, clock: FixedClock, client: httpx.Client, auth: dict[str, str]
) -> None:
    assert client.post("/x/2/tweets", json={"text": "Same"}, headers=auth).status_code == 201
    clock.advance(timedelta(hours=24))
    assert client.post("/x/2/tweets", json={"text": "Same"}, headers=auth).status_code == 201
    assert len(world.duplicates()) == 1  # two posts with the same text: a duplicate for us


def test_quota_429_until_reset(
    world: World, clock: FixedClock, client: httpx.Client, auth: dict[str, str]
) -> None:
    world.set_quota("x:POST /2/tweets", 2)
    first = client.post("/x/2/tweets", json={"text": "a"}, headers=auth)
    assert first.headers["x-rate-limit-limit"] == "2"
    assert first.headers["x-rate-limit-remaining"] == "1"
    reset = int(first.headers["x-rate-limit-reset"])
    assert reset == int((T0 + timedelta(minutes=15)).timestamp())  # simulated epoch seconds
    client.post("/x/2/tweets", json={"text": "b"}, headers=auth)
    refused = client.post("/x/2/tweets", json={"text": "c"}, headers=auth)
    assert refused.status_code == 429
    assert refused.headers["x-rate-limit-remaining"] == "0"
    assert int(refused.headers["x-rate-limit-reset"]) == reset
    assert world.rate_limit_violations() == []
    clock.advance(timedelta(minutes=5))
    assert client.post("/x/2/tweets", json={"text": "c"}, headers=auth).status_code == 429
    assert len(world.rate_limit_violations()) == 1  # that one was sent before the reset
    clock.set(datetime.fromtimestamp(reset, UTC))
    ok = client.post("/x/2/tweets", json={"text": "c"}, headers=auth)
    assert ok.status_code == 201 and ok.headers["x-rate-limit-remaining"] == "1"
    assert [p.text for p in world.posts] == ["a", "b", "c"]
    log = [r for r in world.request_log if r.path == "/x/2/tweets"]
    assert [r.status for r in log] == [201, 201, 429, 429, 201]
    assert log[2].reset_at == datetime.fromtimestamp(reset, UTC)


def test_burst_429_window(
    world: World, clock: FixedClock, client: httpx.Client, auth: dict[str, str]
) -> None:
    end = T0 + timedelta(minutes=2)
    world.set_faults(Faults(burst_429=[("x", T0, end)]))
    refused = client.post("/x/2/tweets", json={"text": "a"}, headers=auth)
    assert refused.status_code == 429
    assert int(refused.headers["x-rate-limit-reset"]) == int(end.timestamp())
    clock.set(end)
    assert client.post("/x/2/tweets", json={"text": "a"}, headers=auth).status_code == 201
    assert world.rate_limit_violations() == []


def test_tweepy_create_retweet_and_errors(world: World, tweepy_client: tweepy.Client) -> None:
    _sources(world)
    resp = tweepy_client.create_tweet(text="Crisis update", user_auth=True)
    assert resp.data["text"] == "Crisis update" and resp.data["id"].isdigit()
    rt = tweepy_client.retweet("1001", user_auth=True)
    assert rt.data == {"retweeted": True}
    with pytest.raises(tweepy.Forbidden) as dup:
        tweepy_client.create_tweet(text="Crisis update", user_auth=True)
    assert dup.value.api_codes == [] and dup.value.api_messages == [DUP]
    quote = tweepy_client.create_tweet(text="See", quote_tweet_id="1002", user_auth=True)
    assert quote.data["id"]
    tweets = tweepy_client.get_users_tweets(
        "222",
        user_auth=True,
        since_id="1001",
        tweet_fields=["created_at", "author_id"],
        exclude=["replies", "retweets"],
    )
    assert [t.id for t in tweets.data] == [1002]
    world.set_quota("x:POST /2/users/:id/retweets", 0)
    with pytest.raises(tweepy.TooManyRequests) as limited:
        tweepy_client.retweet("1002", user_auth=True)
    assert limited.value.response.headers["x-rate-limit-reset"].isdigit()
    assert [(p.kind, p.ref) for p in world.posts] == [
        ("post", ""),
        ("retweet", "1001"),
        ("quote", "1002"),
    ]
