"""playbooks validate | list | show."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from crisiscomms.cli.state import echo_json, settings
from crisiscomms.domain.errors import RefusedError

app = typer.Typer(help="Validate, list and show playbooks.", no_args_is_help=True)


@app.command()
def validate(
    directory: Annotated[Path | None, typer.Argument(
        help="Playbooks folder (default: the configured one).")] = None,
    strict: Annotated[bool, typer.Option(
        "--strict", help="Exit 3 if any playbook cannot be activated.")] = False,
) -> None:
    """Validate every playbook file; errors name the file, the key and what is wrong. Says
    which playbooks cannot be activated, and why (with --strict that is a failure)."""
    from crisiscomms.adapters.playbooks import load_catalog

    cat = load_catalog(directory or settings().playbooks_dir)
    for w in cat.warnings():
        typer.echo(f"warning: {w}", err=True)
    blocked = []
    for name, pb in sorted(cat.playbooks.items()):
        try:
            cat.check_activatable(pb)
        except RefusedError as exc:
            blocked.append(name)
            typer.echo(f"warning: {name} cannot be activated: {exc}", err=True)
    if blocked and strict:
        raise RefusedError(f"{len(blocked)} of {len(cat.playbooks)} playbooks cannot be "
                           f"activated: {', '.join(blocked)} (see the warnings above)")
    state = "ok" if not blocked else f"valid, but {len(blocked)} cannot be activated"
    typer.echo(f"{state}: {cat.directory}: policy, {len(cat.sources)} sources, "
               f"{len(cat.channels)} channels, {len(cat.playbooks)} playbooks "
               f"({', '.join(sorted(cat.playbooks))})")


@app.command("list")
def list_(json_out: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False) -> None:
    """List the incident playbooks (a broken one is named, with its error, on stderr)."""
    from crisiscomms.adapters.playbooks import broken_files, load_catalog

    cat = load_catalog(settings().playbooks_dir, partial=True)
    for problem in broken_files(cat):
        typer.echo(f"warning: broken, cannot be used: {problem}", err=True)
    rows = [{"name": p.name, "description": p.description, "hashtags": p.hashtags,
             "default_lead": p.default_lead, "channels": [c.channel for c in p.channels],
             "sources": [s.source for s in p.sources]} for p in cat.playbooks.values()]
    if json_out:
        echo_json(rows)
        return
    for r in rows:
        typer.echo(f"{r['name']:<18} {' '.join(r['hashtags']):<18} lead {r['default_lead']:<18}"
                   f" {r['description']}")


@app.command()
def show(
    name: Annotated[str, typer.Argument(help="Playbook name.")],
    json_out: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Show one playbook, with its sources and channel actions."""
    from crisiscomms.adapters.playbooks import load_catalog

    cat = load_catalog(settings().playbooks_dir, partial=True)
    pb = cat.playbook(name)
    if json_out:
        echo_json(pb.model_dump(mode="json"))
        return
    typer.echo(f"{pb.name}: {pb.description}")
    typer.echo(f"  hashtags: {' '.join(pb.hashtags)}   lead: {pb.default_lead} "
               f"(allowed: {', '.join(pb.leads)})")
    typer.echo(f"  approval: lead {pb.approval.lead}, others {pb.approval.others}; "
               f"hourly ceiling {pb.hourly_ceiling}; backfill {pb.backfill_minutes} min")
    for s in pb.sources:
        src = cat.sources[s.source]
        pin = "" if src.pinned else "  [X id NOT pinned: cannot activate]"
        typer.echo(f"  source  {s.source:<22} {src.agency} ({src.kind}){pin}")
    for c in pb.channels:
        typer.echo(f"  channel {c.channel:<22} {c.action}: {c.template}")
