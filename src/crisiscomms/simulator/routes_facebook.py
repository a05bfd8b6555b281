"""Facebook Graph API subset under ``/facebook``: posting to our Page and reading it back.

Follows Meta's documentation (there are no recordings of Facebook):

- ``POST /{version}/{page_id}/feed`` (``message``, ``link``) answers ``{"id": "{page}_{n}"}``.
- ``GET /{version}/{page_id}/published_posts`` lists the Page's own posts, newest first, with
  the ``fields`` asked for (default ``id, message, created_time``), ``since``/``until`` (Unix
  seconds), ``limit`` (at most 100) and cursor paging: ``paging.cursors.before/after`` and a
  ``paging.next`` link that, as Graph's does, repeats the query with the access token in it.
- ``GET /{version}/{page_id}/feed`` lists the same posts (our Page has no visitors here).
- Page-post fields deprecated in v3.3 (``caption, description, link, name, object_id, source,
  type``) answer 400 with code 12 "(#12) link field is deprecated for versions v3.3 and
  higher"; a field that never existed answers 400 with code 100.

Errors are Graph error objects ``{"error": {"message", "type", "code", "fbtrace_id"}}``. A
missing or rejected token answers 401 with code 190. Posting the same message (and link) to
the same Page within 24 h answers 400 with code 506 ("Duplicate status message"). Throttling
(quota ``facebook:page`` or a ``burst_429`` window) answers HTTP 400 with code 32,
``X-Page-Usage`` and ``X-Business-Use-Case-Usage``, the Graph way, not 429. Any version in the
path is accepted.
"""

from __future__ import annotations

import base64
import binascii
from datetime import timedelta
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from crisiscomms.domain.clock import utc
from crisiscomms.simulator.common import bearer, limited, params, world_of
from crisiscomms.simulator.world import SimPost

_KEY = "facebook:page"
DEPRECATED_POST_FIELDS = frozenset(
    {"caption", "description", "link", "name", "object_id", "source", "type"})
_DEFAULT_FIELDS = ("id", "message", "created_time")
_MAX_LIMIT = 100


def _graph_error(
    status: int, code: int, message: str, type_: str = "OAuthException", **extra: Any
) -> Response:
    error = {"message": message, "type": type_, "code": code, "fbtrace_id": "simulator", **extra}
    return JSONResponse({"error": error}, status)


def _created_time(post: SimPost) -> str:
    return utc(post.received_at).strftime("%Y-%m-%dT%H:%M:%S+0000")


def _permalink(post: SimPost) -> str:
    page, _, n = post.post_id.partition("_")
    return f"https://www.facebook.com/{page}/posts/{n}"


def _shown(post: SimPost) -> dict[str, Any]:
    return {"id": post.post_id, "message": post.text, "created_time": _created_time(post),
            "permalink_url": _permalink(post)}


def _fields(raw: str | None) -> tuple[list[str], Response | None]:
    """The fields asked for, or the Graph refusal of a deprecated or unknown one."""
    if not raw:
        return list(_DEFAULT_FIELDS), None
    fields = [f.strip() for f in raw.split(",") if f.strip()]
    for name in fields:
        if name in DEPRECATED_POST_FIELDS:
            return fields, _graph_error(
                400, 12, f"(#12) {name} field is deprecated for versions v3.3 and higher")
        if name not in ("id", "message", "created_time", "permalink_url"):
            return fields, _graph_error(
                400, 100, f"(#100) Tried accessing nonexisting field ({name}) on node type "
                "(PagePost)")
    return fields, None


def _cursor(offset: int) -> str:
    return base64.urlsafe_b64encode(f"sim:{offset}".encode()).decode()


def _offset(cursor: str) -> int | None:
    try:
        text = base64.urlsafe_b64decode(cursor.encode()).decode()
    except (binascii.Error, UnicodeDecodeError, ValueError):
        return None
    tag, _, n = text.partition(":")
    return int(n) if tag == "sim" and n.isdigit() else None


def _seconds(value: str | None) -> int | None:
    return int(value) if value and value.isdigit() else None


def _page_posts(request: Request, page_id: str, query: dict[str, Any], token: str) -> Response:
    """One page of the Page's own posts, newest first, in Graph's paged list shape."""
    world = world_of(request)
    fields, refused = _fields(query.get("fields"))
    if refused is not None:
        return refused
    since, until = _seconds(query.get("since")), _seconds(query.get("until"))
    posts = [
        p for p in reversed(world.posts_on("facebook"))
        if p.channel == page_id
        and (since is None or utc(p.received_at).timestamp() >= since)
        and (until is None or utc(p.received_at).timestamp() <= until)
    ]
    raw_limit = str(query.get("limit") or "25")
    limit = min(int(raw_limit), _MAX_LIMIT) if raw_limit.isdigit() and raw_limit != "0" else 25
    start = 0
    if query.get("after"):
        start_at = _offset(str(query["after"]))
        if start_at is None:
            return _graph_error(400, 100, "(#100) The after cursor is not valid")
        start = start_at
    chunk = posts[start:start + limit]
    data = [{k: v for k, v in _shown(p).items() if k in fields} for p in chunk]
    body: dict[str, Any] = {"data": data}
    if chunk:
        paging: dict[str, Any] = {"cursors": {"before": _cursor(start),
                                              "after": _cursor(start + len(chunk))}}
        if start + len(chunk) < len(posts):
            following = {k: str(v) for k, v in query.items() if k != "after"}
            following |= {"access_token": token, "after": _cursor(start + len(chunk))}
            paging["next"] = str(request.url.replace_query_params(**following))
        body["paging"] = paging
    return JSONResponse(body)


def _token(request: Request, body: dict[str, Any]) -> str:
    return str(body.get("access_token") or bearer(request))


def _bad_token(request: Request, token: str) -> Response | None:
    if world_of(request).token_ok("facebook", token):
        return None
    return _graph_error(401, 190, "Invalid OAuth access token - Cannot parse access token")


@limited("facebook", _KEY)
async def published_posts(request: Request) -> Response:
    """GET /{version}/{page_id}/published_posts: the Page's own posts (see the docstring)."""
    query = dict(request.query_params)
    token = _token(request, query)
    if (denied := _bad_token(request, token)) is not None:
        return denied
    return _page_posts(request, request.path_params["page_id"], query, token)


@limited("facebook", _KEY)
async def page_feed(request: Request) -> Response:
    """POST /{version}/{page_id}/feed (form or JSON) publishes; GET lists our posts there."""
    world = world_of(request)
    body = await params(request)
    token = _token(request, body)
    if (denied := _bad_token(request, token)) is not None:
        return denied
    page_id = request.path_params["page_id"]
    if request.method == "GET":
        return _page_posts(request, page_id, dict(request.query_params), token)
    message, link = str(body.get("message") or ""), str(body.get("link") or "")
    if not message.strip() and not link:
        return _graph_error(400, 100, "(#100) Missing message or attachment")
    with world.lock:
        now = world.now()
        for post in world.posts_on("facebook"):
            if (
                post.channel == page_id
                and post.text == message
                and post.ref == link
                and now - post.received_at < timedelta(hours=24)
            ):
                return _graph_error(400, 506, "(#506) Duplicate status message")
        post_id = f"{page_id}_{world.next_seq()}"
        world.record_post(
            SimPost(
                "facebook",
                page_id,
                "post",
                post_id,
                message,
                link,
                now,
                url=f"https://www.facebook.com/{post_id}",
            )
        )
    return JSONResponse({"id": post_id})


@limited("facebook", _KEY)
async def graph_object(request: Request) -> Response:
    """GET /{version}/{post_id}: one of our posts, or Graph error 100/33 when absent."""
    world = world_of(request)
    token = _token(request, dict(request.query_params))
    if (denied := _bad_token(request, token)) is not None:
        return denied
    fields, refused = _fields(request.query_params.get("fields"))
    if refused is not None:
        return refused
    object_id = request.path_params["object_id"]
    for post in world.posts_on("facebook"):
        if post.post_id == object_id:
            return JSONResponse({k: v for k, v in _shown(post).items() if k in fields})
    return _graph_error(
        400,
        100,
        f"Unsupported get request. Object with ID '{object_id}' does "
        "not exist, cannot be loaded due to missing permissions, or does not "
        "support this operation.",
        "GraphMethodException",
        error_subcode=33,
    )


def facebook_routes() -> list[BaseRoute]:
    """Routes for the Graph API subset (prefix /facebook)."""
    return [
        Route("/facebook/{version}/{page_id}/feed", page_feed, methods=["GET", "POST"]),
        Route("/facebook/{version}/{page_id}/published_posts", published_posts, methods=["GET"]),
        Route("/facebook/{version}/{object_id}", graph_object, methods=["GET"]),
    ]
