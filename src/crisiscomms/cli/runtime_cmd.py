"""watch: the long-running job (and, registered here too, simulate, drill and report)."""

from __future__ import annotations

from datetime import datetime, tzinfo
from pathlib import Path
from typing import Annotated

import typer

from crisiscomms.cli.state import echo_json, get_app
from crisiscomms.domain.clock import AtClock, parse_local_instant
from crisiscomms.domain.errors import ConfigError, NotFoundError, RefusedError


def watch(
    once: Annotated[bool, typer.Option("--once", help="Run one cycle and exit.")] = False,
    dry_run: Annotated[bool, typer.Option(
        "--dry-run", help="Record what would be posted instead of posting.")] = False,
    tick: Annotated[float, typer.Option(
        "--tick", help="Seconds between cycles (sources keep their own intervals).")] = 2.0,
    json_out: Annotated[bool, typer.Option("--json", help="With --once: print JSON.")] = False,
) -> None:
    """Poll the official sources and dispatch to our channels until stopped (SIGTERM)."""
    import asyncio

    from crisiscomms.bootstrap import run_watch

    app = get_app()
    clock = app.clock
    if isinstance(clock, AtClock) and not clock.live_ok:
        from crisiscomms.services.operators import live_database

        why = live_database(app.store)  # the same rule as every other change
        if why is not None:
            # Its sources' state and items would be dated at an invented time.
            raise RefusedError(f"--at {clock.text}: refused to watch a live database ({why}); "
                               "drop --at, work on a copy, or add --at-on-live-database")
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


def _local_instant(option: str, text: str | None, tz: tzinfo) -> datetime | None:
    """A time typed by a person: an offset or ``Z`` is honoured, a naive one is wall time in
    the policy's zone (not UTC)."""
    if text is None:
        return None
    try:
        return parse_local_instant(text, tz)
    except ValueError:
        raise ConfigError(f"{option}: {text!r} is not an ISO-8601 time (e.g. 2026-07-01T09:00, "
                          "taken in the policy's time zone, or with Z or an offset)") from None


def report(
    incident: Annotated[int | None, typer.Argument(help="Incident id.")] = None,
    last: Annotated[bool, typer.Option("--last", help="The most recent incident.")] = False,
    fmt: Annotated[str | None, typer.Option(
        "--format", help="md, html, json or csv (default: from --output's extension, else md)."
    )] = None,
    output: Annotated[Path | None, typer.Option(
        "--output", "-o", help="Write here (atomically) instead of stdout.")] = None,
    from_: Annotated[str | None, typer.Option(
        "--from", help="Normal-mode period report: start (ISO-8601; without an offset, in "
        "the policy's time zone).")] = None,
    to: Annotated[str | None, typer.Option(
        "--to", help="Normal-mode period report: end (ISO-8601, default now; without an "
        "offset, in the policy's time zone).")] = None,
) -> None:
    """The post-incident audit report (or, with --from/--to, a normal-mode period report)."""
    from crisiscomms.report import FORMATS, build_incident_report, build_period_report, render
    from crisiscomms.report.files import write_atomically

    fmt = fmt or (output.suffix.lstrip(".").replace("markdown", "md") if output else "md")
    if fmt not in FORMATS:
        raise ConfigError(f"--format: {fmt!r} is not one of {', '.join(FORMATS)}")
    if to is not None and from_ is None:
        raise ConfigError("--to: needs --from (a period report); an incident report covers "
                          "the incident's own period")
    app = get_app()
    now = app.clock.now()
    if from_ is not None:
        if incident is not None or last:
            raise ConfigError("--from: give either an incident or a period, not both")
        tz = app.catalog.policy.tz
        start = _local_instant("--from", from_, tz) or now
        end = _local_instant("--to", to, tz) or now
        if end <= start:
            raise ConfigError("--to: must be after --from")
        data = build_period_report(app.store, app.catalog, start, end, now)
    else:
        if incident is None:
            all_incidents = app.store.incidents()
            if not all_incidents:
                raise NotFoundError("no incidents recorded yet; use --from/--to for a "
                                    "normal-mode period")
            if not last and len(all_incidents) > 1:
                ids = ", ".join(str(i.id) for i in all_incidents[-5:])
                raise ConfigError(f"name an incident (recent: {ids}) or use --last")
            incident = all_incidents[-1].id
        data = build_incident_report(app.store, app.catalog, app.store.get_incident(incident),
                                     now)
    text = render(data, fmt)
    if output is None:
        typer.echo(text, nl=False)
        return
    if not output.parent.is_dir():
        # A typo in a folder name must not silently make folders: say so.
        raise ConfigError(f"--output: folder {output.parent} does not exist")
    write_atomically(output, text)
    typer.echo(f"report written: {output}", err=True)


def register(app: typer.Typer) -> None:
    app.command()(watch)
    app.command()(report)
