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
from collections import Counter
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

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


class TimedSource:
    """A quiet source whose poll takes ``seconds`` of real time; notes who polled it."""

    def __init__(self, key: str, seconds: float, polls: list[tuple[str, str]],
                 who: str) -> None:
        self.key, self.source_ids = key, (key,)
        self.seconds, self.polls, self.who = seconds, polls, who

    async def poll(self, state: SourceState, now: datetime) -> PollResult:
        self.polls.append((self.who, self.key))
        await asyncio.sleep(self.seconds)
        return PollResult(not_modified=True)

    async def aclose(self) -> None:
        return None


def test_a_watcher_claims_no_more_than_it_can_start_so_no_lease_runs_out_in_its_queue(
        tmp_path: Path) -> None:
    # Found by benchmarks/shared_pg.py (20,000 sources, two watchers on PostgreSQL): one
    # cycle claimed every due source although only ``concurrency`` polls run at a time, so
    # the leases of the ones at the back of its queue ran out before their polls started; the
    # other watcher claimed them (4,731 sources polled twice, 39,682 polls overtaken). Here
    # 8 sources of 0.3 s each go through 2 slots (1.2 s) under a 0.6 s lease, and a second
    # watcher on the same database looks every 50 ms: each source must be polled once.
    n, hold = 8, 0.3
    playbooks = bench_playbooks(tmp_path / "playbooks",
                                [f"http://127.0.0.1:9/feed/{i}.xml" for i in range(n)])
    catalog = load_catalog(playbooks)
    store = open_store(str(tmp_path / "s.db"))
    polls: list[tuple[str, str]] = []

    async def run() -> int:
        loop = asyncio.get_running_loop()
        clock = MovingClock(loop, loop.time())
        settings = PollingSettings(concurrency=2, deadline_seconds=0.4,
                                   lease_margin_seconds=0.2, jitter_seconds=0)
        watchers = [Watcher(store=store, catalog=catalog, settings=settings,
                            sources=[TimedSource(f"bench-{i:04d}", hold, polls, who)
                                     for i in range(n)],
                            rng=random.Random(1), owner=who, clock=clock)
                    for who in ("a", "b")]
        first = await watchers[0].poll_cycle(clock.now(), wait=False)  # a looks first
        stats = [first]
        deadline = loop.time() + 4 * n * hold
        while loop.time() < deadline:
            await asyncio.sleep(0.05)
            for w in watchers:
                stats.append(await w.poll_cycle(clock.now(), wait=False))
            if (len({key for _, key in polls}) == n and not any(w.running()
                                                              for w in watchers)):
                break
        for w in watchers:
            await w.cancel_running()
            w.flush()
        return sum(s.overtaken for s in stats)

    try:
        overtaken = asyncio.run(run())
    finally:
        store.close()
    by_key = Counter(key for _, key in polls)
    assert set(by_key) == {f"bench-{i:04d}" for i in range(n)}, "a source was never polled"
    twice = sorted(k for k, c in by_key.items() if c > 1)
    assert not twice, f"polled twice: {twice} ({polls}); overtaken {overtaken}"


class HeldSource:
    """A quiet source whose poll waits for ``release``."""

    def __init__(self, key: str, release: asyncio.Event) -> None:
        self.key, self.source_ids, self.release = key, (key,), release

    async def poll(self, state: SourceState, now: datetime) -> PollResult:
        await self.release.wait()
        return PollResult(not_modified=True)

    async def aclose(self) -> None:
        return None


def test_what_is_held_back_is_claimed_when_room_frees_and_the_loop_is_woken(
        tmp_path: Path) -> None:
    playbooks = bench_playbooks(tmp_path / "playbooks",
                                [f"http://127.0.0.1:9/feed/{i}.xml" for i in range(6)])
    catalog = load_catalog(playbooks)
    store = open_store(str(tmp_path / "s.db"))

    async def run() -> None:
        releases = [asyncio.Event() for _ in range(6)]
        watcher = Watcher(store=store, catalog=catalog,
                          sources=[HeldSource(f"bench-{i:04d}", releases[i]) for i in range(6)],
                          settings=PollingSettings(concurrency=2, jitter_seconds=0),
                          rng=random.Random(1))
        await watcher.poll_cycle(FRI_EVENING, wait=False)
        assert watcher.running() == 2
        assert watcher.next_due_at() is None  # nothing to wake for until a slot frees
        leased = [s for s in store.source_states() if s.lease_until is not None]
        assert len(leased) == 2, "claimed more than could start"
        assert not watcher.wake.is_set()
        releases[0].set()
        releases[1].set()
        for _ in range(50):
            if watcher.wake.is_set():
                break
            await asyncio.sleep(0.01)
        assert watcher.wake.is_set(), "a freed slot did not wake the loop"
        await watcher.poll_cycle(FRI_EVENING, wait=False)
        assert watcher.running() == 2
        for r in releases:
            r.set()
        await watcher.poll_cycle(FRI_EVENING + timedelta(seconds=1), wait=True)
        await watcher.cancel_running()
        watcher.flush()

    try:
        asyncio.run(run())
        polled = [s for s in store.source_states() if s.last_polled_at is not None]
    finally:
        store.close()
    assert len(polled) == 6


def test_claims_another_watcher_won_do_not_use_up_a_step(tmp_path: Path) -> None:
    # Found by benchmarks/shared_pg.py once claims were held to the room: the second watcher
    # went through its (stale) due sources a room's worth per step, lost each claim to the
    # first, which had polled them, and polled nothing at all in five minutes. A step now
    # goes on past the claims it lost until its room is filled (and wakes the loop for the
    # next step at once when it has tried CLAIM_TRIES_FACTOR x its capacity).
    n = 60
    playbooks = bench_playbooks(tmp_path / "playbooks",
                                [f"http://127.0.0.1:9/feed/{i}.xml" for i in range(n)])
    catalog = load_catalog(playbooks)
    store = open_store(str(tmp_path / "s.db"))
    released = asyncio.Event()

    async def run() -> tuple[list[str], int]:
        released.set()
        keys = [f"bench-{i:04d}" for i in range(n)]
        a = Watcher(store=store, catalog=catalog, owner="a", rng=random.Random(1),
                    sources=[HeldSource(k, released) for k in keys],
                    settings=PollingSettings(concurrency=2, jitter_seconds=0))
        b = Watcher(store=store, catalog=catalog, owner="b", rng=random.Random(1),
                    sources=[HeldSource(k, released) for k in keys[2:42]],
                    settings=PollingSettings(concurrency=50, jitter_seconds=0))
        await a.poll_cycle(FRI_EVENING, wait=False)  # a claims two; the rest stay due
        for _ in range(100):
            if not a.running():
                break
            await asyncio.sleep(0.01)
        a.flush()
        await b.poll_cycle(FRI_EVENING, wait=True)  # b polls 40 of a's due sources
        a.wake.clear()
        steps = 0
        while not a._running and steps < 5:  # as the run loop does: woken, it steps again
            steps += 1
            await a.poll_cycle(FRI_EVENING, wait=False)
            if not a.wake.is_set():
                break
            a.wake.clear()
        claimed = sorted(a._running)
        await a.cancel_running()
        return claimed, steps

    try:
        claimed, steps = asyncio.run(run())
    finally:
        store.close()
    assert claimed == ["bench-0042", "bench-0043"], claimed
    per_step = watch.CLAIM_TRIES_FACTOR * 2  # tries per step at a capacity of 2
    assert steps <= 40 // per_step + 1, f"{steps} steps to get past 40 lost claims"


def test_a_lease_that_ends_at_this_instant_is_not_claimed_again_and_again(
        tmp_path: Path) -> None:
    # The store holds a lease until the instant it names (free only after it); the watcher
    # took one ending now as free, scheduled the source at now, and the step claimed it again
    # and again (up to CLAIM_TRIES_FACTOR x capacity claims of one source).
    playbooks = bench_playbooks(tmp_path / "playbooks", ["http://127.0.0.1:9/feed/0.xml"])
    catalog = load_catalog(playbooks)
    store = open_store(str(tmp_path / "s.db"))
    released = asyncio.Event()
    released.set()
    key = "bench-0000"
    with store.unit_of_work() as uow:
        uow.sources.claim({key: SourceState(source_id=key)}, owner="other",
                          now=FRI_EVENING - timedelta(seconds=90), lease=timedelta(seconds=90))
        uow.commit()
    claims = [0]

    async def run() -> None:
        w = Watcher(store=store, catalog=catalog, owner="w", rng=random.Random(1),
                    sources=[HeldSource(key, released)],
                    settings=PollingSettings(concurrency=2, jitter_seconds=0))
        real = store.unit_of_work

        def counted() -> Any:
            claims[0] += 1
            return real()
        store.unit_of_work = counted  # type: ignore[method-assign]
        try:
            await w.poll_cycle(FRI_EVENING, wait=False)
        finally:
            store.unit_of_work = real  # type: ignore[method-assign]
        assert not w._running  # still the other watcher's at this instant
        await w.cancel_running()

    try:
        asyncio.run(run())
    finally:
        store.close()
    assert claims[0] <= 2, f"{claims[0]} units of work for one source held until now"
