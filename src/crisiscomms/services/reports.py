"""The post-incident audit report, built only from the store and the audit trail.

``build_incident_report`` and ``build_period_report`` return plain data (the JSON format);
``render`` turns it into Markdown, CSV or a self-contained HTML page.
"""

from __future__ import annotations

import math
from collections import Counter, defaultdict
from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any

from crisiscomms import __version__
from crisiscomms.domain.clock import isoformat
from crisiscomms.domain.config import Catalog
from crisiscomms.domain.matching import lead_agency_sources
from crisiscomms.domain.models import AuditEvent, Incident, OutboxItem, Update
from crisiscomms.domain.workcal import in_regular_hours, week_bounds
from crisiscomms.ports import Store

SCHEMA = "crisiscomms.report/1"
SYSTEM_ACTORS_PREFIXES = ("watcher", "dispatcher", "system")
OPERATOR_ACTIONS = ("incident.", "queue.", "window.")


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
    chain = store.verify_audit()
    return {"audit_chain_ok": chain.ok, "audit_events": chain.count,
            "audit_head_hash": chain.head_hash, "problem": chain.problem or None,
            "generated_at": isoformat(now), "crisiscomms_version": __version__,
            "schema": SCHEMA}


def _item_outcome(store: Store, item: OutboxItem) -> dict[str, Any]:
    events = store.item_events(item.id)
    approvals = [{"by": e.actor, "at": _iso(e.at), "decision": e.details.get("action")}
                 for e in events if e.details.get("action") in ("approve", "reject", "edit",
                                                                   "hold", "retry")]
    held = [e.reason for e in events if e.state in ("held", "needs_approval")]
    return {
        "item": item.id, "channel": item.channel_id, "action": str(item.action),
        "state": str(item.state), "reason": item.reason,
        "post_id": item.platform_post_id, "post_url": item.platform_url,
        "published_at": _iso(item.done_at) if str(item.state) == "published" else None,
        "attempts": item.attempts, "retried": item.attempts > 1,
        "last_error": item.last_error, "out_of_hours": item.out_of_hours,
        "over_cap": item.over_cap, "text": item.body,
        "edited": item.edited_text is not None, "original_text": item.text
        if item.edited_text is not None else None,
        "held_reasons": sorted(set(held)), "operator_decisions": approvals,
    }


def build_incident_report(store: Store, catalog: Catalog, incident: Incident,
                          now: datetime) -> dict[str, Any]:
    """Everything the board, auditors and an FOI request ask about one incident."""
    pb = catalog.playbooks.get(incident.playbook)
    backfill = timedelta(minutes=pb.backfill_minutes if pb else 120)
    start = incident.activated_at - backfill
    end = incident.deactivated_at or now
    source_ids = [s.source for s in pb.sources] if pb else []
    items = store.items(incident_id=incident.id)
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
    leads = lead_agency_sources(catalog, incident)
    channels = sorted({c.channel for c in pb.channels}) if pb else sorted(
        {i.channel_id for i in items})

    timeline, tta_source, tta_channel = [], defaultdict(list), defaultdict(list)
    counts: Counter[tuple[str, str, str]] = Counter()
    lead_total, lead_full, missed = 0, 0, []
    for u, disposition, baseline in seen:
        outs = [_item_outcome(store, it) for it in sorted(by_update.get(u.id or 0, []),
                                                          key=lambda i: i.channel_id)]
        for it, o in zip(sorted(by_update.get(u.id or 0, []), key=lambda i: i.channel_id),
                         outs, strict=True):
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
        if u.source_id in leads and not baseline and (u.cap is None or u.cap.amplifiable):
            lead_total += 1
            done = {o["channel"] for o in outs if o["state"] == "published"}
            if outs and done >= set(channels):
                lead_full += 1
            else:
                why = "; ".join(f"{o['channel']}: {o['state']} ({o['reason']})" for o in outs
                                if o["state"] != "published") or disposition
                missed.append({"update": u.id, "title": u.title, "reason": why})

    audit = store.audit_events()
    window = [e for e in audit if start <= e.at <= end + timedelta(seconds=1)]
    rate_waits = [e for e in window if e.action == "channel.rate_limited"
                  and e.subject.split(":", 1)[1] in channels]
    published = [i for i in items if str(i.state) == "published"]
    return {
        "schema": SCHEMA, "kind": "incident",
        "header": {
            "incident": incident.id, "playbook": incident.playbook,
            "description": pb.description if pb else "",
            "hashtags": list(incident.hashtags), "lead": incident.lead,
            "lead_agency": catalog.sources[incident.lead].agency
            if incident.lead in catalog.sources else incident.lead,
            "lead_changes": [{"at": isoformat(e.at), "by": e.actor, "from": e.details.get("from"),
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
        },
        "timeline": timeline,
        "messages": [_item_outcome(store, m) for m in messages],
        "figures": {
            "time_to_amplify": {
                "by_source": {k: _stats(v) for k, v in sorted(tta_source.items())},
                "by_channel": {k: _stats(v) for k, v in sorted(tta_channel.items())},
                "all": _stats([x for v in tta_channel.values() for x in v]),
            },
            "counts": [{"source": s, "channel": c, "outcome": o, "count": n}
                       for (s, c, o), n in sorted(counts.items())],
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
                              if lead_total else None, "missed": missed},
        },
        "operators": [_audit_json(e) for e in window if _is_operator(e)],
        "integrity": _integrity(store, now),
    }


def _is_operator(e: AuditEvent) -> bool:
    return e.action.startswith(OPERATOR_ACTIONS)


def _audit_json(e: AuditEvent) -> dict[str, Any]:
    return {"seq": e.seq, "at": isoformat(e.at), "actor": e.actor, "action": e.action,
            "subject": e.subject, "reason": e.reason}


def _update_json(u: Update, disposition: str, baseline: bool, lead: bool) -> dict[str, Any]:
    cap = u.cap
    return {
        "update": u.id, "source": u.source_id, "agency": u.agency, "kind": str(u.kind),
        "lead": lead, "external_id": u.external_id, "revision": u.revision,
        "published_at": _iso(u.published_at), "seen_at": _iso(u.fetched_at),
        "title": u.title, "url": u.url, "disposition": disposition, "baseline": baseline,
        "cap": None if cap is None else {
            "msg_type": cap.msg_type, "status": cap.status, "scope": cap.scope,
            "severity": cap.severity, "urgency": cap.urgency, "certainty": cap.certainty,
            "event": cap.event, "area": cap.area, "references": list(cap.references)},
    }


def build_period_report(store: Store, catalog: Catalog, start: datetime, end: datetime,
                        now: datetime) -> dict[str, Any]:
    """Normal-mode period: posts per channel per week against the caps, and what was held."""
    policy = catalog.policy
    weeks: dict[tuple[str, str], int] = Counter()
    items = store.items()
    published = [i for i in items if str(i.state) == "published" and i.done_at
                 and start <= i.done_at < end]
    for it in published:
        assert it.done_at is not None
        wk, _ = week_bounds(it.done_at, policy)
        weeks[(it.channel_id, isoformat(wk))] += 1
    rows = [{"channel": c, "week_start": w, "posts": n, "cap": policy.weekly_caps.get(c),
             "over_cap": policy.weekly_caps.get(c) is not None
             and n > policy.weekly_caps[c]} for (c, w), n in sorted(weeks.items())]
    held = []
    for it in items:
        if it.incident_id is not None:
            continue
        for e in store.item_events(it.id):
            if e.at and start <= e.at < end and e.state == "held" \
                    and not in_regular_hours(e.at, policy):
                held.append({"item": it.id, "channel": it.channel_id, "at": _iso(e.at),
                             "reason": e.reason, "state_now": str(it.state)})
    return {
        "schema": SCHEMA, "kind": "period",
        "header": {"from": isoformat(start), "to": isoformat(end),
                   "weekly_caps": policy.weekly_caps, "week": policy.week,
                   "incidents_in_period": [i.id for i in store.incidents()
                                           if i.activated_at < end and
                                           (i.deactivated_at or now) >= start]},
        "weeks": rows,
        "published": [_item_outcome(store, i) for i in published],
        "held_outside_staffed_hours": held,
        "operators": [_audit_json(e) for e in store.audit_events(since=start)
                      if e.at < end and _is_operator(e)],
        "integrity": _integrity(store, now),
    }
