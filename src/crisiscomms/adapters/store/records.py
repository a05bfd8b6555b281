"""Row <-> domain object conversion for the SQL stores."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import asdict
from datetime import datetime
from typing import Any

from crisiscomms.domain.clock import isoformat, parse_instant, utc
from crisiscomms.domain.models import (
    ActionKind,
    CapInfo,
    Incident,
    ItemState,
    NativeRef,
    OutboxItem,
    Platform,
    PushStatus,
    SourceKind,
    SourceState,
    Update,
)

Row = Mapping[str, Any]


def ts(value: datetime | None) -> str | None:
    """Datetime to the stored text form (sortable UTC ISO-8601)."""
    return None if value is None else isoformat(value)


def dt(value: str | datetime | None) -> datetime | None:
    """A stored instant (text, or a driver's datetime) back to an aware UTC datetime."""
    if value is None:
        return None
    if isinstance(value, datetime):
        return utc(value)
    return parse_instant(value)


def dumps(value: Any) -> str:
    return json.dumps(value, sort_keys=True, ensure_ascii=False, separators=(",", ":"))


def incident_from_row(r: Row) -> Incident:
    return Incident(
        id=r["id"], playbook=r["playbook"], hashtags=tuple(json.loads(r["hashtags"])),
        lead=r["lead"], activated_at=dt(r["activated_at"]),  # type: ignore[arg-type]
        activated_by=r["activated_by"], reason=r["reason"],
        deactivated_at=dt(r["deactivated_at"]), deactivated_by=r["deactivated_by"],
        deactivation_reason=r["deactivation_reason"],
    )


def cap_to_json(cap: CapInfo | None) -> str | None:
    if cap is None:
        return None
    d = asdict(cap)
    d["sent"] = ts(cap.sent)
    d["expires"] = ts(cap.expires)
    d["references"] = list(cap.references)
    return dumps(d)


def cap_from_json(text: str | None) -> CapInfo | None:
    if not text:
        return None
    d: dict[str, Any] = json.loads(text)
    d["sent"] = dt(d.get("sent"))
    d["expires"] = dt(d.get("expires"))
    d["references"] = tuple(d.get("references") or ())
    return CapInfo(**d)


def native_to_json(ref: NativeRef | None) -> str | None:
    return None if ref is None else dumps(asdict(ref))


def native_from_json(text: str | None) -> NativeRef | None:
    if not text:
        return None
    d = json.loads(text)
    d["platform"] = Platform(d["platform"])
    return NativeRef(**d)


def recorded_meanwhile(update: Update, revision: int) -> str:
    """Why an update's insert was refused: another watcher's poll recorded it first."""
    return (f"update {update.source_id}/{update.external_id} revision {revision} was recorded "
            "by another watcher meanwhile; this poll's result was not written")


def update_from_row(r: Row) -> Update:
    return Update(
        id=r["id"], source_id=r["source_id"], agency=r["agency"], kind=SourceKind(r["kind"]),
        external_id=r["external_id"], url=r["url"], title=r["title"], text=r["text"],
        published_at=dt(r["published_at"]),  # type: ignore[arg-type]
        fetched_at=dt(r["fetched_at"]),  # type: ignore[arg-type]
        cap=cap_from_json(r["cap"]), native=native_from_json(r["native"]),
        content_hash=r["content_hash"], revision=r["revision"],
    )


def item_from_row(r: Row) -> OutboxItem:
    return OutboxItem(
        id=r["id"], dedupe_key=r["dedupe_key"], channel_id=r["channel_id"],
        action=ActionKind(r["action"]), text=r["text"], state=ItemState(r["state"]),
        created_at=dt(r["created_at"]),  # type: ignore[arg-type]
        update_id=r["update_id"], incident_id=r["incident_id"], source_id=r["source_id"],
        is_lead=bool(r["is_lead"]), severity_rank=r["severity_rank"],
        published_at=dt(r["published_at"]), approval=r["approval"],
        approved_by=r["approved_by"], approved_at=dt(r["approved_at"]),
        edited_text=r["edited_text"], not_before=dt(r["not_before"]),
        lease_owner=r["lease_owner"], lease_until=dt(r["lease_until"]),
        attempts=r["attempts"], lookups=r["lookups"], reason=r["reason"],
        last_error=r["last_error"],
        platform_post_id=r["platform_post_id"], platform_url=r["platform_url"],
        sent_at=dt(r["sent_at"]), done_at=dt(r["done_at"]),
        out_of_hours=bool(r["out_of_hours"]), over_cap=bool(r["over_cap"]),
        native=native_from_json(r["native"]), url=r["url"],
        version=r["version"], fence=r["fence"], expires_at=dt(r["expires_at"]),
        reply_to_item=r["reply_to_item"],
    )


def state_from_row(r: Row) -> SourceState:
    return SourceState(
        source_id=r["key"], cursor=r["cursor"], etag=r["etag"],
        last_modified=r["last_modified"], baseline_done=bool(r["baseline_done"]),
        last_polled_at=dt(r["last_polled_at"]), next_poll_at=dt(r["next_poll_at"]),
        last_ok_at=dt(r["last_ok_at"]), failures=r["failures"], last_error=r["last_error"],
        last_error_class=r["last_error_class"], error_count=r["error_count"],
        extra=json.loads(r["extra"] or "{}"), lease_owner=r["lease_owner"],
        lease_until=dt(r["lease_until"]), fence=r["fence"],
    )


def push_to_json(statuses: tuple[PushStatus, ...]) -> str | None:
    """A watcher's push connections as stored in its heartbeat row (``None``: none)."""
    if not statuses:
        return None
    return json.dumps([{"key": p.key, "kind": p.kind, "source_ids": list(p.source_ids),
                        "connected": p.connected, "since": ts(p.since),
                        "failures": p.failures, "last_error": p.last_error[:300],
                        "last_event_at": ts(p.last_event_at), "events": p.events,
                        "note": p.note[:300]}
                       for p in statuses], separators=(",", ":"))


def push_from_json(text: str | None) -> tuple[PushStatus, ...]:
    """The push connections a heartbeat row names (unreadable entries are left out)."""
    if not text:
        return ()
    try:
        rows = json.loads(text)
    except ValueError:
        return ()
    out: list[PushStatus] = []
    for r in rows if isinstance(rows, list) else []:
        try:
            out.append(PushStatus(
                key=str(r["key"]), kind=str(r["kind"]),
                source_ids=tuple(str(s) for s in r.get("source_ids", [])),
                connected=bool(r.get("connected")), since=dt(r.get("since")),
                failures=int(r.get("failures", 0)), last_error=str(r.get("last_error", "")),
                last_event_at=dt(r.get("last_event_at")), events=int(r.get("events", 0)),
                note=str(r.get("note", ""))))
        except (KeyError, TypeError, ValueError):
            continue
    return tuple(out)
