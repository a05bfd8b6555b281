"""audit verify | log."""

from __future__ import annotations

from typing import Annotated

import typer

from crisiscomms.cli.state import echo_json, get_app, option_instant
from crisiscomms.domain.clock import isoformat

app = typer.Typer(help="Verify and read the tamper-evident audit trail.", no_args_is_help=True)


@app.command()
def verify(json_out: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False) -> None:
    """Walk the hash chain; name the first broken or missing link (exit 1)."""
    report = get_app().store.verify_audit()
    if json_out:
        echo_json({"ok": report.ok, "count": report.count, "head_hash": report.head_hash,
                   "problem": report.problem, "bad_seq": report.bad_seq})
    elif report.ok:
        typer.echo(f"audit chain ok: {report.count} events, head {report.head_hash}")
    else:
        typer.echo(f"audit chain BROKEN: {report.problem}", err=True)
    if not report.ok:
        raise typer.Exit(1)


@app.command()
def log(
    since: Annotated[str | None, typer.Option(
        "--since", help="Only events at or after this ISO-8601 instant.")] = None,
    json_out: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """List audit events, oldest first."""
    start = option_instant("--since", since)
    events = get_app().store.audit_events(since=start)
    if json_out:
        echo_json([{"seq": e.seq, "at": isoformat(e.at), "actor": e.actor, "action": e.action,
                    "subject": e.subject, "reason": e.reason, "details": e.details,
                    "prev_hash": e.prev_hash, "hash": e.hash} for e in events])
        return
    for e in events:
        typer.echo(f"{e.seq:>5} {isoformat(e.at)} {e.actor:<14} {e.action:<24} "
                   f"{e.subject:<14} {e.reason}")
