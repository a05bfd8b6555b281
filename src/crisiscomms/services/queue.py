"""The queue service: operators' decisions on outbox items (approve, reject, hold, retry,
edit) and ``explain``. Each change is a domain transition, saved with its audit event in one
unit of work."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any

from crisiscomms.domain import outbox
from crisiscomms.domain.clock import isoformat, shown
from crisiscomms.domain.config import Catalog
from crisiscomms.domain.errors import ConfigError, CrisisCommsError, RefusedError
from crisiscomms.domain.models import (
    ActionKind,
    DecisionAction,
    ItemEvent,
    ItemState,
    NewAuditEvent,
    NewOutboxItem,
    Operator,
    OutboxItem,
)
from crisiscomms.domain.outbox import FOREVER
from crisiscomms.domain.policy import decide
from crisiscomms.domain.posttext import fits
from crisiscomms.domain.workcal import local
from crisiscomms.ports import Clock, Store
from crisiscomms.services.dispatch import channel_counters
from crisiscomms.services.operators import audit_refusal, check_operator

PENDING = ("queued", "held", "needs_approval")
NATIVE_ACTIONS = frozenset({ActionKind.RETWEET, ActionKind.BOOST, ActionKind.REPOST})


def _change(store: Store, clock: Clock, item_id: int, who: Operator, action: str,
            change: Callable[[OutboxItem, datetime], OutboxItem],
            extra: Callable[[OutboxItem, OutboxItem], dict[str, Any]] | None = None,
            ) -> OutboxItem:
    """One operator transition of one item: the change, its history line and its audit event
    in one unit of work. A concurrent change makes it fail (``StaleWriteError``), never lost."""
    now = clock.now()
    with store.unit_of_work() as uow:
        before = uow.outbox.get(item_id)
        after = change(before, now)
        saved = uow.outbox.save(before, after, ItemEvent(now, str(after.state), after.reason,
                                                         who.user, {"action": action,
                                                                    **who.details()}))
        details: dict[str, Any] = {"from": str(before.state), "to": str(after.state),
                                   "channel": before.channel_id, **who.details()}
        if extra is not None:
            details.update(extra(before, after))
        uow.audit.append(NewAuditEvent(who.user, f"queue.{action}", f"item:{item_id}",
                                       after.reason, now, details))
        uow.commit()
    return saved


def enqueue(store: Store, items: Sequence[NewOutboxItem], clock: Clock,
            actor: str) -> list[int]:
    """Queue items the team wrote (a scheduled post); a repeated dedupe key is ignored."""
    with store.unit_of_work() as uow:
        ids = uow.outbox.add(items, at=clock.now(), actor=actor)
        uow.commit()
    return ids


def last_writer(store: Store, item_id: int) -> tuple[frozenset[str], ItemEvent] | None:
    """Who last wrote the item's text (its latest edit: the delegate and whom they acted for),
    or None if nobody of ours has edited it."""
    edits = [e for e in store.item_events(item_id) if e.details.get("action") == "edit"]
    if not edits:
        return None
    last = edits[-1]
    names = {last.actor}
    if last.details.get("acting_for"):
        names.add(str(last.details["acting_for"]))
    return frozenset(names), last


def approve(store: Store, catalog: Catalog, clock: Clock, item_id: int,
            operator: str | Operator, reason: str) -> OutboxItem:
    """Approve an item; the policy then decides when it goes. Approval by the person who last
    wrote the text is refused unless they hold a policy ``self_approval`` role (then it is
    audited as a self-approval)."""
    who = check_operator(store, catalog, clock, operator, "queue.approve", f"item:{item_id}")
    extra: dict[str, Any] = {}
    writer = last_writer(store, item_id)
    if writer is not None and writer[0] & who.names:
        role = catalog.policy.may_self_approve(who.user)
        wrote = " and ".join(sorted(writer[0] & who.names))
        if role is None:
            audit_refusal(store, clock, who, "queue.approve.refused", f"item:{item_id}",
                          f"self-approval: {wrote} last wrote this text", {"self_approval": True})
            raise RefusedError(
                f"item {item_id}: {wrote} last wrote its text, so {who.label} may not approve "
                "it; another operator must (policy.yaml self_approval names the on-call roles "
                "that may)")
        extra = {"self_approval": role}
    why = f"approved by {who.label}: {reason}"
    if extra:
        why = (f"approved by {who.label} (self-approval, role {extra['self_approval']}): "
               f"{reason}")
    return _change(store, clock, item_id, who, "approve",
                   lambda it, now: outbox.approve(it, by=who.label, at=now, reason=why),
                   (lambda before, after: extra) if extra else None)


def reject(store: Store, catalog: Catalog, clock: Clock, item_id: int,
           operator: str | Operator, reason: str) -> OutboxItem:
    """Reject an item for good."""
    who = check_operator(store, catalog, clock, operator, "queue.reject", f"item:{item_id}")
    if not reason.strip():
        raise ConfigError("--reason: a reason is required")
    return _change(store, clock, item_id, who, "reject",
                   lambda it, now: outbox.reject(it, at=now,
                                                 reason=f"rejected by {who.label}: {reason}"))


def hold(store: Store, catalog: Catalog, clock: Clock, item_id: int, operator: str | Operator,
         reason: str, until: datetime | None) -> OutboxItem:
    """Hold an item until a time, or until 'queue retry' releases it."""
    who = check_operator(store, catalog, clock, operator, "queue.hold", f"item:{item_id}")
    if until is not None and until <= clock.now():
        raise ConfigError("--until: must be in the future")
    why = f"held by {who.label}: {reason}" + (
        f" until {shown(until, catalog.policy.tz)}" if until else "")
    return _change(store, clock, item_id, who, "hold",
                   lambda it, now: outbox.hold(it, until=until, reason=why),
                   (lambda before, after: {"until": isoformat(until)}) if until else None)


def retry(store: Store, catalog: Catalog, clock: Clock, item_id: int, operator: str | Operator,
          force: bool = False) -> OutboxItem:
    """Back to the queue. A needs-review item is first checked on the platform (the dispatcher
    asks ``find_existing`` before any resend) unless ``force`` is given."""
    who = check_operator(store, catalog, clock, operator, "queue.retry", f"item:{item_id}")

    def change(it: OutboxItem, now: datetime) -> OutboxItem:
        if it.state is ItemState.NEEDS_REVIEW and not force:
            # In flight with an expired lease: the dispatcher's recovery looks on the platform
            # first and only resends if the platform certainly does not have it.
            return outbox.retry(it, now=now, check_platform=True, by=who.label,
                                reason=f"retry by {who.label}: platform will be checked "
                                       "before any resend")
        return outbox.retry(it, now=now, check_platform=False, by=who.label,
                            reason=f"retry by {who.label}" + (" (forced resend)" if force
                                                              else ""))

    return _change(store, clock, item_id, who, "retry", change)


def edit(store: Store, catalog: Catalog, clock: Clock, item_id: int, operator: str | Operator,
         text: str) -> OutboxItem:
    """Replace the text that will be sent; the original is kept beside the edit."""
    who = check_operator(store, catalog, clock, operator, "queue.edit", f"item:{item_id}")
    item = store.get_item(item_id)
    if item.action in NATIVE_ACTIONS:
        # A retweet, boost or repost sends the agency's own post, not our text: an edit would
        # be shown and then silently not sent.
        raise RefusedError(
            f"item {item_id} is a {item.action} of the agency's own post on "
            f"{item.channel_id}: it carries no text of ours, so it cannot be edited; reject it "
            "and write a post instead if different words are needed")
    channel = catalog.channels.get(item.channel_id)
    text = text.strip()
    if not text:
        raise ConfigError("--text: must not be empty")
    if channel is not None and not fits(text, channel.platform):
        raise ConfigError(f"--text: too long for {channel.platform} (item {item_id})")
    return _change(store, clock, item_id, who, "edit",
                   lambda it, now: outbox.edit(it, text=text,
                                               reason=f"text edited by {who.label}"),
                   lambda before, after: {"edited_text": text, "original_text": before.text})


@dataclass(frozen=True)
class BulkResult:
    """One item of a bulk approval: approved (``item``) or refused (``error``)."""

    item_id: int
    item: OutboxItem | None = None
    error: CrisisCommsError | None = None


def waiting_from(store: Store, source_id: str) -> list[int]:
    """The items waiting for approval whose update came from ``source_id``."""
    return [i.id for i in store.items(states=["needs_approval"])
            if i.source_id == source_id]


def approve_many(store: Store, catalog: Catalog, clock: Clock, item_ids: Sequence[int],
                 operator: str | Operator, reason: str) -> list[BulkResult]:
    """Approve several items, each in its own audited transition: a refusal of one (not
    waiting, self-approval, a concurrent change) is reported for it and the rest go on."""
    out = []
    for item_id in item_ids:
        try:
            out.append(BulkResult(item_id, approve(store, catalog, clock, item_id, operator,
                                                   reason)))
        except CrisisCommsError as exc:
            out.append(BulkResult(item_id, error=exc))
    return out


def explain(store: Store, catalog: Catalog, item_id: int, at: datetime) -> dict[str, Any]:
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
