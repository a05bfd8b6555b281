"""The Store port's read methods, shared by every backend: each runs in its own read unit of
work (CQRS-style queries beside the units of work that change things)."""

from __future__ import annotations

import builtins
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from crisiscomms.domain.audit import ChainReport
from crisiscomms.domain.models import (
    AuditEvent,
    ChannelState,
    Incident,
    ItemEvent,
    LiveWindow,
    OutboxItem,
    SourceState,
    Update,
    WatcherInfo,
)
from crisiscomms.ports import UnitOfWork


class StoreQueries:
    """``Store``'s read methods, each in its own read transaction (needs ``reader()``)."""

    def reader(self) -> UnitOfWork:  # pragma: no cover - provided by the backend
        raise NotImplementedError

    def get_item(self, item_id: int) -> OutboxItem:
        with self.reader() as r:
            return r.outbox.get(item_id)

    def items(self, *, states: Sequence[str] | None = None, channel_id: str | None = None,
              incident_id: int | None = None,
              limit: int | None = None) -> builtins.list[OutboxItem]:
        with self.reader() as r:
            return r.outbox.list(states=states, channel_id=channel_id, incident_id=incident_id,
                                 limit=limit)

    def item_events(self, item_id: int) -> builtins.list[ItemEvent]:
        with self.reader() as r:
            return r.outbox.events(item_id)

    def queue_counts(self) -> dict[str, int]:
        with self.reader() as r:
            return r.outbox.counts()

    def get_incident(self, incident_id: int) -> Incident:
        with self.reader() as r:
            return r.incidents.get(incident_id)

    def incidents(self, *, active_only: bool = False) -> builtins.list[Incident]:
        with self.reader() as r:
            return r.incidents.list(active_only=active_only)

    def active_incidents(self) -> builtins.list[Incident]:
        return self.incidents(active_only=True)

    def get_update(self, update_id: int) -> Update:
        with self.reader() as r:
            return r.updates.get(update_id)

    def updates(self, **filters: Any) -> builtins.list[tuple[Update, str, bool]]:
        with self.reader() as r:
            return r.updates.list(**filters)

    def source_state(self, key: str) -> SourceState:
        with self.reader() as r:
            return r.sources.get(key)

    def source_states(self) -> builtins.list[SourceState]:
        with self.reader() as r:
            return r.sources.list()

    def failing_sources(self, min_failures: int) -> builtins.list[SourceState]:
        """The sources failing ``min_failures`` polls in a row or more (the pager asks every
        10 s: a query for the few, not 1,000 states built to be thrown away)."""
        with self.reader() as r:
            return r.sources.failing(min_failures)

    def channel_states(self) -> dict[str, ChannelState]:
        with self.reader() as r:
            return r.channels.list()

    def windows(self) -> builtins.list[LiveWindow]:
        with self.reader() as r:
            return r.windows.list()

    def audit_events(self, since: datetime | None = None, limit: int | None = None,
                     action_prefix: str | None = None) -> builtins.list[AuditEvent]:
        with self.reader() as r:
            return r.audit.events(since=since, limit=limit, action_prefix=action_prefix)

    def verify_audit(self, *, expect_head: tuple[int | None, str] | None = None,
                     ) -> ChainReport:
        with self.reader() as r:
            return r.audit.verify(expect_head=expect_head)

    def watchers(self) -> builtins.list[WatcherInfo]:
        with self.reader() as r:
            return r.watchers.list()
