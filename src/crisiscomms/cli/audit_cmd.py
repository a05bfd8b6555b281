"""audit verify | log."""

from __future__ import annotations

from typing import Annotated

import typer

from crisiscomms.cli.state import echo_json, get_app, option_instant, when
from crisiscomms.domain.audit import (
    BACKWARDS_TOLERANCE,
    DRIFT_TOLERANCE,
    ChainReport,
    parse_expected_head,
)
from crisiscomms.domain.clock import isoformat
from crisiscomms.domain.errors import ConfigError

app = typer.Typer(help="Verify and read the tamper-evident audit trail.", no_args_is_help=True)


def _seqs(seqs: tuple[int, ...]) -> str:
    """``event 3`` or ``events 3, 4, 9`` (the first ten, then how many more)."""
    shown = ", ".join(str(s) for s in seqs[:10])
    more = f" and {len(seqs) - 10} more" if len(seqs) > 10 else ""
    return f"event{'s' if len(seqs) > 1 else ''} {shown}{more}"


def report_lines(report: ChainReport, *, keyed: bool) -> tuple[list[str], list[str]]:
    """What verify says: (lines for stdout, warnings for stderr)."""
    out, warn = [], []
    if report.fully_checked:
        out.append(f"audit chain ok: {report.count} events, head {report.head}")
    elif report.ok:
        out.append(f"audit chain NOT fully checked: {report.count} events, head {report.head}")
    else:
        warn.append(f"audit chain BROKEN: {report.problem}")
        out.append(f"verified up to event {report.count}, head {report.head}")
    if report.unchecked:
        warn.append(f"NOT fully checked: {report.unchecked} events are keyed and "
                    "CRISISCOMMS_AUDIT_KEY is not set here, so their content could not be "
                    "checked (only their order and links)")
    if report.unprotected:
        warn.append(f"the last {report.unprotected} events are not protected by the key "
                    "(written without CRISISCOMMS_AUDIT_KEY, from before it was set, or "
                    "rewritten by someone without it); they are protected once a keyed event "
                    "follows them")
    if not keyed and not report.keyed and report.count:
        out.append("note: the trail is not keyed (CRISISCOMMS_AUDIT_KEY unset): edits and "
                   "deletions are detected, but someone who can write to the database could "
                   "rewrite the whole trail and recompute every hash undetected")
    early = report.legacy - len(report.old_after_new)
    if early:
        out.append(f"note: {early} events predate wall-clock recording (schema 8)")
    if report.old_after_new:
        line = (f"{_seqs(report.old_after_new)} {'are' if len(report.old_after_new) > 1 else 'is'}"
                " in the old format (no wall time) after newer ones: written by a process of "
                "the version before schema 8 still running (restart every watcher and shell "
                "on the new version); their links and hashes verify")
        if report.old_tail:
            line += f"; the last {report.old_tail} are not followed by a newer event yet"
        warn.append(line)
    if report.backwards:
        warn.append(f"warning: time went backwards: the recorded wall time of "
                    f"{_seqs(report.backwards)} is more than "
                    f"{int(BACKWARDS_TOLERANCE.total_seconds())} s before an earlier event's "
                    "(the clock was set back, or events were inserted; this alone does not "
                    "fail verify: check the host's time sync)")
    if report.drifted:
        out.append(f"note: {_seqs(report.drifted)} claim{'s' if len(report.drifted) == 1 else ''}"
                   " an 'at' more than "
                   f"{int(DRIFT_TOLERANCE.total_seconds() // 60)} minutes from the real time "
                   "they were written (made with --at)")
    return out, warn


@app.command()
def verify(
    expect_head: Annotated[str | None, typer.Option(
        "--expect-head", help="A head printed earlier (HASH or COUNT:HASH, from verify, "
        "activate, deactivate, a report or the watcher's log): it must still be in the chain, "
        "or events were deleted or rewritten since.")] = None,
    json_out: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Walk the hash chain; name the first broken or missing link. Exit 1 if it is broken, if
    keyed events could not be checked (no key here), if the tail is not protected by the key
    or was written by an older version, or if the expected head is not in the chain. Time
    going backwards is named as a warning (exit 0 on its own)."""
    expected = None
    if expect_head is not None:
        try:
            expected = parse_expected_head(expect_head)
        except ValueError as exc:
            raise ConfigError(f"--expect-head: {exc}") from None
    a = get_app()
    report = a.store.verify_audit(expect_head=expected)
    keyed = a.settings.audit_key is not None
    if json_out:
        echo_json({"ok": report.ok, "fully_checked": report.fully_checked,
                   "count": report.count, "head_hash": report.head_hash, "head": report.head,
                   "problem": report.problem, "bad_seq": report.bad_seq,
                   "keyed_events": report.keyed, "unchecked_events": report.unchecked,
                   "unprotected_events": report.unprotected, "legacy_events": report.legacy,
                   "time_backwards_at": list(report.backwards),
                   "old_format_after_new": list(report.old_after_new),
                   "old_format_tail": report.old_tail,
                   "not_fully_checked": report.not_fully_checked(),
                   "at_far_from_wall_time": list(report.drifted), "key_given": keyed})
    else:
        out, warn = report_lines(report, keyed=keyed)
        for line in out:
            typer.echo(line)
        for line in warn:
            typer.echo(line, err=True)
    if not report.fully_checked:
        raise typer.Exit(1)


@app.command()
def log(
    since: Annotated[str | None, typer.Option(
        "--since", help="Only events at or after this ISO-8601 instant (without an offset: "
        "the policy's time zone).")] = None,
    json_out: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """List audit events, oldest first: the time each claims (in the policy's zone), and
    where it differs from the real time it was written, that too."""
    start = option_instant("--since", since)
    events = get_app().store.audit_events(since=start)
    if json_out:
        echo_json([{"seq": e.seq, "at": isoformat(e.at), "actor": e.actor,
                    "acting_for": e.acting_for, "action": e.action,
                    "subject": e.subject, "reason": e.reason, "details": e.details,
                    "recorded_at": isoformat(e.recorded_at) if e.recorded_at else None,
                    "scheme": e.scheme, "prev_hash": e.prev_hash, "hash": e.hash}
                   for e in events])
        return
    if not events:
        typer.echo("no audit events")
        return
    typer.echo(f"{'SEQ':>5} {'AT':<20} {'WHO':<14} {'ACTION':<24} {'SUBJECT':<14} REASON")
    for e in events:
        line = (f"{e.seq:>5} {when(e.at):<20} {e.who:<14} {e.action:<24} {e.subject:<14} "
                f"{e.reason}")
        if e.recorded_at is not None and abs(e.recorded_at - e.at) > DRIFT_TOLERANCE:
            line += f"  [written {when(e.recorded_at)}]"
        typer.echo(line)
