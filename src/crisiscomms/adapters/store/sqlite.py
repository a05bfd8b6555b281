"""The SQLite store: the one place with SQL. A PostgreSQL store would implement the same
methods (see ``crisiscomms.ports.Store``) and pass the same contract tests."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Callable, Iterable, Sequence
from datetime import datetime, timedelta
from typing import Any

from crisiscomms.adapters.store.audit import AuditMixin
from crisiscomms.adapters.store.base import dt, dumps, ts
from crisiscomms.adapters.store.records import (
    cap_to_json,
    incident_from_row,
    item_from_row,
    native_to_json,
    state_from_row,
    update_from_row,
)
from crisiscomms.domain.errors import NotFoundError, RefusedError
from crisiscomms.domain.models import (
    ChannelCounters,
    Incident,
    ItemState,
    LiveWindow,
    NewOutboxItem,
    OutboxItem,
    RecordedUpdate,
    SourceState,
    Update,
)

PENDING = (ItemState.QUEUED, ItemState.HELD, ItemState.NEEDS_APPROVAL)


class SQLiteStore(AuditMixin):
    """Incidents, source state, updates, the outbox, live windows and the audit trail."""

    # -- incidents ----------------------------------------------------------------
    def create_incident(self, *, playbook: str, hashtags: Sequence[str], lead: str,
                        reason: str, operator: str, now: datetime,
                        details: dict[str, Any] | None = None,
                        then: Callable[[Incident], Sequence[NewOutboxItem]] | None = None,
                        ) -> Incident:
        """Create an incident and its audit event atomically; one active per playbook."""
        with self.tx("activate") as c:
            row = c.execute("SELECT id FROM incidents WHERE playbook = ? AND deactivated_at IS "
                            "NULL", (playbook,)).fetchone()
            if row:
                raise RefusedError(f"playbook {playbook!r} is already active as incident "
                                   f"{row['id']}; deactivate it first or use that incident")
            try:
                cur = self.execute(
                    c, "INSERT INTO incidents (playbook, hashtags, lead, activated_at, "
                    "activated_by, reason) VALUES (?,?,?,?,?,?)",
                    (playbook, json.dumps(list(hashtags)), lead, ts(now), operator, reason))
            except sqlite3.IntegrityError:  # pragma: no cover - guarded by the select above
                raise RefusedError(f"playbook {playbook!r} is already active") from None
            incident_id = int(cur.lastrowid or 0)
            self.append_audit(actor=operator, action="incident.activated",
                              subject=f"incident:{incident_id}", reason=reason, now=now,
                              details={"playbook": playbook, "hashtags": list(hashtags),
                                       "lead": lead, **(details or {})})
            if then is not None:
                self.enqueue(then(self.get_incident(incident_id)), now=now, actor=operator)
        return self.get_incident(incident_id)

    def close_incident(self, incident_id: int, *, reason: str, operator: str,
                       now: datetime,
                       then: Callable[[Incident], Sequence[NewOutboxItem]] | None = None,
                       ) -> Incident:
        with self.tx("deactivate") as c:
            inc = self.get_incident(incident_id)
            if not inc.active:
                raise RefusedError(f"incident {incident_id} is already stood down "
                                   f"(at {ts(inc.deactivated_at)})")
            self.execute(c, "UPDATE incidents SET deactivated_at = ?, deactivated_by = ?, "
                         "deactivation_reason = ? WHERE id = ?",
                         (ts(now), operator, reason, incident_id))
            self.append_audit(actor=operator, action="incident.deactivated",
                              subject=f"incident:{incident_id}", reason=reason, now=now,
                              details={"playbook": inc.playbook})
            if then is not None:
                self.enqueue(then(self.get_incident(incident_id)), now=now, actor=operator)
        return self.get_incident(incident_id)

    def change_lead(self, incident_id: int, *, lead: str, reason: str, operator: str,
                    now: datetime) -> Incident:
        """Hand the lead to another agency mid-incident (audited with the old and new lead)."""
        with self.tx("lead change") as c:
            inc = self.get_incident(incident_id)
            if not inc.active:
                raise RefusedError(f"incident {incident_id} is stood down; its lead is final")
            self.execute(c, "UPDATE incidents SET lead = ? WHERE id = ?", (lead, incident_id))
            self.append_audit(actor=operator, action="incident.lead_changed",
                              subject=f"incident:{incident_id}", reason=reason, now=now,
                              details={"from": inc.lead, "to": lead, "at": ts(now)})
        return self.get_incident(incident_id)

    def get_incident(self, incident_id: int) -> Incident:
        r = self.query_one("SELECT * FROM incidents WHERE id = ?", (incident_id,))
        if r is None:
            raise NotFoundError(f"unknown incident {incident_id}")
        return incident_from_row(r)

    def incidents(self, *, active_only: bool = False) -> list[Incident]:
        sql = "SELECT * FROM incidents"
        if active_only:
            sql += " WHERE deactivated_at IS NULL"
        return [incident_from_row(r) for r in self.query(sql + " ORDER BY id")]

    def active_incidents(self) -> list[Incident]:
        return self.incidents(active_only=True)

    # -- source state -------------------------------------------------------------
    def source_state(self, key: str) -> SourceState:
        r = self.query_one("SELECT * FROM source_state WHERE key = ?", (key,))
        return state_from_row(r) if r else SourceState(source_id=key)

    def source_states(self) -> list[SourceState]:
        return [state_from_row(r) for r in self.query("SELECT * FROM source_state ORDER BY key")]

    def save_source_state(self, state: SourceState) -> None:
        with self.tx("source state") as c:
            self._save_state(c, state)

    def _save_state(self, c: sqlite3.Connection, s: SourceState) -> None:
        self.execute(
            c, "INSERT INTO source_state (key, cursor, etag, last_modified, baseline_done, "
            "last_polled_at, next_poll_at, last_ok_at, failures, last_error, last_error_class, "
            "error_count, extra) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?) ON CONFLICT(key) DO UPDATE "
            "SET cursor=excluded.cursor, etag=excluded.etag, last_modified=excluded.last_modified,"
            " baseline_done=excluded.baseline_done, last_polled_at=excluded.last_polled_at, "
            "next_poll_at=excluded.next_poll_at, last_ok_at=excluded.last_ok_at, "
            "failures=excluded.failures, last_error=excluded.last_error, "
            "last_error_class=excluded.last_error_class, error_count=excluded.error_count, "
            "extra=excluded.extra",
            (s.source_id, s.cursor, s.etag, s.last_modified, int(s.baseline_done),
             ts(s.last_polled_at), ts(s.next_poll_at), ts(s.last_ok_at), s.failures,
             s.last_error, s.last_error_class, s.error_count, dumps(s.extra)))

    # -- updates ------------------------------------------------------------------
    def record_poll(
        self, state: SourceState, updates: Iterable[Update], *, baseline: bool,
        plan: Callable[[list[RecordedUpdate]],
                       tuple[Sequence[NewOutboxItem], dict[int, str]]] | None = None,
    ) -> list[RecordedUpdate]:
        """Store a poll's updates and the source's new state in one transaction.

        Each update is new, a new revision (same id, different content hash), or already
        seen. ``plan`` is called inside the transaction with the recorded updates and
        returns the outbox items to insert and each update's disposition, so a crash can never
        separate "seen" from "queued".
        """
        out: list[RecordedUpdate] = []
        with self.tx("record poll") as c:
            for u in updates:
                row = c.execute(
                    "SELECT id, revision, content_hash FROM updates WHERE source_id = ? AND "
                    "external_id = ? ORDER BY revision DESC LIMIT 1",
                    (u.source_id, u.external_id)).fetchone()
                if row is not None and row["content_hash"] == u.content_hash:
                    continue  # seen before: nothing to record
                revision = 1 if row is None else row["revision"] + 1
                cur = self.execute(
                    c, "INSERT INTO updates (source_id, external_id, revision, content_hash, "
                    "kind, agency, url, title, text, published_at, fetched_at, cap, native, "
                    "baseline) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
                    (u.source_id, u.external_id, revision, u.content_hash, str(u.kind),
                     u.agency, u.url, u.title, u.text, ts(u.published_at), ts(u.fetched_at),
                     cap_to_json(u.cap), native_to_json(u.native), int(baseline)))
                stored = Update(**{**_fields(u), "id": int(cur.lastrowid or 0),
                                   "revision": revision})
                out.append(RecordedUpdate(stored, "new" if row is None else "revision"))
            if plan is not None and out:
                items, dispositions = plan(out)
                self.enqueue(items, now=state.last_polled_at or out[0].update.fetched_at)
                for update_id, disposition in dispositions.items():
                    self.execute(c, "UPDATE updates SET disposition = ? WHERE id = ?",
                                 (disposition, update_id))
            self._save_state(c, state)
        return out

    def get_update(self, update_id: int) -> Update:
        r = self.query_one("SELECT * FROM updates WHERE id = ?", (update_id,))
        if r is None:
            raise NotFoundError(f"unknown update {update_id}")
        return update_from_row(r)

    def updates(self, *, source_ids: Sequence[str] | None = None,
                published_from: datetime | None = None,
                published_to: datetime | None = None,
                seen_from: datetime | None = None, seen_to: datetime | None = None,
                ) -> list[tuple[Update, str, bool]]:
        """Updates with their disposition and baseline flag, oldest first."""
        sql, params = "SELECT * FROM updates WHERE 1=1", list[Any]()
        if source_ids is not None:
            sql += f" AND source_id IN ({','.join('?' * len(source_ids))})"
            params += list(source_ids)
        for col, op, val in (("published_at", ">=", published_from),
                             ("published_at", "<", published_to),
                             ("fetched_at", ">=", seen_from), ("fetched_at", "<", seen_to)):
            if val is not None:
                sql += f" AND {col} {op} ?"
                params.append(ts(val))
        rows = self.query(sql + " ORDER BY published_at, id", params)
        return [(update_from_row(r), r["disposition"], bool(r["baseline"])) for r in rows]

    # -- outbox -------------------------------------------------------------------
    def enqueue(self, items: Sequence[NewOutboxItem], *, now: datetime,
                actor: str = "watcher") -> list[int]:
        """Insert items; a repeated ``dedupe_key`` is ignored. Returns the new ids."""
        new_ids: list[int] = []
        with self.tx("enqueue") as c:
            for it in items:
                cur = self.execute(
                    c, "INSERT INTO outbox (dedupe_key, channel_id, action, text, state, "
                    "created_at, update_id, incident_id, source_id, is_lead, severity_rank, "
                    "published_at, approval, reason, native, url) VALUES "
                    "(?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?) ON CONFLICT(dedupe_key) DO NOTHING",
                    (it.dedupe_key, it.channel_id, str(it.action), it.text, str(it.state),
                     ts(now), it.update_id, it.incident_id, it.source_id, int(it.is_lead),
                     it.severity_rank, ts(it.published_at), it.approval, it.reason,
                     native_to_json(it.native), it.url))
                if cur.rowcount:
                    item_id = int(cur.lastrowid or 0)
                    new_ids.append(item_id)
                    self._event(c, item_id, now, str(it.state), it.reason or "queued", actor)
        return new_ids

    def _event(self, c: sqlite3.Connection, item_id: int, now: datetime, state: str,
               reason: str, actor: str = "system", details: dict[str, Any] | None = None
               ) -> None:
        self.execute(c, "INSERT INTO outbox_events (item_id, at, state, reason, actor, details) "
                     "VALUES (?,?,?,?,?,?)",
                     (item_id, ts(now), state, reason, actor, dumps(details or {})))

    def get_item(self, item_id: int) -> OutboxItem:
        r = self.query_one("SELECT * FROM outbox WHERE id = ?", (item_id,))
        if r is None:
            raise NotFoundError(f"unknown outbox item {item_id}")
        return item_from_row(r)

    def items(self, *, states: Sequence[str] | None = None, channel_id: str | None = None,
              incident_id: int | None = None, limit: int | None = None) -> list[OutboxItem]:
        sql, params = "SELECT * FROM outbox WHERE 1=1", list[Any]()
        if states:
            sql += f" AND state IN ({','.join('?' * len(states))})"
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
        return [item_from_row(r) for r in self.query(sql, params)]

    def item_events(self, item_id: int) -> list[dict[str, Any]]:
        return [
            {"at": dt(r["at"]), "state": r["state"], "reason": r["reason"], "actor": r["actor"],
             "details": json.loads(r["details"])}
            for r in self.query("SELECT * FROM outbox_events WHERE item_id = ? ORDER BY id",
                                (item_id,))
        ]

    def queue_counts(self) -> dict[str, int]:
        return {r["state"]: r["n"] for r in
                self.query("SELECT state, count(*) AS n FROM outbox GROUP BY state")}

    def set_decision(self, item_id: int, *, state: ItemState, reason: str,
                     now: datetime) -> bool:
        """Record a policy decision for a pending item (only if it changed).

        The decision's "hold until" is not stored as the item's schedule: the policy decides
        again on every tick, so a hold ends as soon as its cause does."""
        with self.tx("decision") as c:
            cur = self.execute(
                c, "UPDATE outbox SET state = ?, reason = ? WHERE id = ? AND "
                "state IN ('queued','held','needs_approval') AND (state != ? OR reason != ?)",
                (str(state), reason, item_id, str(state), reason))
            if cur.rowcount:
                self._event(c, item_id, now, str(state), reason)
                if state is ItemState.SKIPPED:
                    self.execute(c, "UPDATE outbox SET done_at = ? WHERE id = ?",
                                 (ts(now), item_id))
            return bool(cur.rowcount)

    def claim(self, item_id: int, *, worker: str, now: datetime, lease: timedelta,
              out_of_hours: bool, over_cap: bool) -> OutboxItem | None:
        """Lease a pending item for sending; None if another worker got it first."""
        with self.tx("claim") as c:
            cur = self.execute(
                c, "UPDATE outbox SET state = 'leased', lease_owner = ?, lease_until = ?, "
                "out_of_hours = ?, over_cap = ? WHERE id = ? AND state IN "
                "('queued','held','needs_approval')",
                (worker, ts(now + lease), int(out_of_hours), int(over_cap), item_id))
            if not cur.rowcount:
                return None
            self._event(c, item_id, now, "leased", f"leased by {worker}", worker)
        return self.get_item(item_id)

    def mark_sending(self, item_id: int, *, worker: str, now: datetime, lease: timedelta) -> bool:
        """Record that a request is about to go out. After this, a crash means 'unknown'."""
        with self.tx("sending") as c:
            cur = self.execute(
                c, "UPDATE outbox SET state = 'sending', attempts = attempts + 1, sent_at = ?, "
                "lease_until = ? WHERE id = ? AND state = 'leased' AND lease_owner = ?",
                (ts(now), ts(now + lease), item_id, worker))
            if cur.rowcount:
                self._event(c, item_id, now, "sending", "request sent", worker)
            return bool(cur.rowcount)

    def mark_published(self, item_id: int, *, post_id: str, url: str, now: datetime,
                       worker: str, dry_run: bool = False, recovered: bool = False) -> None:
        with self.tx("published") as c:
            cur = self.execute(
                c, "UPDATE outbox SET state = 'published', platform_post_id = ?, platform_url = ?,"
                " done_at = ?, lease_owner = NULL, lease_until = NULL, last_error = NULL, "
                "reason = ? WHERE id = ? AND state IN ('sending','leased','needs_review')",
                (post_id, url, ts(now), "dry run" if dry_run else "published", item_id))
            if not cur.rowcount:
                return
            item = self.get_item(item_id)
            reason = "found on platform after unknown outcome" if recovered else (
                "dry run: recorded, not posted" if dry_run else "published")
            self._event(c, item_id, now, "published", reason, worker,
                        {"post_id": post_id, "url": url, "dry_run": dry_run})
            self.append_audit(
                actor=worker, action="outbox.published", subject=f"item:{item_id}",
                reason=reason, now=now,
                details={"channel": item.channel_id, "action": str(item.action),
                         "incident": item.incident_id, "update": item.update_id,
                         "post_id": post_id, "url": url, "dry_run": dry_run,
                         "out_of_hours": item.out_of_hours, "over_cap": item.over_cap})

    def release(self, item_id: int, *, state: ItemState, reason: str, now: datetime,
                worker: str, error: str | None = None, not_before: datetime | None = None,
                audit_action: str | None = None) -> bool:
        """End an attempt without publishing: back to queued/held, or failed/needs_review."""
        terminal = state in (ItemState.FAILED, ItemState.REJECTED, ItemState.SKIPPED)
        with self.tx("release") as c:
            cur = self.execute(
                c, "UPDATE outbox SET state = ?, reason = ?, last_error = COALESCE(?, last_error),"
                " not_before = ?, lease_owner = NULL, lease_until = NULL, done_at = ? "
                "WHERE id = ? AND state IN ('leased','sending')",
                (str(state), reason, error, ts(not_before), ts(now) if terminal else None,
                 item_id))
            if not cur.rowcount:
                return False  # someone else finished it meanwhile
            self._event(c, item_id, now, str(state), reason, worker,
                        {"error": error} if error else None)
            if audit_action:
                self.append_audit(actor=worker, action=audit_action, subject=f"item:{item_id}",
                                  reason=reason, now=now, details={"error": error})
        return True

    def defer_lookup(self, item_id: int, *, worker: str, now: datetime, until: datetime,
                     error: str) -> bool:
        """The platform could not say (yet) whether a send went out: keep the item in
        'sending' and ask again after ``until`` (the lease), counting the attempt."""
        with self.tx("defer lookup") as c:
            cur = self.execute(
                c, "UPDATE outbox SET lookups = lookups + 1, lease_owner = NULL, lease_until = ?,"
                " state = 'sending', last_error = ? WHERE id = ? AND state IN "
                "('leased','sending')", (ts(until), error, item_id))
            if cur.rowcount:
                self._event(c, item_id, now, "sending",
                            f"platform could not confirm yet; asking again at {ts(until)}",
                            worker, {"error": error})
            return bool(cur.rowcount)

    def take_over(self, item_id: int, *, worker: str, now: datetime, lease: timedelta) -> bool:
        """Atomically take an item whose lease expired; False if another worker did."""
        with self.tx("take over") as c:
            cur = self.execute(
                c, "UPDATE outbox SET lease_owner = ?, lease_until = ? WHERE id = ? AND state IN "
                "('leased','sending') AND lease_until < ?",
                (worker, ts(now + lease), item_id, ts(now)))
            if cur.rowcount:
                self._event(c, item_id, now, "recovering", "lease expired; taken over", worker)
            return bool(cur.rowcount)

    def expired_leases(self, now: datetime) -> list[OutboxItem]:
        rows = self.query("SELECT * FROM outbox WHERE state IN ('leased','sending') AND "
                          "lease_until < ?", (ts(now),))
        return [item_from_row(r) for r in rows]

    def operator_update(self, item_id: int, *, operator: str, now: datetime, action: str,
                        reason: str, sets: dict[str, Any], allowed_from: Sequence[str],
                        new_state: ItemState) -> OutboxItem:
        """An operator's decision on an item (approve, reject, hold, retry, edit), audited."""
        with self.tx(f"queue {action}") as c:
            item = self.get_item(item_id)
            if str(item.state) not in allowed_from:
                raise RefusedError(
                    f"item {item_id} is {item.state}; '{action}' needs it to be one of: "
                    f"{', '.join(allowed_from)}")
            cols = {"state": str(new_state), "reason": reason, **sets}
            assignments = ", ".join(f"{k} = ?" for k in cols)
            values = [ts(v) if isinstance(v, datetime) else v for v in cols.values()]
            self.execute(c, f"UPDATE outbox SET {assignments} WHERE id = ?", (*values, item_id))
            self._event(c, item_id, now, str(new_state), reason, operator,
                        {"action": action})
            self.append_audit(actor=operator, action=f"queue.{action}",
                              subject=f"item:{item_id}", reason=reason, now=now,
                              details={"from": str(item.state), "to": str(new_state),
                                       "channel": item.channel_id,
                                       **{k: v for k, v in sets.items()
                                          if k in ("edited_text",)},
                                       **({"original_text": item.text} if "edited_text" in sets
                                          else {})})
        return self.get_item(item_id)

    def published_for_update(self, update_id: int, channel_id: str) -> OutboxItem | None:
        """An item already published on this channel for this update (any incident or mode)."""
        r = self.query_one("SELECT * FROM outbox WHERE update_id = ? AND channel_id = ? AND "
                           "state = 'published' LIMIT 1", (update_id, channel_id))
        return item_from_row(r) if r else None

    # -- counters and channel state -------------------------------------------------
    def published_count(self, channel_id: str, since: datetime,
                        until: datetime | None = None, *, normal_only: bool = False) -> int:
        sql = "SELECT count(*) AS n FROM outbox WHERE state = 'published' AND channel_id = ? " \
              "AND done_at >= ?"
        params: list[Any] = [channel_id, ts(since)]
        if until is not None:
            sql += " AND done_at < ?"
            params.append(ts(until))
        if normal_only:
            sql += " AND incident_id IS NULL"
        row = self.query_one(sql, params)
        return int(row["n"]) if row else 0

    def channel_counters(self, channel_id: str, *, now: datetime, week_start: datetime,
                         day_start: datetime) -> ChannelCounters:
        """What the policy needs to know about a channel's recent posts (one query)."""
        hour_ago = now - timedelta(hours=1)
        since = min(week_start, day_start, hour_ago)
        row = self.query_one(
            "SELECT sum(done_at >= :week) AS week, "
            "sum(done_at >= :week AND incident_id IS NULL) AS normal_week, "
            "sum(done_at >= :day AND incident_id IS NULL) AS normal_day, "
            "sum(done_at >= :hour) AS hour, "
            "(SELECT paused_until FROM channel_state WHERE channel_id = :ch) AS paused "
            "FROM outbox WHERE state = 'published' AND channel_id = :ch AND done_at >= :since",
            {"week": ts(week_start), "day": ts(day_start), "hour": ts(hour_ago),
             "ch": channel_id, "since": ts(since)})
        assert row is not None
        return ChannelCounters(
            week_count=int(row["week"] or 0), normal_week_count=int(row["normal_week"] or 0),
            normal_day_count=int(row["normal_day"] or 0), last_hour_count=int(row["hour"] or 0),
            paused_until=dt(row["paused"]))

    def pause_channel(self, channel_id: str, *, until: datetime, now: datetime,
                      reason: str) -> None:
        """Record a platform rate-limit pause; no request may go before ``until``."""
        wait = max(0.0, (until - now).total_seconds())
        with self.tx("pause channel") as c:
            self.execute(
                c, "INSERT INTO channel_state (channel_id, paused_until, last_error, "
                "rate_limit_waits, rate_limit_wait_seconds) VALUES (?,?,?,1,?) "
                "ON CONFLICT(channel_id) DO UPDATE SET paused_until = excluded.paused_until, "
                "last_error = excluded.last_error, rate_limit_waits = rate_limit_waits + 1, "
                "rate_limit_wait_seconds = rate_limit_wait_seconds + excluded."
                "rate_limit_wait_seconds", (channel_id, ts(until), reason, wait))
            self.append_audit(actor="dispatcher", action="channel.rate_limited",
                              subject=f"channel:{channel_id}", reason=reason, now=now,
                              details={"until": ts(until), "wait_seconds": round(wait, 3)})

    def channel_states(self) -> dict[str, dict[str, Any]]:
        return {r["channel_id"]: {"paused_until": dt(r["paused_until"]),
                                  "last_error": r["last_error"],
                                  "rate_limit_waits": r["rate_limit_waits"],
                                  "rate_limit_wait_seconds": r["rate_limit_wait_seconds"]}
                for r in self.query("SELECT * FROM channel_state")}

    # -- live windows -------------------------------------------------------------
    def add_window(self, *, start: datetime, end: datetime, reason: str, operator: str,
                   now: datetime) -> LiveWindow:
        with self.tx("window add") as c:
            cur = self.execute(c, "INSERT INTO live_windows (starts_at, ends_at, reason, "
                               "created_by, created_at) VALUES (?,?,?,?,?)",
                               (ts(start), ts(end), reason, operator, ts(now)))
            wid = int(cur.lastrowid or 0)
            self.append_audit(actor=operator, action="window.added", subject=f"window:{wid}",
                              reason=reason, now=now,
                              details={"from": ts(start), "to": ts(end)})
        return LiveWindow(start, end, reason, wid, operator)

    def remove_window(self, window_id: int, *, operator: str, reason: str,
                      now: datetime) -> None:
        with self.tx("window remove") as c:
            cur = self.execute(c, "DELETE FROM live_windows WHERE id = ?", (window_id,))
            if not cur.rowcount:
                raise NotFoundError(f"unknown live-event window {window_id}")
            self.append_audit(actor=operator, action="window.removed",
                              subject=f"window:{window_id}", reason=reason, now=now)

    def windows(self) -> list[LiveWindow]:
        return [LiveWindow(dt(r["starts_at"]), dt(r["ends_at"]), r["reason"],  # type: ignore[arg-type]
                           r["id"], r["created_by"])
                for r in self.query("SELECT * FROM live_windows ORDER BY starts_at")]


def _fields(u: Update) -> dict[str, Any]:
    return {f: getattr(u, f) for f in u.__dataclass_fields__}
