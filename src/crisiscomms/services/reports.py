"""The post-incident audit report, built only from the store and the audit trail.

``build_incident_report`` and ``build_period_report`` return plain data (the JSON format: every
time ISO-8601 UTC with ``Z``); ``render`` turns it into Markdown, CSV or a self-contained HTML
page, where every time is shown in the policy's zone with the zone's name.

An incident report is scoped to its incident: its period (the backfill window before the
activation to the stand-down), the updates of its playbook's sources seen in that period, the
outbox items of this incident for them (and the normal-mode items for the same updates, which
the board asks about: "that warning was approved, then what?"), and the operator actions on
this incident, on those items, or on nothing incident-specific (windows, channels). Another
incident's items and actions never appear in it.
"""

from __future__ import annotations

import math
import re
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from datetime import datetime, timedelta
from typing import Any

from crisiscomms import __version__
from crisiscomms.domain.clock import isoformat
from crisiscomms.domain.config import Catalog, SourceConfig
from crisiscomms.domain.errors import ConfigError, NotFoundError
from crisiscomms.domain.matching import lead_agency_sources
from crisiscomms.domain.models import AuditEvent, Incident, ItemEvent, OutboxItem, Update
from crisiscomms.domain.workcal import in_regular_hours, week_bounds
from crisiscomms.ports import Store

SCHEMA = "crisiscomms.report/2"
OPERATOR_ACTIONS = ("incident.", "queue.", "window.")
# An operator's reason as the queue service words it: "approved by alice: the reason".
_DECISION_REASON = re.compile(r"^(?:approved|rejected|held|retry|edited) by (.+?)(?:: |$)(.*)$",
                              re.S)


def percentile(values: Sequence[float], pct: float) -> float | None:
    """Nearest-rank percentile (no interpolation: every figure is a real observation)."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, math.ceil(pct / 100 * len(ordered)))
    return ordered[rank - 1]


def _iso(dt: datetime | None) -> str | None:
    return isoformat(dt) if dt else None


def _stats(values: Sequence[float]) -> dict[str, Any]:
    return {"count": len(values), "p50_s": percentile(values, 50),
            "p95_s": percentile(values, 95), "max_s": max(values) if values else None}


def _integrity(store: Store, now: datetime) -> dict[str, Any]:
    """The audit head (count and hash) as the store verified it just now: an outside copy of
    it lets anyone see later whether the trail was truncated or rewritten."""
    chain = store.verify_audit()
    # ``ok``: intact as far as it could be checked; ``fully_checked``: and nothing left out
    # (an officer's report of a keyed trail, without the service's key, is ok, not fully).
    return {"audit_chain_ok": chain.ok, "audit_fully_checked": chain.fully_checked,
            "audit_events": chain.count,
            "audit_head_hash": chain.head_hash, "audit_head": chain.head,
            "audit_keyed_events": chain.keyed,
            "audit_unchecked_events": chain.unchecked,
            "audit_unprotected_events": chain.unprotected,
            "audit_old_format_after_new": list(chain.old_after_new),
            "audit_time_backwards_at": list(chain.backwards),
            "audit_not_fully_checked": chain.not_fully_checked() if chain.ok else [],
            "problem": chain.problem or None,
            "generated_at": isoformat(now), "crisiscomms_version": __version__,
            "schema": SCHEMA}


def _why(reason: str) -> str:
    """The operator's own words, without the "approved by alice: " the service puts first."""
    m = _DECISION_REASON.match(reason)
    return m.group(2) if m and m.group(2) else reason


def _who(actor: str, details: dict[str, Any]) -> str:
    """``bob`` or ``bob acting for alice`` (a delegate's change records whom it was for)."""
    acting_for = details.get("acting_for")
    return f"{actor} acting for {acting_for}" if acting_for else actor


def _history(events: Iterable[ItemEvent]) -> list[dict[str, Any]]:
    """The item's states in order; a run of the same state by the same actor (a held item is
    re-held at every dispatcher tick) is one line with its first and last time and a count."""
    out: list[dict[str, Any]] = []
    for e in events:
        last = out[-1] if out else None
        if last is not None and last["state"] == e.state and last["by"] == e.actor \
                and "action" not in e.details:
            last["last_at"] = isoformat(e.at)
            last["times"] += 1
            continue
        out.append({"state": e.state, "first_at": isoformat(e.at), "last_at": isoformat(e.at),
                    "times": 1, "by": e.actor, "reason": e.reason})
    return out


# How the queue words a self-approval in the item's reason (the marker itself is on the audit
# event): "approved by alice (self-approval, role oncall-lead): ...".
_SELF_APPROVAL = re.compile(r"^approved by .+? \(self-approval, role ([^)]+)\)")
SelfApprovals = dict[tuple[str, str], str]


def _self_approvals(events: Iterable[AuditEvent]) -> SelfApprovals:
    """(subject, time) -> role of every self-approval on the audit trail: the queue records the
    marker on the audit event, not in the item's history."""
    return {(e.subject, isoformat(e.at)): str(e.details["self_approval"]) for e in events
            if e.action == "queue.approve" and e.details.get("self_approval")}


def _self_approval(item_id: int, e: ItemEvent, marks: SelfApprovals) -> str | None:
    """The on-call role a self-approval was made under, or None for an ordinary decision."""
    if e.details.get("action") != "approve":
        return None
    role = e.details.get("self_approval") or marks.get((f"item:{item_id}", isoformat(e.at)))
    if not role:
        m = _SELF_APPROVAL.match(e.reason)
        role = m.group(1) if m else None
    return str(role) if role else None


def _decisions(item_id: int, events: Iterable[ItemEvent],
               marks: SelfApprovals) -> list[dict[str, Any]]:
    """Every operator decision on the item: what, who, when and why (and a self-approval's
    role, from the item's history or else the audit trail)."""
    return [{"action": e.details["action"], "by": _who(e.actor, e.details), "at": isoformat(e.at),
             "reason": _why(e.reason), "to": e.state,
             "self_approval": _self_approval(item_id, e, marks)}
            for e in events if e.details.get("action")]


def _item_outcome(store: Store, item: OutboxItem, marks: SelfApprovals) -> dict[str, Any]:
    """One outbox item: its final state, how it got there, and what went out where."""
    events = store.item_events(item.id)
    held = [e for e in events if e.state in ("held", "needs_approval")]
    return {
        "item": item.id, "channel": item.channel_id, "action": str(item.action),
        "mode": "incident" if item.incident_id is not None else "normal",
        "incident": item.incident_id,
        "state": str(item.state), "reason": item.reason,
        "post_id": item.platform_post_id, "post_url": item.platform_url,
        "published_at": _iso(item.done_at) if str(item.state) == "published" else None,
        "done_at": _iso(item.done_at),
        "attempts": item.attempts, "retried": item.attempts > 1,
        "last_error": item.last_error, "out_of_hours": item.out_of_hours,
        "over_cap": item.over_cap, "text": item.body,
        "edited": item.edited_text is not None, "original_text": item.text
        if item.edited_text is not None else None,
        "held_reasons": sorted({e.reason for e in held}),
        "decisions": _decisions(item.id, events, marks), "history": _history(events),
    }


def _about(store: Store, e: AuditEvent, cache: dict[int, dict[str, Any] | None],
           ) -> dict[str, Any] | None:
    """What an operator action was about: the item's update (source, title, text, link)."""
    kind, _, ident = e.subject.partition(":")
    if kind != "item" or not ident.isdigit():
        return None
    item_id = int(ident)
    if item_id not in cache:
        try:
            it = store.get_item(item_id)
        except NotFoundError:  # a report never fails on one dangling subject
            cache[item_id] = None
            return None
        about: dict[str, Any] = {"item": it.id, "channel": it.channel_id,
                                 "incident": it.incident_id, "update": it.update_id,
                                 "source": it.source_id, "agency": None, "title": None,
                                 "text": it.body, "url": it.url or None}
        if it.update_id is not None:
            u = store.get_update(it.update_id)
            about.update(source=u.source_id, agency=u.agency, title=u.title, text=u.text,
                         url=u.url)
        cache[item_id] = about
    return cache[item_id]


def _audit_json(store: Store, e: AuditEvent, cache: dict[int, dict[str, Any] | None],
                ) -> dict[str, Any]:
    return {"seq": e.seq, "at": isoformat(e.at), "actor": e.who, "action": e.action,
            "subject": e.subject, "reason": e.reason, "about": _about(store, e, cache)}


def _is_operator(e: AuditEvent) -> bool:
    return e.action.startswith(OPERATOR_ACTIONS)


def _in_scope(e: AuditEvent, incident_id: int, item_ids: set[int]) -> bool:
    """An audit event belongs to this incident's report: about it, about one of its items,
    or about nothing incident-specific (a live window, a channel)."""
    kind, _, ident = e.subject.partition(":")
    if kind == "incident":
        return ident == str(incident_id)
    if kind == "item":
        return ident.isdigit() and int(ident) in item_ids
    return True


def _update_json(u: Update, disposition: str, baseline: bool, lead: bool) -> dict[str, Any]:
    cap = u.cap
    return {
        "update": u.id, "source": u.source_id, "agency": u.agency, "kind": str(u.kind),
        "lead": lead, "external_id": u.external_id, "revision": u.revision,
        "published_at": _iso(u.published_at), "seen_at": _iso(u.fetched_at),
        "title": u.title, "text": u.text, "url": u.url, "disposition": disposition,
        "baseline": baseline,
        "cap": None if cap is None else {
            "msg_type": cap.msg_type, "status": cap.status, "scope": cap.scope,
            "severity": cap.severity, "urgency": cap.urgency, "certainty": cap.certainty,
            "event": cap.event, "area": cap.area, "references": list(cap.references)},
    }


def build_incident_report(store: Store, catalog: Catalog, incident: Incident,
                          now: datetime) -> dict[str, Any]:
    """Everything the board, auditors and an FOI request ask about one incident. It is built
    from the database: a playbook file broken since is named in ``caveats``, not an error."""
    caveats: list[str] = []
    try:
        pb = catalog.playbooks.get(incident.playbook)
    except ConfigError as exc:
        pb = None
        caveats.append(f"the playbook could not be read ({exc}): its sources and channels are "
                       "taken from the incident's items")
    try:
        sources: dict[str, SourceConfig] = {k: catalog.sources[k] for k in catalog.sources}
    except ConfigError as exc:
        sources = {}
        caveats.append(f"sources.yaml could not be read ({exc}): agencies are taken from the "
                       "stored updates")
    backfill = timedelta(minutes=pb.backfill_minutes if pb else 120)
    start = incident.activated_at - backfill
    end = incident.deactivated_at or now
    items = store.items(incident_id=incident.id)
    source_ids = [s.source for s in pb.sources] if pb else sorted(
        {it.source_id for it in items if it.source_id})
    by_update: dict[int, list[OutboxItem]] = defaultdict(list)
    messages: list[OutboxItem] = []
    for it in items:
        if it.update_id is None:
            messages.append(it)
        else:
            by_update[it.update_id].append(it)
    seen = store.updates(source_ids=source_ids, seen_from=start, seen_to=end + timedelta(
        seconds=1)) if source_ids else []
    known = {u.id for u, _, _ in seen}
    for uid in by_update:  # backfilled updates were seen before the window: include them
        if uid not in known:
            u = store.get_update(uid)
            seen.append((u, "queued for incident (backfill)", False))
    seen.sort(key=lambda r: (r[0].published_at, r[0].id or 0))
    # The normal-mode items for the same updates (held, approved, rejected...): the board
    # asks what became of them too. Another incident's items stay in that incident's report.
    seen_ids = {u.id for u, _, _ in seen}
    normal: dict[int, list[OutboxItem]] = defaultdict(list)
    for it in store.items():
        if it.incident_id is None and it.update_id in seen_ids and it.update_id is not None:
            normal[it.update_id].append(it)
    if sources:
        leads = lead_agency_sources(catalog, incident)
    else:  # the lead's agency as its stored updates name it
        agency = {u.agency for u, _, _ in seen if u.source_id == incident.lead}
        leads = frozenset({incident.lead} | {u.source_id for u, _, _ in seen
                                              if agency and u.agency in agency})
    channels = sorted({c.channel for c in pb.channels}) if pb else sorted(
        {i.channel_id for i in items})

    timeline: list[dict[str, Any]] = []
    tta_source: dict[str, list[float]] = defaultdict(list)
    tta_channel: dict[str, list[float]] = defaultdict(list)
    counts: Counter[tuple[str, str, str]] = Counter()
    states: Counter[str] = Counter()
    lead_total, lead_full = 0, 0
    missed: list[dict[str, Any]] = []
    not_queued: list[dict[str, Any]] = []
    report_items: set[int] = {m.id for m in messages}
    since_start = store.audit_events(since=start)
    marks = _self_approvals(since_start)
    for u, disposition, baseline in seen:
        mine = sorted(by_update.get(u.id or 0, []), key=lambda i: (i.channel_id, i.id))
        theirs = sorted(normal.get(u.id or 0, []), key=lambda i: (i.channel_id, i.id))
        outs: list[dict[str, Any]] = []
        for it in [*mine, *theirs]:
            o = _item_outcome(store, it, marks)
            report_items.add(it.id)
            states[o["state"]] += 1
            outs.append(o)
            if it.incident_id is None:
                continue
            counts[(u.source_id, it.channel_id, o["state"])] += 1
            if o["state"] == "published" and it.done_at:
                # From the later of the source's publication and the activation: nothing
                # could be relayed under an incident before it existed (backfilled items).
                since = max(u.published_at, incident.activated_at)
                delay = max(0.0, (it.done_at - since).total_seconds())
                o["time_to_amplify_s"] = round(delay, 3)
                tta_source[u.source_id].append(delay)
                tta_channel[it.channel_id].append(delay)
        entry = _update_json(u, disposition, baseline, u.source_id in leads)
        entry["outcomes"] = outs
        timeline.append(entry)
        amplifiable = u.cap is None or u.cap.amplifiable
        # A baseline update counts when it was backfilled into the incident (queued for it),
        # as the drill's lead_amplified counts it; one the playbook did not queue for this
        # incident (filtered, or from before the backfill) is listed, not counted.
        if u.source_id in leads and amplifiable and (not baseline or mine):
            if not mine:
                not_queued.append({"update": u.id, "title": u.title, "reason": disposition})
                continue
            lead_total += 1
            done = {o["channel"] for o in outs
                    if o["mode"] == "incident" and o["state"] == "published"}
            if done >= set(channels):
                lead_full += 1
            else:
                why = "; ".join(f"{o['channel']}: {o['state']} ({o['reason']})" for o in outs
                                if o["mode"] == "incident" and o["state"] != "published")
                missed.append({"update": u.id, "title": u.title, "reason": why or disposition})

    message_json = [_item_outcome(store, m, marks) for m in messages]
    for m in message_json:
        states[m["state"]] += 1
    cache: dict[int, dict[str, Any] | None] = {}
    window = [e for e in since_start if e.at <= end + timedelta(seconds=1)]
    rate_waits = [e for e in window if e.action == "channel.rate_limited"
                  and e.subject.split(":", 1)[1] in channels]
    published = [i for i in items if str(i.state) == "published"]
    return {
        "schema": SCHEMA, "kind": "incident",
        "header": {
            "incident": incident.id, "playbook": incident.playbook,
            "description": pb.description if pb else "",
            "hashtags": list(incident.hashtags), "lead": incident.lead,
            "lead_agency": sources[incident.lead].agency
            if incident.lead in sources else next(
                (u.agency for u, _, _ in seen if u.source_id == incident.lead), incident.lead),
            "caveats": caveats,
            "lead_changes": [{"at": isoformat(e.at), "by": e.who, "from": e.details.get("from"),
                              "to": e.details.get("to"), "reason": e.reason}
                             for e in window if e.action == "incident.lead_changed"
                             and e.subject == f"incident:{incident.id}"],
            "activated_at": _iso(incident.activated_at), "activated_by": incident.activated_by,
            "activation_reason": incident.reason,
            "deactivated_at": _iso(incident.deactivated_at),
            "deactivated_by": incident.deactivated_by,
            "deactivation_reason": incident.deactivation_reason,
            "duration_s": (end - incident.activated_at).total_seconds(),
            "still_active": incident.active, "channels": channels,
            "period_from": isoformat(start), "period_to": isoformat(end),
            "time_zone": catalog.policy.timezone,
        },
        "timeline": timeline,
        "messages": message_json,
        "figures": {
            "time_to_amplify": {
                "by_source": {k: _stats(v) for k, v in sorted(tta_source.items())},
                "by_channel": {k: _stats(v) for k, v in sorted(tta_channel.items())},
                "all": _stats([x for v in tta_channel.values() for x in v]),
            },
            "counts": [{"source": s, "channel": c, "outcome": o, "count": n}
                       for (s, c, o), n in sorted(counts.items())],
            "items_by_state": dict(sorted(states.items())),
            "updates_seen": len(timeline),
            "posts_published": len(published),
            "posts_out_of_staffed_hours": sum(i.out_of_hours for i in published),
            "posts_over_normal_weekly_cap": sum(i.over_cap for i in published),
            "rate_limit_waits": len(rate_waits),
            "rate_limit_wait_total_s": round(sum(float(e.details.get("wait_seconds", 0))
                                                 for e in rate_waits), 3),
            "failures": sum(str(i.state) == "failed" for i in items),
            "needs_review": sum(str(i.state) == "needs_review" for i in items),
            "retried_items": sum(i.attempts > 1 for i in items),
            "lead_coverage": {"lead_updates": lead_total, "amplified_on_every_channel":
                              lead_full, "share": round(lead_full / lead_total, 4)
                              if lead_total else None, "missed": missed,
                              "not_queued": not_queued},
        },
        "operators": [_audit_json(store, e, cache) for e in window if _is_operator(e)
                      and _in_scope(e, incident.id, report_items)],
        "integrity": _integrity(store, now),
    }


def build_period_report(store: Store, catalog: Catalog, start: datetime, end: datetime,
                        now: datetime) -> dict[str, Any]:
    """Normal-mode period: posts per channel per week against the caps, and what was held.

    Crisis posts (items of an incident) are counted apart: the policy's section 11 has them
    bypass the normal weekly cap, so they never make a week "over cap"."""
    policy = catalog.policy
    normal_weeks: Counter[tuple[str, str]] = Counter()
    crisis_weeks: Counter[tuple[str, str]] = Counter()
    items = store.items()
    published = [i for i in items if str(i.state) == "published" and i.done_at
                 and start <= i.done_at < end]
    for it in published:
        assert it.done_at is not None
        wk, _ = week_bounds(it.done_at, policy)
        (crisis_weeks if it.incident_id is not None else normal_weeks)[
            (it.channel_id, isoformat(wk))] += 1
    rows = []
    for c, w in sorted(set(normal_weeks) | set(crisis_weeks)):
        n, cap = normal_weeks[(c, w)], policy.weekly_caps.get(c)
        rows.append({"channel": c, "week_start": w, "posts": n,
                     "crisis_posts": crisis_weeks[(c, w)], "cap": cap,
                     "over_cap": cap is not None and n > cap})
    audit = store.audit_events(since=start)
    marks = _self_approvals(audit)
    held = []
    for it in items:
        if it.incident_id is not None:
            continue
        events = [e for e in store.item_events(it.id) if start <= e.at < end
                  and e.state == "held" and not in_regular_hours(e.at, policy)]
        if not events:
            continue
        u = store.get_update(it.update_id) if it.update_id is not None else None
        all_events = store.item_events(it.id)
        held.append({"item": it.id, "channel": it.channel_id,
                     "source": u.source_id if u else None, "title": u.title if u else None,
                     "url": u.url if u else None, "text": it.body,
                     "first_at": isoformat(events[0].at), "last_at": isoformat(events[-1].at),
                     "times": len(events), "reason": events[0].reason,
                     "state_now": str(it.state), "reason_now": it.reason,
                     "decisions": _decisions(it.id, all_events, marks),
                     "post_url": it.platform_url})
    cache: dict[int, dict[str, Any] | None] = {}
    return {
        "schema": SCHEMA, "kind": "period",
        "header": {"from": isoformat(start), "to": isoformat(end),
                   "weekly_caps": policy.weekly_caps, "week": policy.week,
                   "time_zone": policy.timezone,
                   "incidents_in_period": [i.id for i in store.incidents()
                                           if i.activated_at < end and
                                           (i.deactivated_at or now) >= start]},
        "weeks": rows,
        "published": [_item_outcome(store, i, marks) for i in published],
        "held_outside_staffed_hours": held,
        "operators": [_audit_json(store, e, cache) for e in audit
                      if e.at < end and _is_operator(e)],
        "integrity": _integrity(store, now),
    }
