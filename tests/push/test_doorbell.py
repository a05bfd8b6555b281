"""Push rings the watcher's doorbell (issue 14, item 1): the sources it names are polled at
the next cycle through their ordinary adapter, never before a reset, a backoff or a floor;
a poll in progress is followed by another; a pushed post not seen yet is looked for again a
few times; the connections follow the playbooks; and in the real run loop a ring is relayed
without waiting for the poll tick or the dispatch tick."""

from __future__ import annotations

import asyncio
import random
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from crisiscomms.domain.errors import TransientSourceError
from crisiscomms.domain.models import Doorbell, PollResult, PushStatus, SourceState, WatcherInfo
from crisiscomms.ports import PushListener, Ring
from crisiscomms.services import incidents
from crisiscomms.services.runloop import RunLoop
from crisiscomms.services.watch import Watcher
from crisiscomms.settings import PollingSettings, PushSettings
from tests.core.helpers import make_world, update

MET = "met-office-ee"  # watch: always, every 60 s
EA = "ea-floods-essex"  # watch: always, every 300 s
POLICE = "essex-police-x"  # only in an incident


@pytest.fixture
def world(tmp_path: Path, playbooks_dir: Path):
    return make_world(tmp_path, playbooks_dir)


def watcher(world: Any, **push: Any) -> Watcher:
    return Watcher(store=world.store, catalog=world.catalog,
                   sources=list(world.sources.values()),
                   settings=PollingSettings(jitter_seconds=0), rng=random.Random(1),
                   owner="w1", push=PushSettings(**push))


def cycle(w: Watcher, now: datetime):
    return asyncio.run(w.poll_cycle(now))


def polls(world: Any) -> dict[str, int]:
    return {k: s.polls for k, s in world.sources.items()}


def test_a_ring_polls_a_watched_source_at_the_next_cycle_not_at_its_interval(world):
    w = watcher(world)
    t0 = world.clock.now()
    cycle(w, t0)  # baseline: MET and EA polled
    before = polls(world)
    assert cycle(w, t0 + timedelta(seconds=10)).polled == 0  # MET not due for 50 s
    w.ring(Doorbell((MET,), expect_id=None, via="test"))
    assert w.wake.is_set()
    stats = cycle(w, t0 + timedelta(seconds=12))
    assert stats.polled == 1
    assert polls(world)[MET] == before[MET] + 1 and polls(world)[EA] == before[EA]
    # Rung once, polled once: its next poll is its ordinary one again.
    assert cycle(w, t0 + timedelta(seconds=14)).polled == 0
    assert w.next_due_at() == t0 + timedelta(seconds=12 + 60)


def test_a_ring_for_a_source_nobody_watches_now_polls_nothing(world):
    w = watcher(world)
    t0 = world.clock.now()
    cycle(w, t0)
    w.ring(Doorbell((POLICE, "no-such-source")))
    assert cycle(w, t0 + timedelta(seconds=5)).polled == 0
    assert world.sources[POLICE].polls == 0


def test_a_ring_for_an_incident_source_polls_it(world):
    w = watcher(world)
    t0 = world.clock.now()
    cycle(w, t0)
    incidents.activate(world.store, world.catalog, world.clock, playbook="flooding",
                       reason="drill", operator="t")
    cycle(w, t0 + timedelta(seconds=1))  # the incident's sources: baseline
    n = world.sources[POLICE].polls
    assert n >= 1
    assert cycle(w, t0 + timedelta(seconds=2)).polled == 0
    w.ring(Doorbell((POLICE,)))
    cycle(w, t0 + timedelta(seconds=3))
    assert world.sources[POLICE].polls == n + 1


def test_a_ring_never_polls_before_a_reset_the_source_named(world):
    w = watcher(world)
    t0 = world.clock.now()
    cycle(w, t0)
    reset = t0 + timedelta(seconds=300)
    world.sources[MET].fail_next(TransientSourceError("429", error_class="http_429",
                                                      retry_at=reset))
    cycle(w, t0 + timedelta(seconds=60))  # refused: nothing before the reset
    n = world.sources[MET].polls
    w.ring(Doorbell((MET,)))
    assert cycle(w, t0 + timedelta(seconds=61)).polled == 0
    assert cycle(w, t0 + timedelta(seconds=299)).polled == 0
    assert world.sources[MET].polls == n
    cycle(w, reset)
    assert world.sources[MET].polls == n + 1


def test_a_ring_keeps_the_publishers_floor(world):
    """The EA source's floor (sources.yaml min_interval_seconds: 300): a ring 10 s after a
    poll waits for it."""
    w = watcher(world)
    t0 = world.clock.now()
    cycle(w, t0)
    n = world.sources[EA].polls
    w.ring(Doorbell((EA,)))
    for s in (10, 60, 299):
        cycle(w, t0 + timedelta(seconds=s))
    assert world.sources[EA].polls == n
    cycle(w, t0 + timedelta(seconds=300))
    assert world.sources[EA].polls == n + 1


def test_a_ring_during_a_poll_polls_again_after_it(world):
    """The poll in progress may have read the feed before the pushed post existed."""
    w = watcher(world)
    t0 = world.clock.now()
    cycle(w, t0)
    gate = asyncio.Event()
    src = world.sources[MET]
    real = src.poll

    async def slow(state: SourceState, now: datetime) -> PollResult:
        await gate.wait()
        return await real(state, now)

    async def scenario() -> None:
        src.poll = slow  # type: ignore[method-assign]
        await w.poll_cycle(t0 + timedelta(seconds=60), wait=False)
        assert w.running() == 1
        w.ring(Doorbell((MET,)))
        assert (await w.poll_cycle(t0 + timedelta(seconds=61), wait=False)).polled == 0
        gate.set()
        while w.running():
            await asyncio.sleep(0.01)
        src.poll = real  # type: ignore[method-assign]
        await w.poll_cycle(t0 + timedelta(seconds=62))

    n = src.polls
    asyncio.run(scenario())
    assert src.polls == n + 2


def test_a_pushed_post_not_seen_yet_is_looked_for_again_then_left_to_polling(world):
    """An AppView lagging Jetstream: the poll right after the ring does not return the post;
    it is polled again after 1 s and 2 s (expect_retries=2), then only at its interval."""
    w = watcher(world, expect_retries=2, expect_retry_seconds=1.0)
    t0 = world.clock.now()
    cycle(w, t0)
    src = world.sources[MET]
    n = src.polls
    w.ring(Doorbell((MET,), expect_id="post-9"))
    cycle(w, t0 + timedelta(seconds=5))
    assert src.polls == n + 1
    assert w.next_due_at() == t0 + timedelta(seconds=6)
    cycle(w, t0 + timedelta(seconds=6))
    assert w.next_due_at() == t0 + timedelta(seconds=8)
    cycle(w, t0 + timedelta(seconds=8))
    assert src.polls == n + 3
    assert w.next_due_at() == t0 + timedelta(seconds=68)  # its interval again


def test_a_pushed_post_the_poll_returns_ends_the_search(world):
    w = watcher(world, expect_retries=3)
    t0 = world.clock.now()
    cycle(w, t0)
    src = world.sources[MET]
    src.set_snapshot([update(MET, "post-9", at=t0)])
    w.ring(Doorbell((MET,), expect_id="post-9"))
    stats = cycle(w, t0 + timedelta(seconds=5))
    assert stats.new_updates == 1
    assert w.next_due_at() == t0 + timedelta(seconds=65)


def test_queued_items_wake_dispatch(world):
    w = watcher(world)
    t0 = world.clock.now()
    incidents.activate(world.store, world.catalog, world.clock, playbook="flooding",
                       reason="drill", operator="t")
    cycle(w, t0)  # baselines
    w.queued.clear()
    world.sources[POLICE].set_snapshot([update(POLICE, "1", at=t0)])
    w.ring(Doorbell((POLICE,)))
    stats = cycle(w, t0 + timedelta(seconds=1))
    assert stats.queued > 0
    assert w.queued.is_set()


class ScriptedListener:
    """A push connection that rings its sources on connect, then when told to."""

    kind = "test"

    def __init__(self, key: str, source_ids: tuple[str, ...]) -> None:
        self.key = key
        self.source_ids = source_ids
        self.runs = 0
        self.cancelled = 0
        self.ring: Ring | None = None
        self.up = False

    async def run(self, ring: Ring) -> None:
        self.runs += 1
        self.ring = ring
        self.up = True
        ring(Doorbell(self.source_ids, reason="connected", via=self.key))
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            self.cancelled += 1
            self.up = False
            raise

    def status(self) -> PushStatus:
        return PushStatus(self.key, self.kind, self.source_ids, connected=self.up)


def test_listeners_follow_the_playbooks_and_their_status_is_reported(world):
    built: dict[str, ScriptedListener] = {}
    wanted = {"a": (MET,), "b": (EA,)}

    def make(catalog: Any) -> list[PushListener]:
        out = []
        for key, ids in wanted.items():
            built[f"{key}{ids}"] = built.get(f"{key}{ids}") or ScriptedListener(key, ids)
            out.append(built[f"{key}{ids}"])
        return out

    w = Watcher(store=world.store, catalog=world.catalog, sources=list(world.sources.values()),
                settings=PollingSettings(jitter_seconds=0), owner="w1", listeners=make)

    async def scenario() -> None:
        w.start_push()
        await asyncio.sleep(0.01)
        assert {s.key: s.connected for s in w.push_status()} == {"a": True, "b": True}
        assert w.wake.is_set()  # the connections' catch-up rings
        a, b = built[f"a{(MET,)}"], built[f"b{(EA,)}"]
        wanted["b"] = (EA, MET)  # a reload changes b's sources; a stays as it is
        w.reconfigure(world.catalog, [], set())
        await w.poll_cycle(world.clock.now())
        await asyncio.sleep(0.01)
        assert (a.runs, a.cancelled) == (1, 0)
        assert (b.runs, b.cancelled) == (1, 1)
        assert built[f"b{(EA, MET)}"].runs == 1
        await w.stop_push()
        assert w.push_status() == ()
        assert a.cancelled == 1

    asyncio.run(scenario())


def test_a_listener_that_fails_to_build_leaves_polling_running(world):
    def broken(catalog: Any) -> list[PushListener]:
        raise ValueError("bad jetstream url")

    w = Watcher(store=world.store, catalog=world.catalog, sources=list(world.sources.values()),
                settings=PollingSettings(jitter_seconds=0), owner="w1", listeners=broken)

    async def scenario() -> int:
        w.start_push()
        stats = await w.poll_cycle(world.clock.now())
        await w.stop_push()
        return stats.polled

    assert asyncio.run(scenario()) == 2


def test_the_run_loop_relays_a_pushed_update_without_waiting_for_its_ticks(world):
    """Real run loop, real clock, 60 s ticks: a ring makes the poll, and what it queued is
    dispatched at once (without the wake-ups neither would happen within the test's 20 s)."""
    from crisiscomms.domain.clock import SystemClock
    from crisiscomms.testing import FakePublisher

    clock = SystemClock()
    start = clock.now()
    incidents.activate(world.store, world.catalog, world.clock, playbook="flooding",
                       reason="drill", operator="t", lead=POLICE)
    world.publishers = {c: FakePublisher(c) for c in world.catalog.channels}
    listener = ScriptedListener("x-stream", (POLICE,))
    w = Watcher(store=world.store, catalog=world.catalog, sources=list(world.sources.values()),
                settings=PollingSettings(jitter_seconds=0, incident_interval_seconds=600,
                                         crisis_interval_seconds=600),
                owner="w1", listeners=lambda catalog: [listener])
    d = world.dispatcher()
    d.clock = clock
    loop = RunLoop(store=world.store, clock=clock, watcher=w, dispatcher=d,
                   identity=WatcherInfo("w1", "h", 1, start, start))

    async def scenario() -> int:
        stop = asyncio.Event()
        run = asyncio.ensure_future(loop.run(stop, tick_seconds=60))
        for _ in range(100):  # the baseline polls after the connect ring
            await asyncio.sleep(0.05)
            if world.sources[POLICE].polls:
                break
        await asyncio.sleep(0.5)
        await asyncio.sleep(0.5)  # the incident's opening posts go out first
        opening = sum(len(pub.posts) for pub in world.publishers.values())
        world.sources[POLICE].set_snapshot([update(POLICE, "77", at=clock.now())])
        assert listener.ring is not None
        listener.ring(Doorbell((POLICE,), expect_id="77", via="x-stream"))
        sent = 0
        for _ in range(400):
            await asyncio.sleep(0.05)
            sent = sum(len(pub.posts) for pub in world.publishers.values()) - opening
            if sent:
                break
        stop.set()
        await run
        return sent

    sent = asyncio.run(scenario())
    assert sent, "the pushed update was not relayed within 20 s (ticks are 60 s)"
