"""Helpers shared by the simulator's route modules: auth, bodies, quotas, conditional GETs."""

from __future__ import annotations

import functools
import gzip
import hashlib
import json
import math
from collections.abc import Awaitable, Callable
from datetime import datetime
from email.utils import format_datetime, parsedate_to_datetime
from typing import Any, cast
from urllib.parse import parse_qsl

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from crisiscomms.domain.clock import utc
from crisiscomms.simulator.quotas import QuotaDecision
from crisiscomms.simulator.world import World

Endpoint = Callable[[Request], Awaitable[Response]]


def world_of(request: Request) -> World:
    """The ``World`` the app was built for."""
    return cast(World, request.app.state.world)


def iso_ms(dt: datetime) -> str:
    """``2026-01-05T10:00:00.000Z``: the instant format X and Mastodon use."""
    return utc(dt).strftime("%Y-%m-%dT%H:%M:%S.") + f"{utc(dt).microsecond // 1000:03d}Z"


def http_date(dt: datetime) -> str:
    """An RFC 7231 date (``Last-Modified``)."""
    return format_datetime(utc(dt).replace(microsecond=0), usegmt=True)


def bearer(request: Request) -> str:
    """The caller's token: a Bearer token, or an OAuth 1.0a ``oauth_token``; "" if absent."""
    header = request.headers.get("authorization", "").strip()
    scheme, _, rest = header.partition(" ")
    if scheme.lower() == "bearer":
        return rest.strip()
    if scheme.lower() == "oauth":
        for part in rest.split(","):
            name, _, value = part.strip().partition("=")
            if name == "oauth_token":
                return value.strip('"')
        return "oauth" if rest.strip() else ""
    return ""


async def params(request: Request) -> dict[str, Any]:
    """Query parameters overlaid with a JSON or form-encoded body (later wins)."""
    out: dict[str, Any] = dict(request.query_params)
    raw = await request.body()
    if not raw:
        return out
    ctype = request.headers.get("content-type", "")
    if "json" in ctype:
        try:
            data = json.loads(raw)
        except ValueError:
            return out
        if isinstance(data, dict):
            out.update(data)
    else:
        out.update(parse_qsl(raw.decode("utf-8", "replace"), keep_blank_values=True))
    return out


def note_quota(request: Request, key: str, reset_at: datetime | None = None) -> None:
    """Tell the request log which quota this request used and whether it was refused."""
    request.state.quota_key = key
    if reset_at is not None:
        request.state.reset_at = reset_at


def rate_headers(
    platform: str, decision: QuotaDecision, now: datetime | None = None
) -> dict[str, str]:
    """The platform's own rate-limit headers for a quota state (``now``: simulated time)."""
    reset_epoch = str(int(utc(decision.reset_at).timestamp()))
    limit, remaining = str(decision.limit), str(decision.remaining)
    if platform == "x":
        return {
            "x-rate-limit-limit": limit,
            "x-rate-limit-remaining": remaining,
            "x-rate-limit-reset": reset_epoch,
        }
    if platform == "mastodon":
        return {
            "X-RateLimit-Limit": limit,
            "X-RateLimit-Remaining": remaining,
            "X-RateLimit-Reset": iso_ms(decision.reset_at),
        }
    if platform == "bluesky":
        return {
            "RateLimit-Limit": limit,
            "RateLimit-Remaining": remaining,
            "RateLimit-Reset": reset_epoch,
        }
    if platform == "facebook":
        used = 100 if decision.limit == 0 else 100 - (100 * decision.remaining) // decision.limit
        wait = 0
        if not decision.allowed and now is not None:
            wait = max(math.ceil((decision.reset_at - now).total_seconds() / 60), 1)
        usage = {"call_count": used, "total_cputime": 0, "total_time": 0}
        buc = {**usage, "type": "pages", "estimated_time_to_regain_access": wait}
        return {
            "X-Page-Usage": json.dumps(usage),
            "X-Business-Use-Case-Usage": json.dumps({"simulator": [buc]}),
        }
    return {}


def refusal(platform: str, decision: QuotaDecision, now: datetime | None = None) -> Response:
    """The platform's rate-limit refusal.

    X, Mastodon and Bluesky answer 429 with their reset header. Facebook answers HTTP 400
    with Graph error code 32 ("Page request limit reached"), and the time to wait only as
    ``estimated_time_to_regain_access`` (minutes) in ``X-Business-Use-Case-Usage``: the Graph
    API signals throttling by error code, not by status.
    """
    headers = rate_headers(platform, decision, now)
    if platform == "x":
        body: dict[str, Any] = {
            "title": "Too Many Requests",
            "detail": "Too Many Requests",
            "type": "about:blank",
            "status": 429,
        }
        return JSONResponse(body, 429, headers)
    if platform == "mastodon":
        return JSONResponse({"error": "Too many requests"}, 429, headers)
    if platform == "bluesky":
        return JSONResponse(
            {"error": "RateLimitExceeded", "message": "Rate Limit Exceeded"}, 429, headers
        )
    if platform == "facebook":
        error = {
            "message": "(#32) Page request limit reached",
            "type": "OAuthException",
            "code": 32,
            "is_transient": True,
            "fbtrace_id": "simulator",
        }
        return JSONResponse({"error": error}, 400, headers)
    return JSONResponse({"error": "Too Many Requests"}, 429, headers)


def limited(platform: str, key: str, cost: int = 1) -> Callable[[Endpoint], Endpoint]:
    """Count the endpoint against quota ``key`` (and ``burst_429`` windows) and add headers."""

    def wrap(endpoint: Endpoint) -> Endpoint:
        @functools.wraps(endpoint)
        async def handler(request: Request) -> Response:
            world = world_of(request)
            burst_end = world.burst_reset(platform, request.method)
            if burst_end is not None:
                quota = world.peek_quota(key)
                decision = QuotaDecision(False, quota.limit if quota else 0, 0, burst_end)
                note_quota(request, key, burst_end)
                return refusal(platform, decision, world.now())
            spent = world.spend(key, cost)
            note_quota(request, key)
            if spent is not None and not spent.allowed:
                note_quota(request, key, spent.reset_at)
                return refusal(platform, spent, world.now())
            response = await endpoint(request)
            if spent is not None:
                response.headers.update(rate_headers(platform, spent))
            return response

        return handler

    return wrap


def conditional(
    request: Request, body: bytes, media_type: str, last_modified: datetime | None
) -> Response:
    """A feed response with a strong ETag (hash of the body), 304s, and optional gzip.

    The ETag identifies the representation before content-coding, which is what a polling
    client compares; the gzip variant keeps it (a simplification, like many servers).
    """
    etag = '"' + hashlib.sha256(body).hexdigest()[:32] + '"'
    headers = {"ETag": etag, "Vary": "Accept-Encoding", "Cache-Control": "max-age=0"}
    if last_modified is not None:
        headers["Last-Modified"] = http_date(last_modified)
    if_none_match = request.headers.get("if-none-match")
    if if_none_match is not None:
        tags = {t.strip().removeprefix("W/") for t in if_none_match.split(",")}
        if etag in tags or "*" in tags:
            return Response(status_code=304, headers=headers)
    elif last_modified is not None and (since := request.headers.get("if-modified-since")):
        try:
            if utc(parsedate_to_datetime(since)) >= utc(last_modified).replace(microsecond=0):
                return Response(status_code=304, headers=headers)
        except (TypeError, ValueError):
            pass  # an unparseable date means "no condition", as RFC 9110 says
    if "gzip" in request.headers.get("accept-encoding", "").lower():
        body = gzip.compress(body, mtime=0)
        headers["Content-Encoding"] = "gzip"
    return Response(body, 200, headers, media_type=media_type)


def problem(status: int, detail: str, title: str = "", type_: str = "about:blank") -> Response:
    """An X API v2 problem-JSON error (``detail`` is what tweepy puts in ``api_messages``)."""
    body = {
        "detail": detail,
        "title": title or _TITLES.get(status, "Error"),
        "status": status,
        "type": type_,
    }
    return JSONResponse(body, status)


_TITLES = {400: "Invalid Request", 401: "Unauthorized", 403: "Forbidden", 404: "Not Found"}
