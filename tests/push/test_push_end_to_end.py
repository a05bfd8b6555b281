"""Push end to end (issue 14, item 1): the real watch loop (``App.run_loop``, what ``watch``
runs) on the real clock against the simulator's Mastodon streaming API and Jetstream, with
polling slowed to every 10 minutes so that only push can relay in time: a status and a post
by the incident's sources are relayed within seconds, once each; ``status``'s heartbeat names
both connections; a dropped stream is reconnected and what was published while it was down
is caught up by the reconnect's poll."""

from __future__ import annotations

import asyncio
import random
import threading
import time
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

from pydantic import SecretStr

from crisiscomms.adapters.playbooks import load_catalog
from crisiscomms.bootstrap import App
from crisiscomms.domain.clock import SystemClock
from crisiscomms.drill.practice import practice_playbooks
from crisiscomms.drill.runner import add_x_accounts, drill_catalog, drill_credentials
from crisiscomms.drill.scenario import load_scenario
from crisiscomms.services import incidents
from crisiscomms.settings import PollingSettings, PushSettings, Settings
from crisiscomms.simulator import World, serve

REPO = Path(__file__).resolve().parents[2]
SCENARIO = REPO / "playbooks" / "drills" / "fediverse.yaml"
MASTO = "essexpolice@social.example"  # the simulator's id of the drill's Mastodon source
SLOW = 600.0  # every poll interval: nothing in this test can be relayed by polling in time


def wait_for(what: Callable[[], bool], timeout: float = 20.0) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if what():
            return True
        time.sleep(0.05)
    return False


def test_pushed_updates_are_relayed_in_seconds_once_each_and_a_gap_is_caught_up(tmp_path: Path):
    from crisiscomms.simulator.routes_jetstream import drop_jetstream
    from crisiscomms.simulator.routes_mastodon_stream import drop_mastodon_streams

    scenario = load_scenario(SCENARIO)
    home = tmp_path / "home"
    home.mkdir(mode=0o700)
    playbooks_dir = practice_playbooks((SCENARIO.parent / scenario.playbooks_dir).resolve(),
                                       home / "playbooks", scenario.pin_x_ids)
    base = load_catalog(playbooks_dir)
    clock = SystemClock()
    world = World(clock)
    add_x_accounts(world, base, scenario.pin_x_ids)
    errors: list[BaseException] = []
    with serve(world, port=0) as sim:
        catalog = drill_catalog(base, scenario, sim, SCENARIO)
        settings = Settings(
            home=home, database_url=f"sqlite:///{home / 'crisiscomms.db'}",
            playbooks_dir=playbooks_dir, allow_private_sources=True,
            x_bearer_token=SecretStr("test-bearer"),
            source_base_urls={"x": sim.url_for("x"), "mastodon": sim.url_for("mastodon"),
                              "bluesky": sim.url_for("bluesky"),
                              "jetstream": sim.url_for("jetstream")},
            mastodon_stream_token=SecretStr("reader-token"),
            push=PushSettings(mastodon_stream_base=sim.url_for("mastodon"),
                              reconnect_base_seconds=0.05, reconnect_cap_seconds=0.2),
            worker_id="e2e", notify_urls=None, audit_key=None,
            polling=PollingSettings(interval_seconds=SLOW, incident_interval_seconds=SLOW,
                                    crisis_interval_seconds=SLOW, jitter_seconds=0))
        app = App(settings=settings, clock=clock, given_catalog=catalog, push=True,
                  credential_source=drill_credentials(catalog, world.accounts.x_me.id),
                  rng=random.Random(1))
        earlier = clock.now() - timedelta(hours=1)  # the accounts exist, with a post each
        world.add_item(MASTO, "mastodon", earlier, {"content": "<p>Earlier.</p>"})
        world.add_item("eeast.bsky.social", "bluesky", earlier, {"text": "Earlier."})
        incidents.activate(app.store, catalog, clock, playbook="fediverse-incident",
                           reason="test", operator="on-call")

        control: dict[str, Any] = {}

        async def main() -> None:
            # What run_watch does, with a stop this test can give from its own thread.
            async with app.run_loop(dry_run=False) as loop:
                stop = asyncio.Event()
                aloop = asyncio.get_running_loop()
                control["stop"] = lambda: aloop.call_soon_threadsafe(stop.set)
                await loop.run(stop, tick_seconds=2.0)

        def watch() -> None:
            try:
                asyncio.run(main())
            except BaseException as exc:  # pragma: no cover - reported below
                errors.append(exc)

        def published() -> list[Any]:
            return app.store.query(  # type: ignore[attr-defined]
                "SELECT o.channel_id, u.source_id, u.external_id FROM outbox o JOIN updates u "
                "ON u.id = o.update_id WHERE o.state = 'published'")

        def connected() -> set[str]:
            return {p.kind for w in app.store.watchers() for p in w.push if p.connected}

        runner = threading.Thread(target=watch, daemon=True)
        runner.start()
        try:
            # The connections are up (the heartbeat says so) and the baselines are in.
            assert wait_for(lambda: connected() >= {"mastodon", "jetstream"}), \
                [w.push for w in app.store.watchers()]
            assert wait_for(lambda: {s.source_id for s in app.store.source_states()
                                     if s.baseline_done} >= {"essex-police-masto",
                                                             "eeast-bsky"})
            t0 = clock.now() + timedelta(seconds=0.2)
            world.add_item(MASTO, "mastodon", t0,
                           {"content": "<p>Roads around the estate are closed.</p>"})
            world.add_item("eeast.bsky.social", "bluesky", t0,
                           {"text": "If smoke affects your breathing call NHS 111."})
            # Polling would take 10 minutes: push relays both within seconds.
            assert wait_for(lambda: {r["source_id"] for r in published()} >= {
                "essex-police-masto", "eeast-bsky"}), published()
            # A gap: both streams dropped; a status published meanwhile is caught up by the
            # poll the reconnect rings (not by the 10-minute interval).
            drop_mastodon_streams(world)
            drop_jetstream(world)
            world.add_item(MASTO, "mastodon", clock.now(),
                           {"content": "<p>The fire is under control.</p>"})
            assert wait_for(lambda: sum(r["source_id"] == "essex-police-masto"
                                        for r in published()) >= 2 * 2), published()
            time.sleep(1.0)  # any double would be out by now
        finally:
            if "stop" in control:
                control["stop"]()
            runner.join(15)
            rows = published()
            app.close()
    assert not errors, errors
    assert not runner.is_alive()
    assert world.duplicates() == []
    keys = [(r["channel_id"], r["external_id"]) for r in rows]
    assert len(keys) == len(set(keys)), keys  # each update once per channel
