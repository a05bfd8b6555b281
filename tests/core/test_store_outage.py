"""A watcher whose database goes away: the run loop keeps going and reconnects with backoff,
and the dispatcher never sends an item whose claim it could not record. ``status`` names the
database and lists the live watchers; a PostgreSQL URL that cannot connect is one clear line."""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import socket
from datetime import timedelta
from typing import Any

from crisiscomms.adapters.store import MemoryStore
from crisiscomms.domain.errors import StoreError
from crisiscomms.domain.models import ActionKind, NewOutboxItem, WatcherInfo
from crisiscomms.services.dispatch import Dispatcher
from crisiscomms.services.runloop import RunLoop
from crisiscomms.settings import DispatchSettings
from crisiscomms.testing import FakeClock, enqueue
from tests.core.helpers import FRI_EVENING, make_world

from .test_dispatcher import activate


class FlakyStore:
    """A store whose database is unreachable while ``down`` (every unit of work fails), or
    whose next ``fail_commits`` commits fail (the claim cannot be recorded)."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.down = False
        self.fail_commits = 0
        self.refused = 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    up_after: int | None = None

    def unit_of_work(self) -> Any:
        if self.down:
            self.refused += 1
            if self.up_after is not None and self.refused >= self.up_after:
                self.down = False
            raise StoreError("postgresql://relay:***@db/cc: connection lost or refused")
        uow = self.inner.unit_of_work()
        outer = self

        class Wrapped:
            def __enter__(self) -> Any:
                self.u = uow.__enter__()
                return self

            def __getattr__(self, name: str) -> Any:
                return getattr(self.u, name)

            def commit(self) -> None:
                if outer.fail_commits:
                    outer.fail_commits -= 1
                    raise StoreError("postgresql://relay:***@db/cc: connection lost during "
                                     "commit; nothing was written")
                self.u.commit()

            def __exit__(self, *exc: Any) -> None:
                uow.__exit__(*exc)

        return Wrapped()


def test_a_claim_that_cannot_be_recorded_is_never_sent(tmp_path, playbooks_dir):
    world = make_world(tmp_path, playbooks_dir)
    inc = activate(world)
    enqueue(world.store, [NewOutboxItem(dedupe_key="k", channel_id="x", action=ActionKind.POST,
                                        text="one", incident_id=inc.id)],
            now=world.clock.now())
    flaky = FlakyStore(world.store)
    d = Dispatcher(store=flaky, catalog=world.catalog, publishers=world.publishers,
                   settings=DispatchSettings(), worker_id="w", rng=random.Random(1),
                   sleep=lambda s: None)
    flaky.fail_commits = 1  # the first claim's commit is lost
    with contextlib.suppress(StoreError):
        d.tick(world.clock.now())
    assert world.publishers["x"].posts == []  # nothing went out unrecorded
    assert all(str(i.state) == "queued" for i in world.store.items(channel_id="x"))
    d.tick(world.clock.now())  # the database is back: it goes, once
    assert [p.dedupe_key for p in world.publishers["x"].posts].count("k") == 1


def test_the_run_loop_survives_a_database_outage_and_reconnects(tmp_path, playbooks_dir):
    world = make_world(tmp_path, playbooks_dir)
    flaky = FlakyStore(MemoryStore())
    clock = FakeClock(FRI_EVENING)
    watcher = world.watcher()
    watcher.store = flaky
    dispatcher = Dispatcher(store=flaky, catalog=world.catalog, publishers={},
                            settings=DispatchSettings(), worker_id="w", sleep=lambda s: None)
    loop = RunLoop(store=flaky, clock=clock, watcher=watcher, dispatcher=dispatcher,
                   identity=WatcherInfo("w", "host", 1, FRI_EVENING, FRI_EVENING),
                   rng=random.Random(1))
    flaky.down = True
    flaky.up_after = 4  # the database answers again after four refused units of work
    seen: list[str] = []

    async def scenario() -> None:
        stop = asyncio.Event()
        runner = asyncio.create_task(loop.run(stop, tick_seconds=0.001))
        for _ in range(2000):
            if flaky.inner.watchers():
                seen.extend(w.worker_id for w in flaky.inner.watchers())
                break
            await asyncio.sleep(0.005)
        stop.set()
        await asyncio.wait_for(runner, timeout=10)  # ran on through the outage, then stopped

    asyncio.run(scenario())
    assert flaky.refused == 4 and not flaky.down
    assert seen == ["w"]  # the heartbeat got through once the database was back
    assert flaky.inner.watchers() == []  # removed on a clean stop


def test_status_names_the_database_and_lists_live_watchers(cli, home):
    assert cli("status").code == 0
    from crisiscomms.adapters.store import open_store
    from crisiscomms.domain.clock import SystemClock

    store = open_store(f"sqlite:///{home / 'crisiscomms.db'}")
    now = SystemClock().now()
    with store.unit_of_work() as uow:
        uow.watchers.heartbeat(WatcherInfo("relay-1:42", "relay-1", 42, now, now))
        uow.watchers.heartbeat(WatcherInfo("old:7", "old", 7, now - timedelta(hours=2),
                                           now - timedelta(hours=1)))
        uow.commit()
    r = cli("status")
    assert f"database: sqlite:///{home / 'crisiscomms.db'}" in r.out
    assert "watchers: 1 live" in r.out and "relay-1 pid 42" in r.out and "old" not in r.out
    data = json.loads(cli("status", "--json").out)
    assert [(w["host"], w["live"]) for w in data["watchers"]] == [("relay-1", True),
                                                                  ("old", False)]


def test_a_postgresql_url_that_cannot_connect_is_one_line_and_exit_1(cli, monkeypatch):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setenv("CRISISCOMMS_DATABASE_URL",
                       f"postgresql://relay:s3cret@127.0.0.1:{port}/crisiscomms")
    r = cli("status")
    assert r.code == 1
    lines = r.err.strip().splitlines()
    assert len(lines) == 1 and "s3cret" not in r.err and "s3cret" not in r.out
    assert f"postgresql://relay:***@127.0.0.1:{port}/crisiscomms: cannot connect" in lines[0]
