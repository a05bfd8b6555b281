"""Mastodon, Bluesky and Facebook subsets: sources, our posts, idempotency, conflicts."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import httpx
import pytest
from pydantic import SecretStr

from crisiscomms.adapters.publishers.bluesky import BlueskyPublisher
from crisiscomms.adapters.publishers.facebook import FacebookPublisher
from crisiscomms.domain.clock import FixedClock
from crisiscomms.domain.errors import PermanentPublishError
from crisiscomms.domain.models import ActionKind, ItemState, NativeRef, OutboxItem, Platform
from crisiscomms.simulator import Faults, RunningSimulator, World
from crisiscomms.simulator.ids import did_for

T0 = datetime(2026, 1, 5, 10, 0, tzinfo=UTC)
M = "/mastodon/api"
B = "/bluesky/xrpc"


def test_mastodon_source_statuses(world: World, clock: FixedClock, client: httpx.Client) -> None:
    world.add_item(
        "lfb@mastodon.example",
        "mastodon",
        T0 - timedelta(minutes=3),
        {"id": "501", "text": "Fire on High St"},
    )
    world.add_item(
        "lfb@mastodon.example",
        "mastodon",
        T0 - timedelta(minutes=2),
        {"id": "502", "text": "reply", "in_reply_to_id": "1"},
    )
    world.add_item(
        "lfb@mastodon.example",
        "mastodon",
        T0 + timedelta(minutes=1),
        {"id": "503", "text": "Update"},
    )
    account = client.get(f"{M}/v1/accounts/lookup", params={"acct": "lfb@mastodon.example"})
    assert account.headers["x-ratelimit-limit"] == "300"
    assert account.headers["x-ratelimit-reset"].endswith("Z")
    acc_id = account.json()["id"]
    url = f"{M}/v1/accounts/{acc_id}/statuses"
    got = client.get(url, params={"exclude_replies": "true", "exclude_reblogs": "true"}).json()
    assert [s["id"] for s in got] == ["501"]
    assert got[0]["content"] == "<p>Fire on High St</p>"
    clock.advance(timedelta(minutes=1))
    newer = client.get(url, params={"since_id": "501", "exclude_replies": "true"}).json()
    assert [s["id"] for s in newer] == ["503"]
    assert client.get(f"{M}/v1/accounts/lookup", params={"acct": "nobody"}).status_code == 404


def test_mastodon_post_idempotency_and_boost(
    world: World, clock: FixedClock, client: httpx.Client, auth: dict[str, str]
) -> None:
    world.add_item("lfb@mastodon.example", "mastodon", T0, {"id": "501", "text": "Fire"})
    headers = {**auth, "Idempotency-Key": "item-42"}
    first = client.post(f"{M}/v1/statuses", data={"status": "Hello"}, headers=headers)
    second = client.post(f"{M}/v1/statuses", json={"status": "Hello"}, headers=headers)
    assert first.status_code == second.status_code == 200
    assert first.json()["id"] == second.json()["id"]
    assert len(world.posts) == 1 and world.posts[0].idempotency_key == "item-42"
    clock.advance(timedelta(hours=1))
    third = client.post(f"{M}/v1/statuses", data={"status": "Hello"}, headers=headers)
    assert third.json()["id"] != first.json()["id"]  # the key expired after an hour
    assert len(world.duplicates()) == 1
    found = client.get(
        f"{M}/v2/search",
        headers=auth,
        params={"q": "https://mastodon.example/@lfb/501", "resolve": "true", "type": "statuses"},
    ).json()
    local_id = found["statuses"][0]["id"]
    boost = client.post(f"{M}/v1/statuses/{local_id}/reblog", headers=auth).json()
    assert boost["reblog"]["id"] == "501"
    again = client.post(f"{M}/v1/statuses/{local_id}/reblog", headers=auth).json()
    assert again["id"] == boost["id"]
    assert [p.kind for p in world.posts] == ["post", "post", "boost"]
    me = client.get(f"{M}/v1/accounts/verify_credentials", headers=auth).json()
    mine = client.get(f"{M}/v1/accounts/{me['id']}/statuses").json()
    assert len(mine) == 3
    assert client.post(f"{M}/v1/statuses", data={"status": "x"}).status_code == 401
    assert client.post(f"{M}/v1/statuses/999/reblog", headers=auth).status_code == 404
    blank = client.post(f"{M}/v1/statuses", data={"status": " "}, headers=auth)
    assert blank.status_code == 422


def test_mastodon_min_id_pages_forward_since_id_gives_the_newest(
    world: World, client: httpx.Client
) -> None:
    for i in range(50):
        world.add_item("lfb@mastodon.example", "mastodon", T0 - timedelta(minutes=60 - i),
                       {"id": str(1000 + i), "text": f"Update {i}"})
    acc_id = client.get(f"{M}/v1/accounts/lookup", params={"acct": "lfb"}).json()["id"]
    url = f"{M}/v1/accounts/{acc_id}/statuses"
    forward = client.get(url, params={"min_id": "1000", "limit": "40"}).json()
    assert [s["id"] for s in forward] == [str(i) for i in range(1040, 1000, -1)]
    newest = client.get(url, params={"since_id": "1000", "limit": "40"}).json()
    assert [s["id"] for s in newest] == [str(i) for i in range(1049, 1009, -1)]
    rest = client.get(url, params={"min_id": "1040", "limit": "40"}).json()
    assert [s["id"] for s in rest] == [str(i) for i in range(1049, 1040, -1)]


def test_mastodon_exclude_replies_keeps_the_accounts_own_thread(
    world: World, client: httpx.Client
) -> None:
    world.add_item("lfb@mastodon.example", "mastodon", T0 - timedelta(minutes=3),
                   {"id": "601", "text": "1/2 Fire on High St"})
    world.add_item("lfb@mastodon.example", "mastodon", T0 - timedelta(minutes=2),
                   {"id": "602", "text": "2/2 Roads closed", "in_reply_to_id": "601"})
    world.add_item("lfb@mastodon.example", "mastodon", T0 - timedelta(minutes=1),
                   {"id": "603", "text": "@someone thanks", "in_reply_to_id": "9"})
    acc_id = client.get(f"{M}/v1/accounts/lookup", params={"acct": "lfb"}).json()["id"]
    got = client.get(f"{M}/v1/accounts/{acc_id}/statuses",
                     params={"exclude_replies": "true"}).json()
    assert [s["id"] for s in got] == ["602", "601"]
    assert got[0]["in_reply_to_account_id"] == acc_id


def test_mastodon_posting_and_boosting_share_300_per_3_hours(
    world: World, clock: FixedClock, client: httpx.Client, auth: dict[str, str]
) -> None:
    """platform-facts.md, Mastodon limits: posting and boosting share 300 per 3 hours per
    account (the general API budget is 300 / 5 min); the headers name the budget that the
    call spends, with an ISO reset (recorded: a post at 13:53 resets at 15:00)."""
    world.add_item("lfb@mastodon.example", "mastodon", T0, {"id": "501", "text": "Fire"})
    first = client.post(f"{M}/v1/statuses", data={"status": "post 0"}, headers=auth)
    assert first.status_code == 200
    assert first.headers["x-ratelimit-limit"] == "300"
    assert first.headers["x-ratelimit-remaining"] == "299"
    assert first.headers["x-ratelimit-reset"].startswith("2026-01-05T12:00:00")  # 3 h bucket
    boost = client.post(f"{M}/v1/statuses/501/reblog", headers=auth)
    assert boost.status_code == 200 and boost.headers["x-ratelimit-remaining"] == "298"
    for i in range(1, 299):  # 2 s apart: 10 minutes, never near 300 requests in 5 minutes
        clock.advance(timedelta(seconds=2))
        ok = client.post(f"{M}/v1/statuses", data={"status": f"post {i}"}, headers=auth)
        assert ok.status_code == 200, (i, ok.text)
    assert ok.headers["x-ratelimit-remaining"] == "0"
    clock.advance(timedelta(seconds=2))
    refused = client.post(f"{M}/v1/statuses", data={"status": "one too many"}, headers=auth)
    assert refused.status_code == 429
    assert refused.headers["x-ratelimit-reset"].startswith("2026-01-05T12:00:00")
    assert client.post(f"{M}/v1/statuses/501/reblog", headers=auth).status_code in (200, 429)
    # Reads spend the general budget only: still served, with its own 5-minute reset.
    me = client.get(f"{M}/v1/accounts/verify_credentials", headers=auth)
    assert me.status_code == 200
    reset = datetime.fromisoformat(me.headers["x-ratelimit-reset"].replace("Z", "+00:00"))
    assert reset - world.now() <= timedelta(minutes=5) and reset.minute % 5 == 0
    assert len([p for p in world.posts if p.kind == "post"]) == 299
    clock.advance(timedelta(hours=2))  # past 12:00: a new 3-hour bucket
    assert client.post(f"{M}/v1/statuses", data={"status": "later"},
                       headers=auth).status_code == 200


def test_mastodon_instance_may_refuse_unauthenticated_reads(
    world: World, client: httpx.Client, auth: dict[str, str]
) -> None:
    from crisiscomms.simulator.routes_mastodon import require_authenticated_reads

    world.add_item("lfb@mastodon.example", "mastodon", T0, {"id": "501", "text": "Fire"})
    assert client.get(f"{M}/v1/accounts/lookup", params={"acct": "lfb"}).status_code == 200
    require_authenticated_reads(world)
    refused = client.get(f"{M}/v1/accounts/lookup", params={"acct": "lfb"})
    assert refused.status_code == 401
    assert refused.json() == {"error": "This API requires an authenticated user"}
    acc = client.get(f"{M}/v1/accounts/lookup", params={"acct": "lfb"}, headers=auth)
    assert acc.status_code == 200
    url = f"{M}/v1/accounts/{acc.json()['id']}/statuses"
    assert client.get(url).status_code == 401
    assert client.get(f"{M}/v1/statuses/501").status_code == 401
    assert [s["id"] for s in client.get(url, headers=auth).json()] == ["501"]
    require_authenticated_reads(world, False)
    assert client.get(url).status_code == 200


def test_mastodon_status_carries_the_viewers_fields_when_authenticated(
    world: World, client: httpx.Client, auth: dict[str, str]
) -> None:
    world.add_item("lfb@mastodon.example", "mastodon", T0, {"id": "501", "text": "Fire"})
    anonymous = client.get(f"{M}/v1/statuses/501").json()
    assert "reblogged" not in anonymous and "favourited" not in anonymous
    before = client.get(f"{M}/v1/statuses/501", headers=auth).json()
    assert before["reblogged"] is False and before["favourited"] is False
    client.post(f"{M}/v1/statuses/501/reblog", headers=auth)
    after = client.get(f"{M}/v1/statuses/501", headers=auth).json()
    assert after["reblogged"] is True and after["reblogs_count"] == 1


def _session(client: httpx.Client) -> dict[str, str]:
    resp = client.post(
        f"{B}/com.atproto.server.createSession",
        json={"identifier": "nhscomms.bsky.social", "password": "app-pass"},
    )
    assert resp.status_code == 200
    return resp.json()


def test_bluesky_session_and_deterministic_rkey(world: World, client: httpx.Client) -> None:
    session = _session(client)
    assert session["did"].startswith("did:plc:") and session["accessJwt"]
    auth = {"Authorization": f"Bearer {session['accessJwt']}"}
    record = {"$type": "app.bsky.feed.post", "text": "Update", "createdAt": T0.isoformat()}
    body = {
        "repo": session["did"],
        "collection": "app.bsky.feed.post",
        "rkey": "3kabc222222aa",
        "record": record,
    }
    missing = client.get(
        f"{B}/com.atproto.repo.getRecord",
        params={
            "repo": session["did"],
            "collection": "app.bsky.feed.post",
            "rkey": "3kabc222222aa",
        },
    )
    assert missing.status_code == 400 and missing.json()["error"] == "RecordNotFound"
    created = client.post(f"{B}/com.atproto.repo.createRecord", json=body, headers=auth)
    assert created.status_code == 200
    assert created.headers["ratelimit-remaining"] == "4997"  # 5,000 points, create costs 3
    uri = created.json()["uri"]
    assert uri == f"at://{session['did']}/app.bsky.feed.post/3kabc222222aa"
    conflict = client.post(f"{B}/com.atproto.repo.createRecord", json=body, headers=auth)
    # The real PDS answers a duplicate record key on a post with a bare 500, no named error
    # (shared/reference/platform-facts.md, Bluesky).
    assert conflict.status_code == 500
    assert conflict.json() == {"error": "InternalServerError", "message": "Internal Server Error"}
    got = client.get(
        f"{B}/com.atproto.repo.getRecord",
        params={
            "repo": session["did"],
            "collection": "app.bsky.feed.post",
            "rkey": "3kabc222222aa",
        },
    )
    assert got.status_code == 200 and got.json()["value"]["text"] == "Update"
    assert got.json()["cid"] == created.json()["cid"]
    assert len(world.posts) == 1 and world.posts[0].post_id == uri
    assert client.post(f"{B}/com.atproto.repo.createRecord", json=body).status_code == 401


def test_bluesky_author_feed_repost_and_quote(
    world: World, clock: FixedClock, client: httpx.Client
) -> None:
    world.add_item(
        "metoffice.bsky.social",
        "bluesky",
        T0 - timedelta(minutes=2),
        {"rkey": "3kaaa222222aa", "text": "Rain warning"},
    )
    world.add_item("metoffice.bsky.social", "bluesky", T0 + timedelta(minutes=2), {"text": "Later"})
    feed = client.get(
        f"{B}/app.bsky.feed.getAuthorFeed", params={"actor": "metoffice.bsky.social"}
    ).json()["feed"]
    assert [f["post"]["record"]["text"] for f in feed] == ["Rain warning"]
    post = feed[0]["post"]
    assert post["author"]["handle"] == "metoffice.bsky.social"
    clock.advance(timedelta(minutes=2))
    feed = client.get(
        f"{B}/app.bsky.feed.getAuthorFeed", params={"actor": post["author"]["did"]}
    ).json()["feed"]
    assert [f["post"]["record"]["text"] for f in feed] == ["Later", "Rain warning"]
    session = _session(client)
    auth = {"Authorization": f"Bearer {session['accessJwt']}"}
    strong = {"uri": post["uri"], "cid": post["cid"]}
    client.post(
        f"{B}/com.atproto.repo.createRecord",
        headers=auth,
        json={
            "repo": session["handle"],
            "collection": "app.bsky.feed.repost",
            "record": {
                "$type": "app.bsky.feed.repost",
                "subject": strong,
                "createdAt": T0.isoformat(),
            },
        },
    ).raise_for_status()
    client.post(
        f"{B}/com.atproto.repo.createRecord",
        headers=auth,
        json={
            "repo": session["did"],
            "collection": "app.bsky.feed.post",
            "record": {
                "$type": "app.bsky.feed.post",
                "text": "Please read",
                "createdAt": T0.isoformat(),
                "embed": {"$type": "app.bsky.embed.record", "record": strong},
            },
        },
    ).raise_for_status()
    assert [(p.kind, p.ref) for p in world.posts] == [
        ("repost", post["uri"]),
        ("quote", post["uri"]),
    ]
    mine = client.get(
        f"{B}/app.bsky.feed.getAuthorFeed", params={"actor": session["handle"]}
    ).json()["feed"]
    assert [f["post"]["record"]["text"] for f in mine] == ["Please read"]
    source_record = client.get(
        f"{B}/com.atproto.repo.getRecord",
        params={
            "repo": post["author"]["did"],
            "collection": "app.bsky.feed.post",
            "rkey": "3kaaa222222aa",
        },
    ).json()
    assert source_record["cid"] == post["cid"]


def test_facebook_feed_post_duplicate_and_auth(world: World, client: httpx.Client) -> None:
    url = "/facebook/v19.0/12345/feed"
    created = client.post(
        url,
        data={"message": "Update", "link": "https://example.org/a", "access_token": "page-token"},
    )
    assert created.status_code == 200 and created.json()["id"].startswith("12345_")
    dup = client.post(
        url,
        json={"message": "Update", "link": "https://example.org/a", "access_token": "page-token"},
    )
    assert dup.status_code == 400 and dup.json()["error"]["code"] == 506
    assert client.post(url, data={"message": "x"}).status_code == 401
    listed = client.get(url, headers={"Authorization": "Bearer page-token"}).json()
    assert [d["message"] for d in listed["data"]] == ["Update"]
    one = client.get(
        f"/facebook/v19.0/{created.json()['id']}", params={"access_token": "page-token"}
    )
    assert one.json()["message"] == "Update"
    assert world.posts[0].ref == "https://example.org/a"
    world.set_valid_tokens("facebook", {"good"})
    assert client.post(url, data={"message": "y", "access_token": "bad"}).status_code == 401


def test_facebook_throttle_is_graph_code_32(world: World, client: httpx.Client) -> None:
    world.set_faults(Faults(burst_429=[("facebook", T0, T0 + timedelta(minutes=10))]))
    resp = client.post("/facebook/v19.0/12345/feed", data={"message": "m", "access_token": "t"})
    assert resp.status_code == 400 and resp.json()["error"]["code"] == 32
    usage = json.loads(resp.headers["x-business-use-case-usage"])
    assert usage["simulator"][0]["estimated_time_to_regain_access"] == 10
    assert world.posts == []


# -- Facebook: the documented read-back and its refusals ---------------------------------------

FB = "/facebook/v27.0"


def test_facebook_refuses_deprecated_fields_with_the_graph_error_object(
    world: World, client: httpx.Client
) -> None:
    """Graph v3.3 deprecated ``caption, description, link, name, object_id, source, type`` on
    page posts; asking for one answers 400, code 12, in the documented error object
    (developers.facebook.com/docs/graph-api/guides/error-handling)."""
    client.post(f"{FB}/12345/feed", data={"message": "m", "access_token": "t"}).raise_for_status()
    for edge in ("feed", "published_posts"):
        resp = client.get(f"{FB}/12345/{edge}", params={"fields": "id,message,link",
                                                        "access_token": "t"})
        assert resp.status_code == 400
        error = resp.json()["error"]
        assert error["message"] == "(#12) link field is deprecated for versions v3.3 and higher"
        assert error["type"] == "OAuthException" and error["code"] == 12
        assert isinstance(error["fbtrace_id"], str) and error["fbtrace_id"]
    post_id = world.posts[0].post_id
    one = client.get(f"{FB}/{post_id}", params={"fields": "type", "access_token": "t"})
    assert one.status_code == 400 and one.json()["error"]["code"] == 12


def test_facebook_published_posts_pages_like_graph(
    world: World, clock: FixedClock, client: httpx.Client
) -> None:
    """``/{page-id}/published_posts``: the Page's own posts, newest first, the fields asked for,
    ``since``, and cursor paging whose ``next`` URL carries the access token (Graph API
    "Paginated Results", developers.facebook.com/docs/graph-api/results)."""
    for n in range(3):
        client.post(f"{FB}/12345/feed", data={"message": f"post {n}", "access_token": "tok"})
        clock.advance(timedelta(minutes=1))
    client.post(f"{FB}/999/feed", data={"message": "another page", "access_token": "tok"})
    fields = "id,message,created_time,permalink_url"
    first = client.get(f"{FB}/12345/published_posts",
                       params={"fields": fields, "limit": "2"},
                       headers={"Authorization": "Bearer tok"}).json()
    assert [p["message"] for p in first["data"]] == ["post 2", "post 1"]
    post = first["data"][0]
    assert set(post) == {"id", "message", "created_time", "permalink_url"}
    assert post["created_time"] == "2026-01-05T10:02:00+0000"
    assert post["id"].startswith("12345_")
    assert post["permalink_url"] == f"https://www.facebook.com/12345/posts/{post['id'][6:]}"
    cursors = first["paging"]["cursors"]
    assert isinstance(cursors["before"], str) and isinstance(cursors["after"], str)
    nxt = httpx.URL(first["paging"]["next"])
    assert nxt.params["access_token"] == "tok" and nxt.params["after"] == cursors["after"]
    second = client.get(nxt.copy_with(scheme=None, host=None, port=None).raw_path.decode()).json()
    assert [p["message"] for p in second["data"]] == ["post 0"]
    assert "next" not in second["paging"]
    since = int((T0 + timedelta(minutes=1)).timestamp())
    recent = client.get(f"{FB}/12345/published_posts",
                        params={"since": str(since), "access_token": "tok"}).json()
    assert [p["message"] for p in recent["data"]] == ["post 2", "post 1"]
    assert set(recent["data"][0]) == {"id", "message", "created_time"}  # Graph's defaults
    assert client.get(f"{FB}/12345/published_posts").status_code == 401


def test_facebook_publisher_recovers_against_the_simulator(
    world: World, clock: FixedClock, sim: RunningSimulator
) -> None:
    """After a send whose outcome is unknown, a resend is refused "(#506) Duplicate status
    message" and the lookup must find the post: before the fix it asked for ``link`` and
    every such item went to needs_review."""
    pub = FacebookPublisher("facebook", page_id="12345",
                            credentials={"page_token": SecretStr("page-token")}, clock=clock,
                            base_url=sim.url_for("facebook"))
    item = OutboxItem(id=1, dedupe_key="u1:facebook:post", channel_id="facebook",
                      action=ActionKind.POST, text="Flood warning https://example.org/w/1",
                      state=ItemState.SENDING, created_at=T0, url="https://example.org/w/1",
                      sent_at=T0)
    try:
        first = pub.publish(item, None)
        with pytest.raises(PermanentPublishError, match="506"):
            pub.publish(item, None)
        found = pub.find_existing(item, None)
    finally:
        pub.close()
    assert found is not None and found.post_id == first.post_id
    assert found.url.startswith("https://www.facebook.com/12345/posts/")
    assert len(world.posts_on("facebook")) == 1


# -- Bluesky: what the real PDS answers to a repeated record key and a repeated repost ---------


def _xrpc(client: httpx.Client, auth: dict[str, str], nsid: str, **params: str) -> httpx.Response:
    return client.get(f"{B}/{nsid}", params=params, headers=auth)


def test_bluesky_repost_of_an_already_reposted_subject_replaces_it(
    world: World, client: httpx.Client
) -> None:
    """Creating a repost of a subject we already reposted replaces the old repost and answers
    200 (platform-facts.md); a record key already used by another subject is a bare 500."""
    world.add_item("metoffice.bsky.social", "bluesky", T0 - timedelta(minutes=2),
                   {"rkey": "3kaaa222222aa", "text": "Rain warning"})
    world.add_item("metoffice.bsky.social", "bluesky", T0 - timedelta(minutes=1),
                   {"rkey": "3kaaa222222ab", "text": "Wind warning"})
    feed = client.get(f"{B}/app.bsky.feed.getAuthorFeed",
                      params={"actor": "metoffice.bsky.social"}).json()["feed"]
    wind, rain = ({"uri": f["post"]["uri"], "cid": f["post"]["cid"]} for f in feed)
    session = _session(client)
    auth = {"Authorization": f"Bearer {session['accessJwt']}"}

    def repost(rkey: str, subject: dict[str, str]) -> httpx.Response:
        record = {"$type": "app.bsky.feed.repost", "subject": subject,
                  "createdAt": T0.isoformat()}
        return client.post(f"{B}/com.atproto.repo.createRecord", headers=auth, json={
            "repo": session["did"], "collection": "app.bsky.feed.repost", "rkey": rkey,
            "record": record})

    first = repost("3krepost22222", rain)
    assert first.status_code == 200
    second = repost("3krepost22223", rain)
    assert second.status_code == 200
    assert second.json()["uri"].endswith("/app.bsky.feed.repost/3krepost22223")
    old = _xrpc(client, auth, "com.atproto.repo.getRecord", repo=session["did"],
                collection="app.bsky.feed.repost", rkey="3krepost22222")
    assert old.status_code == 400 and old.json()["error"] == "RecordNotFound"
    again = repost("3krepost22223", rain)  # the same key and subject: replaced in place
    assert again.status_code == 200 and again.json()["uri"] == second.json()["uri"]
    clash = repost("3krepost22223", wind)  # the key is taken by a repost of another subject
    assert clash.status_code == 500 and clash.json()["error"] == "InternalServerError"
    listed = _xrpc(client, auth, "com.atproto.repo.listRecords", repo=session["did"],
                   collection="app.bsky.feed.repost").json()
    assert [r["uri"] for r in listed["records"]] == [second.json()["uri"]]
    assert listed["records"][0]["value"]["subject"] == rain
    # Every accepted new record stays in the simulator's log; the in-place one adds nothing.
    assert [p.post_id for p in world.posts] == [first.json()["uri"], second.json()["uri"]]


def test_bluesky_publisher_is_exactly_once_against_the_pds_answers(
    world: World, clock: FixedClock, sim: RunningSimulator
) -> None:
    """The publisher over the simulator answering as the real PDS does: a resend of a post
    meets the bare 500 and is resolved by getRecord; a repost replaced by a later repost of
    the same subject is still recognised as done."""
    world.add_item("metoffice.bsky.social", "bluesky", T0 - timedelta(minutes=2),
                   {"rkey": "3kaaa222222aa", "text": "Rain warning"})
    did = did_for("metoffice.bsky.social")
    native = NativeRef(Platform.BLUESKY, id="3kaaa222222aa",
                       uri=f"at://{did}/app.bsky.feed.post/3kaaa222222aa")

    def item(n: int, action: ActionKind, text: str = "") -> OutboxItem:
        return OutboxItem(id=n, dedupe_key=f"u{n}:bluesky:{action}", channel_id="bluesky",
                          action=action, text=text or f"Update {n}", state=ItemState.SENDING,
                          created_at=T0, native=None if action is ActionKind.POST else native)

    pub = BlueskyPublisher("bluesky", identifier="nhscomms.bsky.social",
                           credentials={"app_password": SecretStr("app-pass")}, clock=clock,
                           base_url=sim.url_for("bluesky"))
    try:
        post = item(1, ActionKind.POST)
        first = pub.publish(post, None)
        assert pub.publish(post, None) == first  # 500 on the repeated key, then getRecord
        a, b = item(2, ActionKind.REPOST), item(3, ActionKind.REPOST)
        done_a = pub.publish(a, None)
        done_b = pub.publish(b, None)  # replaces a's repost of the same subject: 200
        assert done_b.post_id != done_a.post_id and done_b.url == done_a.url
        found = pub.find_existing(a, None)
    finally:
        pub.close()
    assert found is not None and found.post_id == done_b.post_id
    statuses = [r.status for r in world.request_log if r.path.endswith("createRecord")]
    assert statuses == [200, 500, 200, 200]
    assert len([p for p in world.posts if p.kind == "post"]) == 1


def test_bluesky_follow_up_is_a_reply_in_the_thread_of_our_post(
    world: World, clock: FixedClock, sim: RunningSimulator
) -> None:
    """A CAP Update goes out as a reply to our own post of the alert (issue 12): the record
    carries ``reply.root`` and ``reply.parent`` strong references to it."""
    from dataclasses import replace

    pub = BlueskyPublisher("bluesky", identifier="nhscomms.bsky.social",
                           credentials={"app_password": SecretStr("app-pass")}, clock=clock,
                           base_url=sim.url_for("bluesky"))
    try:
        alert = OutboxItem(id=1, dedupe_key="a:bluesky:post", channel_id="bluesky",
                           action=ActionKind.POST, text="Flood warning", state=ItemState.SENDING,
                           created_at=T0)
        first = pub.publish(alert, None)
        update = replace(alert, id=2, dedupe_key="u:bluesky:post", text="Warning updated",
                         reply_to=first.post_id)
        second = pub.publish(update, None)
        did, _, rkey = second.post_id.removeprefix("at://").split("/")
        with httpx.Client() as client:
            got = client.get(f"{sim.url_for('bluesky')}/xrpc/com.atproto.repo.getRecord",
                             params={"repo": did, "collection": "app.bsky.feed.post",
                                     "rkey": rkey}).json()
    finally:
        pub.close()
    reply = got["value"]["reply"]
    assert reply["parent"]["uri"] == first.post_id == reply["root"]["uri"]
    assert reply["parent"]["cid"]
