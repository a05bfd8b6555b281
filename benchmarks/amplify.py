"""``amplify``: time to amplify on the real ``watch`` path, on the real clock.

The loopback platform simulator (official sources and our four channels) serves in this
process's background thread; the real watch loop (``bootstrap.run_watch``: watcher, 2 s ticks,
dispatcher, the bundled playbooks and default polling settings) runs against it with a crisis
active (the Essex flood drill's ``flooding`` activation, done before the loop starts, as an
officer would). Then ``--updates`` updates of the drill's sources in that playbook (the drill's
own items, made unique) appear in the simulator at instants spread over one incident polling
interval, so they fall at every phase of the poll schedule.

For every post the simulator accepts that relays one of them:

* **time to amplify** = the simulator's accept instant (``SimPost.received_at``, the real
  clock) - the item's publication instant in the simulator (the instant it became visible);
* **internal pipeline** = the accept instant - the update's ``fetched_at`` (the poll that saw
  it), which includes the first update after start (parser workers and connections cold).

Pushed sources are measured apart (``run_pushed``): the fediverse drill's Mastodon and Bluesky
sources, with the watcher's push connections open on the simulator's Mastodon streaming API
and Jetstream, the default polling settings beside them (push only rings; each update is still
read by a poll, at once), and ``--updates`` posts spread over 30 s.
Which channels relay an update is the bundled policy's choice (not every update goes to all
four); the run stops once every item had a poll after it and nothing was accepted for 10 s
(or after ``--timeout`` seconds).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import signal
import tempfile
import threading
import time
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from benchmarks.common import REPO, percentile, quiet_logging, summary, write_result

SCENARIO = REPO / "playbooks" / "drills" / "essex-flood.yaml"
PUSH_SCENARIO = REPO / "playbooks" / "drills" / "fediverse.yaml"


def _push_kinds() -> list[str]:
    """Source kinds that push (a streaming connection), if main has any yet."""
    try:
        from crisiscomms.adapters import sources
    except ImportError:
        return []
    return sorted(str(k) for k in getattr(sources, "PUSH_KINDS", ()))


def run_once(updates: int, seed: int, timeout: float,
             poll_interval: float | None = None) -> dict[str, Any]:
    from pydantic import SecretStr

    from crisiscomms.adapters.playbooks import load_catalog
    from crisiscomms.bootstrap import App, run_watch
    from crisiscomms.domain.clock import SystemClock, parse_instant
    from crisiscomms.domain.models import SourceKind
    from crisiscomms.drill.practice import practice_playbooks
    from crisiscomms.drill.runner import (
        SIM_KIND,
        add_x_accounts,
        drill_catalog,
        drill_credentials,
        sim_source_id,
    )
    from crisiscomms.drill.scenario import load_scenario
    from crisiscomms.services import incidents
    from crisiscomms.settings import PollingSettings, Settings
    from crisiscomms.simulator import World, serve
    from crisiscomms.simulator.records import SimPost

    scenario = load_scenario(SCENARIO)
    activation = next(e.activate for e in scenario.events if e.activate)
    with tempfile.TemporaryDirectory(prefix="crisiscomms-bench-tta-") as t:
        home = Path(t) / "home"
        home.mkdir(mode=0o700)
        playbooks_dir = practice_playbooks((SCENARIO.parent / scenario.playbooks_dir).resolve(),
                                           home / "playbooks", scenario.pin_x_ids)
        base = load_catalog(playbooks_dir)
        clock = SystemClock()
        world = World(clock)
        add_x_accounts(world, base, scenario.pin_x_ids)
        accepted: dict[str, datetime] = {}
        last_accept = [time.monotonic()]

        def hook(post: SimPost) -> None:
            accepted[post.post_id] = post.received_at
            last_accept[0] = time.monotonic()

        with serve(world, port=0) as sim:
            catalog = drill_catalog(base, scenario, sim, SCENARIO)
            settings = Settings(
                home=home, database_url=f"sqlite:///{home / 'crisiscomms.db'}",
                playbooks_dir=playbooks_dir, allow_private_sources=True,
                x_bearer_token=SecretStr("bench-bearer-token"),
                source_base_urls={"x": sim.url_for("x"), "mastodon": sim.url_for("mastodon"),
                                  "bluesky": sim.url_for("bluesky")},
                worker_id="bench", notify_urls=None, audit_key=None,
                # The defaults (what production runs), unless --poll-interval (quick runs).
                polling=PollingSettings() if poll_interval is None else PollingSettings(
                    interval_seconds=poll_interval, incident_interval_seconds=poll_interval,
                    jitter_seconds=0))
            app = App(settings=settings, clock=clock, given_catalog=catalog,
                      credential_source=drill_credentials(catalog, world.accounts.x_me.id),
                      rng=random.Random(seed))
            try:
                incidents.activate(app.store, catalog, clock, playbook=activation.playbook,
                                   reason="benchmark", operator=activation.operator,
                                   hashtags=activation.hashtags, lead=activation.lead)
                pb_sources = {ps.source for ps in catalog.playbook(activation.playbook).sources}
                events = [e for e in sorted(scenario.events, key=lambda e: e.at)
                          if e.publish is not None and not e.publish.edit
                          and e.publish.source in pb_sources]
                interval = settings.polling.incident_interval_seconds
                rng = random.Random(seed)
                start = clock.now() + timedelta(seconds=3)
                plan: list[tuple[str, datetime]] = []
                for k in range(updates):
                    e = events[k % len(events)]
                    assert e.publish is not None
                    src = catalog.sources[e.publish.source]
                    item = {key: (f"{v} [bench {seed}-{k}]" if isinstance(v, str)
                                  and key in ("guid", "text", "title", "identifier", "id")
                                  else v) for key, v in e.publish.item.items()}
                    if "floodAreaID" in item:
                        item["floodAreaID"] = f"{item['floodAreaID']}{k:02d}"
                    if src.kind is SourceKind.EA_FLOODS:
                        item.setdefault("county", src.county or "Essex")
                    at = start + timedelta(seconds=rng.uniform(0, interval))
                    world.add_item(sim_source_id(src, scenario.pin_x_ids), SIM_KIND[src.kind],
                                   at, item)
                    plan.append((src.id, at))
                channels = len(catalog.channels)
                world.set_accept_hook(hook)

                quiet = min(10.0, interval)
                quiet_from = time.monotonic() + 3 + interval + quiet  # every item polled once

                def stopper() -> None:
                    # Stop once every item had a poll after it and nothing was accepted for
                    # 10 s (the relays of one update go out together), or at the timeout.
                    t_end = time.monotonic() + timeout
                    while time.monotonic() < t_end:
                        now = time.monotonic()
                        if now > quiet_from and now - last_accept[0] > quiet:
                            break
                        time.sleep(0.5)
                    os.kill(os.getpid(), signal.SIGTERM)

                threading.Thread(target=stopper, daemon=True).start()
                t0 = time.perf_counter()
                asyncio.run(run_watch(app, once=False, dry_run=False, tick_seconds=2.0,
                                      max_ticks=int(timeout / 2) + 30))
                wall = time.perf_counter() - t0
                rows = app.store.query(  # type: ignore[attr-defined]
                    "SELECT o.platform_post_id, o.channel_id, o.incident_id, u.published_at, "
                    "u.fetched_at, u.source_id FROM outbox o JOIN updates u ON "
                    "u.id = o.update_id WHERE o.state = 'published'")
            finally:
                world.set_accept_hook(None)
                app.close()
    tta: list[float] = []
    pipeline: list[tuple[datetime, float]] = []
    for r in rows:
        got = accepted.get(str(r["platform_post_id"]))
        if got is None:
            continue
        tta.append((got - parse_instant(r["published_at"])).total_seconds())
        fetched = parse_instant(r["fetched_at"])
        pipeline.append((fetched, (got - fetched).total_seconds()))
    pipeline.sort()
    first_seen = pipeline[0][0] if pipeline else None
    first = [s for f, s in pipeline if f == first_seen]
    relayed_updates = len({(r["source_id"], r["published_at"]) for r in rows})
    return {"updates": updates, "channels": channels, "relayed_posts": len(tta),
            "relayed_updates": relayed_updates, "accepted_posts": len(accepted),
            "wall_s": wall,
            "sources": sorted({s for s, _ in plan}), "poll_interval_s": interval,
            "tta_s": tta, "pipeline_s": [s for _, s in pipeline],
            "first_update_pipeline_s": max(first) if first else float("nan")}


def run_pushed(updates: int, seed: int, timeout: float,
               spread: float = 30.0) -> dict[str, Any]:
    """Time to amplify for sources that push: publication in the simulator -> its accept."""
    from pydantic import SecretStr

    from crisiscomms.adapters.playbooks import load_catalog
    from crisiscomms.bootstrap import App, run_watch
    from crisiscomms.domain.clock import SystemClock, parse_instant
    from crisiscomms.drill.practice import practice_playbooks
    from crisiscomms.drill.runner import add_x_accounts, drill_catalog, drill_credentials
    from crisiscomms.drill.scenario import load_scenario
    from crisiscomms.services import incidents
    from crisiscomms.settings import PushSettings, Settings
    from crisiscomms.simulator import World, serve
    from crisiscomms.simulator.records import SimPost

    scenario = load_scenario(PUSH_SCENARIO)
    activation = next(e.activate for e in scenario.events if e.activate)
    accounts = [("essex-police-masto", "essexpolice@social.example", "mastodon", "content"),
                ("eeast-bsky", "eeast.bsky.social", "bluesky", "text")]
    with tempfile.TemporaryDirectory(prefix="crisiscomms-bench-push-") as t:
        home = Path(t) / "home"
        home.mkdir(mode=0o700)
        playbooks_dir = practice_playbooks(
            (PUSH_SCENARIO.parent / scenario.playbooks_dir).resolve(), home / "playbooks",
            scenario.pin_x_ids)
        base = load_catalog(playbooks_dir)
        clock = SystemClock()
        world = World(clock)
        add_x_accounts(world, base, scenario.pin_x_ids)
        earlier = clock.now() - timedelta(hours=1)
        for _, sim_id, kind, field in accounts:  # the accounts exist, with a post each
            world.add_item(sim_id, kind, earlier, {field: "Earlier."})
        accepted: dict[str, datetime] = {}
        last_accept = [time.monotonic()]

        def hook(post: SimPost) -> None:
            accepted[post.post_id] = post.received_at
            last_accept[0] = time.monotonic()

        with serve(world, port=0) as sim:
            catalog = drill_catalog(base, scenario, sim, PUSH_SCENARIO)
            settings = Settings(
                home=home, database_url=f"sqlite:///{home / 'crisiscomms.db'}",
                playbooks_dir=playbooks_dir, allow_private_sources=True,
                x_bearer_token=SecretStr("bench-bearer-token"),
                source_base_urls={"x": sim.url_for("x"), "mastodon": sim.url_for("mastodon"),
                                  "bluesky": sim.url_for("bluesky"),
                                  "jetstream": sim.url_for("jetstream")},
                mastodon_stream_token=SecretStr("bench-reader-token"),
                push=PushSettings(mastodon_stream_base=sim.url_for("mastodon")),
                worker_id="bench", notify_urls=None, audit_key=None)
            app = App(settings=settings, clock=clock, given_catalog=catalog, push=True,
                      credential_source=drill_credentials(catalog, world.accounts.x_me.id),
                      rng=random.Random(seed))
            try:
                incidents.activate(app.store, catalog, clock, playbook=activation.playbook,
                                   reason="benchmark", operator=activation.operator,
                                   hashtags=activation.hashtags, lead=activation.lead)
                rng = random.Random(seed)
                world.set_accept_hook(hook)
                quiet_from = [float("inf")]

                def publisher() -> None:
                    # The updates appear once the watcher is up: both sources baselined and
                    # both connections open (its own store connection: this is a thread).
                    from crisiscomms.adapters.store import open_store

                    own = open_store(str(settings.database_url))
                    try:
                        t_end = time.monotonic() + timeout / 2
                        while time.monotonic() < t_end:
                            done = {s.source_id for s in own.source_states()
                                    if s.baseline_done}
                            up = {p.kind for w in own.watchers() for p in w.push
                                  if p.connected}
                            if done >= {a[0] for a in accounts} and \
                                    up >= {"mastodon", "jetstream"}:
                                break
                            time.sleep(0.1)
                    finally:
                        own.close()
                    start = clock.now()
                    for k in range(updates):
                        _, sim_id, kind, field = accounts[k % len(accounts)]
                        world.add_item(sim_id, kind,
                                       start + timedelta(seconds=rng.uniform(0, spread)),
                                       {field: f"Update {k} of run {seed}: roads closed."})
                    quiet_from[0] = time.monotonic() + spread + 3

                def stopper() -> None:
                    t_end = time.monotonic() + timeout
                    while time.monotonic() < t_end:
                        now = time.monotonic()
                        if now > quiet_from[0] and now - last_accept[0] > 5:
                            break
                        time.sleep(0.25)
                    os.kill(os.getpid(), signal.SIGTERM)

                threading.Thread(target=publisher, daemon=True).start()
                threading.Thread(target=stopper, daemon=True).start()
                asyncio.run(run_watch(app, once=False, dry_run=False, tick_seconds=2.0,
                                      max_ticks=int(timeout / 2) + 30))
                rows = app.store.query(  # type: ignore[attr-defined]
                    "SELECT o.platform_post_id, u.published_at, u.source_id FROM outbox o "
                    "JOIN updates u ON u.id = o.update_id WHERE o.state = 'published' AND "
                    "u.baseline = 0")
            finally:
                world.set_accept_hook(None)
                app.close()
    by_source: dict[str, list[float]] = {}
    for r in rows:
        if str(r["platform_post_id"]) in accepted:
            by_source.setdefault(str(r["source_id"]), []).append(
                (accepted[str(r["platform_post_id"])] - parse_instant(r["published_at"]))
                .total_seconds())
    tta = [x for xs in by_source.values() for x in xs]
    return {"updates": updates, "relayed_posts": len(tta), "tta_by_source_s": by_source,
            "relayed_updates": len({(r["source_id"], r["published_at"]) for r in rows}),
            "sources": [a[0] for a in accounts], "tta_s": tta}


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description="time-to-amplify benchmark")
    p.add_argument("--updates", type=int, default=20)
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--timeout", type=float, default=120.0)
    p.add_argument("--poll-interval", type=float,
                   help="override the polling intervals (default: the settings' defaults)")
    p.add_argument("--push-spread", type=float, default=30.0,
                   help="seconds over which the pushed updates appear (default 30)")
    p.add_argument("--json-out")
    args = p.parse_args(argv)
    sink = quiet_logging()
    runs = []
    pushed_runs = []
    try:
        for k in range(args.runs):  # interleaved: polled, pushed, polled, pushed, ...
            runs.append(run_once(args.updates, 100 + k, args.timeout, args.poll_interval))
            if _push_kinds():
                pushed_runs.append(run_pushed(args.updates, 200 + k, args.timeout,
                                              args.push_spread))
    finally:
        sink.close()

    def per_run(key: str, q: float | None) -> dict[str, float]:
        vals = [(percentile(r[key], q) if q is not None else max(r[key], default=float("nan")))
                for r in runs]
        return summary(vals)

    def pushed(q: float | None) -> dict[str, float]:
        return summary([(percentile(r["tta_s"], q) if q is not None
                         else max(r["tta_s"], default=float("nan"))) for r in pushed_runs])

    result = {
        "runs": runs, "updates": args.updates, "push_kinds": _push_kinds(),
        "pushed_runs": pushed_runs,
        "pushed": {"p50": pushed(50), "p95": pushed(95), "max": pushed(None),
                   "relayed_posts": [r["relayed_posts"] for r in pushed_runs],
                   "relayed_updates": [r["relayed_updates"] for r in pushed_runs]}
        if pushed_runs else None,
        "polled": {"p50": per_run("tta_s", 50), "p95": per_run("tta_s", 95),
                   "max": per_run("tta_s", None)},
        "pipeline": {"p95": per_run("pipeline_s", 95), "p99": per_run("pipeline_s", 99),
                     "max": per_run("pipeline_s", None),
                     "first_update": summary([r["first_update_pipeline_s"] for r in runs])},
        "relayed_posts": [r["relayed_posts"] for r in runs],
        "relayed_updates": [r["relayed_updates"] for r in runs],
    }
    write_result(args.json_out, result)


if __name__ == "__main__":
    main()
