"""Bluesky XRPC subset under ``/bluesky/xrpc``: public author feeds and our PDS repo.

Answers as the real PDS does (``shared/reference/platform-facts.md``) in the shapes of the
lexicons in ``shared/recorded/bluesky/lexicons/``:

- ``createRecord`` with a record key that already exists answers a bare **500**
  ``{"error": "InternalServerError", "message": "Internal Server Error"}`` (no named error),
  and nothing is written.
- ``createRecord`` of a repost whose subject we already reposted **replaces** the old repost
  (its record is deleted) and answers 200; the same key and subject again is replaced in
  place (200, no new post in ``world.posts``, which logs every new record accepted).
- ``getRecord`` of an absent record answers 400 ``{"error": "RecordNotFound"}``.
- ``listRecords`` lists one collection of our repo, newest first, with ``cursor``.

Writes cost 3 points of ``bluesky:points`` (5,000 / h).
"""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from crisiscomms.domain.clock import isoformat, parse_instant, utc
from crisiscomms.simulator.common import bearer, limited, params, world_of
from crisiscomms.simulator.ids import did_for, fake_cid, tid
from crisiscomms.simulator.world import SimPost, World

_POST = "app.bsky.feed.post"
_REPOST = "app.bsky.feed.repost"
_QUOTE_EMBEDS = ("app.bsky.embed.record", "app.bsky.embed.recordWithMedia")


def _error(status: int, error: str, message: str) -> Response:
    return JSONResponse({"error": error, "message": message}, status)


def _records(world: World) -> dict[tuple[str, str], dict[str, Any]]:
    records: dict[tuple[str, str], dict[str, Any]] = world.state.setdefault("bluesky.records", {})
    return records


def _is_me(world: World, repo: str) -> bool:
    acc = world.accounts
    return repo.lower() in (acc.bluesky_handle.lower(), acc.bluesky_did)


def _author(handle: str) -> dict[str, Any]:
    return {"did": did_for(handle), "handle": handle, "displayName": handle.split(".")[0]}


def _when(value: Any, default: datetime) -> datetime:
    if isinstance(value, datetime):
        return utc(value)
    if isinstance(value, str) and value:
        return parse_instant(value)
    return default


def _scripted_posts(world: World, handle: str | None = None) -> list[dict[str, Any]]:
    out = []
    for vis in world.visible_items("bluesky"):
        if handle is not None and vis.source_id.lower() != handle.lower():
            continue
        it = vis.item
        rkey = str(it.get("rkey") or it.get("id"))
        uri = f"at://{did_for(vis.source_id)}/{_POST}/{rkey}"
        record: dict[str, Any] = {
            "$type": _POST,
            "text": str(it.get("text", "")),
            "createdAt": isoformat(_when(it.get("createdAt"), vis.first_at)),
            "langs": ["en"],
        }
        for extra in ("reply", "embed", "facets"):
            if it.get(extra):
                record[extra] = it[extra]
        out.append(
            {
                "uri": uri,
                "cid": fake_cid(uri, json.dumps(record, sort_keys=True)),
                "author": _author(vis.source_id),
                "record": record,
                "indexedAt": isoformat(vis.changed_at),
                "rkey": rkey,
            }
        )
    return out


def _my_posts(world: World) -> list[dict[str, Any]]:
    handle = world.accounts.bluesky_handle
    out = []
    for (collection, rkey), rec in _records(world).items():
        if collection != _POST:
            continue
        out.append(
            {
                "uri": rec["uri"],
                "cid": rec["cid"],
                "author": _author(handle),
                "record": rec["value"],
                "indexedAt": isoformat(rec["at"]),
                "rkey": rkey,
            }
        )
    return out


def _unauthorized(request: Request) -> Response | None:
    if world_of(request).token_ok("bluesky", bearer(request)):
        return None
    return _error(401, "AuthenticationRequired", "Authentication Required")


@limited("bluesky", "bluesky:createSession")
async def create_session(request: Request) -> Response:
    """com.atproto.server.createSession: any identifier with a non-empty password."""
    world = world_of(request)
    body = await params(request)
    if not body.get("identifier") or not body.get("password"):
        return _error(401, "AuthenticationRequired", "Invalid identifier or password")
    n = world.next_seq()
    acc = world.accounts
    return JSONResponse(
        {
            "accessJwt": f"sim-access-{n}",
            "refreshJwt": f"sim-refresh-{n}",
            "handle": acc.bluesky_handle,
            "did": acc.bluesky_did,
            "active": True,
            "email": f"comms@{acc.bluesky_handle}",
        }
    )


@limited("bluesky", "bluesky:createSession")
async def refresh_session(request: Request) -> Response:
    """com.atproto.server.refreshSession with the refresh token as bearer."""
    if (denied := _unauthorized(request)) is not None:
        return denied
    world = world_of(request)
    n = world.next_seq()
    acc = world.accounts
    return JSONResponse(
        {
            "accessJwt": f"sim-access-{n}",
            "refreshJwt": f"sim-refresh-{n}",
            "handle": acc.bluesky_handle,
            "did": acc.bluesky_did,
            "active": True,
        }
    )


@limited("bluesky", "bluesky:points", cost=3)
async def create_record(request: Request) -> Response:
    """com.atproto.repo.createRecord on our repo (post, quote or repost)."""
    if (denied := _unauthorized(request)) is not None:
        return denied
    world = world_of(request)
    body = await params(request)
    repo, collection = str(body.get("repo", "")), str(body.get("collection", ""))
    record = body.get("record")
    if not _is_me(world, repo):
        return _error(400, "InvalidRequest", "Invalid repo: not the authenticated account")
    if not collection or not isinstance(record, dict):
        return _error(400, "InvalidRequest", "Input must have the properties collection, record")
    with world.lock:
        now = world.now()
        rkey = str(body.get("rkey") or tid(now, world.next_seq()))
        uri = f"at://{world.accounts.bluesky_did}/{collection}/{rkey}"
        records = _records(world)
        replaced = _replaced_reposts(records, collection, record)
        existing = records.get((collection, rkey))
        if existing is not None and (collection, rkey) not in replaced:
            # What the PDS answers for a repeated record key: no named error.
            return _error(500, "InternalServerError", "Internal Server Error")
        for key in replaced:
            del records[key]
        cid = fake_cid(uri, json.dumps(record, sort_keys=True, default=str))
        records[(collection, rkey)] = {"uri": uri, "cid": cid, "value": record, "at": now}
        if existing is None:
            kind, ref, text = _classify(collection, record)
            world.record_post(
                SimPost(
                    "bluesky",
                    world.accounts.bluesky_handle,
                    kind,
                    uri,
                    text,
                    ref,
                    now,
                    str(rkey if body.get("rkey") else ""),
                    _web_url(world.accounts.bluesky_handle, rkey),
                    cid,
                )
            )
    return JSONResponse(
        {
            "uri": uri,
            "cid": cid,
            "commit": {"cid": fake_cid("commit", uri), "rev": tid(now, 0)},
            "validationStatus": "valid",
        }
    )


def _replaced_reposts(
    records: dict[tuple[str, str], dict[str, Any]], collection: str, record: dict[str, Any]
) -> list[tuple[str, str]]:
    """Our reposts of the same subject as ``record``: the PDS replaces them with it."""
    subject = (record.get("subject") or {}).get("uri")
    if collection != _REPOST or not subject:
        return []
    return [
        key
        for key, rec in records.items()
        if key[0] == _REPOST and (rec["value"].get("subject") or {}).get("uri") == subject
    ]


def _classify(collection: str, record: dict[str, Any]) -> tuple[str, str, str]:
    if collection == _REPOST:
        subject = record.get("subject") or {}
        return "repost", str(subject.get("uri", "")), ""
    embed = record.get("embed") or {}
    text = str(record.get("text", ""))
    if embed.get("$type") in _QUOTE_EMBEDS:
        inner = embed.get("record") or {}
        ref = inner.get("uri") or (inner.get("record") or {}).get("uri", "")
        return "quote", str(ref), text
    return "post", "", text


def _web_url(handle: str, rkey: str) -> str:
    return f"https://bsky.app/profile/{handle}/post/{rkey}"


@limited("bluesky", "bluesky:read")
async def get_record(request: Request) -> Response:
    """com.atproto.repo.getRecord: ours or a scripted source's; 400 RecordNotFound if absent."""
    world = world_of(request)
    q = request.query_params
    repo, collection, rkey = q.get("repo", ""), q.get("collection", ""), q.get("rkey", "")
    uri = f"at://{repo}/{collection}/{rkey}"
    if _is_me(world, repo):
        rec = _records(world).get((collection, rkey))
        if rec is not None:
            return JSONResponse({"uri": rec["uri"], "cid": rec["cid"], "value": rec["value"]})
    elif collection == _POST:
        for post in _scripted_posts(world):
            if post["rkey"] == rkey and repo in (post["author"]["did"], post["author"]["handle"]):
                return JSONResponse(
                    {"uri": post["uri"], "cid": post["cid"], "value": post["record"]}
                )
    return _error(400, "RecordNotFound", f"Could not locate record: {uri}")


@limited("bluesky", "bluesky:read")
async def list_records(request: Request) -> Response:
    """com.atproto.repo.listRecords of our repo: newest first (``reverse=true``: oldest),
    ``limit`` (1-100, default 50) and an opaque ``cursor``."""
    world = world_of(request)
    q = request.query_params
    repo, collection = q.get("repo", ""), q.get("collection", "")
    if not repo or not collection:
        return _error(400, "InvalidRequest", "Params must have the properties repo, collection")
    if not _is_me(world, repo):
        return JSONResponse({"records": []})
    with world.lock:
        found = sorted(
            ((rkey, rec) for (coll, rkey), rec in _records(world).items() if coll == collection),
            key=lambda kv: kv[0],
            reverse=q.get("reverse") != "true",
        )
    raw = q.get("limit", "50")
    limit = max(1, min(int(raw), 100)) if raw.isdigit() else 50
    cursor = q.get("cursor")
    if cursor:
        newest_first = q.get("reverse") != "true"
        found = [(k, r) for k, r in found if (k < cursor if newest_first else k > cursor)]
    page = found[:limit]
    body: dict[str, Any] = {
        "records": [{"uri": r["uri"], "cid": r["cid"], "value": r["value"]} for _, r in page]
    }
    if len(found) > limit:
        body["cursor"] = page[-1][0]
    return JSONResponse(body)


@limited("bluesky", "bluesky:read")
async def get_author_feed(request: Request) -> Response:
    """app.bsky.feed.getAuthorFeed?actor=HANDLE-or-DID (newest first, cursor, filter)."""
    world = world_of(request)
    q = request.query_params
    actor = q.get("actor", "").lstrip("@")
    if _is_me(world, actor):
        posts = _my_posts(world)
    else:
        handle = next(
            (h for h in world.known_sources("bluesky") if actor.lower() in (h.lower(), did_for(h))),
            None,
        )
        if handle is None:
            return _error(400, "InvalidRequest", "Profile not found")
        posts = _scripted_posts(world, handle)
    if q.get("filter") == "posts_no_replies":
        posts = [p for p in posts if not p["record"].get("reply")]
    elif q.get("filter") == "posts_and_author_threads":
        # Replies only where the author answers itself (its threads), as the AppView does.
        posts = [p for p in posts if not p["record"].get("reply") or str(
            p["record"]["reply"].get("parent", {}).get("uri", "")).startswith(
                f"at://{p['author']['did']}/")]
    posts.sort(key=lambda p: (p["record"]["createdAt"], p["rkey"]), reverse=True)
    cursor = q.get("cursor", "sim0")
    offset = int(cursor[3:]) if cursor.startswith("sim") and cursor[3:].isdigit() else 0
    limit = min(int(q["limit"]) if q.get("limit", "").isdigit() else 50, 100)
    page = posts[offset : offset + limit]
    feed = [
        {
            "post": {k: v for k, v in p.items() if k != "rkey"}
            | {"replyCount": 0, "repostCount": 0, "likeCount": 0, "quoteCount": 0, "labels": []}
        }
        for p in page
    ]
    body: dict[str, Any] = {"feed": feed}
    if offset + len(page) < len(posts):
        body["cursor"] = f"sim{offset + len(page)}"
    return JSONResponse(body)


def bluesky_routes() -> list[BaseRoute]:
    """Routes for the Bluesky subset (prefix /bluesky/xrpc)."""
    p = "/bluesky/xrpc"
    return [
        Route(f"{p}/com.atproto.server.createSession", create_session, methods=["POST"]),
        Route(f"{p}/com.atproto.server.refreshSession", refresh_session, methods=["POST"]),
        Route(f"{p}/com.atproto.repo.createRecord", create_record, methods=["POST"]),
        Route(f"{p}/com.atproto.repo.getRecord", get_record, methods=["GET"]),
        Route(f"{p}/com.atproto.repo.listRecords", list_records, methods=["GET"]),
        Route(f"{p}/app.bsky.feed.getAuthorFeed", get_author_feed, methods=["GET"]),
    ]
