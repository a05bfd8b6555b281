"""activate, deactivate, lead: the crisis flag."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Any

import typer

from crisiscomms.cli.state import current_operator, echo_json, get_app, when
from crisiscomms.cli.status_cmd import LIVE_SECONDS
from crisiscomms.domain.clock import isoformat
from crisiscomms.domain.errors import ConfigError

if TYPE_CHECKING:
    from crisiscomms.domain.audit import ChainReport
    from crisiscomms.domain.models import Incident


def incident_json(inc: Incident) -> dict[str, Any]:
    return {
        "id": inc.id, "playbook": inc.playbook, "hashtags": list(inc.hashtags), "lead": inc.lead,
        "active": inc.active, "activated_at": isoformat(inc.activated_at),
        "activated_by": inc.activated_by, "reason": inc.reason,
        "deactivated_at": isoformat(inc.deactivated_at) if inc.deactivated_at else None,
        "deactivated_by": inc.deactivated_by, "deactivation_reason": inc.deactivation_reason,
    }


def activate(
    playbook: Annotated[str, typer.Argument(help="Playbook name (file name without .yaml).")],
    reason: Annotated[str, typer.Option("--reason", help="Why: goes on the audit record.")],
    hashtag: Annotated[list[str] | None, typer.Option(
        "--hashtag", help="Incident hashtag (repeatable); default: the playbook's.")] = None,
    lead: Annotated[str | None, typer.Option(
        "--lead", help="Lead agency source id; default: the playbook's default_lead.")] = None,
    operator: Annotated[str | None, typer.Option(
        "--operator", help="Act for this operator (only where policy.yaml delegates lets you; "
        "audited). You are always your real OS user.")] = None,
    json_out: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Turn the crisis flag on: create an incident of PLAYBOOK and print its id."""
    from crisiscomms.services import incidents as uc

    app = get_app()
    inc = uc.activate(app.store, app.catalog, app.clock, playbook=playbook, reason=reason,
                      operator=current_operator(operator), hashtags=hashtag or [],
                      lead=lead)
    for line in channel_warnings(app, inc.playbook):
        typer.echo(f"warning: {line}", err=True)
    now = app.clock.now()
    if not any((now - w.last_seen_at).total_seconds() <= LIVE_SECONDS
               for w in app.store.watchers()):
        typer.echo(f"WARNING: no watcher has been seen on this database "
                   f"({app.store.describe()}) in the last {LIVE_SECONDS // 60} minutes: nothing "
                   "will be relayed until 'crisiscomms watch' runs against it (check "
                   "CRISISCOMMS_DATABASE_URL / CRISISCOMMS_HOME, or the service)", err=True)
    head = app.store.verify_audit()
    if json_out:
        echo_json({**incident_json(inc), "audit_head": head.head})
        return
    typer.echo(f"incident {inc.id} active: playbook {inc.playbook}, lead {inc.lead}, "
               f"hashtags {' '.join(inc.hashtags)}, by {inc.activated_by} at "
               f"{when(inc.activated_at)}")
    typer.echo(audit_head_line(head))


def channel_warnings(app: Any, playbook: str) -> list[str]:
    """The playbook's channels that cannot post: as the watcher last reported them, or (where
    it has not) as this shell sees their credentials. Names of variables only, never values."""
    pb = app.catalog.playbooks[playbook]
    reported = app.store.channel_states()
    out = []
    for channel_id in sorted({c.channel for c in pb.channels}):
        state = reported.get(channel_id)
        if state is not None:  # the watcher has said (its first tick names every channel)
            if state.problem:
                out.append(f"channel {channel_id} cannot post: {state.problem} (reported by "
                           "the watcher)")
            continue
        missing = app.missing_credentials(channel_id)
        if missing:
            out.append(f"channel {channel_id} cannot post: credentials missing here "
                       f"({', '.join(missing)} unset); if the watcher lacks them too, its "
                       "items will fail until they are set")
    return out


def deactivate(
    incident: Annotated[int | None, typer.Argument(
        help="Incident id; may be left out when exactly one is active.")] = None,
    reason: Annotated[str, typer.Option("--reason", help="Why: goes on the audit record.")] = "",
    operator: Annotated[str | None, typer.Option(
        "--operator", help="Act for this operator (only where policy.yaml delegates lets you; "
        "audited). You are always your real OS user.")] = None,
    json_out: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Stand an incident down; the crisis flag goes off with the last active incident."""
    from crisiscomms.services import incidents as uc

    app = get_app()
    inc = uc.deactivate(app.store, app.catalog, app.clock, incident_id=incident, reason=reason,
                        operator=current_operator(operator))
    remaining = app.store.active_incidents()
    head = app.store.verify_audit()
    try:
        app.catalog.playbooks.get(inc.playbook)
    except ConfigError as exc:
        typer.echo(f"WARNING: stand-down message not queued: {exc} (fix the file, then post the "
                   "stand-down by hand)", err=True)
    if json_out:
        echo_json({**incident_json(inc), "crisis_flag": bool(remaining),
                   "audit_head": head.head})
        return
    flag = "on" if remaining else "off"
    typer.echo(f"incident {inc.id} stood down by {inc.deactivated_by} at "
               f"{when(inc.deactivated_at)}; crisis flag {flag}")
    typer.echo(audit_head_line(head))


def audit_head_line(head: ChainReport) -> str:
    """The audit head to copy somewhere outside (``audit verify --expect-head``)."""
    if not head.ok:
        state = f"BROKEN: {head.problem}"
    elif head.fully_checked:
        state = "ok"
    else:
        state = f"verified; not fully checked: {'; '.join(head.not_fully_checked())}"
    return (f"audit head {head.head} (chain {state}; keep a copy to check later: crisiscomms "
            f"audit verify --expect-head {head.head})")


def lead(
    source: Annotated[str, typer.Argument(help="The new lead agency's source id.")],
    reason: Annotated[str, typer.Option("--reason", help="Why: goes on the audit record.")],
    incident: Annotated[int | None, typer.Option(
        "--incident", help="Incident id; may be left out when exactly one is active.")] = None,
    operator: Annotated[str | None, typer.Option(
        "--operator", help="Act for this operator (only where policy.yaml delegates lets you; "
        "audited). You are always your real OS user.")] = None,
) -> None:
    """Hand an active incident's lead to another allowed lead agency."""
    from crisiscomms.services import incidents as uc

    app = get_app()
    inc = uc.change_lead(app.store, app.catalog, app.clock, lead=source, reason=reason,
                         operator=current_operator(operator), incident_id=incident)
    typer.echo(f"incident {inc.id}: lead is now {inc.lead} (at {when(app.clock.now())})")


def register(app: typer.Typer) -> None:
    app.command()(activate)
    app.command()(deactivate)
    app.command()(lead)
