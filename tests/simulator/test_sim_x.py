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
from crisiscomms.simulator.ids import x_snowflake

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


# Post ids are snowflakes of their time (as on X), so since_id ages like the real thing.
P1, P2, P3, P4, P5, P6 = (x_snowflake(T0 + timedelta(minutes=m), i)
                          for i, m in enumerate((-10, -9, -8, -7, -6, 5)))


def _sources(world: World) -> None:
    world.add_x_user("111", "metpoliceuk")
    world.add_x_user("222", "LondonFire")
    world.add_x_user("333", "someoneelse")
    world.add_item("111", "x", T0 - timedelta(minutes=10), {"id": P1, "text": "Police 1"})
    world.add_item("222", "x", T0 - timedelta(minutes=9), {"id": P2, "text": "Fire 1"})
    world.add_item("333", "x", T0 - timedelta(minutes=8), {"id": P3, "text": "Other"})
    world.add_item(
        "111", "x", T0 - timedelta(minutes=7), {"id": P4, "text": "@x reply", "reply": True}
    )
    world.add_item(
        "111", "x", T0 - timedelta(minutes=6), {"id": P5, "text": "RT", "retweet_of": P2}
    )
    world.add_item("222", "x", T0 + timedelta(minutes=5), {"id": P6, "text": "Fire 2"})


def test_search_from_or_query(
    world: World, clock: FixedClock, client: httpx.Client, auth: dict[str, str]
) -> None:
    _sources(world)
    query = "(from:metpoliceuk OR from:222) -is:reply -is:retweet"
    params = {"query": query, "tweet.fields": "author_id,created_at", "expansions": "author_id"}
    body = client.get("/x/2/tweets/search/recent", params=params, headers=auth).json()
    assert [t["id"] for t in body["data"]] == [P2, P1]
    assert body["data"][0]["author_id"] == "222"
    assert body["data"][0]["created_at"] == "2026-01-05T09:51:00.000Z"
    assert {u["username"] for u in body["includes"]["users"]} == {"metpoliceuk", "LondonFire"}
    assert body["meta"] == {"newest_id": P2, "oldest_id": P1, "result_count": 2}
    clock.advance(timedelta(minutes=5))
    newer = client.get(
        "/x/2/tweets/search/recent", headers=auth, params={**params, "since_id": P2}
    ).json()
    assert [t["id"] for t in newer["data"]] == [P6]
    bare = client.get(
        "/x/2/tweets/search/recent", headers=auth, params={"query": "from:333"}
    ).json()
    assert bare["data"] == [{"id": P3, "text": "Other", "edit_history_tweet_ids": [P3]}]
    empty = client.get(
        "/x/2/tweets/search/recent", headers=auth, params={**params, "since_id": P6}
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
    assert [t["id"] for t in body["data"]] == [P1]
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
        "/x/2/tweets", json={"text": "Read this", "quote_tweet_id": P1}, headers=auth
    )
    assert quote.status_code == 201
    rt = client.post(f"/x/2/users/{me}/retweets", json={"tweet_id": P2}, headers=auth)
    assert rt.status_code == 200 and rt.json() == {"data": {"retweeted": True}}
    again = client.post(f"/x/2/users/{me}/retweets", json={"tweet_id": P2}, headers=auth)
    assert again.status_code == 403
    assert again.json()["detail"] == "You have already retweeted this Tweet."
    world.x_repeat_retweet_status = 200
    third = client.post(f"/x/2/users/{me}/retweets", json={"tweet_id": P2}, headers=auth)
    assert third.json() == {"data": {"retweeted": True}}
    assert [(p.kind, p.ref) for p in world.posts] == [
        ("post", ""),
        ("quote", P1),
        ("retweet", P2),
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
    rt = tweepy_client.retweet(P1, user_auth=True)
    assert rt.data == {"retweeted": True}
    with pytest.raises(tweepy.Forbidden) as dup:
        tweepy_client.create_tweet(text="Crisis update", user_auth=True)
    assert dup.value.api_codes == [] and dup.value.api_messages == [DUP]
    quote = tweepy_client.create_tweet(text="See", quote_tweet_id=P2, user_auth=True)
    assert quote.data["id"]
    tweets = tweepy_client.get_users_tweets(
        "222",
        user_auth=True,
        since_id=P1,
        tweet_fields=["created_at", "author_id"],
        exclude=["replies", "retweets"],
    )
    assert [str(t.id) for t in tweets.data] == [P2]
    world.set_quota("x:POST /2/users/:id/retweets", 0)
    with pytest.raises(tweepy.TooManyRequests) as limited:
        tweepy_client.retweet(P2, user_auth=True)
    assert limited.value.response.headers["x-rate-limit-reset"].isdigit()
    assert [(p.kind, p.ref) for p in world.posts] == [
        ("post", ""),
        ("retweet", P1),
        ("quote", P2),
    ]


# -- issue 11: the real refusals and shapes -------------------------------------------------------
SEARCH = "/x/2/tweets/search/recent"
QUERY = {"query": "(from:111 OR from:222) -is:retweet"}


def test_search_refuses_a_since_id_older_than_seven_days(
    world: World, client: httpx.Client, auth: dict[str, str]
) -> None:
    """Recent search answers 400 for a since_id older than its 7 days (platform-facts.md;
    the body as X sends it)."""
    _sources(world)
    old = x_snowflake(T0 - timedelta(days=8), 1)
    refused = client.get(SEARCH, headers=auth, params={**QUERY, "since_id": old})
    assert refused.status_code == 400
    body = refused.json()
    assert body["title"] == "Invalid Request"
    assert body["type"] == "https://api.twitter.com/2/problems/invalid-request"
    (error,) = body["errors"]
    assert error["parameters"] == {"since_id": [old]}
    assert error["message"].startswith("'since_id' must be a tweet id created after ")
    young = x_snowflake(T0 - timedelta(days=6), 1)
    assert client.get(SEARCH, headers=auth,
                      params={**QUERY, "since_id": young}).status_code == 200


def test_search_reads_from_start_time_and_refuses_one_older_than_seven_days(
    world: World, client: httpx.Client, auth: dict[str, str]
) -> None:
    _sources(world)
    start = (T0 - timedelta(minutes=9, seconds=30)).strftime("%Y-%m-%dT%H:%M:%SZ")
    body = client.get(SEARCH, headers=auth, params={**QUERY, "start_time": start}).json()
    # P1 is older than start_time, P5 a retweet, P6 not posted yet (P3 is someone else's).
    assert [t["id"] for t in body["data"]] == [P4, P2]
    too_old = (T0 - timedelta(days=8)).strftime("%Y-%m-%dT%H:%M:%SZ")
    refused = client.get(SEARCH, headers=auth, params={**QUERY, "start_time": too_old})
    assert refused.status_code == 400
    assert refused.json()["errors"][0]["parameters"] == {"start_time": [too_old]}


LONG = ("Evacuation update for Chelmer Village: residents of Springfield Road, Victoria Road "
        "and the Chelmer Valley estate should leave now and go to the rest centre at the Civic "
        "Centre. Bring medication, chargers and pets in carriers. Do not walk or drive through "
        "flood water. Buses leave Chelmsford station every 20 minutes until 22:00 tonight.")


def test_long_post_is_cut_in_text_and_whole_in_note_tweet_only_when_asked(
    world: World, client: httpx.Client, auth: dict[str, str]
) -> None:
    """Posts over 280 come back cut in ``text`` (at a word, ~270 characters: reported in
    xdevplatform/twitter-api-java-sdk#84); ``note_tweet`` only when ``tweet.fields`` asks."""
    world.add_x_user("111", "metpoliceuk")
    world.add_item("111", "x", T0 - timedelta(minutes=1), {"text": LONG})
    plain = client.get(SEARCH, headers=auth, params={**QUERY, "tweet.fields": "author_id"})
    (tweet,) = plain.json()["data"]
    assert "note_tweet" not in tweet
    assert len(tweet["text"]) <= 270 and LONG.startswith(tweet["text"])
    asked = client.get(SEARCH, headers=auth, params={**QUERY, "tweet.fields": "note_tweet"})
    (whole,) = asked.json()["data"]
    assert whole["note_tweet"] == {"text": LONG} and whole["text"] == tweet["text"]
    world.add_item("111", "x", T0, {"text": "Short"})
    short = client.get(SEARCH, headers=auth, params={**QUERY, "tweet.fields": "note_tweet"})
    assert "note_tweet" not in short.json()["data"][0]


def test_create_refuses_text_over_280_as_x_counts_it(
    world: World, client: httpx.Client, auth: dict[str, str]
) -> None:
    """X counts bare domains as links (23 each) by twitter-text v3 and refuses a longer post."""
    over = "Advice: gov.uk/floods nhs.uk " * 10  # 170 characters, 500 as X counts them
    refused = client.post("/x/2/tweets", json={"text": over}, headers=auth)
    assert refused.status_code == 400
    assert refused.json()["detail"].startswith("Your Tweet text is too long.")
    assert world.posts == []
    assert client.post("/x/2/tweets", json={"text": "a" * 280}, headers=auth).status_code == 201


def test_create_answers_like_the_recording(
    world: World, client: httpx.Client, auth: dict[str, str]
) -> None:
    created = client.post("/x/2/tweets", json={"text": "Test Tweet"}, headers=auth)
    post_id = created.json()["data"]["id"]
    assert created.json() == {"data": {"id": post_id, "text": "Test Tweet"}}
    assert created.headers["content-type"] == "application/json; charset=utf-8"
    assert created.headers["location"] == f"https://api.twitter.com/2/tweets/{post_id}"


def test_24_hour_windows_are_sent_and_enforced(
    world: World, clock: FixedClock, client: httpx.Client, auth: dict[str, str]
) -> None:
    """X sends x-app-limit-24hour-* and x-user-limit-24hour-* beside the 15-minute window;
    POST /2/tweets is 10,000 per app per day (platform-facts.md)."""
    first = client.post("/x/2/tweets", json={"text": "a"}, headers=auth)
    day_reset = str(int((T0 + timedelta(hours=24)).timestamp()))
    assert first.headers["x-app-limit-24hour-limit"] == "10000"
    assert first.headers["x-app-limit-24hour-remaining"] == "9999"
    assert first.headers["x-app-limit-24hour-reset"] == day_reset
    assert "x-user-limit-24hour-limit" not in first.headers
    world.set_quota("x:POST /2/tweets user-24h", 2, timedelta(hours=24))  # a legacy tier
    second = client.post("/x/2/tweets", json={"text": "b"}, headers=auth)
    assert second.headers["x-user-limit-24hour-remaining"] == "1"
    client.post("/x/2/tweets", json={"text": "c"}, headers=auth)
    refused = client.post("/x/2/tweets", json={"text": "d"}, headers=auth)
    assert refused.status_code == 429
    assert refused.headers["x-user-limit-24hour-remaining"] == "0"
    reset = datetime.fromtimestamp(int(refused.headers["x-user-limit-24hour-reset"]), UTC)
    assert reset == T0 + timedelta(hours=24)
    assert int(refused.headers["x-rate-limit-remaining"]) > 0  # the 15-minute window had room
    clock.advance(timedelta(hours=1))
    client.post("/x/2/tweets", json={"text": "d"}, headers=auth)
    assert len(world.rate_limit_violations()) == 1  # sent before the 24-hour reset
    clock.set(reset)
    assert client.post("/x/2/tweets", json={"text": "d"}, headers=auth).status_code == 201
    assert [p.text for p in world.posts] == ["a", "b", "c", "d"]


def test_usage_cap_and_exhausted_credits_are_states_of_the_world(
    world: World, clock: FixedClock, client: httpx.Client, auth: dict[str, str]
) -> None:
    """The pay-per-use refusals: 429 UsageCapExceeded (its real body: xdevplatform/xdk#25) while
    the 15-minute window has room, and 402 CreditsDepleted."""
    from crisiscomms.simulator.routes_x import set_credits_exhausted, set_usage_capped

    _sources(world)
    until = T0 + timedelta(days=3)
    set_usage_capped(world, until)
    capped = client.get(SEARCH, headers=auth, params=QUERY)
    assert capped.status_code == 429
    assert capped.json()["title"] == "UsageCapExceeded"
    assert capped.json()["type"] == "https://api.twitter.com/2/problems/usage-capped"
    assert int(capped.headers["x-rate-limit-remaining"]) > 0
    assert world.request_log[-1].reset_at == until
    clock.advance(timedelta(days=1))
    client.post("/x/2/tweets", json={"text": "a"}, headers=auth)
    assert len(world.rate_limit_violations()) == 1
    clock.set(until)
    assert client.get(SEARCH, headers=auth, params=QUERY).status_code == 200
    set_credits_exhausted(world, True)
    broke = client.post("/x/2/tweets", json={"text": "b"}, headers=auth)
    assert broke.status_code == 402
    assert broke.json()["title"] == "CreditsDepleted"
    assert broke.json()["type"] == "https://api.twitter.com/2/problems/credits"
    set_credits_exhausted(world, False)
    assert client.post("/x/2/tweets", json={"text": "b"}, headers=auth).status_code == 201
    assert [p.text for p in world.posts] == ["b"]


def test_an_accounts_own_thread_is_a_reply_to_itself(
    world: World, client: httpx.Client, auth: dict[str, str]
) -> None:
    world.add_x_user("111", "metpoliceuk")
    root = world.add_item("111", "x", T0 - timedelta(minutes=3), {"text": "1/2 Flooding"})
    world.add_item("111", "x", T0 - timedelta(minutes=2),
                   {"text": "2/2 Roads closed", "in_reply_to_id": root,
                    "in_reply_to_user_id": "111"})
    fields = "author_id,referenced_tweets,in_reply_to_user_id"
    body = client.get(SEARCH, headers=auth, params={**QUERY, "tweet.fields": fields}).json()
    second, first = body["data"]
    assert second["referenced_tweets"] == [{"type": "replied_to", "id": root}]
    assert second["in_reply_to_user_id"] == "111" and "in_reply_to_user_id" not in first
    dropped = client.get(SEARCH, headers=auth, params={
        "query": "(from:111) -is:reply -is:retweet", "tweet.fields": fields}).json()
    assert [t["id"] for t in dropped["data"]] == [root]


def test_a_cap_follow_up_on_x_is_a_reply_to_our_own_post():
    """Issue 12: a CAP Update/Cancel is sent in the thread of our post of the alert
    (``reply.in_reply_to_tweet_id`` of POST /2/tweets)."""
    from dataclasses import replace
    from datetime import UTC, datetime

    from pydantic import SecretStr

    from crisiscomms.adapters.publishers.x import XPublisher
    from crisiscomms.domain.clock import FixedClock
    from crisiscomms.domain.models import ActionKind, ItemState, OutboxItem
    from crisiscomms.simulator import World, serve

    clock = FixedClock(datetime(2026, 1, 5, 10, 0, tzinfo=UTC))
    world = World(clock)
    me = world.accounts.x_me.id
    creds = {"consumer_key": SecretStr("ck"), "consumer_secret": SecretStr("cs"),
             "access_token": SecretStr(f"{me}-at"), "access_token_secret": SecretStr("ats")}
    with serve(world) as sim:
        pub = XPublisher("x", credentials=creds, clock=clock, account="@nhs",
                         base_url=sim.url_for("x"))
        try:
            alert = OutboxItem(id=1, dedupe_key="a", channel_id="x", action=ActionKind.POST,
                               text="Flood warning for the Chelmer", state=ItemState.SENDING,
                               created_at=clock.now())
            first = pub.publish(alert, None)
            second = pub.publish(replace(alert, id=2, dedupe_key="u",
                                         text="Update: the warning is extended",
                                         reply_to=first.post_id), None)
        finally:
            pub.close()
    assert world.state["x.replies"] == {second.post_id: first.post_id}
