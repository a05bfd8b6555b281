"""Mastodon API subset under ``/mastodon``: source accounts (scripted) and our account.

Shapes, budgets and refusals follow the real responses recorded by Mastodon.py's test suite
(``shared/recorded/mastodon/``; the recording wins over this module):

* every call spends the general budget (``mastodon:account``, 300 / 5 min, windows aligned to
  the clock as Mastodon's limiter does) and answers ``X-RateLimit-Limit/Remaining/Reset``
  (an ISO timestamp);
* creating a status and boosting also spend a separate budget they share
  (``mastodon:statuses``, 300 / 3 h per account) and their answers carry *that* budget's
  headers, as recorded (a post at 13:53 resets at 15:00); past it: 429 with its reset,
  while reads go on;
* ``require_authenticated_reads(world)`` makes the instance answer reads without a token
  with 401 ``{"error": "This API requires an authenticated user"}`` (some instances do);
* Status and Account entities have the recorded fields; the viewer's own fields
  (``favourited``, ``reblogged``, ``muted``, ``bookmarked``, ``filtered``, ``pinned``) are
  there only for an authenticated caller;
* ``GET /api/v1/accounts/:id/statuses`` pages as Mastodon does: newest first, at most 40;
  ``since_id`` gives the newest after it, ``min_id`` the ones right after it;
  ``exclude_replies`` drops replies to other accounts but keeps the account's own thread.

``POST /api/v1/statuses`` honours ``Idempotency-Key`` for one simulated hour; boosting
something already boosted returns the existing boost (200) without a new post, as Mastodon
does.
"""

from __future__ import annotations

import functools
import html
import re
from datetime import datetime, timedelta
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from crisiscomms.domain.clock import parse_instant, utc
from crisiscomms.simulator.common import (
    Endpoint,
    bearer,
    iso_ms,
    limited,
    note_quota,
    params,
    rate_headers,
    refusal,
    world_of,
)
from crisiscomms.simulator.ids import mastodon_id, numeric_id
from crisiscomms.simulator.world import SimPost, World

_KEY = "mastodon:account"
_STATUSES = "mastodon:statuses"  # posting and boosting: 300 / 3 h per account
_AUTH_READS = "mastodon.authenticated_reads"
_DEFAULT_DOMAIN = "mastodon.example"
_APPLICATION = {"name": "crisiscomms", "website": None}
_URL = re.compile(r"https?://\S+")


def _truthy(value: str | None) -> bool:
    return (value or "").lower() in ("1", "true", "yes")


def _split(acct: str) -> tuple[str, str]:
    username, _, domain = acct.lstrip("@").partition("@")
    return username, domain or _DEFAULT_DOMAIN


def account_json(acct: str, *, own: bool = False) -> dict[str, Any]:
    """A Mastodon Account entity for ``acct`` (``own``: as ``verify_credentials`` shows it)."""
    username, domain = _split(acct)
    account_id = numeric_id(acct)
    out: dict[str, Any] = {
        "id": account_id,
        "username": username,
        "acct": acct.lstrip("@"),
        "display_name": username,
        "locked": False,
        "bot": False,
        "discoverable": None,
        "indexable": True,
        "group": False,
        "created_at": "2020-01-01T00:00:00.000Z",
        "note": "",
        "url": f"https://{domain}/@{username}",
        "uri": f"https://{domain}/users/{username}",
        "avatar": f"https://{domain}/avatars/original/missing.png",
        "avatar_static": f"https://{domain}/avatars/original/missing.png",
        "avatar_description": "",
        "header": f"https://{domain}/headers/original/missing.png",
        "header_static": f"https://{domain}/headers/original/missing.png",
        "header_description": "",
        "followers_count": 0,
        "following_count": 0,
        "statuses_count": 0,
        "last_status_at": None,
        "hide_collections": False,
        "show_media": True,
        "show_media_replies": True,
        "show_featured": True,
        "noindex": False,
        "feature_approval": {"automatic": [], "manual": [], "current_user": "denied"},
        "emojis": [],
        "roles": [],
        "fields": [],
    }
    if own:
        out["source"] = {
            "privacy": "public", "sensitive": False, "language": "en", "note": "",
            "fields": [], "follow_requests_count": 0, "hide_collections": False,
            "discoverable": None, "indexable": True, "attribution_domains": [],
            "quote_policy": "public",
        }
        out["role"] = {"id": "-99", "name": "", "permissions": "65536", "color": "",
                       "highlighted": False, "collection_limit": 10}
    return out


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
    in_reply_to_account_id: str | None = None,
    reblog: dict[str, Any] | None = None,
    content: str | None = None,
    own: bool = False,
) -> dict[str, Any]:
    """A Status entity with the recorded fields (the viewer's own fields: ``_as_seen_by``).
    A boost's ``uri``/``url`` end in ``/activity``, as recorded."""
    username, domain = _split(acct)
    default_uri = f"https://{domain}/users/{username}/statuses/{status_id}"
    if reblog is not None:
        default_uri += "/activity"
    status: dict[str, Any] = {
        "id": status_id,
        "created_at": iso_ms(created),
        "in_reply_to_id": in_reply_to_id,
        "in_reply_to_account_id": in_reply_to_account_id if in_reply_to_id else None,
        "sensitive": False,
        "spoiler_text": "",
        "visibility": "public",
        "language": None if reblog is not None else "en",
        "uri": uri or default_uri,
        "url": url or (default_uri if reblog is not None
                       else f"https://{domain}/@{username}/{status_id}"),
        "replies_count": 0,
        "reblogs_count": 0,
        "favourites_count": 0,
        "quotes_count": 0,
        "edited_at": None,
        "content": content if content is not None else f"<p>{html.escape(text)}</p>",
        "reblog": reblog,
        "account": account_json(acct),
        "media_attachments": [],
        "mentions": [],
        "tags": [],
        "emojis": [],
        "tagged_collections": [],
        "quote": None,
        "card": None,
        "poll": None,
        "quote_approval": {"automatic": ["public"], "manual": [], "current_user": "automatic"},
    }
    if own:  # Mastodon shows the application of the viewer's own statuses (a boost: null)
        status["application"] = None if reblog is not None else dict(_APPLICATION)
    return status


def _as_seen_by(status: dict[str, Any], world: World, authenticated: bool) -> dict[str, Any]:
    """``status`` as this caller sees it: the viewer's own fields only when authenticated."""
    if not authenticated:
        return status
    mine = world.accounts.mastodon_acct.lstrip("@")
    boosted = {p.ref for p in world.posts_on("mastodon") if p.kind == "boost"}
    out = dict(status)
    out["favourited"] = False
    out["reblogged"] = status["id"] in boosted or (
        status["reblog"] is not None and status["account"]["acct"] == mine)
    out["muted"] = False
    out["bookmarked"] = False
    if status["reblog"] is None and status["account"]["acct"] == mine:
        out["pinned"] = False
    out["filtered"] = []
    if status["reblog"] is not None:
        out["reblog"] = _as_seen_by(status["reblog"], world, authenticated)
    return out


def all_statuses(world: World) -> list[dict[str, Any]]:
    """Every status visible now: scripted source statuses and our posts and boosts (as an
    anonymous caller sees them)."""
    out: list[dict[str, Any]] = []
    visible = world.visible_items("mastodon")
    by_source: dict[str, set[str]] = {}
    for vis in visible:
        by_source.setdefault(vis.source_id, set()).add(str(vis.item["id"]))
    for vis in visible:
        it = vis.item
        text = str(it.get("text", ""))
        reply_to = it.get("in_reply_to_id")
        reply_account = it.get("in_reply_to_account_id")
        if reply_to and reply_account is None and str(reply_to) in by_source[vis.source_id]:
            reply_account = numeric_id(vis.source_id)  # a thread of the account's own
        out.append(
            _status(
                vis.source_id,
                str(it["id"]),
                text,
                _when(it.get("created_at"), vis.first_at),
                url=str(it.get("url", "")),
                uri=str(it.get("uri", "")),
                in_reply_to_id=reply_to,
                in_reply_to_account_id=reply_account,
                content=it.get("content"),
            )
        )
    by_id = {s["id"]: s for s in out}
    mine = world.accounts.mastodon_acct
    boosts = [p for p in world.posts_on("mastodon") if p.kind == "boost"]
    for status in out:
        status["reblogs_count"] = sum(1 for p in boosts if p.ref == status["id"])
    for post in world.posts_on("mastodon"):
        if post.kind == "boost":
            original = by_id.get(post.ref)
            status = _status(mine, post.post_id, "", post.received_at, reblog=original,
                             content="", own=True)
        else:  # a post's ``ref`` is the status it replies to, if any
            status = _status(mine, post.post_id, post.text, post.received_at, url=post.url,
                             own=True, in_reply_to_id=post.ref or None,
                             in_reply_to_account_id=(by_id.get(post.ref) or {}).get(
                                 "account", {}).get("id") if post.ref else None)
        by_id[post.post_id] = status
        out.append(status)
    return out


def require_authenticated_reads(world: World, required: bool = True) -> None:
    """Make the simulated instance refuse reads without a valid token (401), as instances
    that disallow unauthenticated API access do; ``False`` opens them again."""
    with world.lock:
        world.state[_AUTH_READS] = required


def _authenticated(request: Request) -> bool:
    return world_of(request).token_ok("mastodon", bearer(request))


def _read_refused(request: Request) -> Response | None:
    world = world_of(request)
    if world.state.get(_AUTH_READS) and not _authenticated(request):
        return JSONResponse({"error": "This API requires an authenticated user"}, 401)
    return None


def _statuses_budget(endpoint: Endpoint) -> Endpoint:
    """Answer with the posting/boosting budget's headers (applied outside ``limited``,
    whose general-budget headers they replace, as Mastodon's do)."""

    @functools.wraps(endpoint)
    async def handler(request: Request) -> Response:
        response = await endpoint(request)
        decision = getattr(request.state, "statuses_budget", None)
        if decision is not None:
            response.headers.update(rate_headers("mastodon", decision))
        return response

    return handler


def _spend_statuses(request: Request, world: World) -> Response | None:
    """Spend one unit of the shared posting/boosting budget (call under ``world.lock``);
    the 429 to answer when it is spent."""
    decision = world.spend(_STATUSES)
    if decision is None:
        return None
    request.state.statuses_budget = decision
    if not decision.allowed:
        note_quota(request, _STATUSES, decision.reset_at)
        return refusal("mastodon", decision, world.now())
    return None


def _show_statuses_budget(request: Request, world: World) -> None:
    """Attribute this posting/boosting request to its budget (the request log judges
    "sent before the reset" per budget) and show that budget's headers."""
    note_quota(request, _STATUSES)
    if (decision := world.peek_quota(_STATUSES)) is not None:
        request.state.statuses_budget = decision


def _unauthorized(request: Request) -> Response | None:
    if world_of(request).token_ok("mastodon", bearer(request)):
        return None
    return JSONResponse({"error": "The access token is invalid"}, 401)


@limited("mastodon", _KEY)
async def lookup(request: Request) -> Response:
    """GET /api/v1/accounts/lookup?acct=NAME."""
    if (denied := _read_refused(request)) is not None:
        return denied
    acct = _find_account(world_of(request), request.query_params.get("acct", ""))
    if acct is None:
        return JSONResponse({"error": "Record not found"}, 404)
    return JSONResponse(account_json(acct))


@limited("mastodon", _KEY)
async def verify_credentials(request: Request) -> Response:
    """GET /api/v1/accounts/verify_credentials: our account."""
    if (denied := _unauthorized(request)) is not None:
        return denied
    return JSONResponse(account_json(world_of(request).accounts.mastodon_acct, own=True))


@limited("mastodon", _KEY)
async def account_statuses(request: Request) -> Response:
    """GET /api/v1/accounts/{id}/statuses with since_id, min_id, max_id, limit, exclude_*."""
    if (denied := _read_refused(request)) is not None:
        return denied
    world = world_of(request)
    acct = _find_account(world, request.path_params["account_id"])
    if acct is None:
        return JSONResponse({"error": "Record not found"}, 404)
    q = request.query_params
    account_id = numeric_id(acct)
    statuses = [s for s in all_statuses(world) if s["account"]["acct"] == acct.lstrip("@")]
    if _truthy(q.get("exclude_replies")):
        statuses = [s for s in statuses if s["in_reply_to_id"] is None
                    or s["in_reply_to_account_id"] == account_id]
    if _truthy(q.get("exclude_reblogs")):
        statuses = [s for s in statuses if s["reblog"] is None]
    if q.get("max_id", "").isdigit():
        statuses = [s for s in statuses if int(s["id"]) < int(q["max_id"])]
    if q.get("since_id", "").isdigit():
        statuses = [s for s in statuses if int(s["id"]) > int(q["since_id"])]
    limit = min(int(q["limit"]) if q.get("limit", "").isdigit() else 20, 40)
    if q.get("min_id", "").isdigit():
        # The statuses right after min_id (oldest first), answered newest first.
        statuses = [s for s in statuses if int(s["id"]) > int(q["min_id"])]
        statuses.sort(key=lambda s: int(s["id"]))
        statuses = statuses[:limit]
    statuses.sort(key=lambda s: int(s["id"]), reverse=True)
    authenticated = _authenticated(request)
    return JSONResponse([_as_seen_by(s, world, authenticated) for s in statuses[:limit]])


def _weighted_length(text: str) -> int:
    # Mastodon counts every URL as 23 characters.
    return len(_URL.sub("x" * 23, text))


@_statuses_budget
@limited("mastodon", _KEY)
async def post_status(request: Request) -> Response:
    """POST /api/v1/statuses; the same Idempotency-Key within 1 h returns the same status.
    A new status spends the posting/boosting budget (300 / 3 h)."""
    if (denied := _unauthorized(request)) is not None:
        return denied
    world = world_of(request)
    _show_statuses_budget(request, world)
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
                return JSONResponse(_as_seen_by(status, world, True))
        if (spent := _spend_statuses(request, world)) is not None:
            return spent
        acct = world.accounts.mastodon_acct
        post_id = mastodon_id(now, world.next_seq())
        username, domain = _split(acct)
        url = f"https://{domain}/@{username}/{post_id}"
        reply_to = str(body.get("in_reply_to_id") or "")
        world.record_post(SimPost("mastodon", acct, "post", post_id, text, reply_to, now, key,
                                  url))
        if key:
            seen[(bearer(request), key)] = (now, post_id)
        status = _status(acct, post_id, text, now, url=url, own=True,
                         in_reply_to_id=reply_to or None)
    return JSONResponse(_as_seen_by(status, world, True))


@limited("mastodon", _KEY)
async def get_status(request: Request) -> Response:
    """GET /api/v1/statuses/{id}: ``reblogged`` tells an authenticated caller whether it
    boosted the status."""
    if (denied := _read_refused(request)) is not None:
        return denied
    world = world_of(request)
    status_id = request.path_params["status_id"]
    for status in all_statuses(world):
        if status["id"] == status_id:
            return JSONResponse(_as_seen_by(status, world, _authenticated(request)))
    return JSONResponse({"error": "Record not found"}, 404)


@_statuses_budget
@limited("mastodon", _KEY)
async def reblog(request: Request) -> Response:
    """POST /api/v1/statuses/{id}/reblog: boost (again: the existing boost, no new post).
    A new boost spends the posting/boosting budget (300 / 3 h)."""
    if (denied := _unauthorized(request)) is not None:
        return denied
    world = world_of(request)
    _show_statuses_budget(request, world)
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
            if (spent := _spend_statuses(request, world)) is not None:
                return spent
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
        original = next(s for s in all_statuses(world) if s["id"] == status_id)
    boost = _status(acct, existing.post_id, "", existing.received_at, reblog=original,
                    content="", own=True)
    return JSONResponse(_as_seen_by(boost, world, True))


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
    seen = [_as_seen_by(st, world, True) for st in statuses]
    return JSONResponse({"accounts": accounts, "statuses": seen, "hashtags": []})


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
