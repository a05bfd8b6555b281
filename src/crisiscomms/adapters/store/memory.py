"""The in-memory store: the Store port in plain Python, for tests and what-if runs.

It passes the same contract suite as SQLite and PostgreSQL. One lock serialises units of work
(within one process); a unit of work that ends without ``commit()`` restores the tables as they
were when it began.
"""

from __future__ import annotations

import builtins
import json
import threading
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from types import TracebackType
from typing import Self

from crisiscomms.adapters.store.migrations import SQLITE_MIGRATIONS
from crisiscomms.adapters.store.queries import StoreQueries
from crisiscomms.adapters.store.records import recorded_meanwhile
from crisiscomms.domain.audit import (
    GENESIS,
    ChainReport,
    StoredLink,
    details_text,
    event_hash,
    scheme_for,
    verify_chain,
)
from crisiscomms.domain.clock import SystemClock, isoformat, parse_instant
from crisiscomms.domain.errors import NotFoundError, RefusedError, StaleWriteError, StoreError
from crisiscomms.domain.models import (
    AuditEvent,
    ChannelCounters,
    ChannelState,
    Incident,
    ItemEvent,
    ItemState,
    LiveWindow,
    NewAuditEvent,
    NewOutboxItem,
    OutboxItem,
    SourceState,
    Update,
    WatcherInfo,
)
from crisiscomms.ports import Clock

IN_FLIGHT = (ItemState.LEASED, ItemState.SENDING)
PENDING = (ItemState.QUEUED, ItemState.HELD, ItemState.NEEDS_APPROVAL)
EARLIEST = datetime(1, 1, 1, tzinfo=UTC)


def _due(item: OutboxItem, now: datetime) -> bool:
    return item.state in PENDING and (item.not_before is None or item.not_before <= now)


def _dispatch_order(item: OutboxItem) -> tuple[int, int, datetime, int]:
    """``OutboxRepository.next_due``'s order, as the SQL stores sort it."""
    return (0 if item.is_lead else 1, -item.severity_rank, item.published_at or EARLIEST,
            item.id)


@dataclass
class _Tables:
    incidents: dict[int, Incident] = field(default_factory=dict)
    sources: dict[str, SourceState] = field(default_factory=dict)
    updates: dict[int, tuple[Update, str, bool]] = field(default_factory=dict)
    outbox: dict[int, OutboxItem] = field(default_factory=dict)
    dedupe: dict[str, int] = field(default_factory=dict)
    events: dict[int, builtins.list[ItemEvent]] = field(default_factory=dict)
    channels: dict[str, ChannelState] = field(default_factory=dict)
    windows: dict[int, LiveWindow] = field(default_factory=dict)
    audit: builtins.list[StoredLink] = field(default_factory=list)
    head: tuple[int, str] = (0, GENESIS)
    watchers: dict[str, WatcherInfo] = field(default_factory=dict)
    ids: dict[str, int] = field(default_factory=dict)

    def copy(self) -> _Tables:
        return _Tables(dict(self.incidents), dict(self.sources), dict(self.updates),
                       dict(self.outbox), dict(self.dedupe),
                       {k: list(v) for k, v in self.events.items()}, dict(self.channels),
                       dict(self.windows), list(self.audit), self.head, dict(self.watchers),
                       dict(self.ids))

    def next_id(self, table: str) -> int:
        self.ids[table] = self.ids.get(table, 0) + 1
        return self.ids[table]


class _Repo:
    def __init__(self, t: _Tables) -> None:
        self.t = t


class MemIncidents(_Repo):
    def get(self, incident_id: int) -> Incident:
        try:
            return self.t.incidents[incident_id]
        except KeyError:
            raise NotFoundError(f"unknown incident {incident_id}") from None

    def list(self, *, active_only: bool = False) -> builtins.list[Incident]:
        return [i for _, i in sorted(self.t.incidents.items()) if i.active or not active_only]

    def add(self, *, playbook: str, hashtags: Sequence[str], lead: str, reason: str,
            operator: str, at: datetime) -> Incident:
        for i in self.t.incidents.values():
            if i.playbook == playbook and i.active:
                raise RefusedError(f"playbook {playbook!r} is already active as incident "
                                   f"{i.id}; deactivate it first or use that incident")
        new = Incident(id=self.t.next_id("incidents"), playbook=playbook,
                       hashtags=tuple(hashtags), lead=lead, activated_at=at,
                       activated_by=operator, reason=reason)
        self.t.incidents[new.id] = new
        return new

    def stand_down(self, incident_id: int, *, at: datetime, operator: str,
                   reason: str) -> bool:
        inc = self.t.incidents.get(incident_id)
        if inc is None or not inc.active:
            return False
        self.t.incidents[incident_id] = replace(inc, deactivated_at=at, deactivated_by=operator,
                                                deactivation_reason=reason)
        return True

    def change_lead(self, incident_id: int, *, lead: str) -> bool:
        inc = self.t.incidents.get(incident_id)
        if inc is None or not inc.active:
            return False
        self.t.incidents[incident_id] = replace(inc, lead=lead)
        return True


class MemSources(_Repo):
    def get(self, key: str) -> SourceState:
        return self.t.sources.get(key) or SourceState(source_id=key)

    def get_many(self, keys: Iterable[str]) -> dict[str, SourceState]:
        return {k: self.get(k) for k in sorted(set(keys))}

    def list(self) -> builtins.list[SourceState]:
        return [s for _, s in sorted(self.t.sources.items())]

    def failing(self, min_failures: int) -> builtins.list[SourceState]:
        return [s for s in self.list() if s.failures >= min_failures]

    def claim(self, seen: Mapping[str, SourceState], *, owner: str, now: datetime,
              lease: timedelta) -> dict[str, SourceState]:
        out: dict[str, SourceState] = {}
        for key in sorted(seen):
            st = self.get(key)
            if st.fence != seen[key].fence or st.last_polled_at != seen[key].last_polled_at:
                continue  # claimed or polled by another watcher since we looked
            if st.lease_until is not None and st.lease_until >= now:
                continue
            claimed = replace(st, lease_owner=owner, lease_until=now + lease, fence=st.fence + 1)
            self.t.sources[key] = claimed
            out[key] = claimed
        return out

    def save(self, state: SourceState, *, owner: str | None = None) -> None:
        stored = self.t.sources.get(state.source_id)
        if owner is not None:
            if stored is None or stored.lease_owner != owner or stored.fence != state.fence:
                raise StaleWriteError(
                    f"source {state.source_id}: the poll's lease (token {state.fence}, {owner})"
                    " was taken over by another watcher; its result was not recorded")
            self.t.sources[state.source_id] = replace(state, lease_owner=None, lease_until=None)
            return
        keep = stored or SourceState(source_id=state.source_id)
        self.t.sources[state.source_id] = replace(
            state, lease_owner=keep.lease_owner, lease_until=keep.lease_until, fence=keep.fence)


class MemUpdates(_Repo):
    def latest(self, source_id: str, external_id: str) -> tuple[int, str] | None:
        best: Update | None = None
        for u, _, _ in self.t.updates.values():
            if u.source_id == source_id and u.external_id == external_id and \
                    (best is None or u.revision > best.revision):
                best = u
        return None if best is None else (best.revision, best.content_hash)

    def add(self, update: Update, *, revision: int, baseline: bool) -> Update:
        if any(u.source_id == update.source_id and u.external_id == update.external_id
               and u.revision == revision for u, _, _ in self.t.updates.values()):
            raise StaleWriteError(recorded_meanwhile(update, revision))
        stored = replace(update, id=self.t.next_id("updates"), revision=revision)
        self.t.updates[stored.id or 0] = (stored, "", baseline)
        return stored

    def set_disposition(self, update_id: int, disposition: str) -> None:
        u, _, baseline = self.t.updates[update_id]
        self.t.updates[update_id] = (u, disposition, baseline)

    def get(self, update_id: int) -> Update:
        try:
            return self.t.updates[update_id][0]
        except KeyError:
            raise NotFoundError(f"unknown update {update_id}") from None

    def list(self, *, source_ids: Sequence[str] | None = None,
             published_from: datetime | None = None, published_to: datetime | None = None,
             seen_from: datetime | None = None, seen_to: datetime | None = None,
             ) -> builtins.list[tuple[Update, str, bool]]:
        out = []
        for u, disp, base in self.t.updates.values():
            if source_ids is not None and u.source_id not in source_ids:
                continue
            if (published_from and u.published_at < published_from) or \
                    (published_to and u.published_at >= published_to) or \
                    (seen_from and u.fetched_at < seen_from) or \
                    (seen_to and u.fetched_at >= seen_to):
                continue
            out.append((u, disp, base))
        return sorted(out, key=lambda r: (r[0].published_at, r[0].id or 0))


class MemOutbox(_Repo):
    def add(self, items: Sequence[NewOutboxItem], *, at: datetime,
            actor: str = "watcher") -> builtins.list[int]:
        new_ids = []
        for it in items:
            if it.dedupe_key in self.t.dedupe:
                continue
            item_id = self.t.next_id("outbox")
            self.t.outbox[item_id] = OutboxItem(
                id=item_id, dedupe_key=it.dedupe_key, channel_id=it.channel_id,
                action=it.action, text=it.text, state=it.state, created_at=at,
                update_id=it.update_id, incident_id=it.incident_id, source_id=it.source_id,
                is_lead=it.is_lead, severity_rank=it.severity_rank,
                published_at=it.published_at, approval=it.approval, reason=it.reason,
                native=it.native, url=it.url, expires_at=it.expires_at,
                reply_to_item=it.reply_to_item)
            self.t.dedupe[it.dedupe_key] = item_id
            self.t.events[item_id] = [ItemEvent(at, str(it.state), it.reason or "queued", actor)]
            new_ids.append(item_id)
        return new_ids

    def get(self, item_id: int) -> OutboxItem:
        try:
            return self.t.outbox[item_id]
        except KeyError:
            raise NotFoundError(f"unknown outbox item {item_id}") from None

    def list(self, *, states: Sequence[str] | None = None, channel_id: str | None = None,
             incident_id: int | None = None, limit: int | None = None) -> builtins.list[OutboxItem]:
        wanted = {str(s) for s in states} if states else None
        out = [i for _, i in sorted(self.t.outbox.items())
               if (wanted is None or str(i.state) in wanted)
               and (not channel_id or i.channel_id == channel_id)
               and (incident_id is None or i.incident_id == incident_id)]
        return out[:limit] if limit else out

    def save(self, before: OutboxItem, after: OutboxItem, event: ItemEvent, *,
             skip_locked: bool = False) -> OutboxItem:
        stored = self.t.outbox.get(before.id)
        if stored is None or stored.version != before.version or stored.fence != before.fence:
            raise StaleWriteError(
                f"item {before.id}: changed by another worker or operator since it was read "
                f"(version {before.version}, token {before.fence}); nothing was written")
        new = replace(after, version=before.version + 1, text=stored.text,
                      dedupe_key=stored.dedupe_key)
        self.t.outbox[before.id] = new
        self.t.events.setdefault(before.id, []).append(event)
        return new

    def due_channels(self, now: datetime) -> builtins.list[str]:
        return sorted({i.channel_id for i in self.t.outbox.values() if _due(i, now)})

    def next_due(self, channel_id: str, *, now: datetime, after: OutboxItem | None = None,
                 limit: int = 10) -> builtins.list[OutboxItem]:
        # The unit of work holds the store's lock: nobody else can be claiming these.
        due = sorted((i for i in self.t.outbox.values()
                      if i.channel_id == channel_id and _due(i, now)), key=_dispatch_order)
        if after is not None:
            last = _dispatch_order(after)
            due = [i for i in due if _dispatch_order(i) > last]
        return due[:max(1, limit)]

    def renew(self, item: OutboxItem, *, until: datetime) -> bool:
        stored = self.t.outbox.get(item.id)
        if stored is None or stored.fence != item.fence or \
                stored.lease_owner != item.lease_owner or stored.state not in IN_FLIGHT:
            return False
        self.t.outbox[item.id] = replace(stored, lease_until=until)
        return True

    def expired(self, now: datetime) -> builtins.list[OutboxItem]:
        return [i for _, i in sorted(self.t.outbox.items()) if i.state in IN_FLIGHT
                and i.lease_until is not None and i.lease_until < now]

    def events(self, item_id: int) -> builtins.list[ItemEvent]:
        return list(self.t.events.get(item_id, []))

    def counts(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for i in self.t.outbox.values():
            out[str(i.state)] = out.get(str(i.state), 0) + 1
        return out

    def threads(self, source_id: str, external_ids: Sequence[str]) -> dict[str, int]:
        wanted = set(external_ids)
        live = {ItemState.PUBLISHED, ItemState.QUEUED, ItemState.HELD,
                ItemState.NEEDS_APPROVAL, *IN_FLIGHT}
        out: dict[str, int] = {}
        for item_id, i in sorted(self.t.outbox.items()):
            if i.state not in live or i.update_id is None or i.update_id not in self.t.updates:
                continue
            u = self.t.updates[i.update_id][0]
            if u.source_id == source_id and u.external_id in wanted:
                out[i.channel_id] = item_id
        return out

    def published_for(self, update_id: int, channel_id: str) -> OutboxItem | None:
        for _, i in sorted(self.t.outbox.items()):
            if i.update_id == update_id and i.channel_id == channel_id and \
                    i.state is ItemState.PUBLISHED:
                return i
        return None

    def counters(self, channel_id: str, *, now: datetime, week_start: datetime,
                 day_start: datetime) -> ChannelCounters:
        hour_ago = now - timedelta(hours=1)
        done = [(i.done_at, i.incident_id is None) for i in self.t.outbox.values()
                if i.state is ItemState.PUBLISHED and i.channel_id == channel_id
                and i.done_at is not None]
        paused = self.t.channels.get(channel_id)
        return ChannelCounters(
            week_count=sum(1 for at, _ in done if at >= week_start),
            normal_week_count=sum(1 for at, normal in done if at >= week_start and normal),
            normal_day_count=sum(1 for at, normal in done if at >= day_start and normal),
            last_hour_count=sum(1 for at, _ in done if at >= hour_ago),
            paused_until=paused.paused_until if paused else None)


class MemChannels(_Repo):
    def pause(self, channel_id: str, *, until: datetime, reason: str,
              wait_seconds: float) -> None:
        old = self.t.channels.get(channel_id) or ChannelState(channel_id)
        self.t.channels[channel_id] = ChannelState(
            channel_id, until, reason, old.rate_limit_waits + 1,
            old.rate_limit_wait_seconds + float(wait_seconds), old.problem)

    def set_problem(self, channel_id: str, problem: str | None) -> None:
        old = self.t.channels.get(channel_id) or ChannelState(channel_id)
        self.t.channels[channel_id] = replace(old, problem=problem)

    def list(self) -> dict[str, ChannelState]:
        return dict(sorted(self.t.channels.items()))


class MemWindows(_Repo):
    def add(self, *, start: datetime, end: datetime, reason: str, operator: str,
            at: datetime) -> LiveWindow:
        w = LiveWindow(start, end, reason, self.t.next_id("windows"), operator)
        self.t.windows[w.id or 0] = w
        return w

    def remove(self, window_id: int) -> bool:
        return self.t.windows.pop(window_id, None) is not None

    def list(self) -> builtins.list[LiveWindow]:
        return sorted(self.t.windows.values(), key=lambda w: (w.start, w.id or 0))


class MemAudit(_Repo):
    def __init__(self, t: _Tables, *, key: bytes | None = None,
                 wall_clock: Clock | None = None) -> None:
        super().__init__(t)
        self.key = key
        self.wall_clock: Clock = wall_clock or SystemClock()
        self.pending: builtins.list[NewAuditEvent] = []

    def append(self, event: NewAuditEvent) -> None:
        self.pending.append(event)

    def flush(self) -> None:
        seq, prev = self.t.head
        scheme = scheme_for(self.key)
        wall = isoformat(self.wall_clock.now())
        for e in self.pending:
            seq += 1
            at, det = isoformat(e.at), details_text(e.details)
            h = event_hash(seq, at, e.actor, e.action, e.subject, e.reason, det, prev,
                           recorded_at=wall, scheme=scheme, key=self.key)
            self.t.audit.append(StoredLink(seq, at, e.actor, e.action, e.subject, e.reason, det,
                                           prev, h, wall, scheme))
            prev = h
        self.t.head = (seq, prev)
        self.pending.clear()

    def events(self, *, since: datetime | None = None, limit: int | None = None,
               action_prefix: str | None = None) -> builtins.list[AuditEvent]:
        out = []
        for r in self.t.audit:
            at = parse_instant(r.at)
            if (since is not None and at < since) or \
                    (action_prefix and not r.action.startswith(action_prefix)):
                continue
            out.append(AuditEvent(r.seq, at, r.actor, r.action, r.subject, r.reason,
                                  json.loads(r.details), r.prev_hash, r.hash,
                                  parse_instant(r.recorded_at) if r.recorded_at else None,
                                  r.scheme))
        return out[:limit] if limit else out

    def verify(self, *, expect_head: tuple[int | None, str] | None = None) -> ChainReport:
        return verify_chain(list(self.t.audit), self.t.head, key=self.key,
                            expect_head=expect_head)


class MemWatchers(_Repo):
    def heartbeat(self, info: WatcherInfo) -> None:
        self.t.watchers[info.worker_id] = info

    def list(self) -> builtins.list[WatcherInfo]:
        return sorted(self.t.watchers.values(), key=lambda w: (w.last_seen_at, w.worker_id),
                      reverse=True)

    def remove(self, worker_id: str) -> None:
        self.t.watchers.pop(worker_id, None)


class MemoryUnitOfWork:
    """One unit of work on the in-memory tables (see ``crisiscomms.ports.UnitOfWork``)."""

    incidents: MemIncidents
    sources: MemSources
    updates: MemUpdates
    outbox: MemOutbox
    channels: MemChannels
    windows: MemWindows
    audit: MemAudit
    watchers: MemWatchers
    def __init__(self, store: MemoryStore, *, readonly: bool) -> None:
        self._store = store
        self._readonly = readonly
        self._saved: _Tables | None = None
        self._done = False

    def __enter__(self) -> Self:
        self._store._lock.acquire()
        t = self._store._tables
        self._saved = None if self._readonly else t.copy()
        self._done = False
        self.incidents = MemIncidents(t)
        self.sources = MemSources(t)
        self.updates = MemUpdates(t)
        self.outbox = MemOutbox(t)
        self.channels = MemChannels(t)
        self.windows = MemWindows(t)
        self.audit = MemAudit(t, key=self._store.audit_key,
                              wall_clock=self._store.wall_clock)
        self.watchers = MemWatchers(t)
        return self

    def commit(self) -> None:
        if self._readonly:
            raise StoreError("a read-only unit of work cannot commit")
        self.audit.flush()
        self._done = True

    def rollback(self) -> None:
        if self._saved is not None and not self._done:
            self._store._tables.__dict__.update(self._saved.__dict__)
        self._done = True

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        try:
            self.rollback()
        finally:
            self._store._lock.release()


class MemoryStore(StoreQueries):
    """See the module docstring. Reads and writes take the same lock."""

    schema_version = max(v for v, _, _ in SQLITE_MIGRATIONS)

    def __init__(self, *, audit_key: bytes | None = None,
                 wall_clock: Clock | None = None) -> None:
        self.audit_key = audit_key or None
        self.wall_clock: Clock = wall_clock or SystemClock()
        self._lock = threading.RLock()
        self._tables = _Tables()

    def unit_of_work(self) -> MemoryUnitOfWork:
        return MemoryUnitOfWork(self, readonly=False)

    def reader(self) -> MemoryUnitOfWork:
        return MemoryUnitOfWork(self, readonly=True)

    def describe(self) -> str:
        return "memory://"

    def close(self) -> None:
        return None
