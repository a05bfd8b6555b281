"""status: what the on-call officer looks at first."""

from __future__ import annotations

from datetime import tzinfo
from pathlib import Path
from typing import TYPE_CHECKING, Annotated
from zoneinfo import ZoneInfo

import typer

from crisiscomms.cli.state import echo_json, get_app
from crisiscomms.domain.clock import isoformat, shown
from crisiscomms.domain.errors import ConfigError

if TYPE_CHECKING:
    from crisiscomms.domain.models import PushStatus

LIVE_SECONDS = 120  # a watcher heartbeats every 10 s; two minutes of silence means gone


def push_json(p: PushStatus) -> dict[str, object]:
    return {"connection": p.key, "kind": p.kind, "sources": list(p.source_ids),
            "connected": p.connected, "since": isoformat(p.since) if p.since else None,
            "failures": p.failures, "last_error": p.last_error or None,
            "last_event_at": isoformat(p.last_event_at) if p.last_event_at else None,
            "events": p.events, "note": p.note or None}


def push_line(p: PushStatus, tz: tzinfo) -> str:
    """One line per push connection: up (since, events) or down (why; polled meanwhile)."""
    n = len(p.source_ids)
    what = f"push {p.key} ({p.kind}, {n} source{'s' if n != 1 else ''})"
    since = f" since {shown(p.since, tz)}" if p.since else ""
    if p.connected:
        last = f", last {shown(p.last_event_at, tz, seconds=True)}" if p.last_event_at else ""
        note = f" ({p.note})" if p.note else ""
        return f"{what}: connected{since}, {p.events} event(s){last}{note}"
    why = f": {p.last_error}" if p.last_error else ""
    tries = f" after {p.failures} attempt(s)" if p.failures else ""
    return (f"{what}: DOWN{since}{tries}{why}; its sources are polled meanwhile and caught "
            "up when it reconnects")


def status(
    json_out: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Show the crisis flag, active incidents, the live watchers and their push connections,
    queue counts and failing sources."""
    from crisiscomms.cli.incident_cmd import incident_json
    from crisiscomms.services.notices import status_data, status_lines
    from crisiscomms.services.reload import reload_states

    app = get_app()
    active = app.store.active_incidents()
    counts = app.store.queue_counts()
    sources = [
        {"source": s.source_id, "failures": s.failures, "errors": s.error_count,
         "last_error_class": s.last_error_class, "last_error": s.last_error,
         "last_ok_at": isoformat(s.last_ok_at) if s.last_ok_at else None,
         "moved_to": s.extra.get("moved_to") or None}
        for s in app.store.source_states()
    ]
    channel_states = app.store.channel_states()
    channels = {k: {"paused_until": isoformat(v.paused_until) if v.paused_until else None,
                    "last_error": v.last_error, "rate_limit_waits": v.rate_limit_waits,
                    "rate_limit_wait_seconds": v.rate_limit_wait_seconds,
                    "problem": v.problem}
                for k, v in channel_states.items()}
    now = app.clock.now()
    registered = app.store.watchers()
    watchers = [{"worker": w.worker_id, "host": w.host, "pid": w.pid,
                 "started_at": isoformat(w.started_at), "last_seen_at": isoformat(w.last_seen_at),
                 "live": (now - w.last_seen_at).total_seconds() <= LIVE_SECONDS,
                 "pages": w.pages, "push": [push_json(p) for p in w.push]}
                for w in registered]
    live_watchers = [w for w in registered
                     if (now - w.last_seen_at).total_seconds() <= LIVE_SECONDS]
    states = reload_states(app.store, live_watchers)
    reloads = [{"worker": r.worker, "loaded_at": isoformat(r.loaded_at),
                "refused": r.refused, "refused_at": isoformat(r.refused_at)
                if r.refused_at else None} for r in states]
    tz: tzinfo = ZoneInfo("Europe/London")  # the policy's default zone
    catalog_error = None
    try:
        tz = app.catalog.policy.tz
    except ConfigError as exc:  # status still answers, and says what is wrong
        catalog_error = str(exc)
    data = {"crisis_flag": bool(active), "at": isoformat(now),
            "database": app.store.describe(),
            "playbooks": {"directory": str(app.settings.playbooks_dir),
                          "error": catalog_error, "reload": reloads},
            "incidents": [incident_json(i) for i in active], "queue": counts,
            "sources": sources, "channels": channels, "watchers": watchers,
            "notifications": status_data(app.store, now)}
    if json_out:
        echo_json(data)
        return
    typer.echo(f"crisis flag: {'ON' if active else 'off'}  (now {shown(now, tz)})")
    typer.echo(f"database: {data['database']}")
    typer.echo(f"playbooks: {app.settings.playbooks_dir}")
    if catalog_error:
        typer.echo(f"playbooks: cannot be read: {catalog_error}")
    for r in states:
        refused = r.refused
        if not refused:
            continue
        name = Path(str(refused.get("file") or "")).name or "the playbooks"
        where = ", ".join(part for part in (
            f"line {refused['line']}" if refused.get("line") else "",
            f"key {refused['key']}" if refused.get("key") else "") if part)
        loaded = shown(r.loaded_at, tz)
        typer.echo(f"playbooks: change to {name} refused ({where + ': ' if where else ''}"
                   f"{refused.get('error')}); the watcher {r.worker} runs the last good "
                   f"configuration loaded at {loaded}")
    live = [w for w in watchers if w["live"]]
    typer.echo(f"watchers: {len(live)} live" + ("" if live else
                                                " (none seen in the last 2 minutes)"))
    for w in live:
        seen = next(x.last_seen_at for x in live_watchers if x.worker_id == w["worker"])
        pages = "pages the on-call team" if w["pages"] else "cannot page"
        typer.echo(f"  {w['host']} pid {w['pid']}  last heartbeat "
                   f"{shown(seen, tz, seconds=True)}  ({pages})")
        for p in next(x.push for x in live_watchers if x.worker_id == w["worker"]):
            typer.echo("    " + push_line(p, tz))
    if live and not any(w["pages"] for w in live):
        typer.echo("  WARNING: no live watcher can page the on-call team (the service needs "
                   "CRISISCOMMS_NOTIFY_URLS; check 'crisiscomms notify test')")
    for i in active:
        typer.echo(f"  incident {i.id}: {i.playbook}  lead {i.lead}  {' '.join(i.hashtags)}")
        typer.echo(f"    since {shown(i.activated_at, tz)} by {i.activated_by}: {i.reason}")
    typer.echo("queue: " + (", ".join(f"{k} {v}" for k, v in sorted(counts.items()))
                            or "empty"))
    failing = [s for s in sources if s["failures"]]
    for s in failing:
        typer.echo(f"  source {s['source']} failing ({s['failures']}x): "
                   f"{s['last_error_class']}: {s['last_error']}")
    for s in sources:
        if s["moved_to"]:
            typer.echo(f"  source {s['source']} moved permanently to {s['moved_to']} "
                       "(still read through the redirect; update its url in sources.yaml)")
    for cid, ch in channel_states.items():
        if ch.problem:
            typer.echo(f"  channel {cid} broken: {ch.problem}")
        if ch.paused_until and ch.paused_until > now:
            typer.echo(f"  channel {cid} rate limited until {shown(ch.paused_until, tz)}")
    if counts.get("needs_approval"):
        typer.echo(f"  {counts['needs_approval']} item(s) need approval: crisiscomms queue list "
                   "--state needs_approval, then crisiscomms queue approve ID --reason \"...\" "
                   "(or queue reject ID --reason \"...\")")
    if counts.get("needs_review"):
        typer.echo(f"  {counts['needs_review']} item(s) need review (did they go out?): "
                   "crisiscomms queue list --state needs_review, then crisiscomms queue retry ID "
                   "(asks the platform before any resend) or queue reject ID --reason \"...\"")
    if not catalog_error:
        for line in status_lines(app.store, app.catalog, now):
            typer.echo(line)


def register(app: typer.Typer) -> None:
    app.command()(status)
