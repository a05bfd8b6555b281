"""The outbox state machine: every state change of an item, with the states it may come from.

This is the one table of transitions; services call these functions and hand the before and
after items to the store, which persists the change only if nobody else changed the item in
between (its ``version``) and, for a worker's in-flight transitions, only if the worker still
holds the lease (its ``fence``, a token that grows with every claim and take-over)::

    queued ──► leased ──► sending ──► published
      ▲  │        │          │ ├────► failed         (permanent error, or attempts used up)
      │  │        │          │ ├────► queued/held    (transient error or 429: later)
      │  │        │          │ └────► needs_review   (outcome unknown, platform can't tell)
      │  ├─► held / needs_approval / skipped          (policy decisions; operators act on them)
      └──┴── lease expired (crashed worker): taken over, then leased ─► queued;
             sending ─► ask the platform before any resend
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import UTC, datetime

from crisiscomms.domain.errors import TransitionRefusedError
from crisiscomms.domain.models import ItemState, OutboxItem

S = ItemState
PENDING = frozenset({S.QUEUED, S.HELD, S.NEEDS_APPROVAL})
IN_FLIGHT = frozenset({S.LEASED, S.SENDING})
FOREVER = datetime(9999, 1, 1, tzinfo=UTC)


@dataclass(frozen=True)
class Transition:
    """One kind of state change: where it may start, where it may end, who may make it."""

    name: str
    allowed_from: frozenset[ItemState]
    to: frozenset[ItemState]
    fenced: bool = False  # only the lease holder (its fencing token) may make it


def _t(name: str, src: frozenset[ItemState] | set[ItemState], to: set[ItemState] | frozenset[
        ItemState], fenced: bool = False) -> Transition:
    return Transition(name, frozenset(src), frozenset(to), fenced)


TRANSITIONS: dict[str, Transition] = {t.name: t for t in (
    _t("decide", PENDING, PENDING | {S.SKIPPED}),
    _t("claim", PENDING, {S.LEASED}),
    _t("refuse", PENDING, {S.FAILED}),
    _t("start_send", {S.LEASED}, {S.SENDING}, fenced=True),
    _t("publish", IN_FLIGHT, {S.PUBLISHED}, fenced=True),
    _t("release", IN_FLIGHT, {S.QUEUED, S.HELD, S.FAILED, S.NEEDS_REVIEW}, fenced=True),
    _t("defer_lookup", IN_FLIGHT, {S.SENDING}, fenced=True),
    _t("take_over", IN_FLIGHT, IN_FLIGHT),
    _t("approve", PENDING, {S.QUEUED}),
    _t("reject", PENDING | {S.NEEDS_REVIEW, S.FAILED}, {S.REJECTED}),
    _t("hold", PENDING, {S.HELD}),
    _t("retry", {S.FAILED, S.HELD, S.NEEDS_REVIEW, S.QUEUED, S.NEEDS_APPROVAL},
       {S.QUEUED, S.SENDING}),
    _t("edit", PENDING, PENDING),
)}


def check(item: OutboxItem, name: str, to: ItemState | None = None) -> Transition:
    """The transition ``name`` for ``item``, or ``TransitionRefusedError`` naming why not."""
    t = TRANSITIONS[name]
    if item.state not in t.allowed_from:
        allowed = ", ".join(sorted(str(s) for s in t.allowed_from))
        raise TransitionRefusedError(
            f"item {item.id} is {item.state}; '{name}' needs it to be one of: {allowed}")
    if to is not None and to not in t.to:
        raise TransitionRefusedError(f"item {item.id}: '{name}' cannot lead to {to}")
    return t


# -- the dispatcher's transitions -------------------------------------------------------------
def decide(item: OutboxItem, state: ItemState, reason: str, at: datetime) -> OutboxItem:
    """A policy decision on a pending item (a skip is final)."""
    check(item, "decide", state)
    return replace(item, state=state, reason=reason,
                   done_at=at if state is S.SKIPPED else item.done_at)


def refuse(item: OutboxItem, *, reason: str, at: datetime) -> OutboxItem:
    """The channel cannot post at all (e.g. its credentials are missing): the item waits as
    failed, nothing sent, and ``queue retry`` sends it once the channel is fixed."""
    check(item, "refuse")
    return replace(item, state=S.FAILED, reason=reason, last_error=reason, done_at=at)


def claim(item: OutboxItem, *, owner: str, until: datetime, out_of_hours: bool,
          over_cap: bool) -> OutboxItem:
    """Lease a pending item for sending: a new fencing token for the new holder."""
    check(item, "claim")
    return replace(item, state=S.LEASED, lease_owner=owner, lease_until=until,
                   fence=item.fence + 1, out_of_hours=out_of_hours, over_cap=over_cap)


def start_send(item: OutboxItem, *, at: datetime, until: datetime) -> OutboxItem:
    """A request is about to go out; from now on a crash means "outcome unknown". The lease
    is dated from this moment, not from the start of the dispatch round."""
    check(item, "start_send")
    return replace(item, state=S.SENDING, attempts=item.attempts + 1, sent_at=at,
                   lease_until=until)


def publish(item: OutboxItem, *, post_id: str, url: str, at: datetime,
            dry_run: bool = False) -> OutboxItem:
    """The platform has the post."""
    check(item, "publish")
    return replace(item, state=S.PUBLISHED, platform_post_id=post_id, platform_url=url,
                   done_at=at, lease_owner=None, lease_until=None, last_error=None,
                   reason="dry run" if dry_run else "published")


def release(item: OutboxItem, *, state: ItemState, reason: str, at: datetime,
            error: str | None = None, not_before: datetime | None = None) -> OutboxItem:
    """End an attempt without publishing: later (queued/held), or for good / for a person."""
    check(item, "release", state)
    terminal = state is S.FAILED
    return replace(item, state=state, reason=reason,
                   last_error=error if error is not None else item.last_error,
                   not_before=not_before, lease_owner=None, lease_until=None,
                   done_at=at if terminal else None)


def defer_lookup(item: OutboxItem, *, until: datetime, error: str,
                 count: bool = True) -> OutboxItem:
    """The platform could not say yet whether a send went out: ask again after ``until``.
    ``count`` is False when the platform answered but the request may still land."""
    check(item, "defer_lookup")
    return replace(item, state=S.SENDING, lookups=item.lookups + int(count), lease_owner=None,
                   lease_until=until, last_error=error)


def take_over(item: OutboxItem, *, owner: str, now: datetime, until: datetime) -> OutboxItem:
    """Take an in-flight item whose lease expired (its worker died or stalled)."""
    check(item, "take_over")
    if item.lease_until is not None and item.lease_until >= now:
        raise TransitionRefusedError(
            f"item {item.id}: lease of {item.lease_owner} runs until {item.lease_until}")
    return replace(item, lease_owner=owner, lease_until=until, fence=item.fence + 1)


# -- operators' transitions -------------------------------------------------------------------
def approve(item: OutboxItem, *, by: str, at: datetime, reason: str) -> OutboxItem:
    check(item, "approve")
    if item.approved_by:  # a second approval is no decision: one approver per text
        raise TransitionRefusedError(
            f"item {item.id} is already approved by {item.approved_by}"
            f"{' at ' + item.approved_at.isoformat() if item.approved_at else ''}")
    return replace(item, state=S.QUEUED, reason=reason, approved_by=by, approved_at=at)


def reject(item: OutboxItem, *, at: datetime, reason: str) -> OutboxItem:
    check(item, "reject")
    return replace(item, state=S.REJECTED, reason=reason, done_at=at)


def hold(item: OutboxItem, *, until: datetime | None, reason: str) -> OutboxItem:
    check(item, "hold")
    return replace(item, state=S.HELD, reason=reason, not_before=until or FOREVER)


def retry(item: OutboxItem, *, reason: str, now: datetime, check_platform: bool,
          by: str) -> OutboxItem:
    """Back to the queue; a needs-review item goes back through "ask the platform first"
    (in flight with an expired lease) unless the operator forces a resend."""
    if check_platform:
        check(item, "retry", S.SENDING)
        if item.state is not S.NEEDS_REVIEW:
            raise TransitionRefusedError(f"item {item.id}: only a needs_review item is checked "
                                         "on the platform before a retry")
        return replace(item, state=S.SENDING, reason=reason, lease_until=now,
                       lease_owner=f"review:{by}")
    check(item, "retry", S.QUEUED)
    return replace(item, state=S.QUEUED, reason=reason, not_before=None, attempts=0,
                   done_at=None)


def edit(item: OutboxItem, *, text: str, reason: str) -> OutboxItem:
    """New text; an approval was of the old words, so an approved item needing approval goes
    back to waiting for one."""
    check(item, "edit")
    if item.approved_by and item.approval == "manual":
        return replace(item, edited_text=text, reason=reason, approved_by=None,
                       approved_at=None, state=S.NEEDS_APPROVAL)
    return replace(item, edited_text=text, reason=reason)
