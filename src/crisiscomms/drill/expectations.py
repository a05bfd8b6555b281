"""Expectations checked at the end of a drill, each a pass/fail with a one-line detail."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from crisiscomms.domain.clock import parse_instant
from crisiscomms.domain.config import Catalog
from crisiscomms.domain.matching import lead_agency_sources
from crisiscomms.domain.models import SEVERITY_RANK
from crisiscomms.domain.workcal import is_staffed
from crisiscomms.drill.scenario import Expectation, Scenario
from crisiscomms.ports import Store

UNFINISHED = ("queued", "leased", "sending", "held", "needs_approval", "needs_review")


@dataclass(frozen=True)
class Outcome:
    name: str
    ok: bool
    detail: str


def _pauses(store: Store, channel: str) -> list[tuple[datetime, datetime]]:
    out = []
    for e in store.audit_events(action_prefix="channel.rate_limited"):
        if e.subject == f"channel:{channel}":
            out.append((e.at, parse_instant(e.details["until"])))
    return out


def _paused_overlap(pauses: list[tuple[datetime, datetime]], a: datetime, b: datetime) -> float:
    return sum(max(0.0, (min(b, end) - max(a, start)).total_seconds()) for start, end in pauses)


def _bursts(world: Any, platforms: set[str]) -> list[tuple[datetime, datetime]]:
    return [(start, end) for name, start, end in world.burst_history
            if name in platforms]


def lead_amplified(x: Expectation, store: Store, catalog: Catalog,
                   world: Any) -> Outcome:
    channel = x.channel or "x"
    within = x.within_seconds or 60
    platform = str(catalog.channels[channel].platform) if channel in catalog.channels else channel
    # Waiting for a platform's rate-limit reset is not lateness: our channel's pauses, and
    # 429 bursts on the platform we post to or read the source from, are excused.
    pauses = _pauses(store, channel)
    total, late, missing = 0, [], []
    for inc in store.incidents():
        leads = lead_agency_sources(catalog, inc)
        end = inc.deactivated_at
        for u, disposition, baseline in store.updates(source_ids=sorted(leads)):
            if (baseline and not disposition.startswith("queued")) or \
                    (u.cap is not None and not u.cap.amplifiable):
                continue
            if u.fetched_at < inc.activated_at - timedelta(hours=2) or \
                    (end is not None and u.published_at > end):
                continue
            items = [i for i in store.items(channel_id=channel, incident_id=inc.id)
                     if i.update_id == u.id]
            if not items:
                continue  # filtered out by the playbook: not the lead's to amplify here
            total += 1
            done = [i for i in items if str(i.state) == "published" and i.done_at]
            if not done:
                missing.append(f"{u.source_id}:{u.external_id} ({items[0].state})")
                continue
            done_at = done[0].done_at
            assert done_at is not None
            start = max(u.published_at, inc.activated_at)
            excused = pauses + _bursts(world, {platform, str(u.kind)})
            allowed = within + _paused_overlap(excused, start, done_at)
            if (done_at - start).total_seconds() > allowed:
                late.append(f"{u.external_id} {(done_at - start).total_seconds():.0f}s")
    ok = total > 0 and not late and not missing
    detail = f"{total - len(late) - len(missing)}/{total} lead updates on {channel} within " \
             f"{within:.0f}s (rate-limit waits excused)"
    if late:
        detail += f"; late: {', '.join(late[:5])}"
    if missing:
        detail += f"; missing: {', '.join(missing[:5])}"
    return Outcome(f"lead_amplified[{channel}]", ok, detail)


def _sim_id(source: Any) -> str:
    """The simulator's id of a catalogued source (the drill pins X sources by numeric id)."""
    kind = str(source.kind)
    if kind == "x":
        return str(source.x_user_id or source.id)
    if kind in ("mastodon", "bluesky"):
        return (source.account or "").rstrip("/").rsplit("/", 1)[-1].lstrip("@")
    return str(source.id)


def nothing_below_severity(x: Expectation, store: Store, catalog: Catalog,
                           world: Any) -> Outcome:
    """No published item from ``source`` relays an update whose CAP severity is below
    ``severity`` (e.g. no Environment Agency flood *alert* where the playbook says warnings)."""
    floor = SEVERITY_RANK.get((x.severity or "Severe").lower(), 0)
    low = []
    for item in store.items(states=["published"]):
        if item.update_id is None or (x.source and item.source_id != x.source):
            continue
        cap = store.get_update(item.update_id).cap
        if cap is not None and SEVERITY_RANK.get(cap.severity.lower(), 0) < floor:
            low.append(f"item {item.id} on {item.channel_id} ({cap.severity}: {cap.event})")
    return Outcome(f"nothing_below_severity[{x.source or 'all'}]", not low,
                   f"{len(low)} relayed below {x.severity}" + (f": {low[:3]}" if low else ""))


def lead_posts_relayed(x: Expectation, store: Store, catalog: Catalog,
                       world: Any) -> Outcome:
    """Every post the lead agency made on the simulated platform while an incident was active
    went out on ``channel`` within ``within_seconds``. Counted from the simulator's own record,
    so a source that is never read (e.g. an X source whose weeks-old cursor X refuses) fails
    here, where ``lead_amplified``, counting what was stored, cannot see it."""
    channel = x.channel or "x"
    within = x.within_seconds or 120
    platform = str(catalog.channels[channel].platform) if channel in catalog.channels else channel
    pauses = _pauses(store, channel)
    total, late, unread, unsent = 0, [], [], []
    for inc in store.incidents():
        end = inc.deactivated_at
        for sid in sorted(lead_agency_sources(catalog, inc)):
            source = catalog.sources.get(sid)
            if source is None or (x.source and sid != x.source):
                continue
            kind = str(source.kind)
            stored = {u.external_id: u for u, _, _ in store.updates(source_ids=[sid])}
            for vis in world.visible_items(kind, _sim_id(source)):
                if vis.first_at < inc.activated_at or (end is not None and vis.first_at > end):
                    continue
                total += 1
                update = stored.get(vis.key) or next(
                    (u for k, u in stored.items() if k.endswith("/" + vis.key)), None)
                if update is None:
                    unread.append(f"{sid}:{vis.key}")
                    continue
                done = [i for i in store.items(channel_id=channel, incident_id=inc.id)
                        if i.update_id == update.id and str(i.state) == "published"
                        and i.done_at]
                if not done or done[0].done_at is None:
                    unsent.append(f"{sid}:{vis.key}")
                    continue
                start = max(vis.first_at, inc.activated_at)
                excused = pauses + _bursts(world, {platform, kind})
                allowed = within + _paused_overlap(excused, start, done[0].done_at)
                if (done[0].done_at - start).total_seconds() > allowed:
                    late.append(f"{vis.key} {(done[0].done_at - start).total_seconds():.0f}s")
    ok = total > 0 and not late and not unread and not unsent
    detail = f"{total - len(late) - len(unread) - len(unsent)}/{total} lead posts made during " \
             f"incidents relayed on {channel} within {within:.0f}s"
    for label, names in (("never read", unread), ("not relayed", unsent), ("late", late)):
        if names:
            detail += f"; {label}: {', '.join(names[:5])}"
    return Outcome(f"lead_posts_relayed[{channel}]", ok, detail)


def no_normal_post_outside_staffed_hours(x: Expectation, store: Store, catalog: Catalog,
                                         world: Any) -> Outcome:
    windows = store.windows()
    normal = [i for i in store.items(states=["published"]) if i.incident_id is None]
    bad = [i.id for i in normal if i.done_at and not is_staffed(i.done_at, catalog.policy,
                                                                windows)]
    return Outcome("no_normal_post_outside_staffed_hours", not bad,
                   f"{len(normal)} normal-mode posts, {len(bad)} outside staffed hours"
                   + (f" (items {bad[:5]})" if bad else ""))


def no_duplicates(x: Expectation, store: Store, catalog: Catalog, world: Any) -> Outcome:
    dup_groups = world.duplicates()
    per_update = Counter((i.channel_id, i.update_id) for i in store.items(states=["published"])
                         if i.update_id is not None)
    ours = [k for k, n in per_update.items() if n > 1]
    return Outcome("no_duplicates", not dup_groups and not ours,
                   f"{len(world.posts)} posts on the simulator, {len(dup_groups)} duplicate "
                   f"groups; {len(ours)} updates published twice on a channel")


def nothing_left_queued(x: Expectation, store: Store, catalog: Catalog,
                        world: Any) -> Outcome:
    left = store.items(states=list(UNFINISHED))
    return Outcome("nothing_left_queued", not left,
                   "queue empty" if not left else
                   f"{len(left)} left: " + ", ".join(f"{i.id} {i.state} ({i.reason})"
                                                     for i in left[:3]))


def audit_chain_verifies(x: Expectation, store: Store, catalog: Catalog,
                         world: Any) -> Outcome:
    r = store.verify_audit()
    return Outcome("audit_chain_verifies", r.ok,
                   f"{r.count} events, head {r.head_hash[:16]}…" if r.ok else r.problem)


def published_matches_simulator(x: Expectation, store: Store, catalog: Catalog,
                                world: Any) -> Outcome:
    ours = Counter(str(catalog.channels[i.channel_id].platform)
                   for i in store.items(states=["published"]))
    theirs = Counter(p.platform for p in world.posts)
    return Outcome("published_matches_simulator", ours == theirs,
                   "per platform: " + ", ".join(f"{k} {ours[k]}/{theirs[k]}"
                                                for k in sorted(set(ours) | set(theirs))))


def normal_item_paused_then_resumed(x: Expectation, store: Store, catalog: Catalog,
                                    world: Any) -> Outcome:
    hits = []
    for it in store.items():
        if it.incident_id is not None:
            continue
        events = store.item_events(it.id)
        if any(e.reason.startswith("paused: incident") for e in events) and \
                str(it.state) == "published":
            hits.append(it.id)
    return Outcome("normal_item_paused_then_resumed", bool(hits),
                   f"{len(hits)} normal-mode items paused during the incident, then published")


def over_cap_posts(x: Expectation, store: Store, catalog: Catalog, world: Any) -> Outcome:
    n = sum(1 for i in store.items(states=["published"], channel_id=x.channel)
            if i.incident_id is not None and i.over_cap)
    need = x.min if x.min is not None else 1
    return Outcome(f"over_cap_posts[{x.channel}]", n >= need,
                   f"{n} crisis posts over the normal weekly cap (need >= {need})")


def no_request_during_rate_limit(x: Expectation, store: Store, catalog: Catalog,
                                 world: Any) -> Outcome:
    bad = world.rate_limit_violations()
    return Outcome("no_request_during_rate_limit", not bad,
                   f"{len(bad)} requests sent between a 429 and its reset")


def rate_limited(x: Expectation, store: Store, catalog: Catalog, world: Any) -> Outcome:
    n = len(_pauses(store, x.channel or "x"))
    need = x.min if x.min is not None else 1
    return Outcome(f"rate_limited[{x.channel}]", n >= need,
                   f"{n} rate-limit pauses honoured (need >= {need})")


def held_outside_staffed_hours(x: Expectation, store: Store, catalog: Catalog,
                               world: Any) -> Outcome:
    n = 0
    for it in store.items():
        if it.incident_id is None and (x.source is None or it.source_id == x.source) and \
                any("outside staffed hours" in e.reason for e in store.item_events(it.id)):
            n += 1
    need = x.min if x.min is not None else 1
    return Outcome(f"held_outside_staffed_hours[{x.source or 'any'}]", n >= need,
                   f"{n} normal-mode items held outside staffed hours (need >= {need})")


def published_count(x: Expectation, store: Store, catalog: Catalog,
                    world: Any) -> Outcome:
    n = len(store.items(states=["published"], channel_id=x.channel))
    ok = (x.min is None or n >= x.min) and (x.max is None or n <= x.max)
    return Outcome(f"published_count[{x.channel or 'all'}]", ok,
                   f"{n} published (min {x.min}, max {x.max})")


CHECKS: dict[str, Callable[[Expectation, Store, Catalog, Any], Outcome]] = {
    "lead_amplified": lead_amplified,
    "lead_posts_relayed": lead_posts_relayed,
    "nothing_below_severity": nothing_below_severity,
    "no_normal_post_outside_staffed_hours": no_normal_post_outside_staffed_hours,
    "no_duplicates": no_duplicates,
    "nothing_left_queued": nothing_left_queued,
    "audit_chain_verifies": audit_chain_verifies,
    "published_matches_simulator": published_matches_simulator,
    "normal_item_paused_then_resumed": normal_item_paused_then_resumed,
    "over_cap_posts": over_cap_posts,
    "no_request_during_rate_limit": no_request_during_rate_limit,
    "held_outside_staffed_hours": held_outside_staffed_hours,
    "published_count": published_count,
    "rate_limited": rate_limited,
}


def check_all(scenario: Scenario, store: Store, catalog: Catalog,
              world: Any) -> list[Outcome]:
    """Run every expectation of the scenario."""
    return [CHECKS[x.kind](x, store, catalog, world) for x in scenario.expectations]
