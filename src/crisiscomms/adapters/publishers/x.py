"""X publisher through ``tweepy.Client`` (API v2, OAuth 1.0a user context).

tweepy talks through ``requests`` and hard-codes ``https://api.twitter.com``; ``mount_base_url``
mounts an adapter on the client's session that sends that traffic to another base URL (a
staging proxy or the loopback simulator) and puts a timeout on every request, which tweepy
itself never sets. ``wait_on_rate_limit`` stays ``False`` so a 429 reaches our scheduler.

Retweeting something already retweeted (200 ``retweeted: true`` or 403 "already retweeted")
counts as done. A retweet has no id of its own in v2, so its result id is ``rt:<tweet id>``.

Text is sent as ``posttext.fit_body`` makes it: unchanged when it fits X's count (twitter-text
v3: bare domains X links weigh 23 too), otherwise shortened by the README's rule, so an item
queued before that count was right, or edited, never reaches X over-long; ``find_existing``
compares with the same text, with everything X links (which it returns as t.co) left out.

Limits: a 429 waits for the exhausted window (``x-rate-limit-*``, ``x-app-limit-24hour-*``,
``x-user-limit-24hour-*``), read from the headers (``TooManyRequests.reset_time`` exists only
from tweepy 4.17); a 429 ``UsageCapExceeded`` (the monthly cap) pauses the channel for the
longest pause allowed (a day); a 402 is "X credits exhausted", permanent.
"""

from __future__ import annotations

import html
import http.client
import logging
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from datetime import datetime, timedelta
from typing import Any

import requests
import structlog
import tweepy
from pydantic import SecretStr
from urllib3.exceptions import MaxRetryError, NewConnectionError, ProtocolError

from crisiscomms.adapters.publishers._common import (
    MAX_RESET,
    cannot_tell,
    match_key,
    reset_from_headers,
    secret_values,
    short_reason,
)
from crisiscomms.adapters.xhttp import X_API_HOST, mount_base_url
from crisiscomms.domain.errors import (
    ConfigError,
    OutcomeUnknownError,
    PermanentPublishError,
    PublishError,
    RateLimitedError,
    TransientPublishError,
)
from crisiscomms.domain.models import (
    ActionKind,
    NativeRef,
    OutboxItem,
    Platform,
    PublishResult,
    Update,
)
from crisiscomms.domain.posttext import fit_body, x_link_spans
from crisiscomms.ports import Clock

log = structlog.get_logger(__name__)

PLATFORM = "x"
DEFAULT_BASE_URL = X_API_HOST
MAX_LOOKUP_PAGES = 10  # up to 1,000 of our own tweets when looking for an unknown outcome
LOOKUP_MARGIN = timedelta(minutes=10)  # clock skew between us and X
CREDENTIAL_ROLES = ("consumer_key", "consumer_secret", "access_token", "access_token_secret")
DEFAULT_TIMEOUT = (5.0, 15.0)  # (connect, read) seconds
_NATIVE_ACTIONS = frozenset({ActionKind.RETWEET, ActionKind.BOOST, ActionKind.REPOST})
_ALREADY_RETWEETED_CODE = 327  # v1.1 code, still seen in some v2 answers
_LIMIT_WINDOWS = ("x-rate-limit", "x-app-limit-24hour", "x-user-limit-24hour")


def _quiet_tweepy_logger() -> None:
    # tweepy logs request headers (bearer tokens included) at DEBUG: never let that through.
    logger = logging.getLogger("tweepy.client")
    if logger.getEffectiveLevel() < logging.INFO:
        logger.setLevel(logging.INFO)


def _raw(obj: Any) -> dict[str, Any]:
    """The JSON dict behind a tweepy model (Tweet, User) or a dict."""
    if isinstance(obj, dict):
        return obj
    data = getattr(obj, "data", None)
    return data if isinstance(data, dict) else {}


def _payload_data(response: Any) -> Any:
    """``data`` of a tweepy answer whatever the client's ``return_type``."""
    if isinstance(response, requests.Response):
        return response.json().get("data")
    if isinstance(response, dict):
        return response.get("data")
    return getattr(response, "data", None)


def _status(exc: tweepy.HTTPException) -> int | None:
    status = getattr(exc.response, "status_code", None)
    return status if isinstance(status, int) else None


def _problem_title(exc: tweepy.HTTPException) -> str:
    try:
        body = exc.response.json()
    except (AttributeError, ValueError, RecursionError):
        return ""
    if not isinstance(body, dict):
        return ""
    if str(body.get("type", "")).endswith("/usage-capped"):
        return "UsageCapExceeded"
    return str(body.get("title") or "")


def _limit_headers(headers: Mapping[str, str]) -> dict[str, str]:
    """The reset to wait for: the latest among the windows at ``remaining: 0`` (the 24-hour
    ones included), else ``x-rate-limit-reset``."""
    lowered = {str(k).lower(): str(v) for k, v in headers.items()}
    resets = [lowered.get(f"{w}-reset", "") for w in _LIMIT_WINDOWS
              if lowered.get(f"{w}-remaining", "").strip() == "0"]
    numbers = [int(r) for r in resets if r.strip().isdigit()]
    if numbers:
        lowered["x-rate-limit-reset"] = str(max(numbers))
    return lowered


def _without_links(text: str) -> str:
    """``text`` without what X links (it returns those as t.co), for recognising a post."""
    spans = x_link_spans(text)
    for start, end in reversed(spans):
        text = text[:start] + " " + text[end:]
    return text


def _already_retweeted(exc: tweepy.HTTPException) -> bool:
    messages = " ".join(str(m) for m in exc.api_messages).lower()
    return "already retweeted" in messages or _ALREADY_RETWEETED_CODE in exc.api_codes


def _sent_before_failure(exc: requests.exceptions.ConnectionError) -> bool:
    """Whether a requests ConnectionError happened after the request went out."""
    seen: set[int] = set()
    pending: list[BaseException | None] = [exc]
    while pending:
        current = pending.pop()
        if current is None or id(current) in seen:
            continue
        seen.add(id(current))
        if isinstance(current, NewConnectionError):
            return False  # refused, DNS failure, connect timeout: nothing was sent
        if isinstance(current, ProtocolError | http.client.RemoteDisconnected):
            return True
        if isinstance(current, MaxRetryError):
            pending.append(current.reason)
        pending.extend(a for a in current.args if isinstance(a, BaseException))
        pending.extend((current.__cause__, current.__context__))
    return True  # cannot tell: assume the worst (a resend could duplicate)


class XPublisher:
    """``Publisher`` for an X account. ``client`` may be injected (tests, simulator)."""

    def __init__(
        self,
        channel_id: str,
        *,
        credentials: Mapping[str, SecretStr],
        clock: Clock,
        base_url: str = DEFAULT_BASE_URL,
        client: Any | None = None,
        account: str = "",
        recent: int = 20,
        timeout: tuple[float, float] = DEFAULT_TIMEOUT,
    ) -> None:
        self.channel_id = channel_id
        self._clock = clock
        self._secrets = secret_values(credentials)
        self._account = account.lstrip("@")
        self._recent = max(5, min(recent, 100))
        self._me: str | None = None
        _quiet_tweepy_logger()
        if client is None:
            missing = [
                r
                for r in CREDENTIAL_ROLES
                if r not in credentials or not credentials[r].get_secret_value()
            ]
            if missing:
                raise ConfigError(f"channel {channel_id}: x needs credentials {', '.join(missing)}")
            client = tweepy.Client(
                consumer_key=credentials["consumer_key"].get_secret_value(),
                consumer_secret=credentials["consumer_secret"].get_secret_value(),
                access_token=credentials["access_token"].get_secret_value(),
                access_token_secret=credentials["access_token_secret"].get_secret_value(),
                wait_on_rate_limit=False,
            )
        session = getattr(client, "session", None)
        if isinstance(session, requests.Session):
            mount_base_url(session, base_url, timeout=timeout)
        self._client = client

    # -- the boundary -------------------------------------------------------------------------

    def _message(self, exc: tweepy.HTTPException) -> str:
        status = _status(exc)
        reason = "; ".join(str(m) for m in exc.api_messages) or str(
            getattr(exc.response, "reason", "") or ""
        )
        return f"{PLATFORM} answered {status}: {short_reason(reason, self._secrets)}"

    @contextmanager
    def _boundary(self) -> Iterator[None]:
        """Translate tweepy/requests failures into the ``PublishError`` tree."""
        channel = self.channel_id
        try:
            yield
        except PublishError:
            raise
        except tweepy.TooManyRequests as exc:
            now = self._clock.now()
            headers = _limit_headers(dict(getattr(exc.response, "headers", None) or {}))
            reset_time = getattr(exc, "reset_time", None)  # tweepy >= 4.17 only
            if reset_time is not None:
                headers.setdefault("x-rate-limit-reset", str(reset_time))
            message, reset_at = self._message(exc), reset_from_headers(headers, now)
            if _problem_title(exc) == "UsageCapExceeded":
                # The monthly cap does not lift in 15 minutes: pause as long as allowed.
                message = f"{PLATFORM}: X monthly usage cap reached (429 UsageCapExceeded)"
                reset_at = now + MAX_RESET
            raise RateLimitedError(
                message, reset_at=reset_at, channel_id=channel, status=429
            ) from exc
        except tweepy.TwitterServerError as exc:
            raise TransientPublishError(
                self._message(exc), channel_id=channel, status=_status(exc)
            ) from exc
        except tweepy.HTTPException as exc:
            if _status(exc) == 402:
                raise PermanentPublishError(
                    f"{PLATFORM}: X credits exhausted (402 CreditsDepleted): the X developer "
                    "account has no credits left; nothing is posted until it is topped up",
                    channel_id=channel, status=402) from exc
            raise PermanentPublishError(
                self._message(exc), channel_id=channel, status=_status(exc)
            ) from exc
        except requests.exceptions.JSONDecodeError as exc:
            raise OutcomeUnknownError(f"{PLATFORM}: unreadable answer", channel_id=channel) from exc
        except (
            requests.exceptions.ConnectTimeout,
            requests.exceptions.SSLError,
            requests.exceptions.ProxyError,
        ) as exc:
            raise TransientPublishError(
                f"{PLATFORM}: request not sent ({type(exc).__name__})", channel_id=channel
            ) from exc
        except (
            requests.exceptions.InvalidURL,
            requests.exceptions.MissingSchema,
            requests.exceptions.InvalidSchema,
        ) as exc:
            raise PermanentPublishError(
                f"{PLATFORM}: base URL not usable ({type(exc).__name__})", channel_id=channel
            ) from exc
        except requests.exceptions.ConnectionError as exc:
            if _sent_before_failure(exc):
                raise OutcomeUnknownError(
                    f"{PLATFORM}: connection lost after the request was sent", channel_id=channel
                ) from exc
            raise TransientPublishError(
                f"{PLATFORM}: request not sent (connection failed)", channel_id=channel
            ) from exc
        except (requests.exceptions.RequestException, http.client.HTTPException, OSError) as exc:
            # ReadTimeout, ChunkedEncodingError, RemoteDisconnected...: it may have gone through.
            raise OutcomeUnknownError(
                f"{PLATFORM}: no answer after the request was sent ({type(exc).__name__})",
                channel_id=channel,
            ) from exc
        except TypeError as exc:
            # tweepy raises TypeError when a token it needs was not configured.
            raise PermanentPublishError(
                f"{PLATFORM}: client not configured for this call", channel_id=channel
            ) from exc
        except (ValueError, KeyError) as exc:
            raise OutcomeUnknownError(
                f"{PLATFORM}: unexpected answer ({type(exc).__name__})", channel_id=channel
            ) from exc

    # -- Publisher ----------------------------------------------------------------------------

    def publish(self, item: OutboxItem, update: Update | None) -> PublishResult:
        """Retweet or quote the official post when it is on X, else post ``item.body``."""
        native = _x_ref(item)
        with self._boundary():
            if native is not None and item.action in _NATIVE_ACTIONS:
                return self._retweet(native)
            text = self._text(item)
            if native is not None and item.action is ActionKind.QUOTE:
                answer = self._client.create_tweet(
                    text=text, quote_tweet_id=native.id, user_auth=True
                )
            elif item.reply_to:
                # A CAP follow-up answers our own post of the alert, in its thread.
                answer = self._client.create_tweet(
                    text=text, in_reply_to_tweet_id=item.reply_to, user_auth=True
                )
            else:
                answer = self._client.create_tweet(text=text, user_auth=True)
            tweet_id = str(_raw(_payload_data(answer))["id"])
        return PublishResult(post_id=tweet_id, url=self._status_url(tweet_id))

    def find_existing(self, item: OutboxItem, update: Update | None) -> PublishResult | None:
        """Look through our own recent posts for this retweet, quote or text."""
        native = _x_ref(item)
        try:
            with self._boundary():
                tweets = self._recent_tweets(item.sent_at)
        except PublishError as exc:
            raise cannot_tell(exc, platform=PLATFORM, channel_id=self.channel_id) from exc
        wanted = _match(self._text(item))
        for tweet in tweets:
            refs = {
                (str(r.get("type")), str(r.get("id")))
                for r in tweet.get("referenced_tweets") or []
                if isinstance(r, dict)
            }
            if native is not None and item.action in _NATIVE_ACTIONS:
                if ("retweeted", native.id) in refs:
                    return self._retweet_result(native)
                continue
            if (
                native is not None
                and item.action is ActionKind.QUOTE
                and (("quoted", native.id) in refs)
            ):
                return PublishResult(post_id=str(tweet["id"]), url=self._status_url(tweet["id"]))
            if (
                "retweeted" not in {t for t, _ in refs}
                and _match(str(tweet.get("text") or "")) == wanted
            ):
                return PublishResult(post_id=str(tweet["id"]), url=self._status_url(tweet["id"]))
        return None

    def close(self) -> None:
        """Close the client's HTTP session."""
        session = getattr(self._client, "session", None)
        if isinstance(session, requests.Session):
            session.close()

    # -- helpers ------------------------------------------------------------------------------

    def _text(self, item: OutboxItem) -> str:
        """The text to send: the body, shortened by the README's rule if X would refuse it."""
        text = fit_body(item.body, Platform.X)
        if text != item.body:
            log.warning("publisher.x_text_shortened", channel=self.channel_id, item=item.id,
                        reason="over 280 as X counts it (links 23, bare domains included)")
        return text

    def _status_url(self, tweet_id: object) -> str:
        who = self._account or "i/web"
        return f"https://x.com/{who}/status/{tweet_id}"

    def _retweet_result(self, native: NativeRef) -> PublishResult:
        return PublishResult(
            post_id=f"rt:{native.id}", url=native.url or f"https://x.com/i/web/status/{native.id}"
        )

    def _retweet(self, native: NativeRef) -> PublishResult:
        try:
            answer = self._client.retweet(native.id, user_auth=True)
        except tweepy.Forbidden as exc:
            if _already_retweeted(exc):
                log.info("publisher.already_published", channel=self.channel_id, tweet=native.id)
                return self._retweet_result(native)
            raise
        if not _raw(_payload_data(answer)).get("retweeted"):
            raise PermanentPublishError(
                f"{PLATFORM} did not confirm the retweet of {native.id}",
                channel_id=self.channel_id,
            )
        return self._retweet_result(native)

    def _my_id(self) -> str:
        if self._me is None:
            self._me = str(_raw(_payload_data(self._client.get_me(user_auth=True)))["id"])
        return self._me

    def _recent_tweets(self, since: datetime | None = None) -> list[dict[str, Any]]:
        """Our own tweets, newest first: one page, or (given ``since``, the item's first send)
        every page back to a few minutes before it, so a crash followed by many posts still
        finds the one that went out."""
        out: list[dict[str, Any]] = []
        token: str | None = None
        for _ in range(MAX_LOOKUP_PAGES if since is not None else 1):
            params: dict[str, Any] = {
                "max_results": 100 if since is not None else self._recent,
                "tweet_fields": ["referenced_tweets", "created_at"], "user_auth": True}
            if since is not None:
                params["start_time"] = (since - LOOKUP_MARGIN).strftime("%Y-%m-%dT%H:%M:%SZ")
            if token:
                params["pagination_token"] = token
            answer = self._client.get_users_tweets(self._my_id(), **params)
            out += [_raw(t) for t in (_payload_data(answer) or [])]
            token = _next_token(answer)
            if not token:
                break
        return out


def _match(text: str) -> str:
    return match_key(_without_links(html.unescape(text)))


def _next_token(answer: Any) -> str | None:
    if isinstance(answer, requests.Response):
        meta = answer.json().get("meta") or {}
    elif isinstance(answer, dict):
        meta = answer.get("meta") or {}
    else:
        meta = getattr(answer, "meta", None) or {}
    token = meta.get("next_token") if isinstance(meta, dict) else None
    return str(token) if token else None


def _x_ref(item: OutboxItem) -> NativeRef | None:
    """The official tweet to retweet or quote, or ``None`` to post ``item.body`` instead."""
    native = item.native
    if item.action is ActionKind.POST or native is None:
        return None
    if native.platform is not Platform.X or not native.id:
        return None
    return native
