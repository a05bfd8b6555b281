"""The watcher's heartbeat has a loop of its own: a dispatch step held up by a slow platform
(20 s a send in a crisis) must not make the watcher look dead (a second pager starting,
``status`` saying "0 live", ``activate`` warning "no watcher")."""

from __future__ import annotations

import asyncio
import threading
import time
from datetime import datetime

import pytest

from crisiscomms.domain.clock import SystemClock
from crisiscomms.domain.models import WatcherInfo
from crisiscomms.services import runloop
from crisiscomms.services.dispatch import DispatchStats
from crisiscomms.services.runloop import RunLoop
from crisiscomms.services.watch import CycleStats
from crisiscomms.testing import MemoryStore

BEAT = 0.05  # the heartbeat interval in this test (10 s in production)
BLOCK = 0.8  # one dispatch step: sixteen heartbeat intervals


class SlowDispatcher:
    """A dispatcher whose one step blocks (a platform answering slowly), in its thread."""

    def __init__(self) -> None:
        self.stop_requested = threading.Event()
        self.started = threading.Event()
        self.steps = 0

    def tick(self, now: datetime) -> DispatchStats:
        self.steps += 1
        self.started.set()
        time.sleep(BLOCK)
        return DispatchStats()


class QuickWatcher:
    def __init__(self) -> None:
        self.wake, self.queued = asyncio.Event(), asyncio.Event()

    async def poll_cycle(self, now: datetime, *, wait: bool = True) -> CycleStats:
        return CycleStats()

    def next_due_at(self) -> datetime | None:
        return None

    def start_push(self) -> None:
        return None

    async def stop_push(self) -> None:
        return None

    def push_status(self) -> tuple[()]:
        return ()

    async def cancel_running(self) -> None:
        return None


def test_the_heartbeat_advances_while_a_dispatch_step_blocks(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setattr(runloop, "HEARTBEAT_SECONDS", BEAT)
    store = MemoryStore()
    clock = SystemClock()
    start = clock.now()
    dispatcher = SlowDispatcher()
    loop = RunLoop(store=store, clock=clock, watcher=QuickWatcher(),  # type: ignore[arg-type]
                   dispatcher=dispatcher,  # type: ignore[arg-type]
                   identity=WatcherInfo("w:1", "host", 1, start, start, pages=True))
    seen: list[datetime] = []
    pages: set[bool] = set()

    async def scenario() -> None:
        stop = asyncio.Event()
        task = asyncio.ensure_future(loop.run(stop, tick_seconds=0.01))
        while not dispatcher.started.is_set():
            await asyncio.sleep(0.005)
        t_end = time.monotonic() + BLOCK * 0.9  # within the first, blocked dispatch step
        while time.monotonic() < t_end:
            for w in store.watchers():
                seen.append(w.last_seen_at)
                pages.add(w.pages)
            await asyncio.sleep(BEAT / 2)
        assert dispatcher.steps == 1, "the dispatch step was meant to be still blocked"
        stop.set()
        await asyncio.wait_for(task, 10)

    asyncio.run(scenario())
    beats = sorted(set(seen))
    # ~16 intervals passed while dispatch was blocked: the heartbeat kept being written
    assert len(beats) >= 4, beats  # (the dispatch loop alone wrote one)
    assert (beats[-1] - beats[0]).total_seconds() >= BLOCK / 3
    assert pages == {True}  # each beat keeps what the identity says
    assert store.watchers() == []  # signed off on stop, and no beat written after that
