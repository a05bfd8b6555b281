"""Crash: ``crisiscomms watch`` is SIGKILLed and restarted while official updates keep
arriving. Half the kills are aimed at the one window that matters most: the simulator has
accepted a post and the watcher has not yet recorded it (the simulator's accept hook sends the
SIGKILL before its answer leaves); the others land at random moments. Every update must reach
every channel (X, Facebook, Mastodon and Bluesky) exactly once, nothing lost, and the audit
chain must verify; the number of kills that landed in the window is asserted.

The worker is a real subprocess on the real clock (so is the simulator's world), with short
polling intervals and a 2 s dispatch lease (``harness.LEASE_S``: below a deployment's 5 s
floor, through the test-only ``dispatch.test_only_short_leases``) so a killed worker's items are
taken over quickly. Each replacement is started as a standby (``Watch(standby=True)``: interpreter
and imports done while the previous worker runs) and let go the moment its predecessor is
killed, so the kills follow each other at the pace of the watcher, not of Python's start-up.
"""

from __future__ import annotations

import json
import os
import random
import signal
import threading
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from crisiscomms.domain.clock import SystemClock
from crisiscomms.simulator import serve

from .harness import (
    ALL_CHANNELS,
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
MIN_IN_WINDOW = scaled(6, 30)  # kills that must land between "accepted" and "recorded"
SEED = 7


def test_watch_survives_random_sigkills(tmp_path: Path):
    rng = random.Random(SEED)
    # Items arrive while the kills happen: spread them over the expected kill period.
    span = N_KILLS * 1.3
    scenario = make_scenario(N_UPDATES, span_s=span, seed=SEED, channels=ALL_CHANNELS)
    world = new_world(SystemClock(), scenario, quotas={})  # quotas are not under test here
    home, logs = tmp_path / "home", tmp_path / "logs"
    logs.mkdir()
    db = home / "crisiscomms.db"
    with serve(world) as sim:
        playbooks = write_playbooks(tmp_path / "playbooks", sim, scenario)
        env = sim_env(home, playbooks, sim)
        done = cli(env, "activate", PLAYBOOK, "--reason", "chaos: crash test",
                   cwd=tmp_path)
        assert done.returncode == 0, done.stderr

        # The first poll of a source is its baseline (floods nothing): let every source
        # take it on empty feeds before anything is published.
        n_keys = sum(1 for s in scenario.sources if s.kind == "rss") + any(
            s.kind == "x" for s in scenario.sources)
        watch = Watch(env, tmp_path, logs / "watch-0.log", worker_id="chaos-0")

        def standby(k: int) -> Watch:  # the next watcher, imports done, waiting for the go
            return Watch(env, tmp_path, logs / f"watch-{k}.log", worker_id=f"chaos-{k}",
                         standby=True)

        wait_until(lambda: baselined(db) >= n_keys, timeout=30, what="the baseline polls")
        ready: Watch | None = standby(1)
        script_items(world, scenario, world.now() + timedelta(seconds=0.5))

        t0 = time.monotonic()
        caught = {"leased": 0, "sending": 0}
        in_window: list[str] = []
        for k in range(N_KILLS):
            assert ready is not None
            # Once this worker is busy (startup takes about a second, and killing it before
            # its first lease would test nothing)...
            worker = f"chaos-{k}"
            started = time.monotonic()
            while not leased_by(db, worker) and time.monotonic() - started < 4:
                time.sleep(0.05)
            if k % 2 == 0:
                # ...aimed: the next post the simulator accepts kills this worker before the
                # answer reaches it.
                fired = threading.Event()
                pid = watch.proc.pid

                def kill_on_accept(post: Any, pid: int = pid, fired: threading.Event = fired
                                   ) -> None:
                    if fired.is_set():
                        return
                    os.kill(pid, signal.SIGKILL)
                    fired.set()
                    in_window.append(post.text[:40])

                world.set_accept_hook(kill_on_accept)
                fired.wait(timeout=5)
                world.set_accept_hook(None)
            else:
                time.sleep(rng.uniform(0, 0.5))  # ...or at a random moment
            watch.kill()
            for state, n in in_flight(db, worker).items():
                caught[state] = caught.get(state, 0) + n
            watch = ready.go()
            ready = standby(k + 2) if k + 1 < N_KILLS else None
        kill_phase = time.monotonic() - t0
        try:
            # Killed while sending: the next worker waits out the lease, asks the platform,
            # and retries what never arrived a few seconds later (the dispatcher's backoff:
            # base CRISISCOMMS_DISPATCH__RETRY_BASE_SECONDS, and the lost send counted as
            # attempt 1).
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
        print(f"\ncrash: {N_UPDATES} updates x {len(ALL_CHANNELS)} channels, {N_KILLS} "
              f"SIGKILLs in {kill_phase:.1f}s, {len(in_window)} of them between the platform's "
              f"accept and our record (items caught in flight: {caught}), all done "
              f"{time.monotonic() - t0:.1f}s after the first item; store problems: "
              f"{len(stored)}")
        assert not stored, "\n".join(stored[:20])
        assert len(in_window) >= MIN_IN_WINDOW, (
            f"only {len(in_window)} kills landed between accept and record")

        status = cli(env, "status", "--json", cwd=tmp_path)
        assert status.returncode == 0, status.stderr
        queue = json.loads(status.stdout)["queue"]
        assert queue == {"published": scenario.expected_posts * len(ALL_CHANNELS)}, queue
