"""status: what the on-call officer looks at first."""

from __future__ import annotations

from typing import Annotated

import typer

from crisiscomms.cli.state import echo_json, get_app
from crisiscomms.domain.clock import isoformat

LIVE_SECONDS = 120  # a watcher heartbeats every 10 s; two minutes of silence means gone


def status(
    json_out: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Show the crisis flag, active incidents, queue counts and failing sources."""
    from crisiscomms.cli.incident_cmd import incident_json

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
    channels = {k: {"paused_until": isoformat(v.paused_until) if v.paused_until else None,
                    "last_error": v.last_error, "rate_limit_waits": v.rate_limit_waits,
                    "rate_limit_wait_seconds": v.rate_limit_wait_seconds,
                    "problem": v.problem}
                for k, v in app.store.channel_states().items()}
    now = app.clock.now()
    watchers = [{"worker": w.worker_id, "host": w.host, "pid": w.pid,
                 "started_at": isoformat(w.started_at), "last_seen_at": isoformat(w.last_seen_at),
                 "live": (now - w.last_seen_at).total_seconds() <= LIVE_SECONDS}
                for w in app.store.watchers()]
    data = {"crisis_flag": bool(active), "at": isoformat(now),
            "database": app.store.describe(),
            "incidents": [incident_json(i) for i in active], "queue": counts,
            "sources": sources, "channels": channels, "watchers": watchers}
    if json_out:
        echo_json(data)
        return
    typer.echo(f"crisis flag: {'ON' if active else 'off'}")
    typer.echo(f"database: {data['database']}")
    live = [w for w in watchers if w["live"]]
    typer.echo(f"watchers: {len(live)} live" + ("" if live else
                                                " (none seen in the last 2 minutes)"))
    for w in live:
        typer.echo(f"  {w['host']} pid {w['pid']}  last heartbeat {w['last_seen_at']}")
    for i in active:
        typer.echo(f"  incident {i.id}: {i.playbook}  lead {i.lead}  {' '.join(i.hashtags)}")
        typer.echo(f"    since {isoformat(i.activated_at)} by {i.activated_by}: {i.reason}")
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
    for cid, c in channels.items():
        if c["problem"]:
            typer.echo(f"  channel {cid} broken: {c['problem']}")
        if c["paused_until"]:
            typer.echo(f"  channel {cid} rate limited until {c['paused_until']}")


def register(app: typer.Typer) -> None:
    app.command()(status)
