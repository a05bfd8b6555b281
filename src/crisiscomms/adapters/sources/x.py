"""X (Twitter) sources: one ``XSource`` polls every pinned X account with recent search.

One request per poll (``from:ID1 OR from:ID2 ... -is:reply -is:retweet``, split when the
query would exceed ``max_query_len``) saves quota over one timeline call per account.
The ``from:`` operator accepts numeric user ids, so the query uses the pinned
``x_user_id``; every returned post's ``author_id`` is still checked against the pinned ids
and any other author is dropped. Sources without a pinned id are never polled.

``since_id`` is the cursor (newest post id seen). On the first poll only the newest page
is read; later polls page forward (at most ``max_pages`` per query). If a poll cannot
finish (rate limit hit part-way) the cursor is not advanced, so nothing is skipped; the
watcher dedupes what comes back twice.

Rate limits: ``x-rate-limit-remaining: 0`` on a success returns ``rate_limited_until``
(also kept in ``extra["rate_limited_until"]``) and no request is sent before then; a 429
raises ``SourceRateLimitedError`` with ``retry_at`` from ``x-rate-limit-reset``.

tweepy is synchronous (requests), so calls run in ``asyncio.to_thread``; its host is
hard-coded, hence ``mount_base_url`` to point it at a simulator. Keep
``wait_on_rate_limit=False`` and ``return_type=requests.Response`` on the client (headers
are read from it; a default-typed client still works, without rate-limit headers).
"""

from __future__ import annotations

import asyncio
import html
import logging
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any, Protocol

import requests
import structlog
import tweepy

from crisiscomms.adapters.sources.base import (
    SourceRateLimitedError,
    as_dict,
    as_list,
    as_str,
    id_key,
    parse_time,
    source_boundary,
)
from crisiscomms.adapters.sources.text import tidy, title_from_text
from crisiscomms.domain.config import SourceConfig
from crisiscomms.domain.errors import PermanentSourceError, TransientSourceError
from crisiscomms.domain.models import (
    NativeRef,
    Platform,
    PollResult,
    SourceKind,
    SourceState,
    Update,
)

log = structlog.get_logger(__name__)

X_KEY = "x"
RATE_LIMIT_KEY = "rate_limited_until"
MAX_QUERY_LEN = 512
QUERY_SUFFIX = " -is:reply -is:retweet"
TWEET_FIELDS = ["created_at", "author_id", "referenced_tweets"]


class XSearchClient(Protocol):
    """The part of ``tweepy.Client`` we use (fakes in tests implement just this)."""

    def search_recent_tweets(self, query: str, **params: Any) -> Any: ...


def build_queries(user_ids: Sequence[str], max_len: int = MAX_QUERY_LEN) -> list[str]:
    """``(from:1 OR from:2 ...) -is:reply -is:retweet`` queries, each within ``max_len``."""
    queries: list[str] = []
    current: list[str] = []

    def render(ids: list[str]) -> str:
        return "(" + " OR ".join(f"from:{i}" for i in ids) + ")" + QUERY_SUFFIX

    for uid in user_ids:
        if current and len(render([*current, uid])) > max_len:
            queries.append(render(current))
            current = []
        current.append(uid)
    if current:
        queries.append(render(current))
    return queries


def _epoch_to_utc(value: object) -> datetime | None:
    try:
        return datetime.fromtimestamp(int(str(value).strip()), UTC)
    except (TypeError, ValueError, OverflowError, OSError):
        return None


@contextmanager
def translate_x_errors(source_id: str = X_KEY) -> Iterator[None]:
    """tweepy / requests exceptions -> ``SourceError`` (messages never carry the token)."""
    try:
        yield
    except tweepy.TooManyRequests as exc:
        retry_at = _epoch_to_utc(exc.reset_time) if exc.reset_time is not None else None
        raise SourceRateLimitedError(
            f"{source_id}: X rate limit (429)", retry_at=retry_at, source_id=source_id,
            error_class="http_429",
        ) from exc
    except tweepy.HTTPException as exc:
        status = getattr(getattr(exc, "response", None), "status_code", 0) or 0
        cls = TransientSourceError if status >= 500 or status == 408 else PermanentSourceError
        raise cls(
            f"{source_id}: X API said HTTP {status}", source_id=source_id,
            error_class=f"http_{status}",
        ) from exc
    except requests.exceptions.SSLError as exc:
        raise TransientSourceError(f"{source_id}: TLS error talking to X", source_id=source_id,
                                   error_class="tls") from exc
    except requests.exceptions.Timeout as exc:
        raise TransientSourceError(f"{source_id}: X timed out", source_id=source_id,
                                   error_class="timeout") from exc
    except requests.exceptions.ConnectionError as exc:
        dns = "NameResolution" in repr(exc) or "Name or service not known" in repr(exc)
        raise TransientSourceError(
            f"{source_id}: cannot connect to X", source_id=source_id,
            error_class="dns" if dns else "connect",
        ) from exc
    except requests.exceptions.RequestException as exc:
        raise TransientSourceError(
            f"{source_id}: network error talking to X ({type(exc).__name__})",
            source_id=source_id, error_class="network",
        ) from exc
    except tweepy.TweepyException as exc:
        raise PermanentSourceError(
            f"{source_id}: X client error ({type(exc).__name__})", source_id=source_id,
            error_class="x_client",
        ) from exc


def _payload(result: Any) -> tuple[dict[str, Any], dict[str, str]]:
    """Whatever the client's ``return_type``, get (JSON payload, lower-case headers)."""
    if isinstance(result, requests.Response):
        headers = {k.lower(): v for k, v in result.headers.items()}
        try:
            return as_dict(result.json()), headers
        except (ValueError, RecursionError) as exc:
            raise PermanentSourceError(
                f"{X_KEY}: X returned invalid JSON", source_id=X_KEY, error_class="parse"
            ) from exc
    if isinstance(result, dict):
        return result, {}
    if isinstance(result, tweepy.Response):
        data = [getattr(t, "data", t) for t in (result.data or [])]
        includes = {k: [getattr(o, "data", o) for o in v]
                    for k, v in (result.includes or {}).items()}
        return {"data": data, "includes": includes, "meta": result.meta or {}}, {}
    raise PermanentSourceError(
        f"{X_KEY}: unexpected X client result {type(result).__name__}", source_id=X_KEY,
        error_class="parse",
    )


class XSource:
    """All pinned X sources of the catalogue, polled together (``key == "x"``)."""

    def __init__(
        self,
        configs: Sequence[SourceConfig],
        client: XSearchClient,
        *,
        max_query_len: int = MAX_QUERY_LEN,
        max_pages: int = 5,
        close_client: bool = True,
    ) -> None:
        self.key = X_KEY
        self.source_ids: tuple[str, ...] = tuple(c.id for c in configs)
        self.by_user_id: dict[str, SourceConfig] = {}
        for config in configs:
            if config.x_user_id:
                self.by_user_id[config.x_user_id] = config
            else:
                log.warning("source.x_unpinned", source_id=config.id,
                            reason="no x_user_id: never polled")
        self.queries = build_queries(sorted(self.by_user_id, key=id_key), max_query_len)
        self._client = client
        self._max_pages = max_pages
        self._close_client = close_client
        # tweepy logs the bearer token at DEBUG: make sure that logger never emits DEBUG.
        tweepy_log = logging.getLogger("tweepy.client")
        if tweepy_log.getEffectiveLevel() < logging.INFO:
            tweepy_log.setLevel(logging.INFO)

    def _search(self, query: str, since_id: str | None, next_token: str | None) -> Any:
        params: dict[str, Any] = {
            "max_results": 100, "expansions": ["author_id"], "tweet_fields": TWEET_FIELDS,
            "user_fields": ["username"],
        }
        if since_id:
            params["since_id"] = since_id
        if next_token:
            params["next_token"] = next_token
        with translate_x_errors():
            return self._client.search_recent_tweets(query, **params)

    async def poll(self, state: SourceState, now: datetime) -> PollResult:
        """One recent-search pass over every pinned account (see the module docstring)."""
        with source_boundary(self.key):
            extra = dict(state.extra)
            until = parse_time(extra.get(RATE_LIMIT_KEY))
            if until is not None and now < until:
                return PollResult(cursor=state.cursor, extra=extra, rate_limited_until=until)
            extra.pop(RATE_LIMIT_KEY, None)
            since = state.cursor if state.cursor and state.cursor.isdigit() else None
            tweets: list[dict[str, Any]] = []
            usernames: dict[str, str] = {}
            limited_until: datetime | None = None
            complete = True
            for query in self.queries:
                token: str | None = None
                for page in range(self._max_pages):
                    result = await asyncio.to_thread(self._search, query, since, token)
                    payload, headers = _payload(result)
                    tweets.extend(as_dict(t) for t in as_list(payload.get("data")))
                    for user in as_list(as_dict(payload.get("includes")).get("users")):
                        user = as_dict(user)
                        usernames[as_str(user.get("id"), 40)] = as_str(user.get("username"), 50)
                    token = as_str(as_dict(payload.get("meta")).get("next_token"), 500) or None
                    if headers.get("x-rate-limit-remaining", "").strip() == "0":
                        limited_until = _epoch_to_utc(headers.get("x-rate-limit-reset"))
                    if token is None or since is None or limited_until is not None:
                        break
                    if page == self._max_pages - 1:
                        log.warning("source.x_backlog_truncated", source_id=self.key,
                                    pages=self._max_pages)
                if limited_until is not None:
                    complete = query == self.queries[-1] and token is None
                    break
            refused: list[str] = []
            updates = self._updates(tweets, usernames, now, refused)
            cursor = state.cursor
            if complete:
                ids = [u.external_id for u in updates] + ([cursor] if cursor else [])
                cursor = max(ids, key=id_key) if ids else None
            if limited_until is not None:
                extra[RATE_LIMIT_KEY] = limited_until.isoformat()
            return PollResult(updates=tuple(updates), cursor=cursor, extra=extra,
                              rate_limited_until=limited_until, refused=tuple(refused))

    def _updates(
        self, tweets: list[dict[str, Any]], usernames: dict[str, str], now: datetime,
        refused: list[str] | None = None,
    ) -> list[Update]:
        updates: dict[str, Update] = {}
        for tweet in tweets:
            tweet_id = as_str(tweet.get("id"), 40)
            author = as_str(tweet.get("author_id"), 40)
            if not tweet_id.isdigit():
                continue
            config = self.by_user_id.get(author)
            if config is None:  # never relay a post from an account we did not pin
                log.warning("source.x_unpinned_author", source_id=self.key, author_id=author,
                            tweet_id=tweet_id)
                if refused is not None:
                    refused.append(f"tweet {tweet_id} by unpinned author id {author or '?'}")
                continue
            kinds = {as_str(as_dict(r).get("type"), 20)
                     for r in as_list(tweet.get("referenced_tweets"))}
            if kinds & {"replied_to", "retweeted"}:
                continue
            handle = usernames.get(author) or (config.handle or "").lstrip("@") or "i"
            url = f"https://x.com/{handle}/status/{tweet_id}"
            text = tidy(html.unescape(as_str(tweet.get("text"), 20_000)))
            title = title_from_text(text) or "(no text)"
            updates.setdefault(tweet_id, Update(
                source_id=config.id, agency=config.agency, kind=SourceKind.X,
                external_id=tweet_id, url=url, title=title, text=text or title,
                published_at=parse_time(tweet.get("created_at")) or now, fetched_at=now,
                native=NativeRef(platform=Platform.X, id=tweet_id, url=url),
            ).with_hash())
        return list(updates.values())

    async def aclose(self) -> None:
        """Close the client's requests session (the factory made it for this source)."""
        session = getattr(self._client, "session", None)
        if self._close_client and isinstance(session, requests.Session):
            await asyncio.to_thread(session.close)
