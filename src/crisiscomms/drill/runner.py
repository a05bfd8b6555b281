"""Run a drill: the real watcher and dispatcher against the loopback simulator, on a
simulated clock, then the expectations and the post-incident report.

The clock moves in steps of ``step_seconds`` from ``start``. A step at which nothing can
happen is jumped over rather than ticked (``Drill(jump=True)``, the default): no scenario
event is due, no watched source is due for a poll, no item is in flight, and every pending
item would get the decision it already has (same state, same reason) from the same policy
function the dispatcher calls. Such a tick would write nothing but a heartbeat, so a jumping
drill and a stepping one (``jump=False``) poll, decide and publish at the same simulated
instants and end with the same store, simulator and report (``tests/drill`` compares them).
The clock still only ever stands on the steps' grid.
"""

from __future__ import annotations

import asyncio
import random
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from pydantic import SecretStr

from crisiscomms.adapters.playbooks import load_catalog
from crisiscomms.bootstrap import App, MappingCredentials
from crisiscomms.domain.clock import FixedClock
from crisiscomms.domain.config import Catalog, cross_check
from crisiscomms.domain.errors import ConfigError, CrisisCommsError
from crisiscomms.domain.models import (
    ActionKind,
    DecisionAction,
    ItemState,
    NewOutboxItem,
    SourceKind,
)
from crisiscomms.domain.outbox import IN_FLIGHT, PENDING
from crisiscomms.domain.policy import decide
from crisiscomms.drill.expectations import Outcome, check_all
from crisiscomms.drill.scenario import Event, Scenario, load_scenario
from crisiscomms.services import incidents
from crisiscomms.services import queue as operations
from crisiscomms.services.dispatch import channel_counters
from crisiscomms.services.runloop import RunLoop
from crisiscomms.settings import DispatchSettings, PollingSettings, Settings
from crisiscomms.simulator import Faults, World, serve

SIM_KIND = {SourceKind.RSS: "rss", SourceKind.CAP: "cap", SourceKind.X: "x",
            SourceKind.MASTODON: "mastodon", SourceKind.BLUESKY: "bluesky",
            SourceKind.EA_FLOODS: "ea-floods"}


@dataclass
class Progress:
    """What the drill has done so far (shown while it runs)."""

    now: datetime
    seen: int = 0
    queued: int = 0
    published: int = 0
    held: int = 0
    failed: int = 0
    events_done: int = 0
    events_total: int = 0
    last_event: str = ""


@dataclass
class DrillResult:
    scenario: Scenario
    outcomes: list[Outcome]
    report_path: Path | None
    home: Path
    published: list[tuple[str, str, str]] = field(default_factory=list)
    incidents: list[int] = field(default_factory=list)
    ticks: int = 0  # steps ticked (the others were jumped over: nothing could happen)

    @property
    def ok(self) -> bool:
        return all(o.ok for o in self.outcomes)


def sim_source_id(source: Any, pins: dict[str, str]) -> str:
    """The simulator's id for a catalogued source (X: numeric id; Mastodon: acct; ...)."""
    if source.kind is SourceKind.X:
        return pins.get(source.id) or source.x_user_id or source.id
    if source.kind is SourceKind.MASTODON:
        # name@host, as another instance (the reader account's) knows the account: its
        # statuses then carry the account's own URL and acct, as the real ones do.
        url = urlsplit(source.account or source.url or "")
        name = url.path.rstrip("/").rsplit("/", 1)[-1].lstrip("@")
        return f"{name}@{url.hostname}" if url.hostname else name
    if source.kind is SourceKind.BLUESKY:
        return (source.account or "").rstrip("/").rsplit("/", 1)[-1]
    return str(source.id)


def drill_catalog(base: Catalog, scenario: Scenario, sim: Any, path: Path) -> Catalog:
    """The playbooks as they are, pointed at the simulator (and with the drill's X pins)."""
    sources = dict(base.sources)
    for extra in scenario.extra_sources:
        sources[extra.id] = extra
    playbooks = dict(base.playbooks)
    for name, extra_srcs in scenario.playbook_sources.items():
        if name not in playbooks:
            raise ConfigError(f"{path}: playbook_sources.{name}: unknown playbook")
        pb0 = playbooks[name]
        pb1 = pb0.model_copy(update={"sources": [*pb0.sources, *extra_srcs]})
        cross_check(path, pb1, sources, base.channels)
        playbooks[name] = pb1
    for pb in scenario.extra_playbooks:
        cross_check(path, pb, sources, base.channels)
        playbooks[pb.name] = pb
    out = {}
    for sid, s in sources.items():
        upd: dict[str, Any] = {"allow_private_network": True}
        kind = SIM_KIND[s.kind]
        if s.kind is SourceKind.X:
            upd["x_user_id"] = scenario.pin_x_ids.get(sid) or s.x_user_id
        elif s.kind in (SourceKind.RSS, SourceKind.CAP):
            upd["url"] = sim.url_for(kind, sid)
        elif s.kind is SourceKind.EA_FLOODS:
            upd["url"] = sim.url_for("ea-floods")
        # Mastodon and Bluesky accounts keep their URLs: the API roots are redirected to the
        # simulator through Settings.source_base_urls.
        out[sid] = s.model_copy(update=upd)
    channels = {cid: c.model_copy(update={"base_url": sim.url_for(str(c.platform))})
                for cid, c in base.channels.items()}
    return replace(base, sources=out, channels=channels, playbooks=playbooks)


def add_x_accounts(world: World, catalog: Catalog, pins: dict[str, str]) -> None:
    """The simulator's X accounts for the catalogue's X sources (the scenario's pinned ids)."""
    for sid, s in catalog.sources.items():
        if s.kind is SourceKind.X:
            uid = pins.get(sid) or s.x_user_id
            if uid:
                world.add_x_user(uid, s.handle or sid)


def drill_credentials(catalog: Catalog, x_me_id: str) -> MappingCredentials:
    """Drill credentials for every channel (the simulator accepts any), passed to the app, never
    written into the environment."""
    values: dict[str, str] = {}
    for ch in catalog.channels.values():
        for role, env in ch.credentials.items():
            # tweepy reads our user id from the access token's prefix.
            values[env] = f"{x_me_id}-drill-{role}" if role == "access_token" \
                else f"drill-{role}"
    return MappingCredentials(values)


class Drill:
    """One run of a scenario."""

    def __init__(self, scenario: Scenario, path: Path, *, home: Path | None = None,
                 speed: float = 0.0, on_progress: Callable[[Progress], None] | None = None,
                 playbooks_dir: Path | None = None, jump: bool = True) -> None:
        self.scenario = scenario
        self.path = path
        self.speed = speed
        # Jump over the steps at which nothing can happen (only at full speed: a drill shown
        # at --speed N keeps its pace); ``ticks`` counts the steps actually ticked.
        self.jump = jump and speed <= 0
        self.ticks = 0
        self.on_progress = on_progress
        self.home = home or Path(tempfile.mkdtemp(prefix=f"crisiscomms-drill-{scenario.name}-"))
        self.playbooks_dir = playbooks_dir or (path.parent / scenario.playbooks_dir).resolve()
        self.clock = FixedClock(scenario.start)
        self.world = World(self.clock)
        self.post_seq = 0

    def run(self, report_path: Path | None = None) -> DrillResult:
        base = load_catalog(self.playbooks_dir)
        for sid in self.scenario.pin_x_ids:
            if sid not in base.sources:
                raise ConfigError(f"{self.path}: pin_x_ids.{sid}: unknown source id")
        add_x_accounts(self.world, base, self.scenario.pin_x_ids)
        with serve(self.world) as sim:
            catalog = drill_catalog(base, self.scenario, sim, self.path)
            self._check_events(catalog)
            settings = Settings(
                home=self.home, database_url=f"sqlite:///{self.home / 'drill.db'}",
                playbooks_dir=self.playbooks_dir, allow_private_sources=True,
                polling=PollingSettings(
                    interval_seconds=self.scenario.polling.interval_seconds,
                    incident_interval_seconds=self.scenario.polling.incident_interval_seconds,
                    jitter_seconds=0, timeout_seconds=10),
                dispatch=DispatchSettings(timeout_seconds=10),
                x_bearer_token=SecretStr("drill-bearer-token"),
                source_base_urls={"x": sim.url_for("x"), "mastodon": sim.url_for("mastodon"),
                                  "bluesky": sim.url_for("bluesky")},
                worker_id="drill")
            app = App(settings=settings, clock=self.clock, given_catalog=catalog,
                      credential_source=drill_credentials(catalog, self.world.accounts.x_me.id),
                      rng=random.Random(self.scenario.seed), sleep=lambda _s: None)
            try:
                asyncio.run(self._loop(app))
                outcomes = check_all(self.scenario, app.store, catalog, self.world)
                report = self._report(app, catalog, report_path)
                published = sorted((i.channel_id, str(i.action), i.dedupe_key)
                                   for i in app.store.items(states=["published"]))
                return DrillResult(self.scenario, outcomes, report, self.home, published,
                                   [i.id for i in app.store.incidents()], self.ticks)
            finally:
                app.close()

    def _check_events(self, catalog: Catalog) -> None:
        for i, e in enumerate(self.scenario.events):
            where = f"{self.path}: events[{i}]"
            if e.publish and e.publish.source not in catalog.sources:
                raise ConfigError(f"{where}.publish.source: unknown source "
                                  f"{e.publish.source!r}")
            if e.activate and e.activate.playbook not in catalog.playbooks:
                raise ConfigError(f"{where}.activate.playbook: unknown playbook "
                                  f"{e.activate.playbook!r}")
            if e.post and e.post.channel not in catalog.channels:
                raise ConfigError(f"{where}.post.channel: unknown channel {e.post.channel!r}")

    async def _loop(self, app: App) -> None:
        events = sorted(self.scenario.events, key=lambda e: e.at)
        progress = Progress(now=self.clock.now(), events_total=len(events))
        step = timedelta(seconds=self.scenario.step_seconds)
        pending = list(events)
        for e in pending:
            if e.publish:
                self._script_publish(app.catalog, e)
        async with app.run_loop(dry_run=False) as loop:
            while self.clock.now() <= self.scenario.end:
                now = self.clock.now()
                while pending and pending[0].at <= now:
                    e = pending.pop(0)
                    self._apply(app, e)
                    progress.events_done += 1
                    progress.last_event = e.note or e.kind
                cycle, stats = await loop.tick(now, dispatch_inline=True)
                self.ticks += 1
                progress.now = now
                progress.seen += cycle.new_updates
                progress.queued += cycle.queued
                progress.published += stats.published
                progress.failed += stats.failed
                progress.held = app.store.queue_counts().get("held", 0)
                if self.on_progress:
                    self.on_progress(progress)
                if self.speed > 0:
                    await asyncio.sleep(step.total_seconds() / self.speed)
                later = now + step
                if self.jump and not loop.chores:  # a chore keeps a schedule of its own
                    while later <= self.scenario.end and self._quiet(app, loop, later, pending):
                        later += step
                self.clock.set(later)

    def _quiet(self, app: App, loop: RunLoop, at: datetime, pending: list[Event]) -> bool:
        """Whether a tick at ``at`` would change nothing (see the module doc). Errs towards
        ``False``: a tick that was not needed is harmless, a skipped one that was is not."""
        if pending and pending[0].at <= at:
            return False
        due = loop.watcher.next_due_at()
        if due is not None and due <= at:
            return False  # the watcher's own schedule polls then (no need to read the store)
        store = app.store
        active = store.active_incidents()
        if self._source_due(app, loop, at, active):
            return False
        with store.reader() as r:
            incidents = r.incidents.list()
            windows = r.windows.list()
            waiting = r.outbox.list(states=[str(s) for s in PENDING | IN_FLIGHT])
        catalog = app.catalog
        counters: dict[str, Any] = {}
        for item in waiting:
            if item.state in IN_FLIGHT:
                return False
            channel = catalog.channels.get(item.channel_id)
            if channel is None:
                return False
            if item.channel_id not in counters:
                counters[item.channel_id] = channel_counters(store, catalog, item.channel_id,
                                                             at)
            decision = decide(item, channel, at, counters[item.channel_id], catalog.policy,
                              incidents, catalog.playbooks, windows)
            state = {DecisionAction.HOLD: ItemState.HELD,
                     DecisionAction.NEEDS_APPROVAL: ItemState.NEEDS_APPROVAL}.get(
                         decision.action)
            if state is None or item.state is not state or item.reason != decision.reason:
                return False
        return True

    @staticmethod
    def _source_due(app: App, loop: RunLoop, at: datetime, active: list[Any]) -> bool:
        """Whether the watcher could poll any source at ``at``: one never polled, one whose
        next poll is due, or an incident's source whose shortest interval has passed since
        its last poll (the watcher's fast path for a source newly in an incident)."""
        watcher = loop.watcher
        watched = watcher.watched_ids(active)
        in_incident = watcher.incident_source_ids(active)
        states = {st.source_id: st for st in app.store.source_states()}
        polling = app.settings.polling
        for src in watcher.sources:
            if not any(sid in watched for sid in src.source_ids):
                continue
            st = states.get(src.key)
            if st is None or st.next_poll_at is None or st.next_poll_at <= at:
                return True
            if st.last_polled_at is not None and any(
                    sid in in_incident for sid in src.source_ids):
                shortest = min([polling.incident_interval_seconds, *(
                    cfg.interval_seconds for sid in src.source_ids
                    if (cfg := app.catalog.sources.get(sid)) is not None
                    and cfg.interval_seconds)])
                if (at - st.last_polled_at).total_seconds() >= shortest:
                    return True
        return False

    def _script_publish(self, catalog: Catalog, e: Event) -> None:
        assert e.publish is not None
        src = catalog.sources[e.publish.source]
        kind = SIM_KIND[src.kind]
        sid = sim_source_id(src, self.scenario.pin_x_ids)
        item = dict(e.publish.item)
        if src.kind is SourceKind.EA_FLOODS:
            item.setdefault("county", src.county or "Essex")
        if e.publish.edit:
            key = str(item.get("guid") or item.get("identifier") or item.get("id")
                      or item.get("floodAreaID"))
            self.world.edit_item(sid, kind, key, item, at=e.at)
        else:
            self.world.add_item(sid, kind, e.at, item)

    def _apply(self, app: App, e: Event) -> None:
        store, catalog, clock = app.store, app.catalog, self.clock
        try:
            if e.activate:
                a = e.activate
                incidents.activate(store, catalog, clock, playbook=a.playbook, reason=a.reason,
                                   operator=a.operator, hashtags=a.hashtags, lead=a.lead)
            elif e.deactivate:
                d = e.deactivate
                incidents.deactivate(store, catalog, clock, incident_id=d.incident,
                                     reason=d.reason, operator=d.operator)
            elif e.approve:
                ap = e.approve
                for it in store.items(states=["needs_approval"]):
                    if (ap.source and it.source_id != ap.source) or \
                            (ap.channel and it.channel_id != ap.channel):
                        continue
                    operations.approve(store, catalog, clock, it.id, ap.operator, ap.reason)
            elif e.reject:
                rj = e.reject
                for it in store.items(states=["needs_approval", "held", "queued"]):
                    if it.incident_id is not None or \
                            (rj.source and it.source_id != rj.source) or \
                            (rj.channel and it.channel_id != rj.channel):
                        continue
                    operations.reject(store, catalog, clock, it.id, rj.operator, rj.reason)
            elif e.post:
                self.post_seq += 1
                (new_id,) = operations.enqueue(store, [NewOutboxItem(
                    dedupe_key=f"drill:{self.scenario.name}:post:{self.post_seq}",
                    channel_id=e.post.channel, action=ActionKind.POST, text=e.post.text,
                    approval="manual", reason="scheduled by the team")], clock,
                    actor=e.post.operator)
                operations.approve(store, catalog, clock, new_id, e.post.operator,
                                   "scheduled post")
            elif e.faults:
                f = e.faults
                bursts: tuple[tuple[str, datetime, datetime], ...] = ()
                if f.burst_429:
                    bursts = ((f.burst_429.platform, e.at,
                               e.at + timedelta(minutes=f.burst_429.minutes)),)
                write_only = f.burst_429 is not None and f.burst_429.applies_to == "write"
                self.world.set_faults(None if f.clear else Faults(
                    error_rate_5xx=f.error_rate_5xx, drop_rate=f.drop_rate,
                    burst_429=bursts, seed=self.scenario.seed,
                    burst_methods=("POST",) if write_only else ()))
        except CrisisCommsError as exc:
            raise ConfigError(f"{self.path}: event at {e.at.isoformat()} ({e.kind}): {exc}") \
                from None

    def _report(self, app: App, catalog: Catalog, report_path: Path | None) -> Path | None:
        from crisiscomms.report import build_incident_report, render
        from crisiscomms.report.files import write_atomically

        incs = app.store.incidents()
        if not incs:
            return None
        data = build_incident_report(app.store, catalog, incs[-1], self.clock.now())
        path = report_path or self.home / f"{self.scenario.name}-report.html"
        write_atomically(path, render(data, "html"))
        for fmt in ("md", "json"):
            write_atomically(path.with_suffix(f".{fmt}"), render(data, fmt))
        return path


def run_drill(path: Path, *, speed: float = 0.0, report_path: Path | None = None,
              home: Path | None = None,
              on_progress: Callable[[Progress], None] | None = None,
              jump: bool = True) -> DrillResult:
    """Load a scenario and run it; see ``Drill``."""
    scenario = load_scenario(path)
    return Drill(scenario, path, home=home, speed=speed, on_progress=on_progress,
                 jump=jump).run(report_path)
