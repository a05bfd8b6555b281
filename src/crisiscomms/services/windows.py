"""Live-event windows (policy section 7): extra staffed time for a tweet chat or live coverage.
Adding and removing both go through the operator check and are audited."""

from __future__ import annotations

from datetime import datetime

from crisiscomms.domain.clock import isoformat
from crisiscomms.domain.config import Catalog
from crisiscomms.domain.errors import ConfigError, NotFoundError
from crisiscomms.domain.models import LiveWindow, NewAuditEvent, Operator
from crisiscomms.ports import Clock, Store
from crisiscomms.services.operators import check_operator


def add_window(store: Store, catalog: Catalog, clock: Clock, start: datetime,
               end: datetime, reason: str, operator: str | Operator) -> LiveWindow:
    """Add a live-event window."""
    who = check_operator(store, catalog, clock, operator, "window.add", "window")
    if end <= start:
        raise ConfigError("--to: must be after --from")
    if not reason.strip():
        raise ConfigError("--reason: a reason is required")
    now = clock.now()
    with store.unit_of_work() as uow:
        w = uow.windows.add(start=start, end=end, reason=reason, operator=who.label, at=now)
        uow.audit.append(NewAuditEvent(who.user, "window.added", f"window:{w.id}", reason, now,
                                       {"from": isoformat(start), "to": isoformat(end),
                                        **who.details()}))
        uow.commit()
    return w


def remove_window(store: Store, catalog: Catalog, clock: Clock, window_id: int,
                  reason: str, operator: str | Operator) -> None:
    """Remove a live-event window."""
    who = check_operator(store, catalog, clock, operator, "window.remove",
                         f"window:{window_id}")
    now = clock.now()
    with store.unit_of_work() as uow:
        if not uow.windows.remove(window_id):
            raise NotFoundError(f"unknown live-event window {window_id}")
        uow.audit.append(NewAuditEvent(who.user, "window.removed", f"window:{window_id}",
                                       reason, now, who.details()))
        uow.commit()
