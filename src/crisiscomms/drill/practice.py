"""Practice on the simulator: the real ``watch`` loop, on the real clock, against the loopback
simulator, with a drill scenario's updates published one after another.

Unlike a drill (simulated clock, scripted operator actions, expectations), nothing here acts for
the officer: they activate, approve and report from another shell with the same ``--home``, as
they would at 2 a.m., and watch their commands take effect within a cycle. It never touches the
live database: it runs in its own data dir.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

from pydantic import SecretStr

from crisiscomms.adapters.playbooks import load_catalog
from crisiscomms.bootstrap import App, run_watch
from crisiscomms.domain.clock import SystemClock
from crisiscomms.domain.errors import ConfigError
from crisiscomms.domain.models import SourceKind
from crisiscomms.drill.runner import (
    SIM_KIND,
    add_x_accounts,
    drill_catalog,
    drill_credentials,
    sim_source_id,
)
from crisiscomms.drill.scenario import load_scenario
from crisiscomms.settings import DispatchSettings, PollingSettings, PushSettings, Settings
from crisiscomms.simulator import World, serve


@dataclass(frozen=True)
class Planned:
    """One scenario update and when (real time) the simulator publishes it."""

    at: datetime
    source: str
    title: str


@dataclass(frozen=True)
class PracticeInfo:
    """What the officer needs to know once the practice runs."""

    simulator_url: str
    home: Path
    playbooks_dir: Path
    plan: tuple[Planned, ...]


def practice_playbooks(source: Path, target: Path, pins: dict[str, str]) -> Path:
    """A copy of the playbooks for the practice, with the scenario's X ids pinned in
    ``sources.yaml`` (the simulator's accounts), so the officer's own commands (``activate``
    refuses unpinned X sources) and the watcher read the same playbooks."""
    import shutil

    import yaml

    if target.exists():
        shutil.rmtree(target)
    shutil.copytree(source, target, ignore=shutil.ignore_patterns("drills"))
    sources_file = target / "sources.yaml"
    data = yaml.safe_load(sources_file.read_text(encoding="utf-8"))
    for entry in data.get("sources") or []:
        if isinstance(entry, dict) and entry.get("id") in pins:
            entry["x_user_id"] = pins[entry["id"]]
    sources_file.write_text("# practice copy: X ids pinned to the simulator's accounts\n"
                            + yaml.safe_dump(data, sort_keys=False, allow_unicode=True),
                            encoding="utf-8")
    return target


def run_practice(scenario_path: Path, home: Path, *, every_seconds: float = 20.0,
                 port: int = 0, poll_seconds: float = 5.0, tick_seconds: float = 1.0,
                 on_ready: Callable[[PracticeInfo], None] | None = None,
                 max_ticks: int | None = None) -> None:
    """Serve the simulator and run ``watch`` against it until stopped (SIGTERM/Ctrl-C) or
    ``max_ticks``; the scenario's updates appear ``every_seconds`` apart from now."""
    if every_seconds <= 0:
        raise ConfigError(f"--every: must be more than 0 seconds, got {every_seconds}")
    scenario = load_scenario(scenario_path)
    home.mkdir(parents=True, exist_ok=True, mode=0o700)
    playbooks_dir = practice_playbooks((scenario_path.parent / scenario.playbooks_dir).resolve(),
                                       home / "playbooks", scenario.pin_x_ids)
    base = load_catalog(playbooks_dir)
    clock = SystemClock()
    world = World(clock)
    add_x_accounts(world, base, scenario.pin_x_ids)
    with serve(world, port=port) as sim:
        catalog = drill_catalog(base, scenario, sim, scenario_path)
        start = clock.now()
        plan: list[Planned] = []
        for e in sorted(scenario.events, key=lambda e: e.at):
            if e.publish is None or e.publish.edit:
                continue
            src = catalog.sources[e.publish.source]
            at = start + timedelta(seconds=every_seconds * (len(plan) + 1))
            item = dict(e.publish.item)
            if src.kind is SourceKind.EA_FLOODS:
                item.setdefault("county", src.county or "Essex")
            world.add_item(sim_source_id(src, scenario.pin_x_ids), SIM_KIND[src.kind], at, item)
            plan.append(Planned(at, src.id, str(item.get("title") or item.get("text")
                                                or item.get("headline") or "")[:60]))
        polling = PollingSettings(interval_seconds=poll_seconds,
                                  incident_interval_seconds=poll_seconds, jitter_seconds=0,
                                  timeout_seconds=10)
        settings = Settings(
            home=home, database_url=f"sqlite:///{home / 'crisiscomms.db'}",
            playbooks_dir=playbooks_dir, allow_private_sources=True, polling=polling,
            dispatch=DispatchSettings(timeout_seconds=10),
            x_bearer_token=SecretStr("practice-bearer-token"),
            source_base_urls={"x": sim.url_for("x"), "mastodon": sim.url_for("mastodon"),
                              "bluesky": sim.url_for("bluesky"),
                              "jetstream": sim.url_for("jetstream")},
            # Push as the service does it, against the simulator's streaming API and Jetstream
            # (never the real ones); WebSub needs a public callback URL: not in a rehearsal.
            mastodon_stream_token=SecretStr("practice-reader-token"),
            push=PushSettings(mastodon_stream_base=sim.url_for("mastodon")),
            worker_id="practice",
            # A rehearsal never pages the real on-call team nor signs with the real audit key,
            # whatever the environment or .env holds (init arguments win over both).
            notify_urls=None, audit_key=None)
        app = App(settings=settings, clock=clock, given_catalog=catalog, push=True,
                  credential_source=drill_credentials(catalog, world.accounts.x_me.id),
                  rng=random.Random(scenario.seed))
        if on_ready is not None:
            on_ready(PracticeInfo(sim.base_url, home, playbooks_dir, tuple(plan)))
        try:
            asyncio.run(run_watch(app, once=False, dry_run=False, tick_seconds=tick_seconds,
                                  max_ticks=max_ticks))
        finally:
            app.close()
