"""The simulator's plain records: accepted posts, faults, request-log entries, accounts."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any, NamedTuple

from crisiscomms.domain.clock import utc


@dataclass(frozen=True, slots=True)
class SimPost:
    """One post the simulator accepted on one of our accounts.

    ``channel`` is the account: X username, Mastodon acct, Bluesky handle, Facebook page id.
    ``kind`` is post, quote, retweet, boost or repost; ``ref`` is the original's id (X,
    Mastodon) or at:// URI (Bluesky); ``received_at`` is simulated time.
    """

    platform: str
    channel: str
    kind: str
    post_id: str
    text: str
    ref: str
    received_at: datetime
    idempotency_key: str = ""
    url: str = ""
    cid: str = ""


@dataclass(frozen=True)
class Faults:
    """Fault injection, drawn from ``random.Random(seed)`` so a drill replays identically.

    Rates are probabilities per request (only requests whose path starts with one of
    ``paths``, or all when empty). ``drop_rate`` closes the connection without a response;
    ``accept_then_timeout_rate`` (POSTs only) lets the handler record the post, then holds
    the response for ``hang_seconds`` of real time and drops the connection. ``slow_seconds``
    is a real-time delay before every matching request. ``slow_accept_rate`` (POSTs only) holds
    a create for ``slow_accept_seconds`` of real time *before* the platform records it: a send
    slower than the dispatcher's lease. ``accept_then_5xx_rate`` (POSTs only) lets the
    handler record the post, then answers ``status_5xx`` instead. ``burst_429`` windows are
    simulated time: every request to that platform inside ``[start, end)`` is refused as
    rate-limited with its reset at ``end``.
    """

    error_rate_5xx: float = 0.0
    slow_seconds: float = 0.0
    drop_rate: float = 0.0
    accept_then_timeout_rate: float = 0.0
    burst_429: tuple[tuple[str, datetime, datetime], ...] = ()
    seed: int = 0
    hang_seconds: float = 30.0
    status_5xx: int = 503
    paths: tuple[str, ...] = ()
    burst_methods: tuple[str, ...] = ()  # empty: bursts refuse every method
    slow_accept_rate: float = 0.0
    slow_accept_seconds: float = 0.0
    accept_then_5xx_rate: float = 0.0  # POSTs: recorded by the platform, then answered 5xx

    def __post_init__(self) -> None:
        # Accept lists from callers and scenario files; keep the dataclass hashable.
        bursts = tuple((str(p), utc(s), utc(e)) for p, s, e in self.burst_429)
        object.__setattr__(self, "burst_429", bursts)
        object.__setattr__(self, "paths", tuple(self.paths))
        object.__setattr__(self, "burst_methods", tuple(m.upper() for m in self.burst_methods))


class FaultRoll(NamedTuple):
    """What the fault injector decided for one request."""

    drop: bool
    error: bool
    hang: bool
    slow_seconds: float
    slow_accept: bool = False  # a create held longer than a lease before it is recorded
    accept_5xx: bool = False  # a create recorded, then answered 5xx


class RequestRecord(NamedTuple):
    """One request as the simulator saw it. ``status`` 0 means no response was sent.

    ``quota_key`` names the quota the request counted against; ``reset_at`` is set when the
    response refused it as rate-limited; ``note`` names an injected fault.
    """

    at: datetime
    method: str
    path: str
    status: int
    platform: str = ""
    quota_key: str = ""
    reset_at: datetime | None = None
    note: str = ""


@dataclass(frozen=True, slots=True)
class VisibleItem:
    """A scripted item as visible now; ``first_at`` is when this run of it appeared."""

    source_id: str
    kind: str
    key: str
    item: dict[str, Any]
    first_at: datetime
    changed_at: datetime


@dataclass(frozen=True, slots=True)
class XUser:
    """An X account known to the simulator."""

    id: str
    username: str
    name: str = ""
