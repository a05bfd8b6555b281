"""The ports: narrow interfaces between the core and its adapters.

The domain and the services depend only on these Protocols; adapters in ``adapters/sources``,
``adapters/publishers`` and ``adapters/store`` implement them and never import each other.
Fakes in ``crisiscomms.testing`` satisfy them structurally (no inheritance needed).

The store is a **unit of work** over repositories (cosmicpython's pattern)::

    with store.unit_of_work() as uow:
        before = uow.outbox.get(item_id)
        after = outbox.approve(before, by=operator, at=now, reason=why)   # domain transition
        uow.outbox.save(before, after, ItemEvent(now, "queued", why, operator))
        uow.audit.append(NewAuditEvent(operator, "queue.approve", f"item:{item_id}", why, now))
        uow.commit()

Leaving the block without ``commit()`` rolls everything back. The service chooses every state,
event name and reason; the store only persists, and refuses (``StaleWriteError``) a write based
on a copy that someone else has changed since or a lease that has been taken over. Queries that
only read go through ``Store``'s own read methods (each one short read transaction).
"""

from __future__ import annotations

import builtins
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime, timedelta
from types import TracebackType
from typing import Any, Protocol, Self, runtime_checkable

from pydantic import SecretStr

from crisiscomms.domain.audit import ChainReport
from crisiscomms.domain.models import (
    AuditEvent,
    ChannelCounters,
    ChannelState,
    Doorbell,
    Incident,
    ItemEvent,
    LiveWindow,
    NewAuditEvent,
    NewOutboxItem,
    OutboxItem,
    PollResult,
    PublishResult,
    PushStatus,
    SourceState,
    Update,
    WatcherInfo,
)


@runtime_checkable
class Clock(Protocol):
    """Where the time comes from. Injected everywhere; nothing else reads the system time."""

    def now(self) -> datetime: ...


@runtime_checkable
class Source(Protocol):
    """Polls one official source (or one batch of them, as X does).

    ``key`` names the state row the watcher keeps for it (cursor, ETag, failures);
    ``source_ids`` are the catalogue ids whose updates it may return. ``poll`` raises only
    ``SourceError`` subclasses; vendor exceptions are translated at the adapter boundary.
    """

    key: str
    source_ids: tuple[str, ...]

    async def poll(self, state: SourceState, now: datetime) -> PollResult: ...

    async def aclose(self) -> None: ...


class Ring(Protocol):
    """What a push listener calls with its news (the watcher's ``ring``; never blocks)."""

    def __call__(self, bell: Doorbell, /) -> None: ...


@runtime_checkable
class PushListener(Protocol):
    """A push connection (a streaming API, a WebSub subscription) beside polling.

    Push is a doorbell, never a second copy of the update: ``run`` calls ``ring`` with the
    catalogue ids of the sources an event belongs to and the watcher polls them at once through
    their ordinary ``Source``. After every (re)connection ``run`` rings all its sources with
    ``reason="connected"``, so whatever was published while it was away is read by polling:
    nothing is missed, nothing doubled. ``run`` goes on until cancelled, reconnecting with
    backoff; it raises nothing but ``CancelledError``. Polling goes on beside it as the
    fallback, at the source's ordinary interval.
    """

    key: str
    kind: str
    source_ids: tuple[str, ...]

    async def run(self, ring: Ring) -> None: ...

    def status(self) -> PushStatus: ...


@runtime_checkable
class Publisher(Protocol):
    """Publishes outbox items to one of our channels.

    ``publish`` raises only ``PublishError`` subclasses. ``find_existing`` is asked after an
    attempt whose outcome is unknown: it returns the earlier post if the platform has it,
    ``None`` if the platform certainly does not, and raises ``OutcomeUnknownError`` when it
    cannot tell (the item then goes to needs-review rather than risk a duplicate).
    """

    channel_id: str

    def publish(self, item: OutboxItem, update: Update | None) -> PublishResult: ...

    def find_existing(self, item: OutboxItem, update: Update | None) -> PublishResult | None: ...

    def close(self) -> None: ...


class Credentials(Protocol):
    """Where a channel's secrets come from (environment, ``.env``, secret files; a drill's own)."""

    def get(self, env_name: str) -> SecretStr | None: ...


# -- the store ---------------------------------------------------------------------------------
class IncidentRepository(Protocol):
    def get(self, incident_id: int) -> Incident:
        """The incident, or ``NotFoundError``."""

    def list(self, *, active_only: bool = False) -> builtins.list[Incident]: ...

    def add(self, *, playbook: str, hashtags: Sequence[str], lead: str, reason: str,
            operator: str, at: datetime) -> Incident:
        """A new active incident; ``RefusedError`` if the playbook already has one."""

    def stand_down(self, incident_id: int, *, at: datetime, operator: str,
                   reason: str) -> bool:
        """Close an active incident; False if it was no longer active."""

    def change_lead(self, incident_id: int, *, lead: str) -> bool:
        """Set an active incident's lead; False if it was no longer active."""


class SourceStateRepository(Protocol):
    def get(self, key: str) -> SourceState: ...

    def get_many(self, keys: Iterable[str]) -> dict[str, SourceState]:
        """The states of ``keys`` in one read (a key never stored: its empty state)."""

    def list(self) -> builtins.list[SourceState]: ...

    def failing(self, min_failures: int) -> builtins.list[SourceState]:
        """The states with at least ``min_failures`` failed polls in a row, by key."""

    def claim(self, seen: Mapping[str, SourceState], *, owner: str, now: datetime,
              lease: timedelta) -> dict[str, SourceState]:
        """Lease the sources whose state is still as ``seen`` (same fence, same last poll) and
        whose lease is free or expired; skip any another watcher holds. Returns the claimed
        states, each with its new fencing token."""

    def save(self, state: SourceState, *, owner: str | None = None) -> None:
        """Store a source's state and release its lease. With ``owner``, only if that owner
        still holds the lease under ``state.fence`` (else ``StaleWriteError``)."""


class UpdateRepository(Protocol):
    def latest(self, source_id: str, external_id: str) -> tuple[int, str] | None:
        """(revision, content hash) of the newest stored revision, if any."""

    def add(self, update: Update, *, revision: int, baseline: bool) -> Update:
        """Store one revision; returns it with its id."""

    def set_disposition(self, update_id: int, disposition: str) -> None: ...

    def get(self, update_id: int) -> Update: ...

    def list(self, *, source_ids: Sequence[str] | None = None,
             published_from: datetime | None = None, published_to: datetime | None = None,
             seen_from: datetime | None = None, seen_to: datetime | None = None,
             ) -> builtins.list[tuple[Update, str, bool]]:
        """Updates with their disposition and baseline flag, oldest first."""


class OutboxRepository(Protocol):
    def add(self, items: Sequence[NewOutboxItem], *, at: datetime,
            actor: str = "watcher") -> builtins.list[int]:
        """Insert items; a repeated ``dedupe_key`` is ignored. Returns the new ids."""

    def get(self, item_id: int) -> OutboxItem: ...

    def list(self, *, states: Sequence[str] | None = None, channel_id: str | None = None,
             incident_id: int | None = None,
             limit: int | None = None) -> builtins.list[OutboxItem]: ...

    def save(self, before: OutboxItem, after: OutboxItem, event: ItemEvent, *,
             skip_locked: bool = False) -> OutboxItem:
        """Persist a transition (see ``crisiscomms.domain.outbox``) if the stored item is still
        ``before`` (same version and fencing token); else ``StaleWriteError`` and nothing is
        written. ``skip_locked`` refuses at once when another transaction holds the row (a
        claim). Returns the stored item (its version bumped)."""

    def due_channels(self, now: datetime) -> builtins.list[str]:
        """The channels that have pending items due at ``now`` (see ``next_due``), by name."""

    def next_due(self, channel_id: str, *, now: datetime, after: OutboxItem | None = None,
                 limit: int = 10) -> builtins.list[OutboxItem]:
        """The next ``limit`` pending (queued, held, needs-approval) items of ``channel_id`` that
        are due (no ``not_before`` after ``now``), in dispatch order, after ``after`` in it;
        each is locked until the unit of work ends, so it can be decided and claimed in it.

        Dispatch order is who gets a scarce quota first: the lead agency's items, then higher
        CAP severity, then the source's publication time (none first), then id. Rows another
        unit of work has locked are skipped, not waited for (PostgreSQL: one ``SELECT ... FOR
        UPDATE SKIP LOCKED LIMIT k``; SQLite's writer lock and the memory store's lock
        serialise units of work anyway), so concurrent dispatchers each get other items and
        none decides an item that another is claiming. Versions and fencing tokens still guard
        every ``save`` of what is returned."""

    def renew(self, item: OutboxItem, *, until: datetime) -> bool:
        """Extend the lease of an in-flight item while its holder is still sending; False if
        the lease was taken over meanwhile."""

    def expired(self, now: datetime) -> builtins.list[OutboxItem]:
        """In-flight items whose lease ran out (their worker died or stalled)."""

    def events(self, item_id: int) -> builtins.list[ItemEvent]: ...

    def counts(self) -> dict[str, int]: ...

    def published_for(self, update_id: int, channel_id: str) -> OutboxItem | None:
        """An item already published on this channel for this update."""

    def threads(self, source_id: str, external_ids: Sequence[str]) -> dict[str, int]:
        """Our newest item per channel (channel id -> item id), published or still to go,
        relaying any of these updates of ``source_id``: where a CAP Update or Cancel of them
        is threaded."""

    def counters(self, channel_id: str, *, now: datetime, week_start: datetime,
                 day_start: datetime) -> ChannelCounters: ...


class ChannelRepository(Protocol):
    def pause(self, channel_id: str, *, until: datetime, reason: str,
              wait_seconds: float) -> None: ...

    def set_problem(self, channel_id: str, problem: str | None) -> None:
        """Record why a channel cannot post at all (``None``: it can again)."""

    def list(self) -> dict[str, ChannelState]: ...


class WindowRepository(Protocol):
    def add(self, *, start: datetime, end: datetime, reason: str, operator: str,
            at: datetime) -> LiveWindow: ...

    def remove(self, window_id: int) -> bool: ...

    def list(self) -> builtins.list[LiveWindow]: ...


class AuditLog(Protocol):
    def append(self, event: NewAuditEvent) -> None:
        """Add an event to the chain when the unit of work commits (under the chain's lock)."""

    def events(self, *, since: datetime | None = None, limit: int | None = None,
               action_prefix: str | None = None) -> builtins.list[AuditEvent]: ...

    def verify(self, *, expect_head: tuple[int | None, str] | None = None) -> ChainReport:
        """Walk the chain (``expect_head``: a head witnessed earlier that must be in it)."""
        ...


class WatcherRegistry(Protocol):
    def heartbeat(self, info: WatcherInfo) -> None: ...

    def list(self) -> builtins.list[WatcherInfo]: ...

    def remove(self, worker_id: str) -> None: ...


class UnitOfWork(Protocol):
    """One transaction over every repository."""

    @property
    def incidents(self) -> IncidentRepository: ...

    @property
    def sources(self) -> SourceStateRepository: ...

    @property
    def updates(self) -> UpdateRepository: ...

    @property
    def outbox(self) -> OutboxRepository: ...

    @property
    def channels(self) -> ChannelRepository: ...

    @property
    def windows(self) -> WindowRepository: ...

    @property
    def audit(self) -> AuditLog: ...

    @property
    def watchers(self) -> WatcherRegistry: ...


    def __enter__(self) -> Self: ...

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None: ...

    def commit(self) -> None: ...

    def rollback(self) -> None: ...


@runtime_checkable
class Store(Protocol):
    """A crisiscomms database: units of work for changes, short reads for queries."""

    def unit_of_work(self) -> UnitOfWork:
        """A write transaction (serialised with other writers where the backend needs it)."""

    def reader(self) -> UnitOfWork:
        """A read-only transaction (a consistent snapshot; ``commit`` is not allowed)."""

    def describe(self) -> str:
        """The database, for people: a path, or a URL with any password masked."""

    @property
    def schema_version(self) -> int: ...

    def close(self) -> None: ...

    # Queries (each its own read transaction).
    def get_item(self, item_id: int) -> OutboxItem: ...
    def items(self, *, states: Sequence[str] | None = None, channel_id: str | None = None,
              incident_id: int | None = None,
              limit: int | None = None) -> builtins.list[OutboxItem]: ...
    def item_events(self, item_id: int) -> builtins.list[ItemEvent]: ...
    def queue_counts(self) -> dict[str, int]: ...
    def get_incident(self, incident_id: int) -> Incident: ...
    def incidents(self, *, active_only: bool = False) -> builtins.list[Incident]: ...
    def active_incidents(self) -> builtins.list[Incident]: ...
    def get_update(self, update_id: int) -> Update: ...
    def updates(self, **filters: Any) -> builtins.list[tuple[Update, str, bool]]: ...
    def source_state(self, key: str) -> SourceState: ...
    def source_states(self) -> builtins.list[SourceState]: ...
    def failing_sources(self, min_failures: int) -> builtins.list[SourceState]: ...
    def channel_states(self) -> dict[str, ChannelState]: ...
    def windows(self) -> builtins.list[LiveWindow]: ...
    def audit_events(self, since: datetime | None = None, limit: int | None = None,
                     action_prefix: str | None = None) -> builtins.list[AuditEvent]: ...
    def verify_audit(self, *, expect_head: tuple[int | None, str] | None = None,
                     ) -> ChainReport: ...
    def watchers(self) -> builtins.list[WatcherInfo]: ...
