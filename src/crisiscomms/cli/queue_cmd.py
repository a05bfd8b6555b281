"""queue list|show|approve|reject|hold|retry|edit, window add|list|remove, policy explain."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Any

import typer

from crisiscomms.cli.state import current_operator, echo_json, get_app, option_instant, when
from crisiscomms.domain.clock import isoformat, parse_instant
from crisiscomms.domain.errors import ConfigError, CrisisCommsError, RefusedError

if TYPE_CHECKING:
    from crisiscomms.domain.models import OutboxItem

# The use cases (services.queue brings the policy, the dispatcher's counters and the post
# text rules) are imported by the commands that call them: `--help` and `queue list` do not.

app = typer.Typer(help="Inspect the outbox and act on items (every action is audited).",
                  no_args_is_help=True)
window_app = typer.Typer(help="Live-event windows that extend staffed hours (policy s.7).",
                         no_args_is_help=True)
policy_app = typer.Typer(help="Ask the policy about an item.", no_args_is_help=True)

Operator = Annotated[str | None, typer.Option(
    "--operator", help="Act for this operator (only where policy.yaml delegates lets you; "
    "audited as 'you acting for NAME'). You are always your real OS user.")]
Json = Annotated[bool, typer.Option("--json", help="Print JSON.")]
ItemId = Annotated[int, typer.Argument(help="Outbox item id (see 'queue list').")]


def item_json(item: OutboxItem) -> dict[str, Any]:
    return {
        "id": item.id, "channel": item.channel_id, "action": str(item.action),
        "state": str(item.state), "reason": item.reason, "text": item.text,
        "edited_text": item.edited_text, "incident": item.incident_id,
        "source": item.source_id, "update": item.update_id, "lead": item.is_lead,
        "approval": item.approval, "approved_by": item.approved_by,
        "not_before": isoformat(item.not_before) if item.not_before else None,
        "attempts": item.attempts, "last_error": item.last_error,
        "post_id": item.platform_post_id, "post_url": item.platform_url,
        "created_at": isoformat(item.created_at),
        "done_at": isoformat(item.done_at) if item.done_at else None,
    }


def _line(item: OutboxItem) -> str:
    text = item.body.replace("\n", " ")
    text = text if len(text) <= 60 else text[:59] + "…"
    mode = f"i{item.incident_id}" if item.incident_id else "normal"
    return (f"{item.id:>6} {item.state:<15} {item.channel_id:<12} {item.action:<8} {mode:<7} "
            f"{text}  [{item.reason}]")


@app.command("list")
def list_(
    state: Annotated[list[str] | None, typer.Option(
        "--state", help="Only items in this state (repeatable).")] = None,
    channel: Annotated[str | None, typer.Option("--channel", help="Only this channel.")] = None,
    incident: Annotated[int | None, typer.Option("--incident", help="Only this incident.")
                        ] = None,
    limit: Annotated[int, typer.Option("--limit", help="At most this many.")] = 200,
    json_out: Json = False,
) -> None:
    """List outbox items."""
    from crisiscomms.domain.models import ItemState

    a = get_app()
    valid = sorted(str(s) for s in ItemState)
    for s in state or []:
        if s not in valid:
            raise ConfigError(f"--state: unknown state {s!r} (one of: {', '.join(valid)})")
    if channel is not None and channel not in a.catalog.channels:
        raise ConfigError(f"--channel: unknown channel {channel!r} (one of: "
                          f"{', '.join(sorted(a.catalog.channels))})")
    if incident is not None:
        a.store.get_incident(incident)  # NotFoundError names it
    items = a.store.items(states=state, channel_id=channel, incident_id=incident, limit=limit)
    if json_out:
        echo_json([item_json(i) for i in items])
        return
    if not items:
        typer.echo("no items")
        return
    typer.echo(f"{'ID':>6} {'STATE':<15} {'CHANNEL':<12} {'ACTION':<8} {'MODE':<7} TEXT  [REASON]")
    for i in items:
        typer.echo(_line(i))


@app.command()
def show(item: ItemId, json_out: Json = False) -> None:
    """Show one item and its history."""
    store = get_app().store
    it = store.get_item(item)
    events = store.item_events(item)
    if json_out:
        echo_json({**item_json(it), "history": [
            {"at": isoformat(e.at), "state": e.state, "reason": e.reason, "actor": e.actor,
             "details": e.details} for e in events]})
        return
    times = {"not_before": it.not_before, "created_at": it.created_at, "done_at": it.done_at}
    for k, v in item_json(it).items():
        typer.echo(f"{k:>12}: {when(times[k]) if times.get(k) else v}")
    typer.echo("     history:")
    for e in events:
        actor = e.actor + (f" acting for {e.details['acting_for']}"
                           if e.details.get("acting_for") else "")
        typer.echo(f"   {when(e.at, seconds=True)} {e.state:<15} {actor:<14} {e.reason}")


def _done(item: OutboxItem, json_out: bool) -> None:
    if json_out:
        echo_json(item_json(item))
    else:
        typer.echo(_line(item))


@app.command()
def approve(items: Annotated[list[int] | None, typer.Argument(
                help="Outbox item ids (see 'queue list').", show_default=False)] = None,
            all_from: Annotated[str | None, typer.Option(
                "--all-from", help="Every item waiting for approval whose update came from "
                "this source id.")] = None,
            operator: Operator = None,
            reason: Annotated[str, typer.Option("--reason", help="Why (audited).")] = "approved",
            json_out: Json = False) -> None:
    """Approve items that need approval (one id, several, or --all-from SOURCE); the policy
    then decides when each goes. Each is its own audited decision; a refused one is reported
    and the others go on (exit non-zero if any was refused)."""
    from crisiscomms.services import queue as ops

    a = get_app()
    ids = list(items or [])
    if all_from is not None:
        if ids:
            raise ConfigError("queue approve: give item ids or --all-from, not both")
        if all_from not in a.catalog.sources:
            raise ConfigError(f"--all-from: unknown source {all_from!r} (one of: "
                              f"{', '.join(sorted(a.catalog.sources))})")
        ids = ops.waiting_from(a.store, all_from)
        if not ids:
            typer.echo(f"no items from {all_from} are waiting for approval")
            return
    if not ids:
        raise ConfigError("queue approve: give an item id (or several), or --all-from SOURCE")
    who = current_operator(operator)
    if len(ids) == 1 and all_from is None:
        _done(ops.approve(a.store, a.catalog, a.clock, ids[0], who, reason), json_out)
        return
    results = ops.approve_many(a.store, a.catalog, a.clock, ids, who, reason)
    approved = [r for r in results if r.item is not None]
    refused = [r for r in results if r.error is not None]
    if json_out:
        echo_json({"approved": [item_json(r.item) for r in approved if r.item is not None],
                   "refused": [{"id": r.item_id, "error": str(r.error)} for r in refused]})
    else:
        for r in results:
            if r.item is not None:
                typer.echo(_line(r.item))
            else:
                typer.echo(f"item {r.item_id}: not approved: {r.error}", err=True)
        src = f" from {all_from}" if all_from else ""
        typer.echo(f"approved {len(approved)} of {len(results)} items{src}"
                   + (f"; {len(refused)} refused" if refused else ""))
    if refused:
        codes = {r.error.exit_code for r in refused if r.error is not None}
        raise typer.Exit(RefusedError.exit_code if RefusedError.exit_code in codes
                         else max(codes, default=CrisisCommsError.exit_code))


@app.command()
def reject(item: ItemId, reason: Annotated[str, typer.Option("--reason", help="Why (audited).")],
           operator: Operator = None, json_out: Json = False) -> None:
    """Reject an item: it will never be sent."""
    from crisiscomms.services import queue as ops

    a = get_app()
    _done(ops.reject(a.store, a.catalog, a.clock, item, current_operator(operator), reason),
          json_out)


@app.command()
def hold(item: ItemId, reason: Annotated[str, typer.Option("--reason", help="Why (audited).")],
         until: Annotated[str | None, typer.Option(
             "--until", help="Hold until this instant (without an offset: the policy's time "
             "zone; default: until 'queue retry').")] = None,
         operator: Operator = None, json_out: Json = False) -> None:
    """Hold an item (until a time, or until released with 'queue retry')."""
    from crisiscomms.services import queue as ops

    a = get_app()
    _done(ops.hold(a.store, a.catalog, a.clock, item, current_operator(operator), reason,
                   option_instant("--until", until)), json_out)


@app.command()
def retry(item: ItemId, operator: Operator = None,
          force: Annotated[bool, typer.Option(
              "--force", help="For needs-review items: send again even if the platform "
              "cannot confirm the earlier attempt (may duplicate).")] = False,
          json_out: Json = False) -> None:
    """Put a failed, held or needs-review item back in the queue. Safe: an item whose earlier
    attempt may have reached the platform is checked on the platform before any resend."""
    from crisiscomms.services import queue as ops

    a = get_app()
    _done(ops.retry(a.store, a.catalog, a.clock, item, current_operator(operator), force),
          json_out)


@app.command()
def edit(item: ItemId, text: Annotated[str, typer.Option("--text", help="The new text.")],
         operator: Operator = None, json_out: Json = False) -> None:
    """Edit an item's text before it is approved or sent; the original is kept."""
    from crisiscomms.services import queue as ops

    a = get_app()
    _done(ops.edit(a.store, a.catalog, a.clock, item, current_operator(operator), text),
          json_out)


@window_app.command("add")
def window_add(
    from_: Annotated[str, typer.Option(
        "--from", help="Start (ISO-8601; without an offset: the policy's time zone).")],
    to: Annotated[str, typer.Option(
        "--to", help="End (ISO-8601; without an offset: the policy's time zone).")],
    reason: Annotated[str, typer.Option("--reason", help="The live event.")],
    operator: Operator = None,
) -> None:
    """Add a live-event window: staffed hours extend over its span."""
    from crisiscomms.services import windows

    a = get_app()
    start, end = option_instant("--from", from_), option_instant("--to", to)
    assert start is not None and end is not None
    w = windows.add_window(a.store, a.catalog, a.clock, start, end, reason,
                           current_operator(operator))
    typer.echo(f"window {w.id}: {when(w.start)} to {when(w.end)}: {w.reason}")


@window_app.command("list")
def window_list(json_out: Json = False) -> None:
    """List live-event windows."""
    ws = get_app().store.windows()
    if json_out:
        echo_json([{"id": w.id, "from": isoformat(w.start), "to": isoformat(w.end),
                    "reason": w.reason, "by": w.created_by} for w in ws])
        return
    if not ws:
        typer.echo("no live-event windows")
        return
    typer.echo(f"{'ID':>4} {'FROM':<20} {'TO':<20} {'BY':<14} REASON")
    for w in ws:
        typer.echo(f"{w.id:>4} {when(w.start):<20} {when(w.end):<20} {w.created_by:<14} "
                   f"{w.reason}")


@window_app.command("remove")
def window_remove(window: Annotated[int, typer.Argument(help="Window id.")],
                  reason: Annotated[str, typer.Option("--reason", help="Why.")] = "removed",
                  operator: Operator = None) -> None:
    """Remove a live-event window."""
    from crisiscomms.services import windows

    a = get_app()
    windows.remove_window(a.store, a.catalog, a.clock, window, reason,
                          current_operator(operator))
    typer.echo(f"window {window} removed")


@policy_app.command()
def explain(item: ItemId,
            at: Annotated[str | None, typer.Option(
                "--at", help="As of this instant (default: now or the global --at; without an "
                "offset: the policy's time zone).")] = None,
            json_out: Json = False) -> None:
    """Print why an item is where it is and when it would go."""
    from crisiscomms.services import queue as ops

    a = get_app()
    when_at = option_instant("--at", at) or a.clock.now()
    info = ops.explain(a.store, a.catalog, item, when_at)
    if json_out:
        echo_json(info)
        return
    typer.echo(f"item {item} on {info['channel']} is {info['state']}: {info['stored_reason']}")
    typer.echo(f"at {when(when_at)}: {info['decision']}: {info['reason']}")
    if info["would_go_at"]:
        typer.echo(f"would go at {when(parse_instant(info['would_go_at']))} (if nothing else "
                   "changes)")
