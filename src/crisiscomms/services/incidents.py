"""Use cases of the crisis flag: activate and deactivate an incident."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import timedelta

from crisiscomms.domain.clock import isoformat
from crisiscomms.domain.config import Catalog, Playbook, normalise_hashtag
from crisiscomms.domain.errors import ConfigError, NotFoundError, RefusedError
from crisiscomms.domain.matching import (
    ACTIVATION,
    STAND_DOWN,
    lead_agency_sources,
    match,
    message_items,
)
from crisiscomms.domain.models import (
    Incident,
    NewAuditEvent,
    NewOutboxItem,
    Operator,
    RecordedUpdate,
)
from crisiscomms.logs import get_logger
from crisiscomms.ports import Clock, Store, UnitOfWork
from crisiscomms.services.operators import audit_refusal, check_operator

log = get_logger(__name__)


def activate(store: Store, catalog: Catalog, clock: Clock, *, playbook: str,
             reason: str, operator: str | Operator, hashtags: Sequence[str] = (),
             lead: str | None = None) -> Incident:
    """Turn the crisis flag on for a playbook: create the incident, queue its opening posts."""
    pb = catalog.playbook(playbook)
    who = check_operator(store, catalog, clock, operator, "incident.activate",
                         f"playbook:{pb.name}")
    if not reason.strip():
        raise ConfigError("--reason: a reason is required (it goes on the audit record)")
    try:
        tags = [normalise_hashtag(t) for t in hashtags] or list(pb.hashtags)
    except ValueError as exc:
        raise ConfigError(f"--hashtag: {exc}") from None
    if not tags:
        raise ConfigError(f"--hashtag: playbook {pb.name!r} has no default hashtags; give one")
    chosen_lead = lead or pb.default_lead
    if chosen_lead not in pb.leads:
        raise ConfigError(f"--lead: {chosen_lead!r} is not an allowed lead of playbook "
                          f"{pb.name!r} (allowed: {', '.join(pb.leads)})")
    try:
        catalog.check_activatable(pb)
    except RefusedError as exc:
        audit_refusal(store, clock, who, "incident.activate.refused",
                      f"playbook:{pb.name}", str(exc))
        raise
    now = clock.now()
    with store.unit_of_work() as uow:
        incident = uow.incidents.add(playbook=pb.name, hashtags=tags, lead=chosen_lead,
                                     reason=reason.strip(), operator=who.label, at=now)
        uow.audit.append(NewAuditEvent(
            who.user, "incident.activated", f"incident:{incident.id}", incident.reason, now,
            {"playbook": pb.name, "hashtags": list(tags), "lead": chosen_lead,
             "channels": sorted({c.channel for c in pb.channels}), **who.details()}))
        items: list[NewOutboxItem] = []
        if pb.activation_message:
            items += message_items(incident, pb, catalog, ACTIVATION, pb.activation_message)
        items += _backfill(uow, catalog, pb, incident)
        uow.outbox.add(items, at=now, actor=who.user)
        uow.commit()
    log.info("incident.activated", incident=incident.id, playbook=pb.name, lead=chosen_lead,
             hashtags=tags, operator=who.label)
    return incident


def _backfill(uow: UnitOfWork, catalog: Catalog, pb: Playbook,
              incident: Incident) -> list[NewOutboxItem]:
    """The lead agency's updates published in the window before activation."""
    leads = sorted(lead_agency_sources(catalog, incident) & {s.source for s in pb.sources})
    since = incident.activated_at - timedelta(minutes=pb.backfill_minutes)
    items: list[NewOutboxItem] = []
    for update, _, _ in uow.updates.list(source_ids=leads, published_from=since):
        items += match(RecordedUpdate(update, "new"), catalog=catalog,
                       incidents=[incident]).items
    return items


def resolve_incident(store: Store, incident_id: int | None) -> Incident:
    """The incident named, or the only active one."""
    if incident_id is not None:
        return store.get_incident(incident_id)
    active = store.active_incidents()
    if not active:
        raise NotFoundError("no incident is active")
    if len(active) > 1:
        ids = ", ".join(str(i.id) for i in active)
        raise ConfigError(f"several incidents are active ({ids}): name the one to deactivate")
    return active[0]


def deactivate(store: Store, catalog: Catalog, clock: Clock, *, incident_id: int | None,
               reason: str, operator: str | Operator) -> Incident:
    """Stand an incident down; queue its stand-down message. The flag goes off with the last."""
    if not reason.strip():
        raise ConfigError("--reason: a reason is required (it goes on the audit record)")
    incident = resolve_incident(store, incident_id)
    who = check_operator(store, catalog, clock, operator, "incident.deactivate",
                         f"incident:{incident.id}")
    try:
        pb = catalog.playbooks.get(incident.playbook)
        unreadable = None
    except ConfigError as exc:
        # Standing down never waits for a file to be fixed: the flag goes off; the message that
        # the broken playbook holds cannot be queued, and the audit (and the CLI) say so.
        pb, unreadable = None, str(exc)
    now = clock.now()
    with store.unit_of_work() as uow:
        if not uow.incidents.stand_down(incident.id, at=now, operator=who.label,
                                        reason=reason.strip()):
            raise RefusedError(f"incident {incident.id} is already stood down")
        closed = uow.incidents.get(incident.id)
        uow.audit.append(NewAuditEvent(who.user, "incident.deactivated",
                                       f"incident:{incident.id}", reason.strip(), now,
                                       {"playbook": incident.playbook, **who.details(),
                                        **({"stand_down_message": f"not queued: {unreadable}"}
                                           if unreadable else {})}))
        if pb is not None and pb.stand_down_message:
            uow.outbox.add(message_items(closed, pb, catalog, STAND_DOWN,
                                         pb.stand_down_message), at=now, actor=who.user)
        uow.commit()
    log.info("incident.deactivated", incident=closed.id, operator=who.label)
    return closed


def change_lead(store: Store, catalog: Catalog, clock: Clock, *, lead: str, reason: str,
                operator: str | Operator, incident_id: int | None = None) -> Incident:
    """Hand an active incident's lead to another allowed lead agency."""
    if not reason.strip():
        raise ConfigError("--reason: a reason is required (it goes on the audit record)")
    incident = resolve_incident(store, incident_id)
    who = check_operator(store, catalog, clock, operator, "incident.lead_change",
                         f"incident:{incident.id}")
    pb = catalog.playbook(incident.playbook)
    if lead not in pb.leads:
        raise ConfigError(f"LEAD: {lead!r} is not an allowed lead of playbook {pb.name!r} "
                          f"(allowed: {', '.join(pb.leads)})")
    if lead == incident.lead:
        raise RefusedError(f"{lead!r} already leads incident {incident.id}")
    now = clock.now()
    with store.unit_of_work() as uow:
        if not uow.incidents.change_lead(incident.id, lead=lead):
            raise RefusedError(f"incident {incident.id} is stood down; its lead is final")
        changed = uow.incidents.get(incident.id)
        uow.audit.append(NewAuditEvent(who.user, "incident.lead_changed",
                                       f"incident:{incident.id}", reason.strip(), now,
                                       {"from": incident.lead, "to": lead,
                                        "at": isoformat(now), **who.details()}))
        uow.commit()
    log.info("incident.lead_changed", incident=changed.id, lead=lead, operator=who.label)
    return changed
