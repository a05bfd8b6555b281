"""The chaos harness: a generated scenario (sources, items, playbooks) on the loopback
simulator, the environment a ``crisiscomms`` subprocess needs to use it, and the checks.

Scale comes from ``CRISISCOMMS_CHAOS_SCALE``: ``small`` (default, part of ``make test``) or
``full`` (``make chaos``).
"""

from __future__ import annotations

import os
import random
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import yaml

from crisiscomms.simulator import RunningSimulator, World

SCALE = os.environ.get("CRISISCOMMS_CHAOS_SCALE", "small").strip().lower() or "small"
FULL = SCALE == "full"

PLAYBOOK = "chaos"
CHANNELS = ("x", "facebook", "mastodon")
ALL_CHANNELS = (*CHANNELS, "bluesky")
ACTIVATION_MARK = "CHAOS-ACTIVATION"
X_ME = "990001"
# tweepy reads our user id from the access token's prefix.
CREDENTIALS = {
    "CRISISCOMMS_X_CONSUMER_KEY": "chaos-ck",
    "CRISISCOMMS_X_CONSUMER_SECRET": "chaos-cs",
    "CRISISCOMMS_X_ACCESS_TOKEN": f"{X_ME}-chaos-at",
    "CRISISCOMMS_X_ACCESS_TOKEN_SECRET": "chaos-ats",
    "CRISISCOMMS_FACEBOOK_PAGE_TOKEN": "chaos-page-token",
    "CRISISCOMMS_MASTODON_TOKEN": "chaos-mastodon-token",
    "CRISISCOMMS_BLUESKY_APP_PASSWORD": "chaos-app-password",
}
# The chaos watchers' dispatch lease (``sim_env``): below a deployment's 5 s floor, through
# ``dispatch.test_only_short_leases``.
LEASE_S = 2.0
# Pending or in flight: the run is not finished while any item is in one of these.
UNFINISHED = ("queued", "held", "needs_approval", "leased", "sending")


def scaled(small: int, full: int) -> int:
    """``full`` under ``make chaos``, else ``small``."""
    return full if FULL else small


@dataclass(frozen=True)
class SourceSpec:
    id: str
    kind: str  # "rss" or "x"
    x_user_id: str = ""


@dataclass(frozen=True)
class ItemSpec:
    """One official update: ``mark`` is unique and ends up in every post made from it."""

    n: int
    source: SourceSpec
    offset_s: float

    @property
    def mark(self) -> str:
        return f"CHAOS-{self.n:04d}"


@dataclass
class Scenario:
    sources: list[SourceSpec]
    items: list[ItemSpec]
    keys: dict[int, str] = field(default_factory=dict)  # item n -> simulator key (tweet id)
    channels: tuple[str, ...] = CHANNELS

    @property
    def expected_posts(self) -> int:
        """Posts per channel: one per update plus the activation message."""
        return len(self.items) + 1


def make_scenario(n_updates: int, *, n_sources: int = 10, n_x: int = 2, span_s: float,
                  seed: int, channels: tuple[str, ...] = CHANNELS) -> Scenario:
    """``n_updates`` spread at random over ``span_s`` seconds across ``n_sources`` sources,
    ``n_x`` of them X accounts (retweeted natively), the rest RSS feeds."""
    rng = random.Random(seed)
    sources = [SourceSpec(f"x-src-{i}", "x", str(2_000_001 + i)) for i in range(n_x)]
    sources += [SourceSpec(f"rss-src-{i}", "rss") for i in range(n_sources - n_x)]
    offsets = sorted(rng.uniform(0, span_s) for _ in range(n_updates))
    items = [ItemSpec(i + 1, rng.choice(sources), off) for i, off in enumerate(offsets)]
    return Scenario(sources, items, channels=channels)


def write_playbooks(dest: Path, sim: RunningSimulator, scenario: Scenario) -> Path:
    """A playbooks folder whose sources and channels all live on the simulator."""
    dest.mkdir(parents=True, exist_ok=True)
    policy = {"timezone": "Europe/London", "normal_approval": "manual", "operators": [],
              "normal_channels": []}
    sources: list[dict[str, Any]] = []
    for s in scenario.sources:
        entry: dict[str, Any] = {"id": s.id, "agency": f"Agency {s.id}", "kind": s.kind,
                                 "watch": "crisis", "allow_private_network": True}
        if s.kind == "x":
            entry.update(handle=f"handle_{s.id.replace('-', '_')}", x_user_id=s.x_user_id)
        else:
            entry["url"] = sim.url_for("rss", s.id)
        sources.append(entry)
    channels = [
        {"id": "x", "platform": "x", "account": "@nhs_comms", "base_url": sim.url_for("x"),
         "credentials": {"consumer_key": "CRISISCOMMS_X_CONSUMER_KEY",
                         "consumer_secret": "CRISISCOMMS_X_CONSUMER_SECRET",
                         "access_token": "CRISISCOMMS_X_ACCESS_TOKEN",
                         "access_token_secret": "CRISISCOMMS_X_ACCESS_TOKEN_SECRET"}},
        {"id": "facebook", "platform": "facebook", "account": "chaospage",
         "base_url": sim.url_for("facebook"),
         "credentials": {"page_token": "CRISISCOMMS_FACEBOOK_PAGE_TOKEN"}},
        {"id": "mastodon", "platform": "mastodon", "account": "@nhscomms@mastodon.example",
         "base_url": sim.url_for("mastodon"),
         "credentials": {"access_token": "CRISISCOMMS_MASTODON_TOKEN"}},
        {"id": "bluesky", "platform": "bluesky", "account": "nhscomms.bsky.social",
         "base_url": sim.url_for("bluesky"),
         "credentials": {"app_password": "CRISISCOMMS_BLUESKY_APP_PASSWORD"}},
    ]
    channels = [c for c in channels if c["id"] in scenario.channels]
    lead = scenario.sources[-1].id
    playbook = {
        "name": PLAYBOOK, "description": "generated by the chaos tests",
        "hashtags": ["#ChaosDrill"], "default_lead": lead, "allowed_leads": [lead],
        "backfill_minutes": 0, "hourly_ceiling": 100_000,
        "approval": {"lead": "auto", "others": "auto"},
        "sources": [{"source": s.id} for s in scenario.sources],
        "channels": [
            {"channel": "x", "action": "retweet", "template": "{title} {url} {hashtags}"},
            {"channel": "facebook", "action": "post",
             "template": "{agency}: {title}\n\n{url}\n\n{hashtags}"},
            {"channel": "mastodon", "action": "boost",
             "template": "{agency}: {title} {url} {hashtags}"},
            {"channel": "bluesky", "action": "post",
             "template": "{agency}: {title} {url} {hashtags}"},
        ],
        "activation_message": f"{ACTIVATION_MARK} official updates follow. {{hashtags}}",
    }
    playbook["channels"] = [c for c in playbook["channels"] if c["channel"] in scenario.channels]
    for name, data in (("policy", policy), ("sources", {"sources": sources}),
                       ("channels", {"channels": channels}), (PLAYBOOK, playbook)):
        (dest / f"{name}.yaml").write_text(yaml.safe_dump(data, sort_keys=False))
    return dest


def new_world(clock: Any, scenario: Scenario, *, quotas: Mapping[str, Any] | None = None,
              ) -> World:
    world = World(clock, x_me_id=X_ME, quotas=quotas)
    for s in scenario.sources:
        if s.kind == "x":
            world.add_x_user(s.x_user_id, f"handle_{s.id.replace('-', '_')}")
    return world


def script_items(world: World, scenario: Scenario, start: datetime) -> None:
    """Make every item of the scenario appear on its source at ``start + offset``."""
    for it in scenario.items:
        at = start + timedelta(seconds=it.offset_s)
        title = f"{it.mark} update from {it.source.id}"
        if it.source.kind == "x":
            key = world.add_item(it.source.x_user_id, "x", at, {"text": title})
        else:
            key = world.add_item(it.source.id, "rss", at, {
                "guid": f"urn:chaos:{it.n}", "title": title,
                "link": f"https://example.org/chaos/{it.n}",
                "description": f"Details of {it.mark}."})
        scenario.keys[it.n] = key


def sim_env(home: Path, playbooks: Path, sim: RunningSimulator, **extra: str) -> dict[str, str]:
    """The environment of a ``crisiscomms`` subprocess pointed at the simulator."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CRISISCOMMS_")}
    env.update(CREDENTIALS)
    env.update({
        "CRISISCOMMS_HOME": str(home),
        "CRISISCOMMS_PLAYBOOKS_DIR": str(playbooks),
        "CRISISCOMMS_ALLOW_PRIVATE_SOURCES": "true",
        "CRISISCOMMS_X_BEARER_TOKEN": "chaos-bearer",
        "CRISISCOMMS_SOURCE_BASE_URLS": f'{{"x": "{sim.url_for("x")}"}}',
        "CRISISCOMMS_POLLING__INTERVAL_SECONDS": "1",
        "CRISISCOMMS_POLLING__INCIDENT_INTERVAL_SECONDS": "1",
        "CRISISCOMMS_POLLING__JITTER_SECONDS": "0",
        # A loopback poll takes milliseconds. A poll's lease is the deadline plus a margin: a
        # watcher SIGKILLed mid-poll holds its sources that long, so the default (60 s + 30 s)
        # left every kill test waiting over a minute for its last updates. Suite scale: 4 s
        # (a poll that overruns it under load fails and is tried again: slower, never lost).
        "CRISISCOMMS_POLLING__TIMEOUT_SECONDS": "2",
        "CRISISCOMMS_POLLING__DEADLINE_SECONDS": "3",
        "CRISISCOMMS_POLLING__LEASE_MARGIN_SECONDS": "1",
        # A killed watcher's claimed items wait out its lease: 2 s here, below the 5 s floor of
        # a deployment, which only this test-only setting lowers (renewed every 0.67 s).
        "CRISISCOMMS_DISPATCH__LEASE_SECONDS": str(LEASE_S),
        "CRISISCOMMS_DISPATCH__TEST_ONLY_SHORT_LEASES": "true",
        "CRISISCOMMS_DISPATCH__RETRY_BASE_SECONDS": "0.5",
        # A send to the loopback simulator takes milliseconds. A send cut off by a SIGKILL is
        # believed absent only once it can no longer land: the send deadline + this timeout + a
        # margin after it was sent (30 + 20 + 5 s by default; 2 + 3 + 1 s here: a send that
        # times out under load is looked up on the platform before any resend, as in
        # production).
        "CRISISCOMMS_DISPATCH__TIMEOUT_SECONDS": "3",
        "CRISISCOMMS_DISPATCH__SEND_DEADLINE_SECONDS": "2",
        "CRISISCOMMS_DISPATCH__SETTLE_MARGIN_SECONDS": "1",
        "CRISISCOMMS_LOG_LEVEL": "warning",
        "CRISISCOMMS_LOG_FORMAT": "json",
        "PYTHONDONTWRITEBYTECODE": "1",
    })
    env.update(extra)
    return env


def cli(env: Mapping[str, str], *args: str, cwd: Path, timeout: float = 60.0,
        ) -> subprocess.CompletedProcess[str]:
    """Run one ``crisiscomms`` command to completion."""
    return subprocess.run([sys.executable, "-m", "crisiscomms", *args], env=dict(env), cwd=cwd,
                          capture_output=True, text=True, timeout=timeout, check=False)


# What a ``crisiscomms watch`` process has imported once it runs (its ``sys.modules`` at exit, a
# chaos watcher on SQLite, 2026-12-02), less what these imply: the CLI imports its commands and
# adapters on first use, so importing ``crisiscomms.cli`` alone left about 800 of its 980
# modules to import after the go. A module missing here (renamed, new) is simply imported after
# the go, as before: slower, never different.
WATCH_IMPORTS = (
    "crisiscomms.cli", "crisiscomms.cli.runtime_cmd", "crisiscomms.cli.state",
    "crisiscomms.bootstrap", "crisiscomms.settings", "crisiscomms.logs", "crisiscomms.aio",
    "crisiscomms.retry", "crisiscomms.ports", "crisiscomms.adapters.playbooks",
    "crisiscomms.adapters.xhttp",
    *(f"crisiscomms.adapters.publishers.{m}" for m in (
        "_common", "bluesky", "dryrun", "facebook", "mastodon", "unavailable", "x")),
    *(f"crisiscomms.adapters.sources.{m}" for m in (
        "_feedworker", "base", "bluesky", "bodies", "dns", "hints", "http", "mastodon",
        "parsing", "pinning", "push.base", "push.jetstream", "push.mastodon", "push.websub",
        "push.websub_discovery", "rss", "text", "wire", "x")),
    *(f"crisiscomms.adapters.store.{m}" for m in (
        "memory", "migrations", "queries", "records", "sql", "sqlite")),
    *(f"crisiscomms.domain.{m}" for m in (
        "audit", "clock", "config", "errors", "matching", "models", "outbox", "pacing",
        "policy", "posttext", "workcal")),
    *(f"crisiscomms.services.{m}" for m in (
        "dispatch", "lanes", "notices", "reload", "runloop", "schedule", "watch")),
    # Imported inside the functions that use them.
    "tweepy", "twitter_text", "tldextract", "holidays", "requests_oauthlib", "httpx",
    "httpx_sse", "dateutil.parser", "defusedxml.ElementTree", "regex", "yaml", "sqlite3",
)

# A standby watcher: the interpreter and what ``crisiscomms watch`` imports (most of a
# start-up; psycopg too when the store is PostgreSQL) are done before the go; then exactly what
# ``python -m crisiscomms`` does. An end of input instead of the go: exit without starting.
_STANDBY = f"""\
import importlib, os, sys
names = {WATCH_IMPORTS!r}
if os.environ.get("CRISISCOMMS_DATABASE_URL", "").startswith("postgres"):
    names += ("crisiscomms.adapters.store.postgres", "psycopg", "psycopg_pool")
for name in names:
    try:
        importlib.import_module(name)
    except ImportError:
        pass
import crisiscomms.cli
if not sys.stdin.readline():
    sys.exit(0)
sys.stdin.close()
crisiscomms.cli.main(sys.argv[1:])
"""


class Watch:
    """A ``crisiscomms watch`` subprocess, logging to a file.

    ``standby=True`` starts the process but holds it, imports done, until ``go()``: a test that
    restarts a killed watcher many times has the replacement ready, so the time between a kill
    and the next watcher's first tick is the watcher's own start (store, catalogue, sources),
    not the interpreter's."""

    def __init__(self, env: Mapping[str, str], cwd: Path, log: Path, *, worker_id: str = "",
                 tick: float = 0.2, standby: bool = False) -> None:
        self._log = log.open("ab")
        if worker_id:
            env = {**env, "CRISISCOMMS_WORKER_ID": worker_id}
        args = ["watch", "--tick", str(tick)]
        self.standby = standby
        if standby:
            self.proc = subprocess.Popen(
                [sys.executable, "-c", _STANDBY, *args], env=dict(env), cwd=cwd,
                stdin=subprocess.PIPE, stdout=self._log, stderr=subprocess.STDOUT)
        else:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "crisiscomms", *args],
                env=dict(env), cwd=cwd, stdout=self._log, stderr=subprocess.STDOUT)

    def go(self) -> Watch:
        """Start a standby watcher's run."""
        assert self.standby and self.proc.stdin is not None
        self.proc.stdin.write(b"go\n")
        self.proc.stdin.close()
        self.standby = False
        return self

    def discard(self) -> None:
        """End a standby watcher that was never started."""
        if self.proc.stdin is not None and not self.proc.stdin.closed:
            self.proc.stdin.close()
        try:
            self.proc.wait(20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)
        self._log.close()

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)
        self._log.close()

    def stop(self) -> int:
        """SIGTERM (finish the tick and exit cleanly); SIGKILL if it does not."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self._log.close()
        return int(self.proc.returncode)


# -- reading the store from outside ---------------------------------------------------------

def db_query(db: Path | str, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
    """A read on a connection of our own (the worker may be writing). ``db`` is a SQLite file
    or a ``postgresql://`` URL."""
    if isinstance(db, str):
        import psycopg

        with psycopg.connect(db, autocommit=True) as conn:
            try:
                return [tuple(r) for r in conn.execute(sql.replace("?", "%s"), tuple(params))]
            except psycopg.errors.UndefinedTable:
                return []
    if not db.exists():
        return []
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=10)
    try:
        return conn.execute(sql, params).fetchall()
    except sqlite3.OperationalError as exc:
        if "no such table" in str(exc):
            return []
        raise
    finally:
        conn.close()


def outbox_counts(db: Path | str) -> dict[str, int]:
    return dict(db_query(db, "SELECT state, count(*) FROM outbox GROUP BY state"))


def baselined(db: Path | str) -> int:
    return len(db_query(db, "SELECT key FROM source_state WHERE baseline_done = 1"))


def leased_by(db: Path | str, worker: str) -> bool:
    """Whether ``worker`` has leased anything yet."""
    return bool(db_query(db, "SELECT 1 FROM outbox_events WHERE reason = ? LIMIT 1",
                         (f"leased by {worker}",)))


def in_flight(db: Path | str, worker: str) -> dict[str, int]:
    """Items ``worker`` holds a lease on, by state (right after killing it)."""
    return dict(db_query(db, "SELECT state, count(*) FROM outbox WHERE lease_owner = ? AND "
                             "state IN ('leased', 'sending') GROUP BY state", (worker,)))


def finished(db: Path | str, scenario: Scenario) -> bool:
    """Every update recorded, and no item pending or in flight."""
    seen = db_query(db, "SELECT count(*) FROM updates")
    if not seen or seen[0][0] < len(scenario.items):
        return False
    counts = outbox_counts(db)
    return not any(counts.get(s) for s in UNFINISHED)


def wait_until(cond: Any, *, timeout: float, what: str, poll: float = 0.25) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(poll)


# -- checks --------------------------------------------------------------------------------

def platform_problems(world: World, scenario: Scenario) -> list[str]:
    """On the simulator: anything but "each update exactly once on each channel"."""
    problems: list[str] = []
    posts = world.posts
    for platform in scenario.channels:
        on = [p for p in posts if p.platform == platform]
        marks: dict[str, int] = {}
        for p in on:
            for word in p.text.replace(":", " ").split():
                if word.startswith("CHAOS-"):
                    marks[word] = marks.get(word, 0) + 1
        for it in scenario.items:
            got = marks.get(it.mark, 0)
            if got != 1:
                problems.append(f"{platform}: {it.mark} ({it.source.id}) posted {got} times")
        got = marks.get(ACTIVATION_MARK, 0)
        if got != 1:
            problems.append(f"{platform}: activation message posted {got} times")
        if len(on) != scenario.expected_posts:
            problems.append(f"{platform}: {len(on)} posts, expected {scenario.expected_posts}")
    for group in world.duplicates():
        problems.append(f"duplicate on {group[0].platform}: {group[0].text[:60]!r} x{len(group)}")
    return problems


def store_problems(db: Path | str, scenario: Scenario) -> list[str]:
    """In the store: every item published, and no more items than expected."""
    problems: list[str] = []
    counts = outbox_counts(db)
    expected = scenario.expected_posts * len(scenario.channels)
    if sum(counts.values()) != expected:
        problems.append(f"outbox has {sum(counts.values())} items, expected {expected}")
    for item_id, channel, state, reason in db_query(
            db, "SELECT id, channel_id, state, reason FROM outbox WHERE state != 'published' "
                "ORDER BY id"):
        problems.append(f"item {item_id} on {channel} is {state}: {reason}")
    n_updates = db_query(db, "SELECT count(*) FROM updates")[0][0]
    if n_updates != len(scenario.items):
        problems.append(f"{n_updates} updates recorded, expected {len(scenario.items)}")
    return problems



# -- in process ------------------------------------------------------------------------------

def in_process_app(home: Path, playbooks: Path, sim: RunningSimulator, clock: Any, *,
                   interval_s: float = 15, timeout_s: float = 10,
                   worker_id: str = "chaos") -> Any:
    """The real ``App`` (store, catalog, adapters) on ``clock``, pointed at the simulator.
    Channel credentials must be in the environment (``CREDENTIALS``)."""
    from pydantic import SecretStr

    from crisiscomms.bootstrap import App
    from crisiscomms.settings import DispatchSettings, PollingSettings, Settings

    settings = Settings(
        home=home, database_url=f"sqlite:///{home / 'crisiscomms.db'}", playbooks_dir=playbooks,
        allow_private_sources=True,
        polling=PollingSettings(interval_seconds=interval_s,
                                incident_interval_seconds=interval_s, jitter_seconds=0,
                                timeout_seconds=10),
        dispatch=DispatchSettings(timeout_seconds=timeout_s, lease_seconds=5),
        x_bearer_token=SecretStr("chaos-bearer"), source_base_urls={"x": sim.url_for("x")},
        worker_id=worker_id)
    return App(settings=settings, clock=clock)


def dispatcher_for(app: Any, publishers: Mapping[str, Any], worker: str, seed: int = 1) -> Any:
    from crisiscomms.services.dispatch import Dispatcher

    return Dispatcher(store=app.store, catalog=app.catalog, publishers=publishers,
                      settings=app.settings.dispatch, worker_id=worker,
                      rng=random.Random(seed), sleep=lambda _s: None)
