"""Sealing the audit trail: the on-call officers' shells write their events without the audit
key (it is the service's secret), so the watcher, which holds it, appends a keyed
``audit.sealed`` event after them. Each keyed hash covers the link before it, so one keyed event
protects every event before it: a rewrite of the officers' events is then detected."""

from __future__ import annotations

import asyncio
from datetime import datetime, timedelta
from typing import Any

import structlog

from crisiscomms.domain.models import NewAuditEvent
from crisiscomms.ports import Store

log = structlog.get_logger(__name__)

KEYED = "hmac-sha256"
SEAL_SECONDS = 10.0
LOOKBACK = timedelta(minutes=5)  # events are read from the last check, less this margin


class AuditSealer:
    """A run-loop chore: if the newest audit event is not keyed, append a keyed one."""

    name = "audit.seal"

    def __init__(self, store: Store, *, owner: str,
                 interval_seconds: float = SEAL_SECONDS) -> None:
        self.store = store
        self.owner = owner
        self.interval_seconds = interval_seconds
        self._since: datetime | None = None

    async def run(self, loop: Any, now: datetime) -> None:
        await asyncio.to_thread(self.seal, now)

    def seal(self, now: datetime) -> bool:
        """Seal an unkeyed tail; True if a seal was written."""
        since = self._since - LOOKBACK if self._since is not None else now - timedelta(days=1)
        recent = self.store.audit_events(since=since)
        self._since = now
        if not recent or recent[-1].scheme == KEYED:
            return False
        tail = [e for e in recent if e.scheme != KEYED]
        first = next((e.seq for e in reversed(recent) if e.scheme == KEYED), None)
        unsealed = [e.seq for e in tail if first is None or e.seq > first]
        with self.store.unit_of_work() as uow:
            uow.audit.append(NewAuditEvent(
                f"watcher:{self.owner}", "audit.sealed", "audit",
                f"keyed seal after {len(unsealed)} event(s) written without the key",
                now, {"from_seq": min(unsealed), "to_seq": max(unsealed)}))
            uow.commit()
        log.info("audit.sealed", events=len(unsealed), to_seq=max(unsealed))
        return True
