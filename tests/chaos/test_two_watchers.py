"""Two ``crisiscomms watch`` processes on the same database (a second one started by
mistake, or an old one not yet stopped during a deploy): no post may go out twice."""

from __future__ import annotations

import time
from datetime import timedelta
from pathlib import Path

import pytest

from crisiscomms.domain.clock import SystemClock
from crisiscomms.simulator import serve

from .harness import (
    PLAYBOOK,
    Watch,
    baselined,
    cli,
    db_query,
    finished,
    make_scenario,
    new_world,
    platform_problems,
    scaled,
    script_items,
    sim_env,
    store_problems,
    wait_until,
    write_playbooks,
)

pytestmark = [pytest.mark.chaos, pytest.mark.slow]

N_UPDATES = scaled(200, 500)


def test_two_watchers_on_one_database_post_nothing_twice(tmp_path: Path):
    scenario = make_scenario(N_UPDATES, span_s=scaled(6, 20), seed=5)
    world = new_world(SystemClock(), scenario, quotas={})
    home, logs = tmp_path / "home", tmp_path / "logs"
    logs.mkdir()
    db = home / "crisiscomms.db"
    with serve(world) as sim:
        playbooks = write_playbooks(tmp_path / "playbooks", sim, scenario)
        env = sim_env(home, playbooks, sim)
        done = cli(env, "activate", PLAYBOOK, "--reason", "chaos: two watchers",
                   cwd=tmp_path)
        assert done.returncode == 0, done.stderr
        n_keys = sum(1 for s in scenario.sources if s.kind == "rss") + 1
        watchers = [Watch(env, tmp_path, logs / f"watch-{w}.log", worker_id=f"w{w}")
                    for w in ("a", "b")]
        t0 = time.monotonic()
        try:
            wait_until(lambda: baselined(db) >= n_keys, timeout=30, what="the baseline polls")
            script_items(world, scenario, world.now() + timedelta(seconds=0.5))
            wait_until(lambda: finished(db, scenario), timeout=scaled(90, 180),
                       what="every item to be published")
        finally:
            codes = [w.stop() for w in watchers]
        assert codes == [0, 0], [(logs / f"watch-{w}.log").read_text()[-1500:] for w in "ab"]
        elapsed = time.monotonic() - t0

        problems = platform_problems(world, scenario)
        assert not problems, "\n".join(problems[:20])
        verify = cli(env, "audit", "verify", cwd=tmp_path)
        assert verify.returncode == 0, verify.stdout + verify.stderr
        by_worker = dict(db_query(db, "SELECT actor, count(*) FROM outbox_events WHERE "
                                      "state = 'published' GROUP BY actor"))
        stored = store_problems(db, scenario)
        print(f"\ntwo watchers: {N_UPDATES} updates in {elapsed:.1f}s, published by "
              f"{by_worker}; store problems: {stored[:3]}")
        assert not stored, "\n".join(stored[:20])
