"""The repositories and unit of work shared by the SQL backends (SQLite and PostgreSQL).

The SQL is written once, with ``?`` placeholders and portable constructs; a backend supplies a
``SqlTx`` (its connection inside one transaction, with its own error mapping) and a ``Dialect``
(how instants are stored, how a row is locked). Nothing here decides an event's name, a reason
or which state may follow which: that is ``crisiscomms.domain`` and the services.
"""

from __future__ import annotations

import builtins
import contextlib
import json
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from types import TracebackType
from typing import Any, Protocol, Self

from crisiscomms.adapters.store.records import (
    cap_to_json,
    dt,
    dumps,
    incident_from_row,
    item_from_row,
    native_to_json,
    push_from_json,
    push_to_json,
    recorded_meanwhile,
    state_from_row,
    update_from_row,
)
from crisiscomms.domain.audit import (
    GENESIS,
    ChainReport,
    StoredLink,
    details_text,
    event_hash,
    scheme_for,
    verify_chain,
)
from crisiscomms.domain.clock import SystemClock, isoformat
from crisiscomms.domain.errors import NotFoundError, RefusedError, StaleWriteError, StoreError
from crisiscomms.domain.models import (
    AuditEvent,
    ChannelCounters,
    ChannelState,
    Incident,
    ItemEvent,
    LiveWindow,
    NewAuditEvent,
    NewOutboxItem,
    OutboxItem,
    SourceState,
    Update,
    WatcherInfo,
)
from crisiscomms.ports import Clock

Row = Mapping[str, Any]
CHUNK = 500  # ids per IN (...) list


@dataclass(frozen=True)
class Dialect:
    """What differs between the SQL backends."""

    name: str
    ts: Callable[[datetime | None], Any]  # an instant as the database stores it
    for_update: str  # row lock of a read that will be written ("" where the db lock suffices)
    skip_locked: str  # row lock that skips rows other transactions hold


class SqlTx(Protocol):
    """A backend connection inside one transaction."""

    dialect: Dialect

    def rows(self, sql: str, params: Sequence[Any] = ()) -> builtins.list[Row]: ...

    def run(self, sql: str, params: Sequence[Any] = ()) -> int:
        """Execute; the number of rows changed."""

    def is_unique_violation(self, exc: BaseException) -> bool: ...

    @contextlib.contextmanager
    def savepoint(self) -> Iterator[None]: ...


def _one(tx: SqlTx, sql: str, params: Sequence[Any] = ()) -> Row | None:
    rows = tx.rows(sql, params)
    return rows[0] if rows else None


def _marks(n: int) -> str:
    return ",".join("?" * n)


def _chunks(keys: Sequence[str]) -> Iterator[Sequence[str]]:
    """``keys`` in runs of at most ``CHUNK``, one ``IN (...)`` list each."""
    for i in range(0, len(keys), CHUNK):
        yield keys[i:i + CHUNK]


ITEM_COLUMNS = ("state", "reason", "edited_text", "approved_by", "approved_at", "not_before",
                "lease_owner", "lease_until", "attempts", "lookups", "last_error",
                "platform_post_id", "platform_url", "sent_at", "done_at", "out_of_hours",
                "over_cap", "fence")
_TIMES = {"approved_at", "not_before", "lease_until", "sent_at", "done_at"}
_PENDING = "state IN ('queued','held','needs_approval')"
_DUE = f"{_PENDING} AND (not_before IS NULL OR not_before <= ?)"
# Dispatch order (``OutboxRepository.next_due``); a missing publication time sorts first.
_ORDER = "CASE WHEN is_lead <> 0 THEN 0 ELSE 1 END, -severity_rank, COALESCE(published_at, ?), id"
EARLIEST = datetime(1, 1, 1, tzinfo=UTC)


class SqlIncidents:
    def __init__(self, tx: SqlTx) -> None:
        self.tx, self.ts = tx, tx.dialect.ts

    def get(self, incident_id: int) -> Incident:
        r = _one(self.tx, "SELECT * FROM incidents WHERE id = ?", (incident_id,))
        if r is None:
            raise NotFoundError(f"unknown incident {incident_id}")
        return incident_from_row(r)

    def list(self, *, active_only: bool = False) -> builtins.list[Incident]:
        sql = "SELECT * FROM incidents"
        if active_only:
            sql += " WHERE deactivated_at IS NULL"
        return [incident_from_row(r) for r in self.tx.rows(sql + " ORDER BY id")]

    def add(self, *, playbook: str, hashtags: Sequence[str], lead: str, reason: str,
            operator: str, at: datetime) -> Incident:
        row = _one(self.tx, "SELECT id FROM incidents WHERE playbook = ? AND deactivated_at IS "
                   "NULL", (playbook,))
        if row is not None:
            raise RefusedError(f"playbook {playbook!r} is already active as incident "
                               f"{row['id']}; deactivate it first or use that incident")
        try:
            with self.tx.savepoint():
                (new,) = self.tx.rows(
                    "INSERT INTO incidents (playbook, hashtags, lead, activated_at, "
                    "activated_by, reason) VALUES (?,?,?,?,?,?) RETURNING id",
                    (playbook, json.dumps(list(hashtags)), lead, self.ts(at), operator, reason))
        except Exception as exc:
            if self.tx.is_unique_violation(exc):  # another operator, at the same moment
                raise RefusedError(f"playbook {playbook!r} is already active") from None
            raise
        return self.get(int(new["id"]))

    def stand_down(self, incident_id: int, *, at: datetime, operator: str,
                   reason: str) -> bool:
        return bool(self.tx.run(
            "UPDATE incidents SET deactivated_at = ?, deactivated_by = ?, deactivation_reason "
            "= ? WHERE id = ? AND deactivated_at IS NULL",
            (self.ts(at), operator, reason, incident_id)))

    def change_lead(self, incident_id: int, *, lead: str) -> bool:
        return bool(self.tx.run("UPDATE incidents SET lead = ? WHERE id = ? AND "
                                "deactivated_at IS NULL", (lead, incident_id)))


class SqlSources:
    def __init__(self, tx: SqlTx) -> None:
        self.tx, self.ts = tx, tx.dialect.ts

    def get(self, key: str) -> SourceState:
        r = _one(self.tx, "SELECT * FROM source_state WHERE key = ?", (key,))
        return state_from_row(r) if r else SourceState(source_id=key)

    def get_many(self, keys: Iterable[str]) -> dict[str, SourceState]:
        wanted = sorted(set(keys))
        out = {k: SourceState(source_id=k) for k in wanted}
        for chunk in _chunks(wanted):
            for r in self.tx.rows(f"SELECT * FROM source_state WHERE key IN "
                                  f"({_marks(len(chunk))})", chunk):
                st = state_from_row(r)
                out[st.source_id] = st
        return out

    def list(self) -> builtins.list[SourceState]:
        return [state_from_row(r) for r in
                self.tx.rows("SELECT * FROM source_state ORDER BY key")]

    def failing(self, min_failures: int) -> builtins.list[SourceState]:
        return [state_from_row(r) for r in self.tx.rows(
            "SELECT * FROM source_state WHERE failures >= ? ORDER BY key", (min_failures,))]

    def claim(self, seen: Mapping[str, SourceState], *, owner: str, now: datetime,
              lease: timedelta) -> dict[str, SourceState]:
        keys = sorted(seen)
        out: dict[str, SourceState] = {}
        for chunk in _chunks(keys):
            for key in chunk:
                if seen[key].fence == 0:  # never stored: make a row to lock
                    self.tx.run("INSERT INTO source_state (key) VALUES (?) ON CONFLICT (key) "
                                "DO NOTHING", (key,))
            rows = self.tx.rows(
                f"SELECT * FROM source_state WHERE key IN ({_marks(len(chunk))}) AND "
                f"(lease_until IS NULL OR lease_until < ?) ORDER BY key "
                f"{self.tx.dialect.skip_locked}", (*chunk, self.ts(now)))
            until = now + lease
            mine = [st for st in map(state_from_row, rows)
                    if _as_seen(st, seen[st.source_id])]  # else polled since we looked
            if not mine:
                continue
            # One statement for the chunk: the rows read are held (PostgreSQL's row locks;
            # SQLite's write transaction) until the commit, so none changed meanwhile.
            n = self.tx.run(
                f"UPDATE source_state SET lease_owner = ?, lease_until = ?, fence = fence + 1 "
                f"WHERE key IN ({_marks(len(mine))})",
                (owner, self.ts(until), *(st.source_id for st in mine)))
            if n != len(mine):  # pragma: no cover - the rows are locked
                raise StoreError(f"claiming sources: {n} of {len(mine)} rows changed")
            for st in mine:
                out[st.source_id] = replace(st, lease_owner=owner, lease_until=until,
                                            fence=st.fence + 1)
        return out

    def save(self, state: SourceState, *, owner: str | None = None) -> None:
        s, ts = state, self.ts
        values = (s.cursor, s.etag, s.last_modified, int(s.baseline_done), ts(s.last_polled_at),
                  ts(s.next_poll_at), ts(s.last_ok_at), s.failures, s.last_error,
                  s.last_error_class, s.error_count, dumps(s.extra))
        if owner is not None:
            n = self.tx.run(
                "UPDATE source_state SET cursor = ?, etag = ?, last_modified = ?, "
                "baseline_done = ?, last_polled_at = ?, next_poll_at = ?, last_ok_at = ?, "
                "failures = ?, last_error = ?, last_error_class = ?, error_count = ?, extra = ?, "
                "lease_owner = NULL, lease_until = NULL WHERE key = ? AND lease_owner = ? AND "
                "fence = ?", (*values, s.source_id, owner, s.fence))
            if not n:
                raise StaleWriteError(
                    f"source {s.source_id}: the poll's lease (token {s.fence}, {owner}) was "
                    "taken over by another watcher; its result was not recorded")
            return
        self.tx.run(
            "INSERT INTO source_state (key, cursor, etag, last_modified, baseline_done, "
            "last_polled_at, next_poll_at, last_ok_at, failures, last_error, last_error_class, "
            "error_count, extra) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?) ON CONFLICT (key) DO UPDATE "
            "SET cursor=excluded.cursor, etag=excluded.etag, last_modified=excluded.last_modified,"
            " baseline_done=excluded.baseline_done, last_polled_at=excluded.last_polled_at, "
            "next_poll_at=excluded.next_poll_at, last_ok_at=excluded.last_ok_at, "
            "failures=excluded.failures, last_error=excluded.last_error, "
            "last_error_class=excluded.last_error_class, error_count=excluded.error_count, "
            "extra=excluded.extra", (s.source_id, *values))


class SqlUpdates:
    def __init__(self, tx: SqlTx) -> None:
        self.tx, self.ts = tx, tx.dialect.ts

    def latest(self, source_id: str, external_id: str) -> tuple[int, str] | None:
        r = _one(self.tx, "SELECT revision, content_hash FROM updates WHERE source_id = ? AND "
                 "external_id = ? ORDER BY revision DESC LIMIT 1", (source_id, external_id))
        return None if r is None else (int(r["revision"]), str(r["content_hash"]))

    def add(self, update: Update, *, revision: int, baseline: bool) -> Update:
        u, ts = update, self.ts
        try:
            (row,) = self.tx.rows(
                "INSERT INTO updates (source_id, external_id, revision, content_hash, kind, "
                "agency, url, title, text, published_at, fetched_at, cap, native, baseline) "
                "VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?) RETURNING id",
                (u.source_id, u.external_id, revision, u.content_hash, str(u.kind), u.agency,
                 u.url, u.title, u.text, ts(u.published_at), ts(u.fetched_at),
                 cap_to_json(u.cap), native_to_json(u.native), int(baseline)))
        except Exception as exc:
            if self.tx.is_unique_violation(exc):  # the transaction is given up: nothing written
                raise StaleWriteError(recorded_meanwhile(u, revision)) from None
            raise
        return replace(u, id=int(row["id"]), revision=revision)

    def set_disposition(self, update_id: int, disposition: str) -> None:
        self.tx.run("UPDATE updates SET disposition = ? WHERE id = ?", (disposition, update_id))

    def get(self, update_id: int) -> Update:
        r = _one(self.tx, "SELECT * FROM updates WHERE id = ?", (update_id,))
        if r is None:
            raise NotFoundError(f"unknown update {update_id}")
        return update_from_row(r)

    def list(self, *, source_ids: Sequence[str] | None = None,
             published_from: datetime | None = None, published_to: datetime | None = None,
             seen_from: datetime | None = None, seen_to: datetime | None = None,
             ) -> builtins.list[tuple[Update, str, bool]]:
        sql, params = "SELECT * FROM updates WHERE 1=1", builtins.list[Any]()
        if source_ids is not None:
            if not source_ids:
                return []
            sql += f" AND source_id IN ({_marks(len(source_ids))})"
            params += list(source_ids)
        for col, op, val in (("published_at", ">=", published_from),
                             ("published_at", "<", published_to),
                             ("fetched_at", ">=", seen_from), ("fetched_at", "<", seen_to)):
            if val is not None:
                sql += f" AND {col} {op} ?"
                params.append(self.ts(val))
        rows = self.tx.rows(sql + " ORDER BY published_at, id", params)
        return [(update_from_row(r), r["disposition"], bool(r["baseline"])) for r in rows]


class SqlOutbox:
    def __init__(self, tx: SqlTx) -> None:
        self.tx, self.ts = tx, tx.dialect.ts

    def add(self, items: Sequence[NewOutboxItem], *, at: datetime,
            actor: str = "watcher") -> builtins.list[int]:
        new_ids: builtins.list[int] = []
        for it in items:
            rows = self.tx.rows(
                "INSERT INTO outbox (dedupe_key, channel_id, action, text, state, created_at, "
                "update_id, incident_id, source_id, is_lead, severity_rank, published_at, "
                "approval, reason, native, url, expires_at, reply_to_item) VALUES "
                "(?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?) "
                "ON CONFLICT (dedupe_key) DO NOTHING RETURNING id",
                (it.dedupe_key, it.channel_id, str(it.action), it.text, str(it.state),
                 self.ts(at), it.update_id, it.incident_id, it.source_id, int(it.is_lead),
                 it.severity_rank, self.ts(it.published_at), it.approval, it.reason,
                 native_to_json(it.native), it.url, self.ts(it.expires_at),
                 it.reply_to_item))
            if rows:
                item_id = int(rows[0]["id"])
                new_ids.append(item_id)
                self._event(item_id, ItemEvent(at, str(it.state), it.reason or "queued", actor))
        return new_ids

    def _event(self, item_id: int, e: ItemEvent) -> None:
        self.tx.run("INSERT INTO outbox_events (item_id, at, state, reason, actor, details) "
                    "VALUES (?,?,?,?,?,?)",
                    (item_id, self.ts(e.at), e.state, e.reason, e.actor, dumps(e.details)))

    def get(self, item_id: int) -> OutboxItem:
        r = _one(self.tx, "SELECT * FROM outbox WHERE id = ?", (item_id,))
        if r is None:
            raise NotFoundError(f"unknown outbox item {item_id}")
        return item_from_row(r)

    def list(self, *, states: Sequence[str] | None = None, channel_id: str | None = None,
             incident_id: int | None = None, limit: int | None = None) -> builtins.list[OutboxItem]:
        sql, params = "SELECT * FROM outbox WHERE 1=1", builtins.list[Any]()
        if states:
            sql += f" AND state IN ({_marks(len(states))})"
            params += [str(s) for s in states]
        if channel_id:
            sql += " AND channel_id = ?"
            params.append(channel_id)
        if incident_id is not None:
            sql += " AND incident_id = ?"
            params.append(incident_id)
        sql += " ORDER BY id"
        if limit:
            sql += f" LIMIT {int(limit)}"
        return [item_from_row(r) for r in self.tx.rows(sql, params)]

    def save(self, before: OutboxItem, after: OutboxItem, event: ItemEvent, *,
             skip_locked: bool = False) -> OutboxItem:
        if after.id != before.id:
            raise ValueError("save: before and after are different items")
        if skip_locked and self.tx.dialect.skip_locked and not self.tx.rows(
                f"SELECT id FROM outbox WHERE id = ? AND version = ? "
                f"{self.tx.dialect.skip_locked}", (before.id, before.version)):
            raise StaleWriteError(f"item {before.id}: another worker is claiming it")
        values = []
        for col in ITEM_COLUMNS:
            v = getattr(after, col)
            values.append(self.ts(v) if col in _TIMES else
                          int(v) if isinstance(v, bool) else str(v) if col == "state" else v)
        assignments = ", ".join(f"{c} = ?" for c in ITEM_COLUMNS)
        n = self.tx.run(f"UPDATE outbox SET {assignments}, version = version + 1 WHERE id = ? "
                        "AND version = ? AND fence = ?",
                        (*values, before.id, before.version, before.fence))
        if not n:
            raise StaleWriteError(
                f"item {before.id}: changed by another worker or operator since it was read "
                f"(version {before.version}, token {before.fence}); nothing was written")
        self._event(before.id, event)
        return replace(after, version=before.version + 1)

    def due_channels(self, now: datetime) -> builtins.list[str]:
        return [r["channel_id"] for r in self.tx.rows(
            f"SELECT DISTINCT channel_id FROM outbox WHERE {_DUE} ORDER BY channel_id",
            (self.ts(now),))]

    def next_due(self, channel_id: str, *, now: datetime, after: OutboxItem | None = None,
                 limit: int = 10) -> builtins.list[OutboxItem]:
        earliest = self.ts(EARLIEST)
        sql = f"SELECT * FROM outbox WHERE channel_id = ? AND {_DUE}"
        params: builtins.list[Any] = [channel_id, self.ts(now)]
        if after is not None:  # keyset: strictly after the last item seen, in the same order
            sql += f" AND ({_ORDER}) > (?, ?, ?, ?)"
            params += [earliest, 0 if after.is_lead else 1, -after.severity_rank,
                       self.ts(after.published_at or EARLIEST), after.id]
        # One statement picks and locks the next k rows nobody else holds: concurrent
        # dispatchers never queue behind each other's rows nor decide the same item.
        sql += f" ORDER BY {_ORDER} LIMIT {max(1, int(limit))} {self.tx.dialect.skip_locked}"
        params.append(earliest)
        return [item_from_row(r) for r in self.tx.rows(sql, params)]

    def renew(self, item: OutboxItem, *, until: datetime) -> bool:
        return bool(self.tx.run(
            "UPDATE outbox SET lease_until = ? WHERE id = ? AND fence = ? AND lease_owner = ? "
            "AND state IN ('leased','sending')",
            (self.ts(until), item.id, item.fence, item.lease_owner)))

    def expired(self, now: datetime) -> builtins.list[OutboxItem]:
        return [item_from_row(r) for r in self.tx.rows(
            "SELECT * FROM outbox WHERE state IN ('leased','sending') AND lease_until < ? "
            "ORDER BY id", (self.ts(now),))]

    def events(self, item_id: int) -> builtins.list[ItemEvent]:
        return [ItemEvent(dt(r["at"]), r["state"], r["reason"], r["actor"],  # type: ignore[arg-type]
                          json.loads(r["details"]))
                for r in self.tx.rows("SELECT * FROM outbox_events WHERE item_id = ? ORDER BY "
                                      "id", (item_id,))]

    def counts(self) -> dict[str, int]:
        return {r["state"]: int(r["n"]) for r in
                self.tx.rows("SELECT state, count(*) AS n FROM outbox GROUP BY state")}

    def threads(self, source_id: str, external_ids: Sequence[str]) -> dict[str, int]:
        ids = sorted(set(external_ids))
        if not ids:
            return {}
        rows = self.tx.rows(
            "SELECT o.channel_id AS channel_id, o.id AS id FROM outbox o JOIN updates u ON "
            "u.id = o.update_id WHERE o.state IN ('published','queued','held','needs_approval',"
            f"'leased','sending') AND u.source_id = ? AND u.external_id IN ({_marks(len(ids))})"
            " ORDER BY o.id", (source_id, *ids))
        return {r["channel_id"]: int(r["id"]) for r in rows}  # the newest item per channel

    def published_for(self, update_id: int, channel_id: str) -> OutboxItem | None:
        r = _one(self.tx, "SELECT * FROM outbox WHERE update_id = ? AND channel_id = ? AND "
                 "state = 'published' LIMIT 1", (update_id, channel_id))
        return item_from_row(r) if r else None

    def counters(self, channel_id: str, *, now: datetime, week_start: datetime,
                 day_start: datetime) -> ChannelCounters:
        ts = self.ts
        hour_ago = now - timedelta(hours=1)
        since = min(week_start, day_start, hour_ago)
        row = _one(
            self.tx,
            "SELECT sum(CASE WHEN done_at >= ? THEN 1 ELSE 0 END) AS week, "
            "sum(CASE WHEN done_at >= ? AND incident_id IS NULL THEN 1 ELSE 0 END) AS nweek, "
            "sum(CASE WHEN done_at >= ? AND incident_id IS NULL THEN 1 ELSE 0 END) AS nday, "
            "sum(CASE WHEN done_at >= ? THEN 1 ELSE 0 END) AS hour, "
            "(SELECT paused_until FROM channel_state WHERE channel_id = ?) AS paused "
            "FROM outbox WHERE state = 'published' AND channel_id = ? AND done_at >= ?",
            (ts(week_start), ts(week_start), ts(day_start), ts(hour_ago), channel_id,
             channel_id, ts(since)))
        assert row is not None
        return ChannelCounters(
            week_count=int(row["week"] or 0), normal_week_count=int(row["nweek"] or 0),
            normal_day_count=int(row["nday"] or 0), last_hour_count=int(row["hour"] or 0),
            paused_until=dt(row["paused"]))


class SqlChannels:
    def __init__(self, tx: SqlTx) -> None:
        self.tx, self.ts = tx, tx.dialect.ts

    def pause(self, channel_id: str, *, until: datetime, reason: str,
              wait_seconds: float) -> None:
        self.tx.run(
            "INSERT INTO channel_state (channel_id, paused_until, last_error, rate_limit_waits, "
            "rate_limit_wait_seconds) VALUES (?,?,?,1,?) ON CONFLICT (channel_id) DO UPDATE SET "
            "paused_until = excluded.paused_until, last_error = excluded.last_error, "
            "rate_limit_waits = channel_state.rate_limit_waits + 1, rate_limit_wait_seconds = "
            "channel_state.rate_limit_wait_seconds + excluded.rate_limit_wait_seconds",
            (channel_id, self.ts(until), reason, float(wait_seconds)))

    def list(self) -> dict[str, ChannelState]:
        return {r["channel_id"]: ChannelState(
            r["channel_id"], dt(r["paused_until"]), r["last_error"], int(r["rate_limit_waits"]),
            float(r["rate_limit_wait_seconds"]), r["problem"])
            for r in self.tx.rows("SELECT * FROM channel_state ORDER BY channel_id")}

    def set_problem(self, channel_id: str, problem: str | None) -> None:
        self.tx.run("INSERT INTO channel_state (channel_id, problem) VALUES (?, ?) "
                    "ON CONFLICT (channel_id) DO UPDATE SET problem = excluded.problem",
                    (channel_id, problem))


class SqlWindows:
    def __init__(self, tx: SqlTx) -> None:
        self.tx, self.ts = tx, tx.dialect.ts

    def add(self, *, start: datetime, end: datetime, reason: str, operator: str,
            at: datetime) -> LiveWindow:
        (row,) = self.tx.rows("INSERT INTO live_windows (starts_at, ends_at, reason, "
                              "created_by, created_at) VALUES (?,?,?,?,?) RETURNING id",
                              (self.ts(start), self.ts(end), reason, operator, self.ts(at)))
        return LiveWindow(start, end, reason, int(row["id"]), operator)

    def remove(self, window_id: int) -> bool:
        return bool(self.tx.run("DELETE FROM live_windows WHERE id = ?", (window_id,)))

    def list(self) -> builtins.list[LiveWindow]:
        return [LiveWindow(dt(r["starts_at"]), dt(r["ends_at"]), r["reason"],  # type: ignore[arg-type]
                           int(r["id"]), r["created_by"])
                for r in self.tx.rows("SELECT * FROM live_windows ORDER BY starts_at, id")]


class SqlAudit:
    """The chain is extended at commit, under a lock on its head row, so two writers can never
    fork it and the head is the last lock a transaction takes (no lock-order deadlocks). Each
    event records the real wall-clock time (read under that lock, so it only moves forward on
    one host) and the scheme that hashed it (keyed when the store has the audit key)."""

    def __init__(self, tx: SqlTx, *, key: bytes | None = None,
                 wall_clock: Clock | None = None) -> None:
        self.tx = tx
        self.key = key
        self.wall_clock: Clock = wall_clock or SystemClock()
        self.pending: builtins.list[NewAuditEvent] = []

    def append(self, event: NewAuditEvent) -> None:
        self.pending.append(event)

    def flush(self) -> None:
        if not self.pending:
            return
        head = _one(self.tx, f"SELECT seq, hash FROM audit_head WHERE id = 1 "
                    f"{self.tx.dialect.for_update}")
        seq, prev = (int(head["seq"]), str(head["hash"])) if head else (0, GENESIS)
        scheme = scheme_for(self.key)
        wall = self.wall_clock.now()
        for e in self.pending:
            seq += 1
            at = isoformat(e.at)
            det = details_text(e.details)
            h = event_hash(seq, at, e.actor, e.action, e.subject, e.reason, det, prev,
                           recorded_at=isoformat(wall), scheme=scheme, key=self.key)
            self.tx.run("INSERT INTO audit_events (seq, at, actor, action, subject, reason, "
                        "details, prev_hash, hash, recorded_at, scheme) "
                        "VALUES (?,?,?,?,?,?,?,?,?,?,?)",
                        (seq, self.tx.dialect.ts(e.at), e.actor, e.action, e.subject, e.reason,
                         det, prev, h, self.tx.dialect.ts(wall), scheme))
            prev = h
        self.tx.run("INSERT INTO audit_head (id, seq, hash) VALUES (1, ?, ?) ON CONFLICT (id) "
                    "DO UPDATE SET seq = excluded.seq, hash = excluded.hash", (seq, prev))
        self.pending.clear()

    def events(self, *, since: datetime | None = None, limit: int | None = None,
               action_prefix: str | None = None) -> builtins.list[AuditEvent]:
        sql, params = "SELECT * FROM audit_events WHERE 1=1", builtins.list[Any]()
        if since is not None:
            sql += " AND at >= ?"
            params.append(self.tx.dialect.ts(since))
        if action_prefix:
            sql += " AND action LIKE ?"
            params.append(action_prefix.replace("%", r"\%").replace("_", r"\_") + "%")
            sql += " ESCAPE '\\'"
        sql += " ORDER BY seq"
        if limit:
            sql += f" LIMIT {int(limit)}"
        return [AuditEvent(int(r["seq"]), dt(r["at"]) or datetime.min, r["actor"], r["action"],
                           r["subject"], r["reason"], json.loads(r["details"]), r["prev_hash"],
                           r["hash"], dt(r["recorded_at"]), r["scheme"])
                for r in self.tx.rows(sql, params)]

    def verify(self, *, expect_head: tuple[int | None, str] | None = None) -> ChainReport:
        def text(value: Any) -> str | None:
            if value is None or isinstance(value, str):
                return value
            return isoformat(value)

        def links() -> Iterator[StoredLink]:
            for r in self.tx.rows("SELECT * FROM audit_events ORDER BY seq"):
                yield StoredLink(int(r["seq"]), text(r["at"]) or "", r["actor"], r["action"],
                                 r["subject"], r["reason"], r["details"], r["prev_hash"],
                                 r["hash"], text(r["recorded_at"]), r["scheme"])

        head = _one(self.tx, "SELECT seq, hash FROM audit_head WHERE id = 1")
        return verify_chain(links(), None if head is None else (int(head["seq"]), head["hash"]),
                            key=self.key, expect_head=expect_head)


class SqlWatchers:
    def __init__(self, tx: SqlTx) -> None:
        self.tx, self.ts = tx, tx.dialect.ts

    def heartbeat(self, info: WatcherInfo) -> None:
        self.tx.run("INSERT INTO watchers (worker_id, host, pid, started_at, last_seen_at, "
                    "pages, push) VALUES (?,?,?,?,?,?,?) ON CONFLICT (worker_id) DO UPDATE SET "
                    "host = excluded.host, pid = excluded.pid, started_at = excluded.started_at, "
                    "last_seen_at = excluded.last_seen_at, pages = excluded.pages, "
                    "push = excluded.push",
                    (info.worker_id, info.host, info.pid, self.ts(info.started_at),
                     self.ts(info.last_seen_at), int(info.pages), push_to_json(info.push)))

    def list(self) -> builtins.list[WatcherInfo]:
        return [WatcherInfo(r["worker_id"], r["host"], int(r["pid"]),
                            dt(r["started_at"]), dt(r["last_seen_at"]),  # type: ignore[arg-type]
                            bool(r["pages"]), push_from_json(r["push"]))
                for r in self.tx.rows("SELECT * FROM watchers ORDER BY last_seen_at DESC, "
                                      "worker_id")]

    def remove(self, worker_id: str) -> None:
        self.tx.run("DELETE FROM watchers WHERE worker_id = ?", (worker_id,))


class SqlBackend(Protocol):
    """What a SQL backend gives the shared unit of work."""

    audit_key: bytes | None
    wall_clock: Clock

    def begin(self, *, readonly: bool) -> SqlTx: ...

    def commit(self, tx: SqlTx) -> None: ...

    def rollback(self, tx: SqlTx) -> None: ...

    def release(self, tx: SqlTx) -> None: ...


class SqlUnitOfWork:
    """One transaction over every repository (see ``crisiscomms.ports.UnitOfWork``)."""

    incidents: SqlIncidents
    sources: SqlSources
    updates: SqlUpdates
    outbox: SqlOutbox
    channels: SqlChannels
    windows: SqlWindows
    audit: SqlAudit
    watchers: SqlWatchers

    def __init__(self, backend: SqlBackend, *, readonly: bool = False) -> None:
        self._backend = backend
        self._readonly = readonly
        self._tx: SqlTx | None = None
        self._done = False

    def __enter__(self) -> Self:
        tx = self._tx = self._backend.begin(readonly=self._readonly)
        self._done = False
        self.incidents = SqlIncidents(tx)
        self.sources = SqlSources(tx)
        self.updates = SqlUpdates(tx)
        self.outbox = SqlOutbox(tx)
        self.channels = SqlChannels(tx)
        self.windows = SqlWindows(tx)
        self.audit = SqlAudit(tx, key=self._backend.audit_key,
                              wall_clock=self._backend.wall_clock)
        self.watchers = SqlWatchers(tx)
        return self

    def commit(self) -> None:
        if self._readonly:
            raise StoreError("a read-only unit of work cannot commit")
        assert self._tx is not None, "commit outside 'with'"
        self.audit.flush()
        self._backend.commit(self._tx)
        self._done = True

    def rollback(self) -> None:
        if self._tx is not None and not self._done:
            self._backend.rollback(self._tx)
            self._done = True

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        try:
            self.rollback()
        finally:
            if self._tx is not None:
                self._backend.release(self._tx)
                self._tx = None


def _as_seen(stored: SourceState, seen: SourceState) -> bool:
    """The stored state is still the one the watcher looked at: no claim since (the fence) and
    no poll recorded since (a poll recorded under a lease held when we looked leaves the fence
    as we saw it; ``benchmarks/shared_pg.py`` found the second poll that let through)."""
    return stored.fence == seen.fence and stored.last_polled_at == seen.last_polled_at
