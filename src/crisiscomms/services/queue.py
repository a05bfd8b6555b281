"""Operator use cases on the outbox: approve, reject, hold, retry, edit, explain, windows.

Every decision is audited with its operator (the store appends the audit event in the same
transaction as the change).
"""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

from crisiscomms.adapters.store import SQLiteStore
from crisiscomms.domain.clock import isoformat
from crisiscomms.domain.config import Catalog
from crisiscomms.domain.errors import ConfigError
from crisiscomms.domain.models import DecisionAction, ItemState, LiveWindow, OutboxItem
from crisiscomms.domain.policy import decide
from crisiscomms.domain.posttext import fits
from crisiscomms.domain.workcal import local
from crisiscomms.ports import Clock
from crisiscomms.services.dispatch import channel_counters
from crisiscomms.services.incidents import check_operator

PENDING = ("queued", "held", "needs_approval")
FOREVER = datetime(9999, 1, 1, tzinfo=UTC)


def approve(store: SQLiteStore, catalog: Catalog, clock: Clock, item_id: int, operator: str,
            reason: str) -> OutboxItem:
    """Approve an item; the policy then decides when it goes."""
    check_operator(store, catalog, clock, operator, "queue.approve", f"item:{item_id}")
    now = clock.now()
    return store.operator_update(item_id, operator=operator, now=now, action="approve",
                                 reason=f"approved by {operator}: {reason}",
                                 sets={"approved_by": operator, "approved_at": now},
                                 allowed_from=PENDING, new_state=ItemState.QUEUED)


def reject(store: SQLiteStore, catalog: Catalog, clock: Clock, item_id: int, operator: str,
           reason: str) -> OutboxItem:
    """Reject an item for good."""
    check_operator(store, catalog, clock, operator, "queue.reject", f"item:{item_id}")
    if not reason.strip():
        raise ConfigError("--reason: a reason is required")
    now = clock.now()
    return store.operator_update(item_id, operator=operator, now=now, action="reject",
                                 reason=f"rejected by {operator}: {reason}",
                                 sets={"done_at": now},
                                 allowed_from=(*PENDING, "needs_review", "failed"),
                                 new_state=ItemState.REJECTED)


def hold(store: SQLiteStore, catalog: Catalog, clock: Clock, item_id: int, operator: str,
         reason: str, until: datetime | None) -> OutboxItem:
    """Hold an item until a time, or until 'queue retry' releases it."""
    check_operator(store, catalog, clock, operator, "queue.hold", f"item:{item_id}")
    now = clock.now()
    if until is not None and until <= now:
        raise ConfigError("--until: must be in the future")
    return store.operator_update(
        item_id, operator=operator, now=now, action="hold",
        reason=f"held by {operator}: {reason}" + (f" until {isoformat(until)}" if until else ""),
        sets={"not_before": until or FOREVER}, allowed_from=PENDING, new_state=ItemState.HELD)


def retry(store: SQLiteStore, catalog: Catalog, clock: Clock, item_id: int, operator: str,
          force: bool = False) -> OutboxItem:
    """Back to the queue. A needs-review item is first checked on the platform (the dispatcher
    asks ``find_existing`` before any resend) unless ``force`` is given."""
    check_operator(store, catalog, clock, operator, "queue.retry", f"item:{item_id}")
    now = clock.now()
    item = store.get_item(item_id)
    if item.state is ItemState.NEEDS_REVIEW and not force:
        # Back to 'sending' with an expired lease: the dispatcher's recovery path looks on the
        # platform first and only resends if the platform certainly does not have it.
        return store.operator_update(
            item_id, operator=operator, now=now, action="retry",
            reason=f"retry by {operator}: platform will be checked before any resend",
            sets={"lease_until": now, "lease_owner": f"review:{operator}"},
            allowed_from=("needs_review",), new_state=ItemState.SENDING)
    return store.operator_update(
        item_id, operator=operator, now=now, action="retry",
        reason=f"retry by {operator}" + (" (forced resend)" if force else ""),
        sets={"not_before": None, "attempts": 0, "done_at": None},
        allowed_from=("failed", "held", "needs_review", "queued", "needs_approval"),
        new_state=ItemState.QUEUED)


def edit(store: SQLiteStore, catalog: Catalog, clock: Clock, item_id: int, operator: str,
         text: str) -> OutboxItem:
    """Replace the text that will be sent; the original is kept beside the edit."""
    check_operator(store, catalog, clock, operator, "queue.edit", f"item:{item_id}")
    item = store.get_item(item_id)
    channel = catalog.channels.get(item.channel_id)
    text = text.strip()
    if not text:
        raise ConfigError("--text: must not be empty")
    if channel is not None and not fits(text, channel.platform):
        raise ConfigError(f"--text: too long for {channel.platform} (item {item_id})")
    return store.operator_update(item_id, operator=operator, now=clock.now(), action="edit",
                                 reason=f"text edited by {operator}",
                                 sets={"edited_text": text}, allowed_from=PENDING,
                                 new_state=item.state)


def add_window(store: SQLiteStore, catalog: Catalog, clock: Clock, start: datetime,
               end: datetime, reason: str, operator: str) -> LiveWindow:
    """Add a live-event window (policy section 7)."""
    check_operator(store, catalog, clock, operator, "window.add", "window")
    if end <= start:
        raise ConfigError("--to: must be after --from")
    if not reason.strip():
        raise ConfigError("--reason: a reason is required")
    return store.add_window(start=start, end=end, reason=reason, operator=operator,
                            now=clock.now())


def explain(store: SQLiteStore, catalog: Catalog, item_id: int, at: datetime) -> dict[str, Any]:
    """Why an item is where it is, and when it would go, as of ``at``."""
    item = store.get_item(item_id)
    info: dict[str, Any] = {"item": item_id, "channel": item.channel_id,
                            "state": str(item.state), "stored_reason": item.reason,
                            "at": isoformat(at), "local": local(at, catalog.policy).isoformat(),
                            "would_go_at": None}
    if str(item.state) not in PENDING:
        info.update(decision="none", reason=f"item is {item.state}; the policy only decides "
                    "pending items")
        return info
    channel = catalog.channels.get(item.channel_id)
    if channel is None:
        info.update(decision="hold", reason=f"channel {item.channel_id!r} is not configured")
        return info
    counters = channel_counters(store, catalog, item.channel_id, at)
    d = decide(item, channel, at, counters, catalog.policy, store.incidents(),
               catalog.playbooks, store.windows())
    info.update(decision=str(d.action), reason=d.reason, out_of_hours=d.out_of_hours,
                over_cap=d.over_cap)
    if d.action is DecisionAction.PUBLISH:
        info["would_go_at"] = isoformat(at)
    elif d.action is DecisionAction.HOLD and d.until is not None and d.until < FOREVER:
        # Ask again at the hold's end (with the same counters) to say when it would go.
        later = decide(replace(item, not_before=None), channel, d.until, counters,
                       catalog.policy, store.incidents(), catalog.playbooks, store.windows())
        if later.action is DecisionAction.PUBLISH:
            info["would_go_at"] = isoformat(d.until)
    return info
