"""Who may act: the operator check every change goes through (refusals are audited).

The check, in order: a clock frozen by ``--at`` may not change a database a watcher uses
(unless ``--at-on-live-database``, which is audited); a delegate (``--operator``) must be
allowed by policy ``delegates`` to act for that person; and the person whose authority is used
must be listed in policy ``operators`` (when the list is given)."""

from __future__ import annotations

from typing import Any

from crisiscomms.domain.clock import AtClock
from crisiscomms.domain.config import Catalog
from crisiscomms.domain.errors import RefusedError
from crisiscomms.domain.models import NewAuditEvent, Operator, as_operator
from crisiscomms.ports import Clock, Store


def check_operator(store: Store, catalog: Catalog, clock: Clock, operator: str | Operator,
                   action: str, subject: str) -> Operator:
    """Refuse (and audit the refusal) a change this operator may not make now; return who is
    acting. Every change goes through here."""
    who = as_operator(operator)
    verb = action.split(".")[-1]
    policy_file = catalog.files.get("policy", "policy.yaml")
    if isinstance(clock, AtClock):
        check_at_clock(store, clock, who, action, subject)
    if who.acting_for is not None and not catalog.policy.may_act_for(who.user, who.acting_for):
        audit_refusal(store, clock, who, f"{action}.refused", subject,
                      f"{who.user!r} may not act for {who.acting_for!r} (not in policy.yaml "
                      "delegates)")
        raise RefusedError(f"{who.user!r} may not act for {who.acting_for!r} (--operator, "
                           f"{action}): {policy_file} delegates does not list "
                           f"{who.acting_for!r} under {who.user!r}")
    allowed = catalog.policy.operators
    if allowed and who.on_behalf not in allowed:
        audit_refusal(store, clock, who, f"{action}.refused", subject,
                      f"operator {who.on_behalf!r} is not listed in policy.yaml operators")
        raise RefusedError(f"operator {who.on_behalf!r} may not {verb}: not listed "
                           f"in {policy_file} operators")
    return who


def live_database(store: Store) -> str | None:
    """Why this database counts as live (one a watcher uses), or None. A watcher registered
    now (running, or stopped without signing off), or any source a watcher has polled: a
    watcher that is down tonight comes back to the same database, so being seen once is
    enough (a copied database for a drill needs --at-on-live-database too)."""
    watchers = store.watchers()
    if watchers:
        return f"watcher {watchers[0].worker_id} is registered on it"
    polled = [s.source_id for s in store.source_states() if s.last_polled_at is not None]
    if polled:
        return f"a watcher has polled its sources ({polled[0]}{', ...' if len(polled) > 1 else ''})"
    return None


def check_at_clock(store: Store, clock: AtClock, who: Operator, action: str,
                   subject: str) -> None:
    """``--at`` invents the time of a change: refuse it on a live database unless the explicit
    override was given, which is itself audited (with the real wall time, as every event)."""
    why = live_database(store)
    if why is None:
        return
    details = {"at": clock.text, "action": action, "live": why}
    if not clock.live_ok:
        audit_refusal(store, clock, who, f"{action}.refused", subject,
                      f"--at {clock.text} on a live database ({why})", details)
        raise RefusedError(f"--at {clock.text}: refused to {action.split('.')[-1]} on a live "
                           f"database ({why}); drop --at, work on a copy, or add "
                           "--at-on-live-database")
    with store.unit_of_work() as uow:
        uow.audit.append(NewAuditEvent(who.user, "clock.at_on_live_database", subject,
                                       f"--at {clock.text} with --at-on-live-database", clock.now(),
                                       {**details, **who.details()}))
        uow.commit()


def audit_refusal(store: Store, clock: Clock, operator: str | Operator, action: str,
                  subject: str, reason: str, details: dict[str, Any] | None = None) -> None:
    """Record a refused action on the audit trail (its own unit of work)."""
    who = as_operator(operator)
    with store.unit_of_work() as uow:
        uow.audit.append(NewAuditEvent(who.user, action, subject, reason, clock.now(),
                                       {**(details or {}), **who.details()}))
        uow.commit()
