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
from crisiscomms.simulator.ids import x_snowflake

from .sources_helpers import NOW, make_config, state_for

pytestmark = pytest.mark.anyio
BASE = "http://127.0.0.1:9/x"
SEARCH = BASE + "/2/tweets/search/recent"
TOKEN = "super-secret-bearer-token"
RESET = int(datetime(2026, 2, 10, 15, 15, tzinfo=UTC).timestamp())


def sid(ago: timedelta, seq: int = 0) -> str:
    """A real-looking post id (snowflake) for a post made ``ago`` before NOW."""
    return x_snowflake(NOW - ago, seq)


# Post ids of the last hour, oldest first (recent search answers newest first).
P1, P2, P3, P4, P5, P6 = (sid(timedelta(minutes=60 - 5 * i)) for i in range(6))


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
    assert all(q.endswith(" -is:retweet") and "-is:reply" not in q for q in queries)
    joined = " ".join(queries)
    assert all(f"from:{i}" in joined for i in ids)
    assert build_queries(["1", "2"]) == ["(from:1 OR from:2) -is:retweet"]


async def test_poll_filters_authors_and_sets_cursor(
    rsps: responses.RequestsMock, client: tweepy.Client
) -> None:
    rsps.get(SEARCH, json=page(
        tweet(P4, "1000", "Road closed &amp; diversions in place\nMore later"),
        tweet(P3, "2000", "Fire in Basildon"),
        tweet(P2, "6666", "I am not pinned"),
        tweet(P1, "1000", "a reply", referenced_tweets=[{"type": "replied_to", "id": "1"}]),
    ), headers={"x-rate-limit-remaining": "59", "x-rate-limit-reset": str(RESET)})
    src = XSource(configs(), client)
    assert src.key == "x" and src.source_ids == ("essex-police", "essex-fire", "unpinned")
    result = await src.poll(state_for("x"), NOW)
    (call,) = rsps.calls
    params = sent_params(call)
    assert params["query"] == ["(from:1000 OR from:2000) -is:retweet"]
    assert "since_id" not in params
    assert call.request.headers["Authorization"] == f"Bearer {TOKEN}"
    police, fire = result.updates
    assert (police.source_id, fire.source_id) == ("essex-police", "essex-fire")
    assert police.text == "Road closed & diversions in place\nMore later"
    assert police.title == "Road closed & diversions in place"
    assert police.native is not None and police.native.platform is Platform.X
    assert police.url == f"https://x.com/EssexPoliceUK/status/{P4}"
    assert fire.url == f"https://x.com/ECFRS/status/{P3}"
    assert police.published_at == datetime(2026, 2, 10, 14, 0, tzinfo=UTC)
    assert result.cursor == P4 and result.rate_limited_until is None


async def test_since_id_and_pagination(
    rsps: responses.RequestsMock, client: tweepy.Client
) -> None:
    rsps.get(SEARCH, json=page(tweet(P3, "1000"), next_token="t2"))
    rsps.get(SEARCH, json=page(tweet(P2, "2000")))
    src = XSource(configs(), client)
    result = await src.poll(state_for("x", cursor=P1), NOW)
    assert [u.external_id for u in result.updates] == [P3, P2]
    assert sent_params(rsps.calls[0])["since_id"] == [P1]
    assert sent_params(rsps.calls[1])["next_token"] == ["t2"]
    assert result.cursor == P3


async def test_remaining_zero_pauses_until_reset(
    rsps: responses.RequestsMock, client: tweepy.Client
) -> None:
    rsps.get(SEARCH, json=page(tweet(P4, "1000")),
             headers={"x-rate-limit-remaining": "0", "x-rate-limit-reset": str(RESET)})
    src = XSource(configs(), client)
    result = await src.poll(state_for("x", cursor=P3), NOW)
    reset = datetime.fromtimestamp(RESET, UTC)
    assert result.rate_limited_until == reset
    assert result.extra[RATE_LIMIT_KEY] == reset.isoformat()
    assert result.cursor == P4  # the only query finished
    before = await src.poll(state_for("x", cursor=P4, extra=result.extra),
                            NOW + timedelta(minutes=5))
    assert len(rsps.calls) == 1 and before.updates == () and before.rate_limited_until == reset
    rsps.get(SEARCH, json=page())
    after = await src.poll(state_for("x", cursor=P4, extra=result.extra), reset)
    assert len(rsps.calls) == 2 and RATE_LIMIT_KEY not in after.extra


async def test_rate_limit_mid_poll_keeps_cursor(rsps: responses.RequestsMock,
                                                client: tweepy.Client) -> None:
    many = [make_config(SourceKind.X, id=f"s{i}", handle=f"h{i}", x_user_id=str(10**17 + i))
            for i in range(40)]
    src = XSource(many, client)
    assert len(src.queries) > 1
    rsps.get(SEARCH, json=page(tweet(P5, str(10**17))),
             headers={"x-rate-limit-remaining": "0", "x-rate-limit-reset": str(RESET)})
    result = await src.poll(state_for("x", cursor=P4), NOW)
    assert len(rsps.calls) == 1
    assert [u.external_id for u in result.updates] == [P5]
    assert result.cursor == P4  # later queries not read yet: do not skip past them


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
    data = [tweepy.Tweet(tweet(P2, "2000", "hello")), tweepy.Tweet(tweet(P1, "7", "x"))]
    fake = FakeClient(tweepy.Response(data, {}, [], {"result_count": 2}))
    result = await XSource(configs(), fake).poll(state_for("x"), NOW)
    assert [u.external_id for u in result.updates] == [P2]
    assert fake.queries == ["(from:1000 OR from:2000) -is:retweet"]
    fake_dict = FakeClient(page(tweet(P4, "1000")))
    result = await XSource(configs(), fake_dict).poll(state_for("x", cursor=P3), NOW)
    assert result.cursor == P4


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


# -- issue 11: what the real X API does ---------------------------------------------------------

def iso(dt: datetime) -> str:
    return dt.strftime("%Y-%m-%dT%H:%M:%SZ")


def stale_since_id_body(since_id: str) -> dict[str, Any]:
    """X's answer to a ``since_id`` older than recent search's 7 days (real shape, 2026)."""
    floor = sid(timedelta(days=7))
    return {
        "errors": [{"parameters": {"since_id": [since_id]},
                    "message": "'since_id' must be a tweet id created after 2026-02-03T15:00Z. "
                               f"Please use a 'since_id' that is larger than {floor}"}],
        "title": "Invalid Request",
        "detail": "One or more parameters to your request was invalid.",
        "type": "https://api.twitter.com/2/problems/invalid-request",
    }


async def test_stale_cursor_sends_start_time_bounded_by_the_backfill_window(
    rsps: responses.RequestsMock, client: tweepy.Client
) -> None:
    """Defect 1: the first poll of an incident weeks after the last one must not send a
    since_id older than 7 days (X answers 400 for ever); it reads the backfill window."""
    old = sid(timedelta(days=21))
    rsps.get(SEARCH, json=page(tweet(P5, "1000", "New incident")))
    result = await XSource(configs(), client).poll(state_for("x", cursor=old), NOW)
    params = sent_params(rsps.calls[0])
    assert "since_id" not in params
    assert params["start_time"] == [iso(NOW - timedelta(minutes=120))]  # playbook default
    assert [u.external_id for u in result.updates] == [P5] and result.cursor == P5


async def test_backfill_window_is_a_parameter_and_never_beyond_seven_days(
    rsps: responses.RequestsMock, client: tweepy.Client
) -> None:
    rsps.get(SEARCH, json=page())
    await XSource(configs(), client, backfill=timedelta(hours=6)).poll(
        state_for("x", cursor=sid(timedelta(days=10))), NOW)
    assert sent_params(rsps.calls[0])["start_time"] == [iso(NOW - timedelta(hours=6))]
    rsps.get(SEARCH, json=page())
    await XSource(configs(), client, backfill=timedelta(days=30)).poll(state_for("x"), NOW)
    start = datetime.strptime(sent_params(rsps.calls[1])["start_time"][0],
                              "%Y-%m-%dT%H:%M:%S%z")
    assert NOW - timedelta(days=7) < start <= NOW - timedelta(days=6, hours=20)


async def test_a_cursor_younger_than_6_days_20_hours_is_still_used(
    rsps: responses.RequestsMock, client: tweepy.Client
) -> None:
    young = sid(timedelta(days=6, hours=19))
    rsps.get(SEARCH, json=page())
    await XSource(configs(), client).poll(state_for("x", cursor=young), NOW)
    params = sent_params(rsps.calls[0])
    assert params["since_id"] == [young] and "start_time" not in params


async def test_400_naming_since_id_drops_the_cursor_and_reads_by_time(
    rsps: responses.RequestsMock, client: tweepy.Client
) -> None:
    """Defect 1: a 400 that names since_id is "drop the cursor", never a permanent failure."""
    cursor = sid(timedelta(days=2))
    rsps.get(SEARCH, json=stale_since_id_body(cursor), status=400)
    rsps.get(SEARCH, json=page(tweet(P6, "1000", "Read after the refusal")))
    result = await XSource(configs(), client).poll(state_for("x", cursor=cursor), NOW)
    first, second = (sent_params(c) for c in rsps.calls)
    assert first["since_id"] == [cursor]
    assert "since_id" not in second and second["start_time"] == [iso(NOW - timedelta(hours=2))]
    assert [u.external_id for u in result.updates] == [P6] and result.cursor == P6


async def test_refused_cursor_with_nothing_new_is_dropped(
    rsps: responses.RequestsMock, client: tweepy.Client
) -> None:
    cursor = sid(timedelta(days=2))
    rsps.get(SEARCH, json=stale_since_id_body(cursor), status=400)
    rsps.get(SEARCH, json=page())
    result = await XSource(configs(), client).poll(state_for("x", cursor=cursor), NOW)
    assert result.cursor == ""  # the watcher stores "": the next poll reads by time


async def test_other_400s_stay_permanent(rsps: responses.RequestsMock,
                                         client: tweepy.Client) -> None:
    body = {"errors": [{"parameters": {"query": ["(x"]}, "message": "Unbalanced parenthesis"}],
            "title": "Invalid Request", "detail": "One or more parameters to your request was "
            "invalid.", "type": "https://api.twitter.com/2/problems/invalid-request"}
    rsps.get(SEARCH, json=body, status=400)
    with pytest.raises(PermanentSourceError) as info:
        await XSource(configs(), client).poll(state_for("x", cursor=P1), NOW)
    assert info.value.error_class == "http_400" and len(rsps.calls) == 1


async def test_empty_first_poll_then_150_posts_are_all_read(
    rsps: responses.RequestsMock, client: tweepy.Client
) -> None:
    """Defect 2: the first poll finds nothing (no cursor); 150 posts arrive; the next poll
    must page until the first poll's instant is covered, not stop after the newest 100."""
    src = XSource(configs(), client)
    rsps.get(SEARCH, json={"meta": {"result_count": 0}})
    first = await src.poll(state_for("x"), NOW)
    assert first.cursor is None
    later = NOW + timedelta(minutes=10)
    posts = [tweet(x_snowflake(NOW + timedelta(seconds=3 * i), i), "1000", f"post {i}")
             for i in range(150)][::-1]
    rsps.get(SEARCH, json=page(*posts[:100], next_token="p2"))
    rsps.get(SEARCH, json=page(*posts[100:]))
    second = await src.poll(state_for("x", cursor=first.cursor, extra=first.extra), later)
    assert len(second.updates) == 150
    params = sent_params(rsps.calls[1])
    assert "since_id" not in params
    # From the first poll's instant (less X's indexing delay), not just the newest page.
    assert params["start_time"] == [iso(NOW - timedelta(minutes=2))]
    assert sent_params(rsps.calls[2])["next_token"] == ["p2"]
    assert second.cursor == posts[0]["id"]


async def test_pages_are_followed_on_the_first_poll_too(
    rsps: responses.RequestsMock, client: tweepy.Client
) -> None:
    rsps.get(SEARCH, json=page(tweet(P3, "1000"), next_token="p2"))
    rsps.get(SEARCH, json=page(tweet(P2, "1000")))
    result = await XSource(configs(), client).poll(state_for("x"), NOW)
    assert [u.external_id for u in result.updates] == [P3, P2]


async def test_long_post_text_comes_from_note_tweet(
    rsps: responses.RequestsMock, client: tweepy.Client
) -> None:
    """Defect 3: a post over 280 characters is cut in ``text``; the whole is in note_tweet."""
    full = ("Evacuation update for Chelmer Village: residents of Springfield Road, Victoria "
            "Road and the Chelmer Valley estate should leave now and go to the rest centre at "
            "the Civic Centre. Bring medication, chargers and pets in carriers. Do not walk or "
            "drive through flood water. Buses leave Chelmsford station every 20 minutes.")
    cut = full[:262].rsplit(" ", 1)[0]
    rsps.get(SEARCH, json=page(tweet(P4, "1000", cut, note_tweet={"text": full})))
    (update,) = (await XSource(configs(), client).poll(state_for("x"), NOW)).updates
    assert "note_tweet" in sent_params(rsps.calls[0])["tweet.fields"][0].split(",")
    assert update.text == full


async def test_an_agencys_own_thread_is_kept_and_replies_to_others_dropped(
    rsps: responses.RequestsMock, client: tweepy.Client
) -> None:
    """Defect 4: ``-is:reply`` dropped "2/3" and "3/3" of an agency's own thread."""
    rsps.get(SEARCH, json=page(
        tweet(P4, "1000", "3/3 Rest centre open", in_reply_to_user_id="1000",
              referenced_tweets=[{"type": "replied_to", "id": P3}]),
        tweet(P3, "1000", "2/3 Roads closed", in_reply_to_user_id="1000",
              referenced_tweets=[{"type": "replied_to", "id": P2}]),
        tweet(P2, "1000", "1/3 Flooding in Chelmsford"),
        tweet(P1, "1000", "@resident thanks, passed on", in_reply_to_user_id="5555",
              referenced_tweets=[{"type": "replied_to", "id": "77"}]),
        tweet(P5, "2000", "reply without a parent author",
              referenced_tweets=[{"type": "replied_to", "id": "78"}]),
    ))
    result = await XSource(configs(), client).poll(state_for("x"), NOW)
    assert "-is:reply" not in sent_params(rsps.calls[0])["query"][0]
    assert [u.external_id for u in result.updates] == [P4, P3, P2]
    fields = sent_params(rsps.calls[0])["tweet.fields"][0].split(",")
    assert {"in_reply_to_user_id", "referenced_tweets", "author_id"} <= set(fields)


async def test_no_author_expansion_is_asked_for(
    rsps: responses.RequestsMock, client: tweepy.Client
) -> None:
    """Defect 5: ``expansions=author_id`` bills a user read on every non-empty page."""
    rsps.get(SEARCH, json=page(tweet(P4, "1000")))
    (update,) = (await XSource(configs(), client).poll(state_for("x"), NOW)).updates
    params = sent_params(rsps.calls[0])
    assert "expansions" not in params and "user.fields" not in params
    assert update.url == f"https://x.com/EssexPoliceUK/status/{P4}"  # the handle we pinned


DAY_RESET = int((NOW + timedelta(hours=9)).timestamp())


@pytest.mark.parametrize("window", ["x-app-limit-24hour", "x-user-limit-24hour"])
async def test_an_exhausted_24_hour_window_pauses_until_its_reset(
    rsps: responses.RequestsMock, client: tweepy.Client, window: str
) -> None:
    """Defect 5: the 24-hour windows are read as well as the 15-minute one."""
    rsps.get(SEARCH, json=page(tweet(P4, "1000")), headers={
        "x-rate-limit-limit": "450", "x-rate-limit-remaining": "449",
        "x-rate-limit-reset": str(RESET),
        f"{window}-limit": "1000", f"{window}-remaining": "0", f"{window}-reset": str(DAY_RESET)})
    result = await XSource(configs(), client).poll(state_for("x"), NOW)
    assert result.rate_limited_until == datetime.fromtimestamp(DAY_RESET, UTC)


async def test_429_with_the_24_hour_window_exhausted_waits_for_that_window(
    rsps: responses.RequestsMock, client: tweepy.Client
) -> None:
    rsps.get(SEARCH, json={"title": "Too Many Requests", "detail": "Too Many Requests",
                           "type": "about:blank", "status": 429}, status=429, headers={
        "x-rate-limit-remaining": "400", "x-rate-limit-reset": str(RESET),
        "x-user-limit-24hour-remaining": "0", "x-user-limit-24hour-reset": str(DAY_RESET)})
    with pytest.raises(SourceRateLimitedError) as info:
        await XSource(configs(), client).poll(state_for("x"), NOW)
    assert info.value.retry_at == datetime.fromtimestamp(DAY_RESET, UTC)


USAGE_CAPPED = {"account_id": "1234", "product_name": "standard-basic",
                "title": "UsageCapExceeded", "period": "Monthly", "scope": "Product",
                "detail": "Usage cap exceeded: Monthly product cap",
                "type": "https://api.twitter.com/2/problems/usage-capped"}


async def test_usage_cap_429_holds_until_the_monthly_reset(
    rsps: responses.RequestsMock, client: tweepy.Client
) -> None:
    """Defect 5: the monthly cap is not the 15-minute window: asking again every 15 minutes
    for the rest of the month is pointless (shape: xdevplatform/xdk#25)."""
    rsps.get(SEARCH, json=USAGE_CAPPED, status=429, headers={
        "x-rate-limit-limit": "40000", "x-rate-limit-remaining": "39999",
        "x-rate-limit-reset": str(RESET)})
    with pytest.raises(SourceRateLimitedError) as info:
        await XSource(configs(), client).poll(state_for("x"), NOW)
    assert info.value.retry_at == datetime(2026, 3, 1, tzinfo=UTC)
    assert info.value.error_class == "x_usage_cap"
    assert "usage cap" in str(info.value).lower()
    with pytest.raises(SourceRateLimitedError) as day:
        await XSource(configs(), client, cap_reset_day=20).poll(state_for("x"), NOW)
    assert day.value.retry_at == datetime(2026, 2, 20, tzinfo=UTC)


async def test_402_credits_exhausted_is_permanent_and_named(
    rsps: responses.RequestsMock, client: tweepy.Client
) -> None:
    """Defect 5: 402 (pay-per-use credits exhausted) is a named, permanent failure: the watcher
    stores its class and message, which ``status`` prints for the failing source."""
    rsps.get(SEARCH, status=402, json={
        "type": "https://api.twitter.com/2/problems/credits", "title": "CreditsDepleted",
        "detail": "Your enrolled account [1234] does not have any credits to fulfill this "
                  "request."})
    with pytest.raises(PermanentSourceError) as info:
        await XSource(configs(), client).poll(state_for("x"), NOW)
    assert info.value.error_class == "x_credits_exhausted"
    assert str(info.value).startswith("X credits exhausted")
    assert info.value.source_id == "x"


def _too_many(headers: dict[str, str]) -> tweepy.TooManyRequests:
    response = requests.Response()
    response.status_code = 429
    response._content = b'{"title": "Too Many Requests", "detail": "Too Many Requests"}'
    response.headers.update(headers)
    exc = tweepy.TooManyRequests(response)
    del exc.reset_time  # tweepy < 4.17 has no such attribute
    return exc


class RaisingClient:
    def __init__(self, exc: Exception) -> None:
        self.exc = exc

    def search_recent_tweets(self, query: str, **params: Any) -> Any:
        raise self.exc


async def test_429_is_understood_without_tweepy_417_reset_time() -> None:
    """Defect 6: ``TooManyRequests.reset_time`` exists only from tweepy 4.17; the reset comes
    from the response headers, so an older tweepy cannot turn a 429 into a crash."""
    exc = _too_many({"x-rate-limit-reset": str(RESET)})
    with pytest.raises(SourceRateLimitedError) as info:
        await XSource(configs(), RaisingClient(exc)).poll(state_for("x"), NOW)
    assert info.value.retry_at == datetime.fromtimestamp(RESET, UTC)
