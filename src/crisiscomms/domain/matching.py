"""Matching: which outbox items an update becomes. Pure functions, no I/O.

While an incident is active, an update from a source in its playbook that passes the
playbook's filters becomes one item per channel action, carrying the incident's hashtags.
Outside a crisis, updates of ``watch: always`` sources become normal-mode items
(``policy.normal_channels``) for the normal policy to hold.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import datetime, timedelta

from crisiscomms.domain.clock import isoformat
from crisiscomms.domain.config import Catalog, ChannelAction, Filters, Playbook
from crisiscomms.domain.models import (
    CERTAINTY_RANK,
    SEVERITY_RANK,
    URGENCY_RANK,
    ActionKind,
    Incident,
    NewOutboxItem,
    RecordedUpdate,
    SourceKind,
    Update,
)
from crisiscomms.domain.posttext import compose

ACTIVATION = "activation"
STAND_DOWN = "stand-down"


@dataclass(frozen=True)
class Match:
    """The items an update becomes, and what happened to it in words (for the report)."""

    items: tuple[NewOutboxItem, ...]
    disposition: str


def dedupe_key(scope: str, channel: str, action: ActionKind, update: Update) -> str:
    """The idempotency key of one channel action on one update revision."""
    return f"{scope}:{channel}:{action}:{update.source_id}:{update.external_id}:r{update.revision}"


def message_key(incident_id: int, channel: str, kind: str) -> str:
    """Key of an incident's activation or stand-down message on a channel."""
    return f"incident:{incident_id}:{channel}:{kind}"


def lead_agency_sources(catalog: Catalog, incident: Incident) -> frozenset[str]:
    """Every catalogued source of the lead's agency (its X account and its feeds alike)."""
    lead = catalog.sources.get(incident.lead)
    if lead is None:
        return frozenset({incident.lead})
    return frozenset(s.id for s in catalog.sources.values() if s.agency == lead.agency)


def filter_reason(update: Update, filters: Filters) -> str | None:
    """Why the update fails the playbook's filters, or None if it passes."""
    cap = update.cap
    for name, minimum, ranks, value in (
        ("severity", filters.min_severity, SEVERITY_RANK, cap.severity if cap else None),
        ("urgency", filters.min_urgency, URGENCY_RANK, cap.urgency if cap else None),
        ("certainty", filters.min_certainty, CERTAINTY_RANK, cap.certainty if cap else None),
    ):
        if minimum and value is not None and \
                ranks.get(value.lower(), 0) < ranks[minimum.lower()]:
            return f"filtered: {name} {value} below {minimum}"
    area = (cap.area if cap else "").lower()
    haystack = f"{update.title}\n{update.text}".lower()
    if filters.areas_include and cap and not any(a.lower() in area for a in
                                                 filters.areas_include):
        return f"filtered: area {cap.area!r} not in {filters.areas_include}"
    for a in filters.areas_exclude:
        if a.lower() in area:
            return f"filtered: area {cap.area!r} excluded ({a})" if cap else "filtered"
    if filters.keywords_include and not any(k.lower() in haystack
                                            for k in filters.keywords_include):
        return f"filtered: none of the keywords {filters.keywords_include}"
    for k in filters.keywords_exclude:
        if k.lower() in haystack:
            return f"filtered: excluded keyword {k!r}"
    return None


def _requeue_edit(update: Update, override: bool | None) -> bool:
    if override is not None:
        return override
    # By default only CAP Update/Cancel messages are relayed again; plain feed edits
    # (typo fixes) are stored as revisions but not re-posted.
    return bool(update.cap and update.cap.msg_type.lower() in ("update", "cancel"))


def _fields(update: Update, catalog: Catalog) -> dict[str, str]:
    src = catalog.sources.get(update.source_id)
    cap = update.cap
    return {
        "title": update.title or update.text[:200], "text": update.text, "url": update.url,
        "agency": update.agency, "source": update.source_id,
        "handle": f"@{src.handle}" if src and src.handle else update.agency,
        "severity": cap.severity if cap else "", "area": cap.area if cap else "",
        "event": cap.event if cap else "",
    }


def _item(scope: str, action: ChannelAction, update: Update, catalog: Catalog,
          hashtags: Sequence[str], *, incident_id: int | None, is_lead: bool,
          approval: str, keep_source_hashtags: bool = False) -> NewOutboxItem:
    platform = catalog.channels[action.channel].platform
    hashtags_text = " ".join(hashtags)
    fields = {**_fields(update, catalog), "hashtags": hashtags_text}
    act = action.action
    native_ok = update.native is not None and str(update.native.platform) == str(platform)
    if act in (ActionKind.RETWEET, ActionKind.BOOST, ActionKind.REPOST, ActionKind.QUOTE) \
            and not native_ok:
        act = action.native_fallback  # e.g. an RSS item cannot be retweeted: post it instead
    return NewOutboxItem(
        dedupe_key=dedupe_key(scope, action.channel, action.action, update),
        channel_id=action.channel, action=act,
        text=compose(action.template, fields, list(hashtags), platform,
                     keep_source_hashtags=keep_source_hashtags),
        update_id=update.id, incident_id=incident_id, source_id=update.source_id,
        is_lead=is_lead, severity_rank=update.severity_rank, published_at=update.published_at,
        approval=approval, native=update.native if native_ok else None, url=update.url,
        expires_at=update.cap.expires if update.cap is not None else None,
    )


def follows_up(update: Update) -> bool:
    """A CAP Update or Cancel: it refers to an earlier alert and is only relayed under it."""
    return update.cap is not None and update.cap.msg_type.lower() in ("update", "cancel")


def referenced_ids(update: Update) -> list[str]:
    """The external ids of the alerts a CAP Update/Cancel refers to (``references`` is
    ``sender,identifier,sent`` triples; an earlier revision of the same id counts too)."""
    ids = [update.external_id]
    for ref in update.cap.references if update.cap else ():
        parts = ref.split(",")
        if len(parts) >= 2 and parts[1]:
            ids.append(parts[1])
    return ids


def match(recorded: RecordedUpdate, *, catalog: Catalog, incidents: Sequence[Incident],
          baseline: bool = False, now: datetime | None = None,
          threads: Mapping[str, int] | None = None) -> Match:
    """Decide which outbox items one stored update becomes.

    ``threads`` (channel id -> our item relaying the alert a CAP Update/Cancel refers to) is
    required for those: they go out only as replies in the thread of an alert we relay, on the
    channels that carry it, and are skipped when we relay none."""
    update = recorded.update
    if update.kind is SourceKind.CAP and update.cap is None:
        # The linked CAP document could not be used and the index said nothing: an exercise
        # or a test must never go out as a real alert, so unknown means not relayed.
        return Match((), "skipped: CAP status and scope unknown (the CAP document could not "
                         "be read and the index entry has no cap:status/cap:scope)")
    if update.cap is not None and not update.cap.amplifiable:
        return Match((), f"skipped: not Actual/Public (status={update.cap.status}, "
                         f"scope={update.cap.scope})")
    if follows_up(update) and not threads:
        assert update.cap is not None
        return Match((), f"skipped: a {update.cap.msg_type} of an alert we did not relay "
                         f"(references: {' '.join(update.cap.references) or 'none'})")
    expires = update.cap.expires if update.cap is not None else None
    if expires is not None and now is not None and now >= expires:
        return Match((), f"skipped: expired at {isoformat(expires)} before it was seen")
    items: list[NewOutboxItem] = []
    reasons: list[str] = []
    covered = False
    for inc in incidents:
        if not inc.active:
            continue
        pb = catalog.playbooks.get(inc.playbook)
        if pb is None:
            continue
        ps = pb.source(update.source_id)
        if ps is None:
            continue
        covered = True
        leads = lead_agency_sources(catalog, inc)
        is_lead = update.source_id in leads
        if baseline:
            # First sight of a source floods nothing, except the lead agency's updates
            # inside the playbook's backfill window before activation.
            window_start = inc.activated_at - timedelta(minutes=pb.backfill_minutes)
            if not (is_lead and update.published_at >= window_start):
                reasons.append(f"baseline (incident {inc.id})")
                continue
        if recorded.status == "revision" and not _requeue_edit(update, ps.requeue_edits):
            reasons.append("edit stored as revision; not relayed again")
            continue
        why = filter_reason(update, ps.filters)
        if why:
            reasons.append(why)
            continue
        approval = ps.approval or (pb.approval.lead if is_lead else pb.approval.others)
        for action in pb.channels:
            if threads is not None and follows_up(update):
                if action.channel not in threads:
                    continue  # the alert was not relayed there: no thread to answer in
                items.append(replace(_item(f"i{inc.id}", action, update, catalog,
                                           list(inc.hashtags), incident_id=inc.id,
                                           is_lead=is_lead, approval=approval,
                                           keep_source_hashtags=pb.keep_source_hashtags),
                                     reply_to_item=threads[action.channel]))
                continue
            items.append(_item(f"i{inc.id}", action, update, catalog, list(inc.hashtags),
                               incident_id=inc.id, is_lead=is_lead, approval=approval,
                               keep_source_hashtags=pb.keep_source_hashtags))
        reasons.append(f"queued for incident {inc.id}")
    src = catalog.sources.get(update.source_id)
    if not covered and src is not None and src.watch == "always":
        if baseline:
            return Match((), "baseline")
        if recorded.status == "revision" and not _requeue_edit(update, None):
            return Match((), "edit stored as revision; not relayed again")
        for action in catalog.policy.normal_channels:
            item = _item("normal", action, update, catalog, [], incident_id=None,
                         is_lead=False, approval=catalog.policy.normal_approval)
            if threads is not None and follows_up(update):
                if action.channel not in threads:
                    continue
                item = replace(item, reply_to_item=threads[action.channel])
            items.append(item)
        reasons.append("queued as normal-mode item" if items else "no normal-mode channels")
    if not reasons:
        reasons.append("not watched by any active playbook")
    return Match(tuple(items), "; ".join(reasons))


def priority(update: Update, lead_sources: frozenset[str]) -> tuple[int, int, datetime]:
    """Sort key: lead agency first, then CAP severity, then age (oldest first)."""
    return (0 if update.source_id in lead_sources else 1, -update.severity_rank,
            update.published_at)


def message_items(incident: Incident, playbook: Playbook, catalog: Catalog, kind: str,
                  text: str) -> list[NewOutboxItem]:
    """An incident's activation or stand-down message, one post per channel."""
    out: list[NewOutboxItem] = []
    seen: set[str] = set()
    hashtags = " ".join(incident.hashtags)
    for action in playbook.channels:
        if action.channel in seen:
            continue
        seen.add(action.channel)
        platform = catalog.channels[action.channel].platform
        body = compose(text, {"hashtags": hashtags, "title": "", "text": "", "url": "",
                              "agency": "", "source": "", "handle": "", "severity": "",
                              "area": "", "event": ""},
                       [] if "{hashtags}" in text else list(incident.hashtags), platform)
        out.append(NewOutboxItem(
            dedupe_key=message_key(incident.id, action.channel, kind), channel_id=action.channel,
            action=ActionKind.POST, text=body, incident_id=incident.id, is_lead=True,
            severity_rank=9, approval="auto", reason=f"{kind} message"))
    return out


def all_lead_sources(catalog: Catalog, incidents: Iterable[Incident]) -> frozenset[str]:
    out: set[str] = set()
    for inc in incidents:
        if inc.active:
            out |= lead_agency_sources(catalog, inc)
    return frozenset(out)
