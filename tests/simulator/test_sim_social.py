"""Mastodon, Bluesky and Facebook subsets: sources, our posts, idempotency, conflicts."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import httpx

from crisiscomms.domain.clock import FixedClock
from crisiscomms.simulator import Faults, World

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
    assert conflict.status_code == 400
    assert conflict.json()["error"] == "InvalidRequest"
    assert "already exists" in conflict.json()["message"]
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
