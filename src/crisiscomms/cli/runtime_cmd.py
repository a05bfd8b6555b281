"""watch: the long-running job (and, registered here too, simulate, drill and report)."""

from __future__ import annotations

import asyncio
from typing import Annotated

import typer

from crisiscomms.app import run_watch
from crisiscomms.cli.state import echo_json, get_app


def watch(
    once: Annotated[bool, typer.Option("--once", help="Run one cycle and exit.")] = False,
    dry_run: Annotated[bool, typer.Option(
        "--dry-run", help="Record what would be posted instead of posting.")] = False,
    tick: Annotated[float, typer.Option(
        "--tick", help="Seconds between cycles (sources keep their own intervals).")] = 2.0,
    json_out: Annotated[bool, typer.Option("--json", help="With --once: print JSON.")] = False,
) -> None:
    """Poll the official sources and dispatch to our channels until stopped (SIGTERM)."""
    app = get_app()
    cycle, dispatched = asyncio.run(run_watch(app, once=once, dry_run=dry_run,
                                              tick_seconds=tick))
    if once:
        data = {"polled": cycle.polled, "not_modified": cycle.not_modified,
                "failed": cycle.failed, "new_updates": cycle.new_updates,
                "queued": cycle.queued, "source_errors": cycle.errors,
                "published": dispatched.published, "held": dispatched.held,
                "dispatch_failed": dispatched.failed, "rate_limited": dispatched.rate_limited}
        if json_out:
            echo_json(data)
        else:
            typer.echo(", ".join(f"{k} {v}" for k, v in data.items() if k != "source_errors"))
            for src, err in cycle.errors.items():
                typer.echo(f"  source {src}: {err}")


def register(app: typer.Typer) -> None:
    app.command()(watch)
