"""The X API v2 subset tweepy uses, mounted under ``/x``.

Point tweepy here by rewriting ``https://api.twitter.com`` to ``{base_url}/x`` in a requests
adapter mounted on ``client.session``. With OAuth 1.0a user auth tweepy takes our user id
from the access token's prefix (``"990001-..."``), so use ``World.accounts.x_me.id`` there.

Fields follow the real API and the recordings in shared/recorded/x/ (the recording wins): a
tweet carries ``id``, ``text`` and ``edit_history_tweet_ids`` unless ``tweet.fields`` asks for
more (author_id, created_at, conversation_id, in_reply_to_user_id, referenced_tweets, lang,
public_metrics, note_tweet); ``includes.users`` only with ``expansions=author_id``; answers are
``application/json; charset=utf-8`` with ``x-rate-limit-*``, a create answers 201
``{"data": {"id", "text"}}`` with a ``Location``.

The real refusals (shared/reference/platform-facts.md):

* recent search answers 400 for a ``since_id`` or ``start_time`` older than 7 days;
* a post over 280 characters is cut in ``text`` at a word before 270 characters, and whole in
  ``note_tweet`` only when ``tweet.fields`` asks for it;
* a create over 280 as twitter-text v3 counts it (bare domains X links weigh 23) is refused
  with 400 "Your Tweet text is too long.";
* beside the 15-minute window, 24-hour windows: quota ``"<key> app-24h"`` (POST /2/tweets:
  10,000 per app by default) and ``"<key> user-24h"`` (none by default; set one with
  ``World.set_quota``) send ``x-app-limit-24hour-*`` / ``x-user-limit-24hour-*`` and refuse
  with 429 when spent;
* pay-per-use states of the world: ``set_usage_capped(world, until)`` answers every X call
  with 429 ``UsageCapExceeded`` until then (the 15-minute window still has room), and
  ``set_credits_exhausted(world, True)`` with 402 ``CreditsDepleted``.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route
from twitter_text import parse_tweet  # type: ignore[import-untyped]

from crisiscomms.domain.clock import parse_instant, utc
from crisiscomms.simulator.common import (
    Endpoint,
    bearer,
    iso_ms,
    limited,
    note_quota,
    params,
    problem,
    world_of,
)
from crisiscomms.simulator.ids import x_snowflake
from crisiscomms.simulator.quotas import QuotaDecision
from crisiscomms.simulator.world import SimPost, World

_INVALID = "https://api.twitter.com/2/problems/invalid-request"
_NOT_FOUND = "https://api.twitter.com/2/problems/resource-not-found"
_KNOWN_FIELDS = (
    "author_id",
    "created_at",
    "conversation_id",
    "in_reply_to_user_id",
    "referenced_tweets",
    "lang",
    "public_metrics",
)
_DUPLICATE = "You are not allowed to create a Tweet with duplicate content."
_ALREADY = "You have already retweeted this Tweet."
_TOO_LONG = ("Your Tweet text is too long. For more information on how Twitter determines text "
             "length see https://github.com/twitter/twitter-text.")
_JSON = "application/json; charset=utf-8"  # as recorded
_RECENT = timedelta(days=7)  # what recent search covers
_MAX_WEIGHTED = 280  # our account is not verified
_CUT_AT = 270  # where X cuts a long post's ``text``
_EPOCH_MS = 1288834974657
_STATE = "x"  # World.state key of the pay-per-use states
_WINDOWS_24H = (("app-24h", "x-app-limit-24hour"), ("user-24h", "x-user-limit-24hour"))


def set_usage_capped(world: World, until: datetime | None) -> None:
    """Until ``until`` (simulated time), every X call answers 429 ``UsageCapExceeded``
    (the monthly product cap of a pay-per-use project); ``None`` lifts it."""
    with world.lock:
        world.state.setdefault(_STATE, {})["usage_capped_until"] = utc(until) if until else None


def set_credits_exhausted(world: World, exhausted: bool) -> None:
    """While set, every X call answers 402 ``CreditsDepleted``."""
    with world.lock:
        world.state.setdefault(_STATE, {})["credits_exhausted"] = exhausted


def _billing_refusal(request: Request, key: str) -> Response | None:
    world = world_of(request)
    with world.lock:
        state = dict(world.state.get(_STATE, {}))
    if state.get("credits_exhausted"):
        return JSONResponse({
            "type": "https://api.twitter.com/2/problems/credits", "title": "CreditsDepleted",
            "detail": f"Your enrolled account [{world.accounts.x_me.id}] does not have any "
                      "credits to fulfill this request."}, 402)
    until = state.get("usage_capped_until")
    if isinstance(until, datetime) and world.now() < until:
        note_quota(request, "x:usage-cap", until)
        return JSONResponse({
            "account_id": world.accounts.x_me.id, "product_name": "pay-per-use",
            "title": "UsageCapExceeded", "period": "Monthly", "scope": "Product",
            "detail": "Usage cap exceeded: Monthly product cap",
            "type": "https://api.twitter.com/2/problems/usage-capped"}, 429)
    return None


def _headers_24h(decisions: list[tuple[str, QuotaDecision]]) -> dict[str, str]:
    out: dict[str, str] = {}
    for prefix, decision in decisions:
        out[f"{prefix}-limit"] = str(decision.limit)
        out[f"{prefix}-remaining"] = str(decision.remaining)
        out[f"{prefix}-reset"] = str(int(utc(decision.reset_at).timestamp()))
    return out


def _x_account_limits(key: str) -> Callable[[Endpoint], Endpoint]:
    """Inside the 15-minute window: the pay-per-use states, then the 24-hour windows."""

    def wrap(endpoint: Endpoint) -> Endpoint:
        @functools.wraps(endpoint)
        async def handler(request: Request) -> Response:
            world = world_of(request)
            refused = _billing_refusal(request, key)
            if refused is not None:
                return refused
            with world.lock:
                peeks = [(suffix, prefix, peek) for suffix, prefix in _WINDOWS_24H
                         if (peek := world.peek_quota(f"{key} {suffix}")) is not None]
                blocked = [(suffix, peek) for suffix, _prefix, peek in peeks if not peek.allowed]
                if blocked:
                    decisions = [(prefix, peek) for _suffix, prefix, peek in peeks]
                else:
                    decisions = [(prefix, spent) for suffix, prefix, _peek in peeks
                                 if (spent := world.spend(f"{key} {suffix}")) is not None]
            for suffix, peek in blocked:
                note_quota(request, f"{key} {suffix}", peek.reset_at)
            if blocked:
                body = {"title": "Too Many Requests", "detail": "Too Many Requests",
                        "type": "about:blank", "status": 429}
                return JSONResponse(body, 429, _headers_24h(decisions))
            response = await endpoint(request)
            response.headers.update(_headers_24h(decisions))
            return response

        return handler

    return wrap


def x_endpoint(key: str) -> Callable[[Endpoint], Endpoint]:
    """An X route: the 15-minute quota ``key`` (``common.limited``), the pay-per-use states
    and 24-hour windows inside it, and the recorded ``content-type`` on every answer."""

    def wrap(endpoint: Endpoint) -> Endpoint:
        inner = limited("x", key)(_x_account_limits(key)(endpoint))

        @functools.wraps(endpoint)
        async def handler(request: Request) -> Response:
            response = await inner(request)
            if response.headers.get("content-type", "").startswith("application/json"):
                response.headers["content-type"] = _JSON
            return response

        return handler

    return wrap


def _unauthorized(request: Request) -> Response | None:
    if world_of(request).token_ok("x", bearer(request)):
        return None
    return problem(401, "Unauthorized")


def _when(value: Any, default: datetime) -> datetime:
    if isinstance(value, datetime):
        return utc(value)
    if isinstance(value, str) and value:
        return parse_instant(value)
    return default


def _scripted_refs(item: dict[str, Any]) -> list[dict[str, str]]:
    """``reply: true`` (to someone else) or ``in_reply_to_id`` (with ``in_reply_to_user_id``
    the author's own id, a thread) make a reply; ``retweet_of`` a retweet."""
    refs = [dict(r) for r in item.get("referenced_tweets") or []]
    if item.get("reply") or item.get("in_reply_to_id"):
        refs.append({"type": "replied_to", "id": str(item.get("in_reply_to_id", "1"))})
    if item.get("retweet_of"):
        refs.append({"type": "retweeted", "id": str(item["retweet_of"])})
    return refs


def all_tweets(world: World) -> list[dict[str, Any]]:
    """Every tweet visible now (scripted sources and our own), as full internal records."""
    out: list[dict[str, Any]] = []
    for vis in world.visible_items("x"):
        item = vis.item
        tweet_id = str(item["id"])
        refs = _scripted_refs(item)
        reply_to = item.get("in_reply_to_user_id") or (
            "1" if any(r["type"] == "replied_to" for r in refs) else None
        )
        out.append(
            {
                "id": tweet_id,
                "text": str(item.get("text", "")),
                "author_id": vis.source_id,
                "created_at": _when(item.get("created_at"), vis.first_at),
                "conversation_id": str(item.get("conversation_id", tweet_id)),
                "in_reply_to_user_id": reply_to,
                "referenced_tweets": refs or None,
                "lang": item.get("lang", "en"),
            }
        )
    me = world.accounts.x_me
    for post in world.posts_on("x"):
        ref_type = {"retweet": "retweeted", "quote": "quoted"}.get(post.kind)
        out.append(
            {
                "id": post.post_id,
                "text": post.text,
                "author_id": me.id,
                "created_at": post.received_at,
                "conversation_id": post.post_id,
                "in_reply_to_user_id": None,
                "referenced_tweets": [{"type": ref_type, "id": post.ref}] if ref_type else None,
                "lang": "en",
            }
        )
    return out


def weighted(text: str) -> int:
    """A text's length as X counts it (twitter-text v3, the reference implementation)."""
    return int(parse_tweet(text).weightedLength)


def _cut(text: str) -> str:
    """What X puts in ``text`` for a post over 280: the start, cut at a word before 270."""
    if len(text) <= _MAX_WEIGHTED and weighted(text) <= _MAX_WEIGHTED:
        return text
    head = text[:_CUT_AT]
    return head.rsplit(" ", 1)[0] if " " in head else head


def _render(tweet: dict[str, Any], fields: set[str]) -> dict[str, Any]:
    full = tweet["text"]
    out: dict[str, Any] = {
        "id": tweet["id"],
        "text": _cut(full),
        "edit_history_tweet_ids": [tweet["id"]],
    }
    if "note_tweet" in fields and out["text"] != full:
        out["note_tweet"] = {"text": full}
    for name in _KNOWN_FIELDS:
        if name not in fields:
            continue
        if name == "public_metrics":
            out[name] = {
                "retweet_count": 0,
                "reply_count": 0,
                "like_count": 0,
                "quote_count": 0,
                "bookmark_count": 0,
                "impression_count": 0,
            }
        elif tweet.get(name) is not None:
            value = tweet[name]
            out[name] = iso_ms(value) if isinstance(value, datetime) else value
    return out


def _is_reply(tweet: dict[str, Any]) -> bool:
    refs = tweet.get("referenced_tweets") or []
    return bool(tweet.get("in_reply_to_user_id")) or any(r["type"] == "replied_to" for r in refs)


def _is_retweet(tweet: dict[str, Any]) -> bool:
    return any(r["type"] == "retweeted" for r in tweet.get("referenced_tweets") or [])


def _bad_param(name: str, value: str, message: str) -> Response:
    body = {
        "errors": [{"parameters": {name: [value]}, "message": message}],
        "title": "Invalid Request",
        "detail": "One or more parameters to your request was invalid.",
        "type": _INVALID,
    }
    return JSONResponse(body, 400)


def _instant(value: str) -> datetime | None:
    try:
        return parse_instant(value)
    except ValueError:
        return None


def _listing(request: Request, tweets: list[dict[str, Any]], lowest: int) -> Response:
    """Filter by since_id/until_id and start_time/end_time, sort newest first, page, and
    render with includes."""
    world = world_of(request)
    q = request.query_params
    for name in ("start_time", "end_time"):
        if q.get(name) and _instant(q[name]) is None:
            return _bad_param(name, q[name], f"Invalid '{name}':'{q[name]}'. '{name}' must be "
                                             "a valid RFC 3339 timestamp (YYYY-MM-DDTHH:mm:ssZ)")
    if q.get("start_time"):
        start = _instant(q["start_time"])
        tweets = [t for t in tweets if start is None or t["created_at"] >= start]
    if q.get("end_time"):
        end = _instant(q["end_time"])
        tweets = [t for t in tweets if end is None or t["created_at"] < end]
    for name in ("since_id", "until_id"):
        if q.get(name) and not q[name].isdigit():
            return _bad_param(
                name,
                q[name],
                f"The `{name}` query parameter value [{q[name]}] does not match ^[0-9]{{1,19}}$",
            )
    raw_max = q.get("max_results", "10")
    if not raw_max.isdigit() or not lowest <= int(raw_max) <= 100:
        return _bad_param(
            "max_results",
            raw_max,
            f"The `max_results` query parameter value [{raw_max}] is not between {lowest} and 100",
        )
    if q.get("since_id"):
        tweets = [t for t in tweets if int(t["id"]) > int(q["since_id"])]
    if q.get("until_id"):
        tweets = [t for t in tweets if int(t["id"]) < int(q["until_id"])]
    tweets.sort(key=lambda t: int(t["id"]), reverse=True)
    token = q.get("pagination_token") or q.get("next_token") or "sim0"
    offset = int(token[3:]) if token.startswith("sim") and token[3:].isdigit() else 0
    page = tweets[offset : offset + int(raw_max)]
    if not page:
        return JSONResponse({"meta": {"result_count": 0}})
    fields = set(filter(None, q.get("tweet.fields", "").split(",")))
    body: dict[str, Any] = {"data": [_render(t, fields) for t in page]}
    if "author_id" in q.get("expansions", "").split(","):
        users = []
        for author in dict.fromkeys(t["author_id"] for t in page):
            user = world.x_user(author)
            users.append(
                {
                    "id": author,
                    "name": user.name if user else author,
                    "username": user.username if user else f"user{author}",
                }
            )
        body["includes"] = {"users": users}
    meta: dict[str, Any] = {
        "newest_id": page[0]["id"],
        "oldest_id": page[-1]["id"],
        "result_count": len(page),
    }
    if offset + len(page) < len(tweets):
        meta["next_token"] = f"sim{offset + len(page)}"
    body["meta"] = meta
    return JSONResponse(body)


def _too_old(request: Request, now: datetime) -> Response | None:
    """Recent search refuses a since_id or start_time older than its 7 days (400)."""
    q, floor = request.query_params, now - _RECENT
    stamp = floor.strftime("%Y-%m-%dT%H:%MZ")
    since = q.get("since_id", "")
    if since.isdigit():
        made = datetime.fromtimestamp(((int(since) >> 22) + _EPOCH_MS) / 1000, floor.tzinfo)
        if made < floor:
            least = ((int(floor.timestamp() * 1000) - _EPOCH_MS) << 22)
            return _bad_param("since_id", since, f"'since_id' must be a tweet id created after "
                                                 f"{stamp}. Please use a 'since_id' that is "
                                                 f"larger than {least}")
    start = _instant(q.get("start_time", "")) if q.get("start_time") else None
    if start is not None and start < floor:
        value = q["start_time"]
        return _bad_param("start_time", value, f"Invalid 'start_time':'{value}'. 'start_time' "
                                               f"must be on or after {stamp}")
    return None


@x_endpoint("x:GET /2/tweets/search/recent")
async def search_recent(request: Request) -> Response:
    """Recent search: ``from:`` terms (username or id) joined by OR; -is:reply, -is:retweet."""
    if (denied := _unauthorized(request)) is not None:
        return denied
    world = world_of(request)
    query = request.query_params.get("query", "")
    if not query.strip():
        return _bad_param("query", "", "The `query` query parameter can not be empty")
    if (stale := _too_old(request, world.now())) is not None:
        return stale
    authors: set[str] = set()
    names = re.findall(r"from:@?([A-Za-z0-9_]+)", query)
    for name in names:
        user = world.x_user(name)
        authors.add(user.id if user else name)
    since = world.now() - _RECENT  # recent search covers the last 7 days only
    tweets = [
        t
        for t in all_tweets(world)
        if t["created_at"] >= since
        and (not names or t["author_id"] in authors)
        and not ("-is:reply" in query and _is_reply(t))
        and not ("-is:retweet" in query and _is_retweet(t))
    ]
    return _listing(request, tweets, 10)


@x_endpoint("x:GET /2/users/:id/tweets")
async def users_tweets(request: Request) -> Response:
    """A user's timeline (scripted sources, or our own posts for our id)."""
    if (denied := _unauthorized(request)) is not None:
        return denied
    world = world_of(request)
    user_id = request.path_params["user_id"]
    if world.x_user(user_id) is None or not user_id.isdigit():
        return _missing("user", "id", user_id)
    exclude = set(request.query_params.get("exclude", "").split(","))
    tweets = [
        t
        for t in all_tweets(world)
        if t["author_id"] == user_id
        and not ("replies" in exclude and _is_reply(t))
        and not ("retweets" in exclude and _is_retweet(t))
    ]
    return _listing(request, tweets, 5)


def _missing(resource: str, parameter: str, value: str) -> Response:
    # X answers lookups of missing resources with 200 and an ``errors`` list.
    error = {
        "value": value,
        "detail": f"Could not find {resource} with {parameter}: [{value}].",
        "title": "Not Found Error",
        "resource_type": resource,
        "parameter": parameter,
        "resource_id": value,
        "type": _NOT_FOUND,
    }
    return JSONResponse({"errors": [error]})


@x_endpoint("x:GET /2/tweets/:id")
async def get_tweet(request: Request) -> Response:
    """Look one tweet up by id."""
    if (denied := _unauthorized(request)) is not None:
        return denied
    tweet_id = request.path_params["tweet_id"]
    for tweet in all_tweets(world_of(request)):
        if tweet["id"] == tweet_id:
            fields = set(filter(None, request.query_params.get("tweet.fields", "").split(",")))
            return JSONResponse({"data": _render(tweet, fields)})
    return _missing("tweet", "id", tweet_id)


@x_endpoint("x:GET /2/users/me")
async def users_me(request: Request) -> Response:
    """Our own account."""
    if (denied := _unauthorized(request)) is not None:
        return denied
    me = world_of(request).accounts.x_me
    return JSONResponse({"data": {"id": me.id, "name": me.name, "username": me.username}})


@x_endpoint("x:GET /2/users/by/username/:username")
async def user_by_username(request: Request) -> Response:
    """Resolve a handle to its numeric id (pin sources by id; handles change)."""
    if (denied := _unauthorized(request)) is not None:
        return denied
    name = request.path_params["username"]
    user = world_of(request).x_user(name)
    if user is None:
        return _missing("user", "username", name)
    return JSONResponse({"data": {"id": user.id, "name": user.name, "username": user.username}})


@x_endpoint("x:POST /2/tweets")
async def create_tweet(request: Request) -> Response:
    """Post (or quote) on our account; identical text within 24 h is refused with 403, text
    over 280 as twitter-text counts it with 400."""
    if (denied := _unauthorized(request)) is not None:
        return denied
    world = world_of(request)
    body = await params(request)
    text = str(body.get("text") or "")
    quote_id = str(body.get("quote_tweet_id") or "")
    reply = body.get("reply")
    reply_to = str(reply.get("in_reply_to_tweet_id") or "") if isinstance(reply, dict) else ""
    if not text.strip():
        return _bad_param("text", text, "The `text` field can not be empty")
    if len(text) > 25_000 or weighted(text) > _MAX_WEIGHTED:
        return problem(400, _TOO_LONG)
    with world.lock:
        if quote_id and not any(t["id"] == quote_id for t in all_tweets(world)):
            return _bad_param(
                "quote_tweet_id", quote_id, f"The `quote_tweet_id` [{quote_id}] does not exist"
            )
        now = world.now()
        for post in world.posts_on("x"):
            if (
                post.kind in ("post", "quote")
                and post.text.strip() == text.strip()
                and now - post.received_at < timedelta(hours=24)
            ):
                return problem(403, _DUPLICATE, "Forbidden")
        me = world.accounts.x_me
        post_id = x_snowflake(now, world.next_seq())
        if reply_to:  # a reply in a thread: which post it answers
            world.state.setdefault("x.replies", {})[post_id] = reply_to
        world.record_post(
            SimPost(
                "x",
                me.username,
                "quote" if quote_id else "post",
                post_id,
                text,
                quote_id,
                now,
                url=f"https://x.com/{me.username}/status/{post_id}",
            )
        )
    # As recorded (shared/recorded/x/test_client_create_and_delete_tweet.yaml).
    return JSONResponse({"data": {"id": post_id, "text": text}}, 201,
                        {"location": f"https://api.twitter.com/2/tweets/{post_id}"})


@x_endpoint("x:POST /2/users/:id/retweets")
async def retweet(request: Request) -> Response:
    """Retweet as our account. A repeat answers per ``World.x_repeat_retweet_status``."""
    if (denied := _unauthorized(request)) is not None:
        return denied
    world = world_of(request)
    me = world.accounts.x_me
    if request.path_params["user_id"] != me.id:
        return problem(
            403, "You are not permitted to perform this action on behalf of another user."
        )
    tweet_id = str((await params(request)).get("tweet_id") or "")
    with world.lock:
        original = next((t for t in all_tweets(world) if t["id"] == tweet_id), None)
        if original is None:
            return _bad_param("tweet_id", tweet_id, f"The `tweet_id` [{tweet_id}] does not exist")
        if any(p.kind == "retweet" and p.ref == tweet_id for p in world.posts_on("x")):
            if world.x_repeat_retweet_status == 403:
                return problem(403, _ALREADY, "Forbidden")
            return JSONResponse({"data": {"retweeted": True}})
        now = world.now()
        author = world.x_user(original["author_id"])
        handle = author.username if author else original["author_id"]
        post_id = x_snowflake(now, world.next_seq())
        world.record_post(
            SimPost(
                "x",
                me.username,
                "retweet",
                post_id,
                f"RT @{handle}: {original['text']}",
                tweet_id,
                now,
                url=f"https://x.com/{me.username}/status/{post_id}",
            )
        )
    return JSONResponse({"data": {"retweeted": True}})


def x_routes() -> list[BaseRoute]:
    """Routes for the X API v2 subset (prefix /x)."""
    return [
        Route("/x/2/tweets/search/recent", search_recent, methods=["GET"]),
        Route("/x/2/tweets/{tweet_id}", get_tweet, methods=["GET"]),
        Route("/x/2/tweets", create_tweet, methods=["POST"]),
        Route("/x/2/users/me", users_me, methods=["GET"]),
        Route("/x/2/users/by/username/{username}", user_by_username, methods=["GET"]),
        Route("/x/2/users/{user_id}/tweets", users_tweets, methods=["GET"]),
        Route("/x/2/users/{user_id}/retweets", retweet, methods=["POST"]),
    ]
