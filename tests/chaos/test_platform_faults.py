"""Platform faults: 20% of platform requests answer 5xx, 10% of creates are accepted and then
answered 5xx anyway, some posts are accepted and then the connection hangs and drops (the client
times out), and each platform has a window of 429s with a reset time. Everything must still be
delivered exactly once, and no request may reach a quota between its 429 and the reset.

In-process (like the drill): the real App, Watcher and Dispatcher on a simulated clock, so
backoffs and rate-limit windows cost no real time; only the hangs do.
"""

from __future__ import annotations

import asyncio
import random
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from crisiscomms.domain.clock import FixedClock
from crisiscomms.services import incidents
from crisiscomms.services.watch import Watcher
from crisiscomms.simulator import Faults, serve

from .harness import (
    ALL_CHANNELS,
    CREDENTIALS,
    PLAYBOOK,
    UNFINISHED,
    dispatcher_for,
    in_process_app,
    make_scenario,
    new_world,
    platform_problems,
    scaled,
    script_items,
    store_problems,
    write_playbooks,
)

pytestmark = [pytest.mark.chaos, pytest.mark.slow]

START = datetime(2026, 11, 27, 18, 0, tzinfo=UTC)
STEP = timedelta(seconds=15)
N_UPDATES = scaled(100, 500)
SEED = 11


def faults() -> Faults:
    def window(minute: int, minutes: int) -> tuple[datetime, datetime]:
        return START + timedelta(minutes=minute), START + timedelta(minutes=minute + minutes)

    return Faults(
        error_rate_5xx=0.2,
        accept_then_5xx_rate=0.1,
        accept_then_timeout_rate=0.04,
        hang_seconds=0.5,  # the httpx clients time out at 0.3 s; X sees the connection drop
        burst_429=(("x", *window(4, 5)), ("mastodon", *window(10, 3)),
                   ("facebook", *window(16, 4))),
        burst_methods=("POST",),
        paths=("/x", "/facebook", "/mastodon", "/bluesky"),  # ours, not the official feeds
        seed=SEED,
    )


def test_everything_delivered_once_through_5xx_timeouts_and_429s(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    for name, value in CREDENTIALS.items():
        monkeypatch.setenv(name, value)
    scenario = make_scenario(N_UPDATES, span_s=scaled(20, 40) * 60, seed=SEED,
                             channels=ALL_CHANNELS)
    clock = FixedClock(START)
    world = new_world(clock, scenario)  # the platforms' real quotas
    t0 = time.monotonic()
    with serve(world) as sim:
        playbooks = write_playbooks(tmp_path / "playbooks", sim, scenario)
        app = in_process_app(tmp_path / "home", playbooks, sim, clock,
                             interval_s=STEP.total_seconds(), timeout_s=0.3)
        try:
            incidents.activate(app.store, app.catalog, clock, playbook=PLAYBOOK,
                               reason="chaos: platform faults", operator="chaos")
            ticks = asyncio.run(_run(app, world, scenario))
            store = app.store
            assert store.verify_audit().ok
        finally:
            app.close()
        problems = platform_problems(world, scenario)
        assert not problems, "\n".join(problems[:20])
        violations = world.rate_limit_violations()
        assert not violations, violations[:5]
        log = world.request_log
        faults_seen = {n: sum(1 for r in log if r.note.startswith(n))
                       for n in ("5xx", "accept_then_5xx", "accept_then_timeout")}
        assert faults_seen["accept_then_5xx"] > 0, "no create was accepted then refused"
        refused = sum(1 for r in log if r.reset_at is not None)
        stored = store_problems(Path(store.path), scenario)
        print(f"\nplatform faults: {N_UPDATES} updates, {len(log)} requests, {faults_seen}, "
              f"{refused} rate-limit refusals, {ticks} ticks "
              f"({ticks * STEP.total_seconds() / 3600:.1f} h simulated) in "
              f"{time.monotonic() - t0:.1f}s; store problems: {stored[:5]}")
        assert not stored, "\n".join(stored[:20])


async def _run(app, world, scenario) -> int:
    sources, closer = app.build_sources()
    publishers = app.build_publishers(dry_run=False)
    watcher = Watcher(store=app.store, catalog=app.catalog, sources=sources,
                      settings=app.settings.polling, rng=random.Random(SEED))
    dispatcher = dispatcher_for(app, publishers, "chaos", seed=SEED)
    clock, store = app.clock, app.store
    ticks = 0
    try:
        await watcher.poll_cycle(clock.now())  # the baseline, on empty feeds
        script_items(world, scenario, clock.now() + STEP)
        world.set_faults(faults())
        deadline = clock.now() + timedelta(hours=scaled(6, 12))
        while clock.now() < deadline:
            clock.set(clock.now() + STEP)
            now = clock.now()
            await watcher.poll_cycle(now)
            await asyncio.to_thread(dispatcher.tick, now)
            ticks += 1
            recorded = store.query_one("SELECT count(*) AS n FROM updates")["n"]
            pending = store.query_one(
                f"SELECT count(*) AS n FROM outbox WHERE state IN "
                f"({','.join('?' * len(UNFINISHED))})", UNFINISHED)["n"]
            if recorded >= len(scenario.items) and not pending:
                break
    finally:
        for src in sources:
            await src.aclose()
        await closer()
    return ticks
