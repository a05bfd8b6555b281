"""The hash-chained, append-only audit trail (store side)."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from crisiscomms.adapters.store.base import SQLiteBase, dt, ts
from crisiscomms.domain.models import AuditEvent

GENESIS = "0" * 64


def canonical(event: dict[str, Any]) -> bytes:
    """The canonical JSON of an event: sorted keys, no spaces, UTF-8."""
    return json.dumps(event, sort_keys=True, ensure_ascii=False, separators=(",", ":")).encode()


def event_hash(seq: int, at: str, actor: str, action: str, subject: str, reason: str,
               details: str, prev_hash: str) -> str:
    """SHA-256 over the canonical JSON of the event including the previous link's hash."""
    body = {"seq": seq, "at": at, "actor": actor, "action": action, "subject": subject,
            "reason": reason, "details": json.loads(details), "prev_hash": prev_hash}
    return hashlib.sha256(canonical(body)).hexdigest()


@dataclass(frozen=True)
class ChainReport:
    """The result of walking the audit chain."""

    ok: bool
    count: int
    head_hash: str
    problem: str = ""
    bad_seq: int | None = None


class AuditMixin(SQLiteBase):
    def append_audit(
        self,
        *,
        actor: str,
        action: str,
        subject: str,
        reason: str,
        now: datetime,
        details: dict[str, Any] | None = None,
    ) -> AuditEvent:
        """Append one event; joins the caller's transaction when there is one."""
        with self.tx("audit append") as c:
            row = c.execute("SELECT seq, hash FROM audit_head WHERE id = 1").fetchone()
            seq, prev = (row["seq"] + 1, row["hash"]) if row else (1, GENESIS)
            at = ts(now) or ""
            det = json.dumps(details or {}, sort_keys=True, ensure_ascii=False,
                             separators=(",", ":"), default=str)
            h = event_hash(seq, at, actor, action, subject, reason, det, prev)
            self.execute(c, "INSERT INTO audit_events VALUES (?,?,?,?,?,?,?,?,?)",
                         (seq, at, actor, action, subject, reason, det, prev, h))
            self.execute(c, "INSERT INTO audit_head (id, seq, hash) VALUES (1, ?, ?) "
                         "ON CONFLICT(id) DO UPDATE SET seq = excluded.seq, hash = excluded.hash",
                         (seq, h))
        return AuditEvent(seq, now, actor, action, subject, reason, details or {}, prev, h)

    def audit_events(self, since: datetime | None = None, limit: int | None = None,
                     action_prefix: str | None = None) -> list[AuditEvent]:
        sql = "SELECT * FROM audit_events WHERE 1=1"
        params: list[Any] = []
        if since is not None:
            sql += " AND at >= ?"
            params.append(ts(since))
        if action_prefix:
            sql += " AND action LIKE ?"
            params.append(action_prefix + "%")
        sql += " ORDER BY seq"
        if limit:
            sql += f" LIMIT {int(limit)}"
        return [
            AuditEvent(r["seq"], dt(r["at"]) or datetime.min, r["actor"], r["action"],
                       r["subject"], r["reason"], json.loads(r["details"]), r["prev_hash"],
                       r["hash"])
            for r in self.query(sql, params)
        ]

    def verify_audit(self) -> ChainReport:
        """Walk the chain; name the first broken, missing or reordered link."""
        prev = GENESIS
        expected_seq = 1
        count = 0
        with self._lock, self._mapped("audit verify"):
            cur = self._conn.execute("SELECT * FROM audit_events ORDER BY seq")
            for r in cur:
                seq = r["seq"]
                if seq != expected_seq:
                    return ChainReport(False, count, prev,
                                       f"event {expected_seq} is missing (next is {seq})",
                                       expected_seq)
                if r["prev_hash"] != prev:
                    return ChainReport(False, count, prev,
                                       f"event {seq}: previous-hash link broken (deleted, "
                                       "reordered or edited event before it)", seq)
                try:
                    h = event_hash(seq, r["at"], r["actor"], r["action"], r["subject"],
                                   r["reason"], r["details"], r["prev_hash"])
                except (ValueError, TypeError):
                    h = ""
                if h != r["hash"]:
                    return ChainReport(False, count, prev,
                                       f"event {seq}: content does not match its hash "
                                       f"(edited; action {r['action']!r})", seq)
                prev = r["hash"]
                count += 1
                expected_seq += 1
            head = self._conn.execute("SELECT seq, hash FROM audit_head WHERE id = 1").fetchone()
        if head is not None and (head["seq"] != count or head["hash"] != prev):
            return ChainReport(False, count, prev,
                               f"chain ends at event {count} but the head records event "
                               f"{head['seq']}: events after {count} were deleted", count + 1)
        if head is None and count:
            return ChainReport(False, count, prev, "the chain head record is missing", None)
        return ChainReport(True, count, prev)
