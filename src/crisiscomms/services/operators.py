"""Who may act: the operator check every change goes through (refusals are audited).

The check, in order: a clock frozen by ``--at`` may not change a database a watcher uses
(unless ``--at-on-live-database``, which is audited); the policy.yaml read here must be the
one the watcher runs, as it recorded it on this database (``playbooks.loaded``/``reloaded``:
a private copy must not grant delegates, operators or self-approval); a delegate
(``--operator``) must be allowed by policy ``delegates`` to act for that person; and the
person whose authority is used must be listed in policy ``operators`` (when the list is
given)."""

from __future__ import annotations

import hashlib
import hmac
from pathlib import Path
from typing import Any

from crisiscomms.domain.clock import AtClock, shown
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
    check_policy_file(store, catalog, clock, who, action, subject)
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


# The audit events in which a watcher records the policy file it runs (services.reload).
POLICY_RECORDS = ("playbooks.loaded", "playbooks.reloaded")


def check_policy_file(store: Store, catalog: Catalog, clock: Clock, who: Operator,
                      action: str, subject: str) -> None:
    """Refuse (audited) a change made with a policy.yaml other than the one the watcher runs,
    as its latest ``playbooks.loaded``/``playbooks.reloaded`` event records it. A database no
    watcher ever recorded one on (a drill, a test copy) is not checked."""
    path = catalog.files.get("policy")
    if path is None:  # a catalogue built in memory (a drill): no file to compare
        return
    records = [e for e in store.audit_events(action_prefix="playbooks.")
               if e.action in POLICY_RECORDS and e.details.get("policy_sha256")]
    if not records:
        return
    latest = records[-1]
    theirs = str(latest.details["policy_sha256"])
    try:
        mine = hashlib.sha256(Path(path).read_bytes()).hexdigest()
    except OSError:
        mine = ""
    if hmac.compare_digest(mine, theirs):
        return
    their_file = latest.details.get("policy_file") or "policy.yaml"
    at = shown(latest.recorded_at or latest.at, catalog.policy.tz)
    audit_refusal(store, clock, who, f"{action}.refused", subject,
                  f"policy file {path} differs from the one the watcher runs ({their_file})",
                  {"policy_file": str(path), "policy_sha256": mine,
                   "watcher_policy_file": their_file, "watcher_policy_sha256": theirs})
    raise RefusedError(
        f"your policy.yaml ({path}) differs from the one the watcher runs ({their_file}, "
        f"recorded by {latest.actor} at {at}): use the shared playbooks (the system config's "
        "playbooks_dir); if the shared file was just changed, the watcher records it within "
        "seconds")


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
