"""A poll's deadline starts when the poll does, not while it queues for a fetch slot.

Found by ``benchmarks/shared_pg.py``: with more sources due than the fetcher's slots
(``PollingSettings.concurrency``) can serve within ``deadline_seconds``, every poll was
started at once under its deadline and queued for a slot inside it, so the ones at the back
failed as "a server answering too slowly" and were backed off: tens of thousands of failures
at 20,000 sources, a first cycle that never ended. The watcher now lets at most
``concurrency`` polls run at a time; the deadline wraps only a running poll.
"""

from __future__ import annotations

import asyncio
import random
from datetime import datetime, timedelta
from pathlib import Path

import pytest
from benchmarks.loop import bench_playbooks

from crisiscomms.adapters.playbooks import load_catalog
from crisiscomms.adapters.store import open_store
from crisiscomms.domain.models import PollResult, SourceState
from crisiscomms.services import watch
from crisiscomms.services.watch import Watcher
from crisiscomms.settings import PollingSettings
from tests.core.helpers import FRI_EVENING

N, SLOTS, HOLD = 12, 2, 0.1  # 12 polls of 0.1 s through 2 slots: 0.6 s in all


class SlotSource:
    """A quiet source whose fetch holds one of the shared slots for ``HOLD`` seconds."""

    def __init__(self, key: str, slots: asyncio.Semaphore, peak: list[int]) -> None:
        self.key, self.source_ids = key, (key,)
        self.slots, self.peak = slots, peak

    async def poll(self, state: SourceState, now: datetime) -> PollResult:
        async with self.slots:  # what FetchLimits.slot does inside a real fetch
            self.peak[0] += 1
            self.peak[1] = max(self.peak[1], self.peak[0])
            await asyncio.sleep(HOLD)
            self.peak[0] -= 1
        return PollResult(not_modified=True)

    async def aclose(self) -> None:
        return None


def test_polls_waiting_for_a_slot_do_not_run_out_their_deadline(tmp_path: Path) -> None:
    playbooks = bench_playbooks(tmp_path / "playbooks",
                                [f"http://127.0.0.1:9/feed/{i}.xml" for i in range(N)])
    catalog = load_catalog(playbooks)
    store = open_store(str(tmp_path / "s.db"))
    peak = [0, 0]

    async def run() -> tuple[int, int]:
        slots = asyncio.Semaphore(SLOTS)
        sources = [SlotSource(f"bench-{i:04d}", slots, peak) for i in range(N)]
        watcher = Watcher(store=store, catalog=catalog, sources=sources,
                          settings=PollingSettings(concurrency=SLOTS, deadline_seconds=0.3,
                                                   jitter_seconds=0),
                          rng=random.Random(1))
        stats = await watcher.poll_cycle(FRI_EVENING)
        return stats.polled, stats.failed

    try:
        polled, failed = asyncio.run(run())
    finally:
        store.close()
    assert polled == N
    assert failed == 0, f"{failed} of {N} polls ran out their deadline queueing for a slot"
    assert peak[1] <= SLOTS


class MovingClock:
    """FRI_EVENING plus the real seconds since ``start`` (the watcher's clock on the real
    clock; a drill's stands still during a step)."""

    def __init__(self, loop: asyncio.AbstractEventLoop, start: float) -> None:
        self.loop, self.start = loop, start

    def now(self) -> datetime:
        return FRI_EVENING + timedelta(seconds=self.loop.time() - self.start)


def test_a_poll_that_waited_for_its_turn_counts_its_interval_from_when_it_ran(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Found by benchmarks/shared_pg.py: the next poll was counted from the cycle's start, so a
    # poll that queued for its turn was due again soon after it ran (the same watcher polled
    # thousands of sources twice within 9 s at 5,000 sources).
    monkeypatch.setattr(watch, "GATE_SHIFT_SECONDS", 0.05)
    playbooks = bench_playbooks(tmp_path / "playbooks",
                                [f"http://127.0.0.1:9/feed/{i}.xml" for i in range(4)])
    catalog = load_catalog(playbooks)
    store = open_store(str(tmp_path / "s.db"))
    peak = [0, 0]

    async def run() -> None:
        slots = asyncio.Semaphore(1)
        sources = [SlotSource(f"bench-{i:04d}", slots, peak) for i in range(4)]
        loop = asyncio.get_running_loop()
        start = loop.time()
        watcher = Watcher(store=store, catalog=catalog, sources=sources,
                          settings=PollingSettings(concurrency=1, jitter_seconds=0),
                          rng=random.Random(1), clock=MovingClock(loop, start))
        stats = await watcher.poll_cycle(FRI_EVENING)
        assert (stats.polled, stats.failed) == (4, 0)

    try:
        asyncio.run(run())
        states = sorted((s for s in store.source_states() if s.source_id.startswith("bench-")),
                        key=lambda s: s.last_polled_at or FRI_EVENING)
    finally:
        store.close()
    assert states[0].last_polled_at == FRI_EVENING  # the first ran at once
    last = states[-1]
    assert last.last_polled_at is not None and last.next_poll_at is not None
    waited = (last.last_polled_at - FRI_EVENING).total_seconds()
    assert waited >= 3 * HOLD * 0.9, f"the fourth poll is recorded {waited:.2f} s in"
    assert last.next_poll_at - last.last_polled_at >= timedelta(seconds=60)
