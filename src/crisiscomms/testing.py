"""Fakes of the ports, shipped with the package (like ``structlog.testing``).

They satisfy the Protocols in ``crisiscomms.ports`` structurally and keep their state in
plain attributes, so tests assert on state rather than on mock calls.
"""

from __future__ import annotations

import shutil
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import yaml

from crisiscomms.adapters.store.memory import MemoryStore
from crisiscomms.domain import outbox
from crisiscomms.domain.clock import FixedClock
from crisiscomms.domain.errors import (
    OutcomeUnknownError,
    PublishError,
    SourceError,
    TransientPublishError,
)
from crisiscomms.domain.models import (
    ItemEvent,
    NewAuditEvent,
    NewOutboxItem,
    OutboxItem,
    PollResult,
    PublishResult,
    RecordedUpdate,
    SourceState,
    Update,
)
from crisiscomms.ports import Store

__all__ = ["SIMULATED_X_IDS", "FakeClock", "FakePublisher", "FakeSource", "MemoryStore",
           "SentPost", "append_audit", "claim_and_start_send", "enqueue", "pinned_playbooks",
           "record_updates", "save_source_state"]

# X ids for the bundled X sources in tests, drills and benchmarks (the simulator's, not real).
SIMULATED_X_IDS = {"essex-police-x": "1000001", "eeast-x": "1000002", "ecfrs-x": "1000003"}


def pinned_playbooks(source: Path, dest: Path,
                     pins: Mapping[str, str] = SIMULATED_X_IDS) -> Path:
    """Copy a playbooks folder (without drills) to ``dest`` with X user ids pinned."""
    shutil.copytree(source, dest, ignore=shutil.ignore_patterns("drills"))
    data = yaml.safe_load((dest / "sources.yaml").read_text(encoding="utf-8"))
    for s in data["sources"]:
        if s["id"] in pins:
            s["x_user_id"] = pins[s["id"]]
    (dest / "sources.yaml").write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
    return dest

FakeClock = FixedClock


class FakeSource:
    """A source that returns scripted snapshots (the whole feed as it is now) or errors."""

    def __init__(self, key: str, source_ids: Iterable[str] | None = None) -> None:
        self.key = key
        self.source_ids = tuple(source_ids or (key,))
        self.snapshot: list[Update] = []
        self.errors: deque[SourceError] = deque()
        self.refused: tuple[str, ...] = ()
        self.polls = 0

    def set_snapshot(self, updates: Iterable[Update]) -> None:
        self.snapshot = [u.with_hash() if not u.content_hash else u for u in updates]

    def fail_next(self, error: SourceError) -> None:
        self.errors.append(error)

    async def poll(self, state: SourceState, now: datetime) -> PollResult:
        self.polls += 1
        if self.errors:
            raise self.errors.popleft()
        return PollResult(updates=tuple(self.snapshot), refused=self.refused)

    async def aclose(self) -> None:
        return None


@dataclass
class SentPost:
    """What a FakePublisher accepted."""

    item_id: int
    dedupe_key: str
    action: str
    text: str
    post_id: str
    reply_to: str | None = None


@dataclass
class FakePublisher:
    """Accepts posts into ``posts``; ``script`` can make the next calls fail.

    ``script`` holds errors (or the string ``"sent-then-unknown"``, which records the post and
    then raises ``OutcomeUnknownError``, as a timeout after the platform accepted it would, or
    ``"sent-then-5xx"``, which records it and then answers 503).
    ``on_publish`` runs before each call (e.g. to kill a worker mid-send in a crash test).
    """

    channel_id: str
    posts: list[SentPost] = field(default_factory=list)
    script: deque[PublishError | str] = field(default_factory=deque)
    find_fails: bool = False
    on_publish: Callable[[OutboxItem], None] | None = None
    calls: int = 0

    def publish(self, item: OutboxItem, update: Update | None) -> PublishResult:
        self.calls += 1
        if self.on_publish is not None:
            self.on_publish(item)
        if self.script:
            step = self.script.popleft()
            if step == "sent-then-unknown":
                self._record(item)
                raise OutcomeUnknownError("timed out after sending", channel_id=self.channel_id)
            if step == "sent-then-5xx":  # accepted, then the platform answered 503 anyway
                self._record(item)
                raise TransientPublishError("x answered 503", channel_id=self.channel_id,
                                            status=503)
            assert isinstance(step, PublishError)
            raise step
        return self._record(item)

    def _record(self, item: OutboxItem) -> PublishResult:
        post_id = f"{self.channel_id}-{len(self.posts) + 1}"
        self.posts.append(SentPost(item.id, item.dedupe_key, str(item.action), item.body,
                                   post_id, item.reply_to))
        return PublishResult(post_id=post_id, url=f"https://example.test/{post_id}")

    def find_existing(self, item: OutboxItem, update: Update | None) -> PublishResult | None:
        if self.find_fails:
            raise OutcomeUnknownError("cannot tell", channel_id=self.channel_id)
        for p in self.posts:
            if p.dedupe_key == item.dedupe_key:
                return PublishResult(post_id=p.post_id, url=f"https://example.test/{p.post_id}")
        return None

    def close(self) -> None:
        return None


# -- store helpers for tests (each one unit of work) ------------------------------------------
def enqueue(store: Store, items: Iterable[NewOutboxItem], *, now: datetime,
            actor: str = "test") -> list[int]:
    """Queue items directly, as the watcher would."""
    with store.unit_of_work() as uow:
        ids = uow.outbox.add(list(items), at=now, actor=actor)
        uow.commit()
    return ids


def append_audit(store: Store, *, actor: str, action: str, subject: str, reason: str,
                 now: datetime, details: dict[str, object] | None = None) -> None:
    """Append one audit event."""
    with store.unit_of_work() as uow:
        uow.audit.append(NewAuditEvent(actor, action, subject, reason, now, dict(details or {})))
        uow.commit()


def save_source_state(store: Store, state: SourceState) -> None:
    """Store a source's state outside any poll."""
    with store.unit_of_work() as uow:
        uow.sources.save(state)
        uow.commit()


def record_updates(store: Store, updates: Iterable[Update], *,
                   baseline: bool) -> list[RecordedUpdate]:
    """Store updates as a poll would (revisions, no matching)."""
    from crisiscomms.services.watch import Watcher

    with store.unit_of_work() as uow:
        out = Watcher._record_updates(uow, list(updates), baseline)
        uow.commit()
    return out


def claim_and_start_send(store: Store, item_id: int, *, worker: str, now: datetime,
                         lease_seconds: float) -> OutboxItem:
    """Claim an item and record that its request goes out (what a dispatcher does first)."""
    from datetime import timedelta

    lease = timedelta(seconds=lease_seconds)
    with store.unit_of_work() as uow:
        item = uow.outbox.get(item_id)
        leased = uow.outbox.save(item, outbox.claim(item, owner=worker, until=now + lease,
                                                    out_of_hours=False, over_cap=False),
                                 ItemEvent(now, "leased", f"leased by {worker}", worker))
        sending = uow.outbox.save(leased, outbox.start_send(leased, at=now, until=now + lease),
                                  ItemEvent(now, "sending", "request sent", worker))
        uow.commit()
    return sending
