"""Facebook Graph API subset under ``/facebook``: posting to our Page's feed.

A missing or rejected token answers 401 with Graph error code 190. Posting the same message
(and link) to the same Page within 24 h answers 400 with code 506 ("Duplicate status
message"). Throttling (quota ``facebook:page`` or a ``burst_429`` window) answers HTTP 400
with code 32 and ``X-Page-Usage``, the Graph way, not 429.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from crisiscomms.domain.clock import utc
from crisiscomms.simulator.common import bearer, limited, params, world_of
from crisiscomms.simulator.world import SimPost

_KEY = "facebook:page"


def _graph_error(
    status: int, code: int, message: str, type_: str = "OAuthException", **extra: Any
) -> Response:
    error = {"message": message, "type": type_, "code": code, "fbtrace_id": "simulator", **extra}
    return JSONResponse({"error": error}, status)


def _created_time(post: SimPost) -> str:
    return utc(post.received_at).strftime("%Y-%m-%dT%H:%M:%S+0000")


@limited("facebook", _KEY)
async def page_feed(request: Request) -> Response:
    """POST /{version}/{page_id}/feed (form or JSON) publishes; GET lists our posts there."""
    world = world_of(request)
    body = await params(request)
    token = str(body.get("access_token") or bearer(request))
    if not world.token_ok("facebook", token):
        return _graph_error(401, 190, "Invalid OAuth access token - Cannot parse access token")
    page_id = request.path_params["page_id"]
    if request.method == "GET":
        data = [
            {"id": p.post_id, "message": p.text, "created_time": _created_time(p)}
            for p in reversed(world.posts_on("facebook"))
            if p.channel == page_id
        ]
        return JSONResponse({"data": data, "paging": {}})
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
    token = str(request.query_params.get("access_token") or bearer(request))
    if not world.token_ok("facebook", token):
        return _graph_error(401, 190, "Invalid OAuth access token - Cannot parse access token")
    object_id = request.path_params["object_id"]
    for post in world.posts_on("facebook"):
        if post.post_id == object_id:
            return JSONResponse(
                {"id": post.post_id, "message": post.text, "created_time": _created_time(post)}
            )
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
        Route("/facebook/{version}/{object_id}", graph_object, methods=["GET"]),
    ]
