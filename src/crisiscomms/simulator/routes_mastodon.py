"""Mastodon API subset under ``/mastodon``: source accounts (scripted) and our account.

Every response counts against one per-account quota (``mastodon:account``, 300 / 5 min) and
carries ``X-RateLimit-Limit/Remaining/Reset`` (ISO time). ``POST /api/v1/statuses`` honours
``Idempotency-Key`` for one simulated hour; boosting something already boosted returns the
existing boost (200) without a new post, as Mastodon does.
"""

from __future__ import annotations

import html
import re
from datetime import datetime, timedelta
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from crisiscomms.domain.clock import parse_instant, utc
from crisiscomms.simulator.common import bearer, iso_ms, limited, params, world_of
from crisiscomms.simulator.ids import mastodon_id, numeric_id
from crisiscomms.simulator.world import SimPost, World

_KEY = "mastodon:account"
_DEFAULT_DOMAIN = "mastodon.example"
_URL = re.compile(r"https?://\S+")


def _truthy(value: str | None) -> bool:
    return (value or "").lower() in ("1", "true", "yes")


def _split(acct: str) -> tuple[str, str]:
    username, _, domain = acct.lstrip("@").partition("@")
    return username, domain or _DEFAULT_DOMAIN


def account_json(acct: str) -> dict[str, Any]:
    """A Mastodon Account entity for ``acct``."""
    username, domain = _split(acct)
    return {
        "id": numeric_id(acct),
        "username": username,
        "acct": acct.lstrip("@"),
        "display_name": username,
        "locked": False,
        "bot": False,
        "url": f"https://{domain}/@{username}",
        "followers_count": 0,
        "following_count": 0,
        "statuses_count": 0,
        "note": "",
        "created_at": "2020-01-01T00:00:00.000Z",
    }


def _accounts(world: World) -> list[str]:
    return [*world.known_sources("mastodon"), world.accounts.mastodon_acct]


def _find_account(world: World, wanted: str) -> str | None:
    wanted = wanted.lstrip("@").lower()
    for acct in _accounts(world):
        if wanted in (acct.lower(), _split(acct)[0].lower(), numeric_id(acct)):
            return acct
    return None


def _when(value: Any, default: datetime) -> datetime:
    if isinstance(value, datetime):
        return utc(value)
    if isinstance(value, str) and value:
        return parse_instant(value)
    return default


def _status(
    acct: str,
    status_id: str,
    text: str,
    created: datetime,
    *,
    url: str = "",
    uri: str = "",
    in_reply_to_id: str | None = None,
    reblog: dict[str, Any] | None = None,
    content: str | None = None,
) -> dict[str, Any]:
    username, domain = _split(acct)
    return {
        "id": status_id,
        "created_at": iso_ms(created),
        "in_reply_to_id": in_reply_to_id,
        "in_reply_to_account_id": None,
        "sensitive": False,
        "spoiler_text": "",
        "visibility": "public",
        "language": "en",
        "uri": uri or f"https://{domain}/users/{username}/statuses/{status_id}",
        "url": url or f"https://{domain}/@{username}/{status_id}",
        "replies_count": 0,
        "reblogs_count": 0,
        "favourites_count": 0,
        "content": content if content is not None else f"<p>{html.escape(text)}</p>",
        "reblog": reblog,
        "account": account_json(acct),
        "media_attachments": [],
        "mentions": [],
        "tags": [],
        "emojis": [],
        "card": None,
        "poll": None,
    }


def all_statuses(world: World) -> list[dict[str, Any]]:
    """Every status visible now: scripted source statuses and our posts and boosts."""
    out: list[dict[str, Any]] = []
    for vis in world.visible_items("mastodon"):
        it = vis.item
        text = str(it.get("text", ""))
        out.append(
            _status(
                vis.source_id,
                str(it["id"]),
                text,
                _when(it.get("created_at"), vis.first_at),
                url=str(it.get("url", "")),
                uri=str(it.get("uri", "")),
                in_reply_to_id=it.get("in_reply_to_id"),
                content=it.get("content"),
            )
        )
    by_id = {s["id"]: s for s in out}
    mine = world.accounts.mastodon_acct
    for post in world.posts_on("mastodon"):
        if post.kind == "boost":
            original = by_id.get(post.ref)
            status = _status(mine, post.post_id, "", post.received_at, reblog=original, content="")
        else:
            status = _status(mine, post.post_id, post.text, post.received_at, url=post.url)
        by_id[post.post_id] = status
        out.append(status)
    return out


def _unauthorized(request: Request) -> Response | None:
    if world_of(request).token_ok("mastodon", bearer(request)):
        return None
    return JSONResponse({"error": "The access token is invalid"}, 401)


@limited("mastodon", _KEY)
async def lookup(request: Request) -> Response:
    """GET /api/v1/accounts/lookup?acct=NAME."""
    acct = _find_account(world_of(request), request.query_params.get("acct", ""))
    if acct is None:
        return JSONResponse({"error": "Record not found"}, 404)
    return JSONResponse(account_json(acct))


@limited("mastodon", _KEY)
async def verify_credentials(request: Request) -> Response:
    """GET /api/v1/accounts/verify_credentials: our account."""
    if (denied := _unauthorized(request)) is not None:
        return denied
    return JSONResponse(account_json(world_of(request).accounts.mastodon_acct))


@limited("mastodon", _KEY)
async def account_statuses(request: Request) -> Response:
    """GET /api/v1/accounts/{id}/statuses with since_id, max_id, limit, exclude_*."""
    world = world_of(request)
    acct = _find_account(world, request.path_params["account_id"])
    if acct is None:
        return JSONResponse({"error": "Record not found"}, 404)
    q = request.query_params
    statuses = [s for s in all_statuses(world) if s["account"]["acct"] == acct.lstrip("@")]
    if _truthy(q.get("exclude_replies")):
        statuses = [s for s in statuses if s["in_reply_to_id"] is None]
    if _truthy(q.get("exclude_reblogs")):
        statuses = [s for s in statuses if s["reblog"] is None]
    for name in ("since_id", "min_id", "max_id"):
        if q.get(name, "").isdigit():
            bound, newer = int(q[name]), name != "max_id"
            statuses = [
                s for s in statuses if (int(s["id"]) > bound) == newer and int(s["id"]) != bound
            ]
    statuses.sort(key=lambda s: int(s["id"]), reverse=True)
    limit = min(int(q["limit"]) if q.get("limit", "").isdigit() else 20, 40)
    return JSONResponse(statuses[:limit])


def _weighted_length(text: str) -> int:
    # Mastodon counts every URL as 23 characters.
    return len(_URL.sub("x" * 23, text))


@limited("mastodon", _KEY)
async def post_status(request: Request) -> Response:
    """POST /api/v1/statuses; the same Idempotency-Key within 1 h returns the same status."""
    if (denied := _unauthorized(request)) is not None:
        return denied
    world = world_of(request)
    body = await params(request)
    text = str(body.get("status") or "")
    key = request.headers.get("idempotency-key", "")
    if not text.strip():
        return JSONResponse({"error": "Validation failed: Text can't be blank"}, 422)
    if _weighted_length(text) > 500:
        return JSONResponse(
            {"error": "Validation failed: Text character limit of 500 exceeded"}, 422
        )
    with world.lock:
        now = world.now()
        seen: dict[tuple[str, str], tuple[datetime, str]] = world.state.setdefault(
            "mastodon.idempotency", {}
        )
        if key and (bearer(request), key) in seen:
            at, post_id = seen[(bearer(request), key)]
            if now - at < timedelta(hours=1):
                status = next(s for s in all_statuses(world) if s["id"] == post_id)
                return JSONResponse(status)
        acct = world.accounts.mastodon_acct
        post_id = mastodon_id(now, world.next_seq())
        username, domain = _split(acct)
        url = f"https://{domain}/@{username}/{post_id}"
        world.record_post(SimPost("mastodon", acct, "post", post_id, text, "", now, key, url))
        if key:
            seen[(bearer(request), key)] = (now, post_id)
        status = _status(acct, post_id, text, now, url=url)
    return JSONResponse(status)


@limited("mastodon", _KEY)
async def get_status(request: Request) -> Response:
    """GET /api/v1/statuses/{id}."""
    status_id = request.path_params["status_id"]
    for status in all_statuses(world_of(request)):
        if status["id"] == status_id:
            return JSONResponse(status)
    return JSONResponse({"error": "Record not found"}, 404)


@limited("mastodon", _KEY)
async def reblog(request: Request) -> Response:
    """POST /api/v1/statuses/{id}/reblog: boost (again: the existing boost, no new post)."""
    if (denied := _unauthorized(request)) is not None:
        return denied
    world = world_of(request)
    status_id = request.path_params["status_id"]
    with world.lock:
        statuses = all_statuses(world)
        original = next((s for s in statuses if s["id"] == status_id), None)
        if original is None:
            return JSONResponse({"error": "Record not found"}, 404)
        acct = world.accounts.mastodon_acct
        existing = next(
            (p for p in world.posts_on("mastodon") if p.kind == "boost" and p.ref == status_id),
            None,
        )
        if existing is None:
            now = world.now()
            existing = world.record_post(
                SimPost(
                    "mastodon",
                    acct,
                    "boost",
                    mastodon_id(now, world.next_seq()),
                    html.unescape(re.sub(r"<[^>]+>", "", original["content"] or "")),
                    status_id,
                    now,
                    request.headers.get("idempotency-key", ""),
                    original["url"],
                )
            )
    return JSONResponse(
        _status(acct, existing.post_id, "", existing.received_at, reblog=original, content="")
    )


@limited("mastodon", _KEY)
async def search(request: Request) -> Response:
    """GET /api/v2/search?q=URL-or-acct&resolve=true: statuses by url/uri, accounts by acct."""
    if (denied := _unauthorized(request)) is not None:
        return denied
    world = world_of(request)
    q = request.query_params.get("q", "").strip()
    kind = request.query_params.get("type", "")
    statuses = (
        []
        if kind in ("accounts", "hashtags")
        else [s for s in all_statuses(world) if q and q in (s["url"], s["uri"])]
    )
    acct = None if kind in ("statuses", "hashtags") else _find_account(world, q)
    accounts = [account_json(acct)] if acct else []
    return JSONResponse({"accounts": accounts, "statuses": statuses, "hashtags": []})


def mastodon_routes() -> list[BaseRoute]:
    """Routes for the Mastodon subset (prefix /mastodon)."""
    p = "/mastodon/api"
    return [
        Route(f"{p}/v1/accounts/lookup", lookup, methods=["GET"]),
        Route(f"{p}/v1/accounts/verify_credentials", verify_credentials, methods=["GET"]),
        Route(f"{p}/v1/accounts/{{account_id}}/statuses", account_statuses, methods=["GET"]),
        Route(f"{p}/v1/statuses", post_status, methods=["POST"]),
        Route(f"{p}/v1/statuses/{{status_id}}", get_status, methods=["GET"]),
        Route(f"{p}/v1/statuses/{{status_id}}/reblog", reblog, methods=["POST"]),
        Route(f"{p}/v2/search", search, methods=["GET"]),
    ]
