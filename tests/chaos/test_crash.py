"""Crash: ``crisiscomms watch`` is SIGKILLed at random moments and restarted, while official
updates keep arriving. Every update must reach every channel exactly once, nothing lost, and
the audit chain must verify.

The worker is a real subprocess on the real clock (so is the simulator's world), with short
polling intervals and the shortest lease allowed (5 s) so a killed worker's items are taken
over quickly.
"""

from __future__ import annotations

import json
import random
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
    finished,
    in_flight,
    leased_by,
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

N_UPDATES = scaled(500, 500)
N_KILLS = scaled(20, 100)
SEED = 7


def test_watch_survives_random_sigkills(tmp_path: Path):
    rng = random.Random(SEED)
    # Items arrive while the kills happen: spread them over the expected kill period.
    span = N_KILLS * 1.3
    scenario = make_scenario(N_UPDATES, span_s=span, seed=SEED)
    world = new_world(SystemClock(), scenario, quotas={})  # quotas are not under test here
    home, logs = tmp_path / "home", tmp_path / "logs"
    logs.mkdir()
    db = home / "crisiscomms.db"
    with serve(world) as sim:
        playbooks = write_playbooks(tmp_path / "playbooks", sim, scenario)
        env = sim_env(home, playbooks, sim)
        done = cli(env, "activate", PLAYBOOK, "--reason", "chaos: crash test",
                   "--operator", "chaos", cwd=tmp_path)
        assert done.returncode == 0, done.stderr

        # The first poll of a source is its baseline (floods nothing): let every source
        # take it on empty feeds before anything is published.
        n_keys = sum(1 for s in scenario.sources if s.kind == "rss") + any(
            s.kind == "x" for s in scenario.sources)
        watch = Watch(env, tmp_path, logs / "watch-0.log", worker_id="chaos-0")
        wait_until(lambda: baselined(db) >= n_keys, timeout=30, what="the baseline polls")
        script_items(world, scenario, world.now() + timedelta(seconds=0.5))

        t0 = time.monotonic()
        caught = {"leased": 0, "sending": 0}
        for k in range(N_KILLS):
            # A random moment once this worker is busy (startup takes about a second, and
            # killing it before its first lease would test nothing).
            worker = f"chaos-{k}"
            started = time.monotonic()
            while not leased_by(db, worker) and time.monotonic() - started < 4:
                time.sleep(0.05)
            time.sleep(rng.uniform(0, 0.5))
            watch.kill()
            for state, n in in_flight(db, worker).items():
                caught[state] = caught.get(state, 0) + n
            watch = Watch(env, tmp_path, logs / f"watch-{k + 1}.log", worker_id=f"chaos-{k + 1}")
        kill_phase = time.monotonic() - t0
        try:
            # Killed while sending: the next worker waits out the lease, asks the platform,
            # and retries what never arrived 30-60 s later (the dispatcher's backoff: base 30 s,
            # and the lost send counted as attempt 1).
            wait_until(lambda: finished(db, scenario), timeout=scaled(120, 240),
                       what="every item to be published")
        finally:
            code = watch.stop()
        assert code == 0, (logs / f"watch-{N_KILLS}.log").read_text()[-2000:]

        problems = platform_problems(world, scenario)
        assert not problems, "\n".join(problems[:20])
        verify = cli(env, "audit", "verify", cwd=tmp_path)
        assert verify.returncode == 0, verify.stdout + verify.stderr
        stored = store_problems(db, scenario)
        print(f"\ncrash: {N_UPDATES} updates, {N_KILLS} SIGKILLs in {kill_phase:.1f}s (items "
              f"caught in flight: {caught}), all done {time.monotonic() - t0:.1f}s after the "
              f"first item; store problems: {len(stored)}")
        assert not stored, "\n".join(stored[:20])

        status = cli(env, "status", "--json", cwd=tmp_path)
        assert status.returncode == 0, status.stderr
        queue = json.loads(status.stdout)["queue"]
        assert queue == {"published": scenario.expected_posts * 3}, queue
