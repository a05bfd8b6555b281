"""drill and simulate: rehearse a crisis against the loopback simulator."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated
from zoneinfo import ZoneInfo

import typer

from crisiscomms.cli.state import echo_json, get_app
from crisiscomms.domain.errors import ConfigError

if TYPE_CHECKING:
    from rich.live import Live
    from rich.table import Table

LONDON = ZoneInfo("Europe/London")  # the drill's progress is read by people in the UK


def _progress_table(p: object) -> Table:
    from rich.table import Table

    from crisiscomms.drill import Progress

    assert isinstance(p, Progress)
    t = Table(title="drill in progress", show_header=True)
    for col in ("simulated clock", "updates seen", "queued", "published", "held", "failed",
                "events"):
        t.add_column(col)
    local = p.now.astimezone(LONDON)
    t.add_row(local.strftime("%a %d %b %H:%M %Z"), str(p.seen), str(p.queued), str(p.published),
              str(p.held), str(p.failed), f"{p.events_done}/{p.events_total} {p.last_event}")
    return t


def drill(
    scenario: Annotated[Path, typer.Argument(help="Scenario file (playbooks/drills/*.yaml).")],
    speed: Annotated[float, typer.Option(
        "--speed", help="Simulated seconds per real second (0 = as fast as possible).")] = 0.0,
    report: Annotated[Path | None, typer.Option(
        "--report", help="Write the post-incident report here (HTML; .md and .json beside it)."
    )] = None,
    json_out: Annotated[bool, typer.Option("--json", help="Print the result as JSON.")] = False,
) -> None:
    """Run a drill end to end (real watcher and dispatcher, simulated platforms and clock);
    print the expectation table and the report's path. Exit 1 if any expectation fails."""
    from rich.console import Console
    from rich.live import Live
    from rich.table import Table

    from crisiscomms.drill import Progress, load_scenario, run_drill

    if speed < 0:
        from crisiscomms.domain.errors import ConfigError

        raise ConfigError("--speed: must be 0 (as fast as possible) or more")
    from crisiscomms.cli import state

    # A drill prints its own progress; routine INFO events would drown it.
    if "log_level" not in state._overrides and "CRISISCOMMS_LOG_LEVEL" not in os.environ:
        state._overrides["log_level"] = "warning"
    get_app()
    console = Console(stderr=True)
    live = console.is_terminal and not json_out
    last_hour: list[int] = [-1]
    view: Live | None = None

    def show(p: Progress) -> None:
        if view is not None:
            view.update(_progress_table(p))
            return
        hour = int(p.now.timestamp() // 21600)  # a line every 6 simulated hours
        if hour != last_hour[0]:
            last_hour[0] = hour
            when = p.now.astimezone(LONDON).strftime("%a %d %b %H:%M %Z")
            console.print(f"[drill] {when} seen {p.seen} queued {p.queued} "
                          f"published {p.published} held {p.held} failed {p.failed}",
                          highlight=False)

    if live:
        with Live(_progress_table(Progress(now=load_scenario(scenario).start)),
                  console=console, refresh_per_second=8) as view:
            result = run_drill(scenario, speed=speed, report_path=report, on_progress=show)
    else:
        result = run_drill(scenario, speed=speed, report_path=report, on_progress=show)
    if json_out:
        echo_json({"scenario": result.scenario.name, "ok": result.ok,
                   "report": str(result.report_path) if result.report_path else None,
                   "home": str(result.home),
                   "expectations": [{"name": o.name, "ok": o.ok, "detail": o.detail}
                                    for o in result.outcomes],
                   "published": [list(p) for p in result.published]})
    else:
        out = Console(file=sys.stdout, width=120)
        t = Table(title=f"drill {result.scenario.name}: expectations")
        t.add_column("expectation")
        t.add_column("result")
        t.add_column("detail")
        for o in result.outcomes:
            t.add_row(o.name, "[green]PASS[/green]" if o.ok else "[red]FAIL[/red]", o.detail)
        out.print(t)
        passed = sum(o.ok for o in result.outcomes)
        out.print(f"{passed} passed, {len(result.outcomes) - passed} failed", highlight=False)
        if result.report_path:
            out.print(f"report: {result.report_path}", highlight=False)
        out.print(f"drill data: {result.home}", highlight=False)
    if not result.ok:
        raise typer.Exit(1)


def simulate(
    port: Annotated[int, typer.Option("--port", help="Loopback port (0 = any free port).")
                    ] = 8765,
    scenario: Annotated[Path | None, typer.Option(
        "--scenario", help="Script the sources from this drill scenario.")] = None,
    watch: Annotated[bool, typer.Option(
        "--watch", help="Practice: also run the real watcher against the simulator, on the "
        "real clock, in a practice data dir; the scenario's updates appear --every seconds "
        "apart (default scenario: playbooks/drills/essex-flood.yaml).")] = False,
    every: Annotated[float, typer.Option(
        "--every", help="With --watch: seconds between the scenario's updates.")] = 20.0,
) -> None:
    """Serve the platform simulator on 127.0.0.1 until interrupted (official sources and our
    platforms; see the README for the URL layout); --watch runs the watcher against it."""
    if watch:
        _practice(port, scenario or Path("playbooks/drills/essex-flood.yaml"), every)
        return
    from crisiscomms.simulator import World, run_forever

    app = get_app()
    world = World(app.clock)
    if scenario is not None:
        from crisiscomms.drill.runner import SIM_KIND, sim_source_id
        from crisiscomms.drill.scenario import load_scenario

        sc = load_scenario(scenario)
        sources = {**app.catalog.sources, **{s.id: s for s in sc.extra_sources}}
        for e in sc.events:
            if e.publish and e.publish.source in sources:
                src = sources[e.publish.source]
                world.add_item(sim_source_id(src, sc.pin_x_ids), SIM_KIND[src.kind], e.at,
                               e.publish.item)

    def ready(sim: object) -> None:
        typer.echo(f"simulator listening on {getattr(sim, 'base_url', '')} (Ctrl-C to stop)")

    run_forever(world, port=port, on_ready=ready)


PRACTICE_MARK = "PRACTICE"


def practice_home() -> Path:
    """The practice data dir: ``--home`` when given (only an empty folder or an earlier
    practice's, never a live database), else a new temporary folder."""
    import tempfile

    from crisiscomms.cli import state

    given = state._overrides.get("home")  # only --home: CRISISCOMMS_HOME may be the live one
    home = Path(given) if given is not None else None
    if home is None:
        home = Path(tempfile.mkdtemp(prefix="crisiscomms-practice-"))
    elif (home / "crisiscomms.db").exists() and not (home / PRACTICE_MARK).exists():
        raise ConfigError(f"--home: {home} holds a database that is not a practice's: "
                          "practice in an empty folder (or leave --home out)")
    home.mkdir(parents=True, exist_ok=True, mode=0o700)
    (home / PRACTICE_MARK).write_text("crisiscomms simulate --watch data dir\n",
                                      encoding="utf-8")
    return home


def _practice(port: int, scenario: Path, every: float) -> None:
    from crisiscomms.cli.state import settings
    from crisiscomms.domain.clock import shown
    from crisiscomms.drill.practice import PracticeInfo, run_practice
    from crisiscomms.logs import configure

    s = settings()
    configure(s.log_level, s.log_format, sys.stderr)
    home = practice_home()

    def ready(info: PracticeInfo) -> None:
        cli = f"crisiscomms --home {info.home} --playbooks-dir {info.playbooks_dir}"
        typer.echo(f"practice: simulator on {info.simulator_url}, watcher running, data in "
                   f"{info.home} (Ctrl-C to stop)")
        typer.echo(f"practice: {len(info.plan)} updates, one every {every:g} s from "
                   f"{shown(info.plan[0].at, LONDON, seconds=True) if info.plan else '-'}")
        typer.echo("practice: in another shell, act as on call:")
        for cmd in ("status", "activate flooding --reason 'practice' --lead essex-police-x",
                    "queue list --state needs_approval", "queue approve ID --reason 'checked'",
                    "deactivate --reason 'practice over'", "report --last -o practice.html"):
            typer.echo(f"  {cli} {cmd}")

    run_practice(scenario, home, every_seconds=every, port=port, on_ready=ready)


def register(app: typer.Typer) -> None:
    app.command()(drill)
    app.command()(simulate)
