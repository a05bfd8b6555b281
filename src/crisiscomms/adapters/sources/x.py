"""X (Twitter) sources: one ``XSource`` polls every pinned X account with recent search.

One request per poll (``(from:ID1 OR from:ID2 ...) -is:retweet``, split when the query would
exceed ``max_query_len``) saves quota over one timeline call per account. The ``from:``
operator accepts numeric user ids, so the query uses the pinned ``x_user_id``; every returned
post's ``author_id`` is still checked against the pinned ids and any other author is dropped.
Sources without a pinned id are never polled.

What X really does, and what this module does about it (shared/reference/platform-facts.md):

* **Cursor.** ``since_id`` (the newest post id seen) is the cursor, but recent search covers
  7 days and answers 400 for an older ``since_id``; X sources are ``watch: crisis``, so the
  first poll of an incident weeks after the last one would fail for ever. A post id is a
  snowflake (``(id >> 22) + 1288834974657`` ms), so a cursor older than 6 days 20 hours is not
  sent: the poll reads by ``start_time`` instead, and a 400 naming ``since_id`` drops the cursor
  and reads by time at once. Reading by time starts at the later of the previous complete
  poll (less 2 minutes: a post shows in search about 30 s after it is made) and the start of
  the backfill window (``backfill``, the playbooks' ``backfill_minutes``), never beyond what
  recent search covers. A dropped cursor with nothing newer comes back as ``""``. (The 400's
  shape: ``errors[].parameters.since_id`` and "'since_id' must be a tweet id created after
  ...", as quoted in rooteco/tweetscape#421 and in code that handles it.)
* **Paging.** Every poll follows ``next_token`` until the window is covered (at most
  ``max_pages`` pages per query), the first one included: a first poll that finds nothing
  leaves no cursor, and the next one must still read every post since. If a poll cannot
  finish (a rate limit part-way) the cursor is not advanced; the watcher dedupes repeats.
* **Text.** A post over 280 characters comes back cut in ``text``; ``note_tweet.text`` (asked
  for in ``tweet.fields``) has the whole of it.
* **Threads.** An agency's own thread is a chain of replies to itself, so the query has no
  ``-is:reply``: a reply is kept when it answers the same author (``replied_to`` and
  ``in_reply_to_user_id`` equal to ``author_id``), dropped otherwise.
* **Cost.** No ``expansions=author_id`` (it bills a user read per page): the author id is in
  every post, the handle in ``sources.yaml``.
* **Limits.** ``x-rate-limit-*`` (15 minutes), ``x-app-limit-24hour-*`` and
  ``x-user-limit-24hour-*``: a success with any window at ``remaining: 0`` returns
  ``rate_limited_until`` (also kept in ``extra["rate_limited_until"]``) and no request is sent
  before then; a 429 raises ``SourceRateLimitedError`` with ``retry_at`` at the reset of the
  exhausted window(s). A 429 ``UsageCapExceeded`` is the monthly product cap: ``retry_at`` is
  the next cap reset (``cap_reset_day`` of the month, UTC; the Usage API's ``cap_reset_day``),
  not the 15-minute reset. A 402 is pay-per-use credits exhausted: ``XCreditsExhaustedError``,
  permanent, message "X credits exhausted ...", which ``status`` shows for the source.
  The reset is read from the response headers, never from ``TooManyRequests.reset_time``
  (tweepy 4.17 and later only).

tweepy is synchronous (requests), so calls run in ``asyncio.to_thread``; its host is
hard-coded, hence ``mount_base_url`` to point it at a simulator. Keep
``wait_on_rate_limit=False`` and ``return_type=requests.Response`` on the client (headers
are read from it; a default-typed client still works, without rate-limit headers).
"""

from __future__ import annotations

import asyncio
import calendar
import html
import logging
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
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
from crisiscomms.domain.config import Playbook, SourceConfig
from crisiscomms.domain.errors import PermanentSourceError, TransientSourceError
from crisiscomms.domain.models import (
    NativeRef,
    Platform,
    PollHints,
    PollResult,
    ReadBudget,
    SourceKind,
    SourceState,
    Update,
)

log = structlog.get_logger(__name__)

X_KEY = "x"
RATE_LIMIT_KEY = "rate_limited_until"
CHECKED_KEY = "x_checked_at"  # extra: when the last complete poll started (all before it read)
MAX_QUERY_LEN = 512
QUERY_SUFFIX = " -is:retweet"
TWEET_FIELDS = ["created_at", "author_id", "referenced_tweets", "in_reply_to_user_id",
                "note_tweet"]
SNOWFLAKE_EPOCH_MS = 1288834974657
# Recent search covers 7 days; keep 4 hours of room for clock skew and slow polls.
RECENT_HORIZON = timedelta(days=6, hours=20)
START_MARGIN = timedelta(minutes=2)
DEFAULT_BACKFILL = timedelta(minutes=int(Playbook.model_fields["backfill_minutes"].default))
LIMIT_WINDOWS = ("x-rate-limit", "x-app-limit-24hour", "x-user-limit-24hour")
_FUTURE_SLACK = timedelta(minutes=5)  # a post id "from the future" is not trusted as a cursor


class XSearchClient(Protocol):
    """The part of ``tweepy.Client`` we use (fakes in tests implement just this)."""

    def search_recent_tweets(self, query: str, **params: Any) -> Any: ...


class XCreditsExhaustedError(PermanentSourceError):
    """402: the pay-per-use account has no credits left. Nothing is read until it is topped
    up, so this is permanent and says so in words ``status`` shows."""


class StaleCursorError(TransientSourceError):
    """X refused ``since_id`` as older than recent search covers (400 naming ``since_id``):
    the cursor is dropped and the poll reads by time instead."""


def build_queries(user_ids: Sequence[str], max_len: int = MAX_QUERY_LEN) -> list[str]:
    """``(from:1 OR from:2 ...) -is:retweet`` queries, each within ``max_len``."""
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


def snowflake_time(post_id: str) -> datetime | None:
    """When an X post id (a snowflake) was made, or ``None`` if it is not one."""
    if not post_id.isdigit() or len(post_id) > 20:
        return None
    try:
        return datetime.fromtimestamp(((int(post_id) >> 22) + SNOWFLAKE_EPOCH_MS) / 1000, UTC)
    except (OverflowError, OSError, ValueError):
        return None


def next_cap_reset(now: datetime, day: int = 1) -> datetime:
    """The next midnight UTC on ``day`` of a month (the last day in shorter months)."""
    year, month = now.year, now.month
    for _ in range(2):
        candidate = datetime(year, month, min(day, calendar.monthrange(year, month)[1]),
                             tzinfo=UTC)
        if candidate > now:
            return candidate
        year, month = (year + 1, 1) if month == 12 else (year, month + 1)
    return candidate  # pragma: no cover - two months always contain a later reset day


def _epoch_to_utc(value: object) -> datetime | None:
    try:
        return datetime.fromtimestamp(int(str(value).strip()), UTC)
    except (TypeError, ValueError, OverflowError, OSError):
        return None


def _later(a: datetime | None, b: datetime | None) -> datetime | None:
    return b if a is None else a if b is None else max(a, b)


def exhausted_until(headers: Mapping[str, str]) -> datetime | None:
    """The latest reset among the limit windows whose ``remaining`` is 0, if any."""
    until: datetime | None = None
    for window in LIMIT_WINDOWS:
        if headers.get(f"{window}-remaining", "").strip() == "0":
            until = _later(until, _epoch_to_utc(headers.get(f"{window}-reset")))
    return until


def _windows(headers: Mapping[str, str]) -> list[ReadBudget | None]:
    """Each limit window of ``LIMIT_WINDOWS`` as the answer states it (``None`` if not)."""
    out: list[ReadBudget | None] = []
    for window in LIMIT_WINDOWS:
        remaining = headers.get(f"{window}-remaining", "").strip()
        reset = _epoch_to_utc(headers.get(f"{window}-reset"))
        out.append(ReadBudget(int(remaining), reset)
                   if remaining.isdigit() and reset is not None else None)
    return out


def read_budgets(headers: Mapping[str, str]) -> tuple[ReadBudget, ...]:
    """Every limit window an answer states (15 minutes, the app's and the user's 24 hours):
    what adaptive polling spreads over the time to each reset."""
    return tuple(b for b in _windows(headers) if b is not None)


def _lower_headers(exc: tweepy.HTTPException) -> dict[str, str]:
    raw = getattr(getattr(exc, "response", None), "headers", None) or {}
    return {str(k).lower(): str(v) for k, v in dict(raw).items()}


def _problem(exc: tweepy.HTTPException) -> dict[str, Any]:
    """The problem JSON of an error answer (``{}`` when it has none)."""
    try:
        return as_dict(exc.response.json())
    except (AttributeError, ValueError, RecursionError):
        return {}


def _names_since_id(exc: tweepy.HTTPException) -> bool:
    """A 400 that refuses ``since_id`` (real shape: ``errors[].parameters.since_id``)."""
    for error in exc.api_errors:
        if isinstance(error, dict) and (
                "since_id" in as_dict(error.get("parameters"))
                or "since_id" in as_str(error.get("message"), 500)):
            return True
    return any("since_id" in str(m) for m in exc.api_messages)


def _rate_limited(exc: tweepy.TooManyRequests, source_id: str, now: datetime,
                  cap_reset_day: int) -> SourceRateLimitedError:
    body = _problem(exc)
    if body.get("title") == "UsageCapExceeded" or \
            as_str(body.get("type"), 200).endswith("/usage-capped"):
        until = next_cap_reset(now, cap_reset_day)
        return SourceRateLimitedError(
            f"{source_id}: X monthly usage cap reached (429 UsageCapExceeded): no X reads "
            f"until the cap resets at {until:%Y-%m-%d %H:%M} UTC",
            retry_at=until, source_id=source_id, error_class="x_usage_cap")
    headers = _lower_headers(exc)
    retry_at = exhausted_until(headers) or _epoch_to_utc(headers.get("x-rate-limit-reset"))
    if retry_at is None:
        # tweepy >= 4.17 also offers it as an attribute; older ones lack the attribute.
        reset = getattr(exc, "reset_time", None)
        retry_at = _epoch_to_utc(reset) if reset is not None else None
    return SourceRateLimitedError(f"{source_id}: X rate limit (429)", retry_at=retry_at,
                                  source_id=source_id, error_class="http_429")


@contextmanager
def translate_x_errors(source_id: str, *, now: datetime,
                       cap_reset_day: int = 1) -> Iterator[None]:
    """tweepy / requests exceptions -> ``SourceError`` (messages never carry the token).
    ``now`` dates the end of a monthly usage cap."""
    try:
        yield
    except tweepy.TooManyRequests as exc:
        raise _rate_limited(exc, source_id, now, cap_reset_day) from exc
    except tweepy.BadRequest as exc:
        if _names_since_id(exc):
            raise StaleCursorError(f"{source_id}: X refused since_id as too old (400)",
                                   source_id=source_id, error_class="x_stale_cursor") from exc
        raise PermanentSourceError(f"{source_id}: X API said HTTP 400", source_id=source_id,
                                   error_class="http_400") from exc
    except tweepy.HTTPException as exc:
        status = getattr(getattr(exc, "response", None), "status_code", 0) or 0
        if status == 402:
            raise XCreditsExhaustedError(
                "X credits exhausted (402 CreditsDepleted): the X developer account has no "
                "credits left; X sources are not read until it is topped up",
                source_id=source_id, error_class="x_credits_exhausted") from exc
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


@dataclass(frozen=True)
class _Window:
    """What one poll asks for: posts after ``since_id``, or else from ``start_time``."""

    since_id: str | None = None
    start_time: datetime | None = None


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
        backfill: timedelta = DEFAULT_BACKFILL,
        cap_reset_day: int = 1,
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
        self._backfill = max(backfill, timedelta(0))
        self._cap_reset_day = min(max(cap_reset_day, 1), 31)
        # tweepy logs the bearer token at DEBUG: make sure that logger never emits DEBUG.
        tweepy_log = logging.getLogger("tweepy.client")
        if tweepy_log.getEffectiveLevel() < logging.INFO:
            tweepy_log.setLevel(logging.INFO)

    # -- what to ask for ------------------------------------------------------------------
    def _by_time(self, state: SourceState, now: datetime) -> _Window:
        start = now - self._backfill
        checked = parse_time(state.extra.get(CHECKED_KEY))
        if checked is not None and checked <= now:
            start = max(start, checked - START_MARGIN)
        return _Window(start_time=max(start, now - RECENT_HORIZON))

    def _window(self, state: SourceState, now: datetime) -> _Window:
        cursor = state.cursor if state.cursor and state.cursor.isdigit() else None
        if cursor is None:
            return self._by_time(state, now)
        made = snowflake_time(cursor)
        if made is not None and made > now - RECENT_HORIZON:
            return _Window(since_id=cursor)
        log.info("source.x_cursor_stale", source_id=self.key, cursor=cursor,
                 made=made.isoformat() if made else None)
        return self._by_time(state, now)

    def _search(self, query: str, window: _Window, next_token: str | None,
                now: datetime) -> Any:
        params: dict[str, Any] = {"max_results": 100, "tweet_fields": TWEET_FIELDS}
        if window.since_id:
            params["since_id"] = window.since_id
        elif window.start_time is not None:
            params["start_time"] = window.start_time.strftime("%Y-%m-%dT%H:%M:%SZ")
        if next_token:
            params["next_token"] = next_token
        with translate_x_errors(self.key, now=now, cap_reset_day=self._cap_reset_day):
            return self._client.search_recent_tweets(query, **params)

    # -- Source ---------------------------------------------------------------------------
    async def poll(self, state: SourceState, now: datetime) -> PollResult:
        """One recent-search pass over every pinned account (see the module docstring)."""
        with source_boundary(self.key):
            extra = dict(state.extra)
            until = parse_time(extra.get(RATE_LIMIT_KEY))
            if until is not None and now < until:
                return PollResult(cursor=state.cursor, extra=extra, rate_limited_until=until)
            extra.pop(RATE_LIMIT_KEY, None)
            window = self._window(state, now)
            tweets: list[dict[str, Any]] = []
            limited_until: datetime | None = None
            complete = True
            requests_made = 0
            budgets: dict[str, ReadBudget] = {}
            for number, query in enumerate(self.queries):
                token: str | None = None
                pages = 0
                while True:
                    try:
                        result = await asyncio.to_thread(self._search, query, window, token,
                                                         now)
                    except StaleCursorError:
                        if window.since_id is None:
                            raise
                        log.warning("source.x_cursor_refused", source_id=self.key,
                                    cursor=window.since_id)
                        window, token = self._by_time(state, now), None
                        continue
                    payload, headers = _payload(result)
                    requests_made += 1
                    for name, budget in zip(LIMIT_WINDOWS, _windows(headers), strict=True):
                        if budget is not None:  # the latest answer's count is the truth
                            budgets[name] = budget
                    tweets.extend(as_dict(t) for t in as_list(payload.get("data")))
                    token = as_str(as_dict(payload.get("meta")).get("next_token"), 500) or None
                    limited_until = _later(limited_until, exhausted_until(headers))
                    pages += 1
                    if token is None or limited_until is not None:
                        break
                    if pages >= self._max_pages:
                        log.warning("source.x_backlog_truncated", source_id=self.key,
                                    pages=self._max_pages)
                        token = None
                        break
                if limited_until is not None:
                    complete = number == len(self.queries) - 1 and token is None
                    break
            refused: list[str] = []
            updates = self._updates(tweets, now, refused)
            cursor = state.cursor
            if complete:
                cursor = self._next_cursor(tweets, window, state.cursor, now)
                extra[CHECKED_KEY] = now.isoformat()
            if limited_until is not None:
                extra[RATE_LIMIT_KEY] = limited_until.isoformat()
            return PollResult(updates=tuple(updates), cursor=cursor, extra=extra,
                              rate_limited_until=limited_until, refused=tuple(refused),
                              hints=PollHints(budgets=tuple(budgets.values()),
                                              requests=max(1, requests_made)))

    @staticmethod
    def _next_cursor(tweets: list[dict[str, Any]], window: _Window, previous: str | None,
                     now: datetime) -> str | None:
        """The newest post id read (replies and other authors included: they were read too),
        the cursor kept when nothing is newer, ``""`` when an unusable cursor is dropped."""
        ids = [i for i in (as_str(t.get("id"), 40) for t in tweets) if i.isdigit()
               and (snowflake_time(i) or now) <= now + _FUTURE_SLACK]
        if window.since_id:
            ids.append(window.since_id)
        if ids:
            return max(ids, key=id_key)
        return "" if previous else previous

    def _updates(self, tweets: list[dict[str, Any]], now: datetime,
                 refused: list[str] | None = None) -> list[Update]:
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
            if not _relayable(tweet, author):
                continue
            handle = (config.handle or "").lstrip("@") or "i"
            url = f"https://x.com/{handle}/status/{tweet_id}"
            note = as_str(as_dict(tweet.get("note_tweet")).get("text"), 25_000)
            text = tidy(html.unescape(note or as_str(tweet.get("text"), 20_000)))
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


def _relayable(tweet: dict[str, Any], author: str) -> bool:
    """Not a retweet, and not a reply unless to the same author (its own thread)."""
    kinds = {as_str(as_dict(r).get("type"), 20) for r in as_list(tweet.get("referenced_tweets"))}
    if "retweeted" in kinds:
        return False
    reply_to = as_str(tweet.get("in_reply_to_user_id"), 40)
    if "replied_to" in kinds or reply_to:
        return bool(author) and reply_to == author
    return True
