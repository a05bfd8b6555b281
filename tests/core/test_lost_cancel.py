"""A cancel that arrives in the same turn of the loop as what is being waited for is never
lost. Python 3.11's ``asyncio.wait_for`` returns the result and drops the cancel then
(gh-86296, fixed in 3.12): a stopping watcher waited for ever on a WebSub connection that had
gone back to sleep. Every wait with a timeout goes through ``crisiscomms.aio``."""

from __future__ import annotations

import asyncio
import random
from pathlib import Path

import pytest
from benchmarks.loop import bench_playbooks

from crisiscomms import aio
from crisiscomms.adapters.playbooks import load_catalog
from crisiscomms.adapters.store import open_store
from crisiscomms.domain.models import PollResult, SourceState
from crisiscomms.services.runloop import RunLoop
from crisiscomms.services.watch import Watcher
from crisiscomms.settings import PollingSettings
from tests.core.helpers import FRI_EVENING


async def cancelled_as_it_finishes(start: asyncio.Event, finish: asyncio.Event,
                                   task: asyncio.Task[object]) -> asyncio.Task[object]:
    await start.wait()  # the task is waiting now
    await asyncio.sleep(0)
    finish.set()  # what it waits for finishes ...
    task.cancel()  # ... in the same turn as the stop
    await asyncio.wait({task}, timeout=5)
    return task


def run_race(make: object) -> asyncio.Task[object]:
    async def main() -> asyncio.Task[object]:
        start, finish = asyncio.Event(), asyncio.Event()
        task: asyncio.Task[object] = asyncio.create_task(make(start, finish))  # type: ignore[operator]
        return await cancelled_as_it_finishes(start, finish, task)
    return asyncio.run(main())


def test_wait_for_keeps_a_cancel_that_arrives_with_the_result() -> None:
    async def waiting(start: asyncio.Event, finish: asyncio.Event) -> object:
        async def work() -> str:
            start.set()
            await finish.wait()
            return "done"
        return await aio.wait_for(work(), 10)

    task = run_race(waiting)
    assert task.done() and task.cancelled()


def test_wait_event_keeps_a_cancel_that_arrives_with_the_event() -> None:
    async def waiting(start: asyncio.Event, finish: asyncio.Event) -> object:
        start.set()
        return await aio.wait_event(finish, 10)

    task = run_race(waiting)
    assert task.done() and task.cancelled()


def test_wait_for_times_out_and_passes_results_and_errors() -> None:
    async def main() -> None:
        assert await aio.wait_for(asyncio.sleep(0, "x"), 1) == "x"
        assert await aio.wait_for(asyncio.sleep(0, "y"), None) == "y"
        with pytest.raises(TimeoutError):
            await aio.wait_for(asyncio.sleep(5), 0.01)
        with pytest.raises(ValueError, match="inner"):
            await aio.wait_for(_boom(), 1)
        assert await aio.wait_event(asyncio.Event(), 0.01) is False
        ev = asyncio.Event()
        ev.set()
        assert await aio.wait_event(ev, 1) is True

    async def _boom() -> None:
        raise ValueError("inner")

    asyncio.run(main())


def test_the_run_loops_sleep_keeps_a_cancel_that_arrives_with_the_stop() -> None:
    async def waiting(start: asyncio.Event, finish: asyncio.Event) -> object:
        start.set()
        return await RunLoop._sleep(finish, None, 10)

    task = run_race(waiting)
    assert task.done() and task.cancelled()


class FinishingSource:
    key, source_ids = "bench-0000", ("bench-0000",)

    def __init__(self, start: asyncio.Event, finish: asyncio.Event) -> None:
        self.start, self.finish = start, finish

    async def poll(self, state: SourceState, now: object) -> PollResult:
        self.start.set()
        await self.finish.wait()
        return PollResult(not_modified=True)

    async def aclose(self) -> None:
        return None


def test_a_poll_cancelled_as_it_finishes_is_abandoned_not_carried_on(tmp_path: Path) -> None:
    catalog = load_catalog(bench_playbooks(tmp_path / "pb", ["http://127.0.0.1:9/feed.xml"]))
    store = open_store(str(tmp_path / "s.db"))
    try:
        async def waiting(start: asyncio.Event, finish: asyncio.Event) -> object:
            src = FinishingSource(start, finish)
            watcher = Watcher(store=store, catalog=catalog, sources=[src],
                              settings=PollingSettings(jitter_seconds=0),
                              rng=random.Random(1))
            return await watcher._poll(src, SourceState(source_id=src.key), FRI_EVENING)

        task = run_race(waiting)
        assert task.done() and task.cancelled()
    finally:
        store.close()
