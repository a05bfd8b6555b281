"""One slow feed must not stop posting, and SIGTERM must stop the watcher within seconds
(issue 12): a ``crisiscomms watch`` process whose one feed answers after a minute keeps relaying
the other sources' updates as they come, and stops cleanly a few seconds after SIGTERM."""

from __future__ import annotations

import signal
import time
from pathlib import Path

import pytest

from crisiscomms.domain.clock import SystemClock
from crisiscomms.simulator import Faults, serve

from .harness import (
    PLAYBOOK,
    Watch,
    baselined,
    cli,
    make_scenario,
    new_world,
    script_items,
    sim_env,
    wait_until,
    write_playbooks,
)

pytestmark = [pytest.mark.chaos, pytest.mark.slow]


def test_a_trickling_feed_neither_blocks_posting_nor_a_stop(tmp_path: Path):
    scenario = make_scenario(12, n_sources=4, n_x=0, span_s=2, seed=3)
    slow = scenario.sources[0]
    scenario.items = [it for it in scenario.items if it.source is not slow]
    world = new_world(SystemClock(), scenario, quotas={})
    home, logs = tmp_path / "home", tmp_path / "logs"
    logs.mkdir()
    db = home / "crisiscomms.db"
    with serve(world) as sim:
        playbooks = write_playbooks(tmp_path / "playbooks", sim, scenario)
        env = sim_env(home, playbooks, sim, CRISISCOMMS_POLLING__DEADLINE_SECONDS="120")
        assert cli(env, "activate", PLAYBOOK, "--reason", "slow feed",
                   cwd=tmp_path).returncode == 0
        watch = Watch(env, tmp_path, logs / "watch.log", worker_id="slow")
        try:
            wait_until(lambda: baselined(db) >= len(scenario.sources), timeout=30,
                       what="the baseline polls")
            # From now on the slow feed answers after a minute (a byte-a-second trickle).
            world.set_faults(Faults(slow_seconds=60, paths=(f"/sources/rss/{slow.id}",)))
            time.sleep(1.5)  # let a poll of it start and hang
            script_items(world, scenario, world.now())
            t0 = time.monotonic()
            marks = {it.mark for it in scenario.items}

            def relayed() -> bool:
                on_x = {w for p in world.posts if p.platform == "facebook"
                        for w in p.text.replace(":", " ").split() if w in marks}
                return on_x == marks

            wait_until(relayed, timeout=30, what="the other sources' updates on facebook")
            relay_s = time.monotonic() - t0
            t1 = time.monotonic()
            watch.proc.send_signal(signal.SIGTERM)
            code = watch.proc.wait(timeout=30)
            stop_s = time.monotonic() - t1
        finally:
            watch.stop()
        assert code == 0, (logs / "watch.log").read_text()[-2000:]
        print(f"\nslow feed: others relayed in {relay_s:.1f}s while it hung; SIGTERM to exit "
              f"{stop_s:.1f}s")
        assert relay_s < 20, "posting waited for the slow feed"
        assert stop_s < 8, f"SIGTERM took {stop_s:.1f}s"
