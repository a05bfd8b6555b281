"""Domain objects. Plain frozen dataclasses: no I/O, no framework.

All datetimes are aware and in UTC; conversion to Europe/London happens only at the
policy edge and in output.
"""

from __future__ import annotations

import enum
import hashlib
import json
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any, Literal

SEVERITY_RANK = {"extreme": 4, "severe": 3, "moderate": 2, "minor": 1, "unknown": 0}
URGENCY_RANK = {"immediate": 4, "expected": 3, "future": 2, "past": 1, "unknown": 0}
CERTAINTY_RANK = {"observed": 4, "likely": 3, "possible": 2, "unlikely": 1, "unknown": 0}


class SourceKind(enum.StrEnum):
    X = "x"
    RSS = "rss"
    CAP = "cap"
    MASTODON = "mastodon"
    BLUESKY = "bluesky"
    EA_FLOODS = "ea-floods"


class Platform(enum.StrEnum):
    X = "x"
    FACEBOOK = "facebook"
    MASTODON = "mastodon"
    BLUESKY = "bluesky"


class ActionKind(enum.StrEnum):
    RETWEET = "retweet"
    QUOTE = "quote"
    BOOST = "boost"
    REPOST = "repost"
    POST = "post"


class ItemState(enum.StrEnum):
    """States of an outbox item. See ``outbox`` in the README for the diagram."""

    QUEUED = "queued"
    LEASED = "leased"
    SENDING = "sending"
    PUBLISHED = "published"
    HELD = "held"
    NEEDS_APPROVAL = "needs_approval"
    FAILED = "failed"
    NEEDS_REVIEW = "needs_review"
    REJECTED = "rejected"
    SKIPPED = "skipped"


TERMINAL_STATES = frozenset(
    {ItemState.PUBLISHED, ItemState.FAILED, ItemState.REJECTED, ItemState.SKIPPED}
)


@dataclass(frozen=True, slots=True)
class CapInfo:
    """The CAP 1.2 fields we act on."""

    identifier: str = ""
    sender: str = ""
    sent: datetime | None = None
    status: str = "Actual"
    msg_type: str = "Alert"
    scope: str = "Public"
    references: tuple[str, ...] = ()
    event: str = ""
    severity: str = "Unknown"
    urgency: str = "Unknown"
    certainty: str = "Unknown"
    area: str = ""
    expires: datetime | None = None

    @property
    def amplifiable(self) -> bool:
        """Only Actual alerts with Public scope may ever be relayed."""
        return self.status.lower() == "actual" and self.scope.lower() == "public"


@dataclass(frozen=True, slots=True)
class NativeRef:
    """Where an update lives on a platform we can amplify natively (retweet/boost/repost)."""

    platform: Platform
    id: str = ""
    url: str = ""
    uri: str = ""
    cid: str = ""


@dataclass(frozen=True, slots=True)
class Update:
    """One normalised item from an official source."""

    source_id: str
    agency: str
    kind: SourceKind
    external_id: str
    url: str
    title: str
    text: str
    published_at: datetime
    fetched_at: datetime
    cap: CapInfo | None = None
    native: NativeRef | None = None
    content_hash: str = ""
    revision: int = 1
    id: int | None = None

    def with_hash(self) -> Update:
        """Return a copy whose ``content_hash`` covers what a reader would see."""
        return replace(self, content_hash=content_hash(self))

    @property
    def severity_rank(self) -> int:
        return SEVERITY_RANK.get((self.cap.severity if self.cap else "unknown").lower(), 0)


def content_hash(update: Update) -> str:
    """SHA-256 of the visible content, used to tell an edit from a repeat."""
    cap = update.cap
    payload = {
        "title": update.title,
        "text": update.text,
        "url": update.url,
        "cap": None
        if cap is None
        else [cap.msg_type, cap.status, cap.severity, cap.urgency, cap.certainty, cap.area,
              cap.event, cap.expires.isoformat() if cap.expires else None],
    }
    raw = json.dumps(payload, sort_keys=True, ensure_ascii=False).encode()
    return hashlib.sha256(raw).hexdigest()


@dataclass(frozen=True, slots=True)
class Incident:
    """An activation of a playbook: the crisis flag is on while any is active."""

    id: int
    playbook: str
    hashtags: tuple[str, ...]
    lead: str
    activated_at: datetime
    activated_by: str
    reason: str
    deactivated_at: datetime | None = None
    deactivated_by: str | None = None
    deactivation_reason: str | None = None

    @property
    def active(self) -> bool:
        return self.deactivated_at is None


@dataclass(frozen=True, slots=True)
class OutboxItem:
    """One thing to do on one channel: the unit of exactly-once delivery."""

    id: int
    dedupe_key: str
    channel_id: str
    action: ActionKind
    text: str
    state: ItemState
    created_at: datetime
    update_id: int | None = None
    incident_id: int | None = None
    source_id: str | None = None
    is_lead: bool = False
    severity_rank: int = 0
    published_at: datetime | None = None  # the source's published time (for ordering)
    approval: str = "auto"  # auto | manual
    approved_by: str | None = None
    approved_at: datetime | None = None
    edited_text: str | None = None
    not_before: datetime | None = None
    lease_owner: str | None = None
    lease_until: datetime | None = None
    attempts: int = 0
    lookups: int = 0  # unanswered "did this go out?" questions to the platform
    reason: str = ""
    last_error: str | None = None
    platform_post_id: str | None = None
    platform_url: str | None = None
    sent_at: datetime | None = None
    done_at: datetime | None = None
    out_of_hours: bool = False
    over_cap: bool = False
    native: NativeRef | None = None
    url: str = ""
    expires_at: datetime | None = None  # the alert's CAP expires: not sent after it
    # A CAP Update/Cancel answers our own item that relayed the alert it refers to: it goes out
    # as a reply to that post, after it, and not at all if that item never went out.
    reply_to_item: int | None = None
    reply_to: str | None = None  # that post's id on the platform, filled in when sending
    version: int = 0  # bumped by every stored change: a write based on an older copy is refused
    fence: int = 0  # the fencing token: bumped by every claim and take-over of the lease

    @property
    def body(self) -> str:
        """The text that will be sent: the operator's edit if there is one."""
        return self.edited_text if self.edited_text is not None else self.text

    @property
    def crisis(self) -> bool:
        return self.incident_id is not None


class DecisionAction(enum.StrEnum):
    PUBLISH = "publish"
    HOLD = "hold"
    NEEDS_APPROVAL = "needs_approval"
    SKIP = "skip"


@dataclass(frozen=True, slots=True)
class Decision:
    """What the policy says about one item now, and why."""

    action: DecisionAction
    reason: str
    until: datetime | None = None
    out_of_hours: bool = False
    over_cap: bool = False


@dataclass(frozen=True, slots=True)
class ChannelCounters:
    """What a channel has published, as the policy needs it."""

    week_count: int = 0  # every post (normal and crisis) in the policy week containing now
    normal_week_count: int = 0  # normal-mode posts only: what the normal weekly cap counts
    normal_day_count: int = 0  # normal-mode posts on the current local day (pacing)
    last_hour_count: int = 0  # all posts in the last 60 minutes (hourly safety ceiling)
    paused_until: datetime | None = None  # platform rate-limit reset


@dataclass(frozen=True, slots=True)
class PublishResult:
    """What the platform said when it accepted a post."""

    post_id: str
    url: str = ""
    dry_run: bool = False


@dataclass(frozen=True, slots=True)
class AuditEvent:
    """One link of the append-only, hash-chained audit trail."""

    seq: int
    at: datetime
    actor: str
    action: str
    subject: str
    reason: str
    details: dict[str, Any] = field(default_factory=dict)
    prev_hash: str = ""
    hash: str = ""
    # The real wall-clock time the store wrote it (``at`` is the time the change claims, which
    # ``--at`` may have frozen); None for events written before schema 8.
    recorded_at: datetime | None = None
    scheme: str = "sha256"  # how it was hashed: sha256 (old), sha256-v2, hmac-sha256 (keyed)

    @property
    def acting_for(self) -> str | None:
        """The person a delegate acted for (``--operator``), if any."""
        value = self.details.get("acting_for")
        return str(value) if value else None

    @property
    def who(self) -> str:
        """The actor as people read it: ``bob`` or ``bob acting for alice``."""
        return f"{self.actor} acting for {self.acting_for}" if self.acting_for else self.actor


@dataclass(frozen=True, slots=True)
class SourceState:
    """What the watcher remembers about a source between polls."""

    source_id: str
    cursor: str | None = None  # since_id or similar
    etag: str | None = None
    last_modified: str | None = None
    baseline_done: bool = False
    last_polled_at: datetime | None = None
    next_poll_at: datetime | None = None
    last_ok_at: datetime | None = None
    failures: int = 0
    last_error: str | None = None
    last_error_class: str | None = None
    error_count: int = 0
    extra: dict[str, Any] = field(default_factory=dict)
    lease_owner: str | None = None  # the watcher polling it now
    lease_until: datetime | None = None
    fence: int = 0  # bumped by every claim: a poll recorded under an older token is refused


@dataclass(frozen=True, slots=True)
class ReadBudget:
    """One read-limit window as an answer stated it (X ``x-rate-limit-*``, Mastodon
    ``X-RateLimit-*``): ``remaining`` requests until ``reset_at``."""

    remaining: int
    reset_at: datetime


@dataclass(frozen=True, slots=True)
class PollHints:
    """What an answer said about when to ask again (read by ``domain.pacing``).

    ``max_age_seconds``: how long it stays fresh (``Cache-Control: max-age`` less ``Age``, or
    ``Expires`` less ``Date``; 0 for ``no-cache``/``no-store``); ``retry_after``: the server's
    ``Retry-After``; ``budgets``: the read-limit windows it named; ``requests``: how many
    requests the poll made (what one poll costs of each budget)."""

    max_age_seconds: float | None = None
    retry_after: datetime | None = None
    budgets: tuple[ReadBudget, ...] = ()
    requests: int = 1


@dataclass(frozen=True, slots=True)
class PollResult:
    """What one poll of a source returned."""

    updates: tuple[Update, ...] = ()
    not_modified: bool = False
    etag: str | None = None
    last_modified: str | None = None
    cursor: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    rate_limited_until: datetime | None = None
    # Items the adapter refused to pass on (e.g. an X post whose author id is not pinned):
    # one line each, audited by the watcher the first time it sees them.
    refused: tuple[str, ...] = ()
    # When to ask again, as the answer said (cache lifetime, Retry-After, read budgets).
    hints: PollHints = field(default_factory=PollHints)


@dataclass(frozen=True, slots=True)
class NewOutboxItem:
    """An item to enqueue. ``dedupe_key`` makes enqueueing idempotent."""

    dedupe_key: str
    channel_id: str
    action: ActionKind
    text: str
    state: ItemState = ItemState.QUEUED
    update_id: int | None = None
    incident_id: int | None = None
    source_id: str | None = None
    is_lead: bool = False
    severity_rank: int = 0
    published_at: datetime | None = None
    approval: str = "auto"
    reason: str = ""
    native: NativeRef | None = None
    url: str = ""
    expires_at: datetime | None = None
    reply_to_item: int | None = None


@dataclass(frozen=True, slots=True)
class LiveWindow:
    """A span of extra staffed time for a live event (tweet chat, live coverage).

    ``start`` is inclusive and ``end`` exclusive; both must be aware datetimes (they are
    normalised to UTC). Inside a window normal-mode items may go out as if in staffed hours.
    """

    start: datetime
    end: datetime
    reason: str = ""
    id: int | None = None
    created_by: str = ""

    def __post_init__(self) -> None:
        if self.start.tzinfo is None or self.end.tzinfo is None:
            raise ValueError("LiveWindow start and end must be timezone-aware")
        # Frozen dataclass: normalise through object.__setattr__ so comparisons are in UTC.
        object.__setattr__(self, "start", self.start.astimezone(UTC))
        object.__setattr__(self, "end", self.end.astimezone(UTC))

    def contains(self, at: datetime) -> bool:
        """True if ``at`` falls inside the window (start inclusive, end exclusive)."""
        return self.start <= at < self.end


@dataclass(frozen=True, slots=True)
class RecordedUpdate:
    """An update after the store has seen it: new, a new revision, or already known."""

    update: Update
    status: str  # "new" | "revision" | "seen"


@dataclass(frozen=True, slots=True)
class ItemEvent:
    """One line of an outbox item's own history (beside the audit trail)."""

    at: datetime
    state: str
    reason: str
    actor: str = "system"
    details: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class NewAuditEvent:
    """An audit event as a service writes it; the store links it into the chain."""

    actor: str
    action: str
    subject: str
    reason: str
    at: datetime
    details: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Operator:
    """Who is acting: ``user`` is the real person (the OS user, see ``default_operator``);
    ``acting_for`` is the operator a delegate acts for with ``--operator`` (policy
    ``delegates``). The audit records ``user`` as the actor and ``acting_for`` in details."""

    user: str
    acting_for: str | None = None

    @property
    def on_behalf(self) -> str:
        """Whose authority the action uses (checked against policy ``operators``)."""
        return self.acting_for or self.user

    @property
    def label(self) -> str:
        """For people: ``bob`` or ``bob acting for alice``."""
        return f"{self.user} acting for {self.acting_for}" if self.acting_for else self.user

    @property
    def names(self) -> frozenset[str]:
        return frozenset((self.user, self.acting_for) if self.acting_for else (self.user,))

    def details(self) -> dict[str, Any]:
        """What goes into an audit event's details."""
        return {"acting_for": self.acting_for} if self.acting_for else {}


def as_operator(value: str | Operator) -> Operator:
    """A plain name (tests, the drill, the watcher) is a person acting for themselves."""
    return value if isinstance(value, Operator) else Operator(value)


@dataclass(frozen=True, slots=True)
class WatcherInfo:
    """A watcher process as its heartbeat last described it. ``pages``: it can page the
    on-call team (it has ``CRISISCOMMS_NOTIFY_URLS`` and runs on the real clock); only such
    watchers are elected to page. Heartbeats of versions before it read as ``False``."""

    worker_id: str
    host: str
    pid: int
    started_at: datetime
    last_seen_at: datetime
    pages: bool = False
    push: tuple[PushStatus, ...] = ()  # its push connections, as of that heartbeat


@dataclass(frozen=True, slots=True)
class ChannelState:
    """What the dispatcher remembers about one of our channels."""

    channel_id: str
    paused_until: datetime | None = None
    last_error: str | None = None
    rate_limit_waits: int = 0
    rate_limit_wait_seconds: float = 0.0
    problem: str | None = None  # why the channel cannot post at all (credentials missing)


@dataclass(frozen=True, slots=True)
class Doorbell:
    """A push connection's news: these catalogue sources have something new (``pushed``), or
    the connection is (again) up and anything published while it was away must be read
    (``connected``: the catch-up). Push only rings: the watcher then polls the sources through
    their ordinary adapter, so the cursor, the store's exactly-once and the matching stay in
    one path and a pushed update can never be relayed twice or skip a check.

    ``expect_id`` is the platform id of the pushed post when the event named one (a poll
    that does not see it yet, an index that lags its stream, is tried again shortly)."""

    source_ids: tuple[str, ...]
    reason: Literal["pushed", "connected"] = "pushed"
    expect_id: str | None = None
    via: str = ""  # the push connection's key


@dataclass(frozen=True, slots=True)
class PushStatus:
    """How one push connection is (shown by ``status``; a connection down is polled for)."""

    key: str
    kind: str
    source_ids: tuple[str, ...]
    connected: bool = False
    since: datetime | None = None  # connected since, or down since
    failures: int = 0  # consecutive failed connection attempts
    last_error: str = ""
    last_event_at: datetime | None = None
    events: int = 0
    note: str = ""  # not an error: e.g. sources it cannot push for (polled only), and why
