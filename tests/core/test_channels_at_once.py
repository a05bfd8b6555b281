"""The channels of one tick are sent at the same time: a slow platform no longer holds up the
others, while each channel keeps its own order, its own rate-limit pause and its lease; stop
still starts no new send, and two dispatchers on one database still send nothing twice."""

from __future__ import annotations

import random
import threading
import time
from collections import Counter
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path

import pytest

from crisiscomms.adapters.store import open_store
from crisiscomms.domain.errors import RateLimitedError
from crisiscomms.domain.models import ActionKind, NewOutboxItem, OutboxItem, PublishResult, Update
from crisiscomms.services.dispatch import Dispatcher
from crisiscomms.services.lanes import MAX_LANES
from crisiscomms.settings import DispatchSettings
from crisiscomms.testing import enqueue
from tests.core.helpers import World, make_world

from .test_dispatcher import activate, crisis_update

CHANNELS = ("bluesky", "facebook", "mastodon", "x")  # bluesky is sent first when one at a time


@pytest.fixture
def world(tmp_path: Path, playbooks_dir: Path) -> World:
    return make_world(tmp_path, playbooks_dir)


def dispatcher(world: World, worker: str = "w1", store=None, **kw) -> Dispatcher:  # type: ignore[no-untyped-def]
    return Dispatcher(store=store or world.store, catalog=world.catalog,
                      publishers=world.publishers, settings=kw.pop("settings",
                                                                   DispatchSettings()),
                      worker_id=worker, rng=random.Random(1), sleep=lambda s: None,
                      clock=world.clock, **{"lanes": MAX_LANES, **kw})


def wait_for(cond: Callable[[], bool], timeout: float = 10.0) -> bool:
    """Wait (bounded) for something another thread does: an event, not a fixed sleep."""
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


def items(world: World, channel: str, n: int, incident: int, **kw) -> list[int]:  # type: ignore[no-untyped-def]
    return enqueue(world.store, [NewOutboxItem(
        dedupe_key=f"{channel}:{i}", channel_id=channel, action=ActionKind.POST,
        text=f"{channel} {i}", incident_id=incident, **kw) for i in range(n)],
        now=world.clock.now())


def test_a_slow_platform_does_not_hold_up_the_other_channels_of_the_update(world: World):
    activate(world)
    crisis_update(world)
    others = [world.publishers[c] for c in CHANNELS if c != "bluesky"]
    meanwhile: list[bool] = []

    def slow(item: OutboxItem) -> None:
        if not meanwhile:  # bluesky's first request hangs until the others have posted
            meanwhile.append(wait_for(lambda: all(len(p.posts) == 2 for p in others)))

    world.publishers["bluesky"].on_publish = slow
    stats = dispatcher(world).tick(world.clock.now())
    assert meanwhile == [True], "the other channels waited for bluesky's slow request"
    assert stats.published == 8
    assert all(len(world.publishers[c].posts) == 2 for c in CHANNELS)


def test_one_lane_sends_the_channels_one_after_another(world: World):
    """The same tick with ``lanes=1`` (as before, and as in a drill, which must write in the
    same order run after run): the test above can tell the difference."""
    activate(world)
    crisis_update(world)
    others = [world.publishers[c] for c in CHANNELS if c != "bluesky"]
    meanwhile: list[bool] = []

    def slow(item: OutboxItem) -> None:
        if not meanwhile:
            meanwhile.append(wait_for(lambda: all(len(p.posts) == 2 for p in others),
                                      timeout=0.3))

    world.publishers["bluesky"].on_publish = slow
    assert dispatcher(world, lanes=1).tick(world.clock.now()).published == 8
    assert meanwhile == [False]


@pytest.mark.parametrize("page_size", [1, 2, 10])
def test_each_channel_keeps_its_dispatch_order(world: World, page_size: int):
    inc = activate(world)
    for p in world.publishers.values():
        p.posts.clear()
    ranks = {"x": [0, 3, 1, 3, 2], "facebook": [2, 2, 0, 1, 3]}
    for channel, severities in ranks.items():
        enqueue(world.store, [NewOutboxItem(
            dedupe_key=f"{channel}:{i}", channel_id=channel, action=ActionKind.POST,
            text=f"{channel} {i} sev {s}", incident_id=inc.id, severity_rank=s,
            is_lead=(i == 4)) for i, s in enumerate(severities)], now=world.clock.now())
    world.publishers["facebook"].on_publish = lambda item: time.sleep(0.001)  # interleave
    dispatcher(world, page_size=page_size).tick(world.clock.now())
    for channel in ranks:
        mine = [p.dedupe_key for p in world.publishers[channel].posts if ":" in p.dedupe_key
                and p.dedupe_key.split(":")[0] == channel]
        # lead agency first, then severity (highest first), then publication time / id
        key = {k: i for i, k in enumerate(mine)}
        expected = sorted(key, key=lambda k: (k != f"{channel}:4",
                                              -ranks[channel][int(k.split(":")[1])],
                                              int(k.split(":")[1])))
        assert mine == expected


def test_a_429_on_one_channel_pauses_only_that_channel(world: World):
    inc = activate(world)
    x_ids = items(world, "x", 3, inc.id)
    items(world, "mastodon", 3, inc.id)
    x = world.publishers["x"]
    reset = world.clock.now() + timedelta(minutes=15)
    calls_before: dict[str, int] = {}

    def limit_at_first_test_item(item: OutboxItem) -> None:
        if item.id == x_ids[0] and not calls_before:
            calls_before["x"] = x.calls
            x.script.append(RateLimitedError("429", reset_at=reset, channel_id="x"))

    x.on_publish = limit_at_first_test_item
    d = dispatcher(world)
    stats = d.tick(world.clock.now())
    assert stats.rate_limited == 1
    # The other channels went on: everything of theirs is out.
    assert {str(i.state) for c in ("facebook", "mastodon", "bluesky")
            for i in world.store.items(channel_id=c)} == {"published"}
    # x: the item that met the 429 and the ones claimed with it wait for the reset, unsent.
    waiting = [world.store.get_item(i) for i in x_ids]
    assert [str(i.state) for i in waiting] == ["queued"] * 3
    assert all(i.not_before == reset and i.lease_owner is None for i in waiting)
    assert x.calls == calls_before["x"]  # nothing after the 429 on x
    world.clock.advance(timedelta(minutes=14))
    d.tick(world.clock.now())
    assert x.calls == calls_before["x"]
    world.clock.advance(timedelta(minutes=2))
    d.tick(world.clock.now())
    assert [p.dedupe_key for p in x.posts if p.dedupe_key.startswith("x:")] == \
        ["x:0", "x:1", "x:2"]


def test_stop_sends_nothing_new_and_gives_the_claimed_items_back(world: World):
    inc = activate(world)
    ids = items(world, "x", 4, inc.id)
    d = dispatcher(world)
    x = world.publishers["x"]
    x.on_publish = lambda item: d.stop_requested.set() if item.id == ids[0] else None

    def sent() -> list[str]:
        return [p.dedupe_key for p in x.posts if p.dedupe_key.startswith("x:")]

    d.tick(world.clock.now())
    assert sent() == ["x:0"]  # the send in flight finished, no other started
    rest = [world.store.get_item(i) for i in ids[1:]]
    assert {(str(i.state), i.lease_owner) for i in rest} == {("queued", None)}
    assert rest[0].reason == "not sent: the dispatcher stopped"
    d.stop_requested.clear()
    d.tick(world.clock.now())
    assert sent() == ["x:0", "x:1", "x:2", "x:3"]


def test_claimed_items_waiting_their_turn_keep_their_lease(world: World):
    """A slow send while the rest of its page waits: the lease keeper renews the waiting items
    too, so a second dispatcher ticking meanwhile takes none of them over."""
    inc = activate(world)
    for it in world.store.items(states=["queued"]):
        from crisiscomms.services import queue as ops

        ops.reject(world.store, world.catalog, world.clock, it.id, "alice", "not this test")
    ids = items(world, "x", 3, inc.id)
    lease = DispatchSettings(lease_seconds=5)
    other = open_store(f"sqlite:///{world.store.path}")
    a = dispatcher(world, "A", settings=lease)
    b = dispatcher(world, "B", store=other, settings=lease)
    seen_by_b: list[int] = []

    def slow(item: OutboxItem) -> None:
        if item.id != ids[0] or seen_by_b:
            return
        started = world.clock.now()
        world.clock.advance(timedelta(seconds=4))
        assert wait_for(lambda: all((other.get_item(i).lease_until or started)
                                    > started + timedelta(seconds=5) for i in ids))
        world.clock.advance(timedelta(seconds=3))  # past every lease as first dated
        seen_by_b.append(b.tick(world.clock.now()).published)
        assert {(str(other.get_item(i).state), other.get_item(i).lease_owner)
                for i in ids[1:]} == {("leased", "A")}

    world.publishers["x"].on_publish = slow
    a.tick(world.clock.now())
    assert seen_by_b == [0]
    assert [p.dedupe_key for p in world.publishers["x"].posts] == ["x:0", "x:1", "x:2"]
    assert not any(e.action == "outbox.stale_write_refused"
                   for e in world.store.audit_events())


class Platform:
    """One platform shared by two dispatchers: counts every request (thread-safe)."""

    def __init__(self, channel_id: str, calls: Counter[str], guard: threading.Lock) -> None:
        self.channel_id, self.calls, self.guard = channel_id, calls, guard

    def publish(self, item: OutboxItem, update: Update | None) -> PublishResult:
        with self.guard:
            self.calls[item.dedupe_key] += 1
        time.sleep(0.001)  # a request takes a moment: the two dispatchers overlap
        return PublishResult(post_id=f"{item.dedupe_key}", url="")

    def find_existing(self, item: OutboxItem, update: Update | None) -> PublishResult | None:
        return None

    def close(self) -> None:
        return None


def test_two_dispatchers_at_once_send_nothing_twice(world: World):
    inc = activate(world)
    for c in CHANNELS:
        # The lead agency's updates: only the platform's limits bound them, never our hourly
        # safety ceiling (facebook's is 8), so every item must go out.
        items(world, c, 15, inc.id, severity_rank=1, is_lead=True)
    calls: Counter[str] = Counter()
    guard = threading.Lock()
    world.publishers = {c: Platform(c, calls, guard) for c in CHANNELS}  # type: ignore[misc]
    stores = [world.store, open_store(f"sqlite:///{world.store.path}")]
    ds = [dispatcher(world, f"w{i}", store=stores[i], page_size=3) for i in range(2)]
    barrier = threading.Barrier(2)
    errors: list[BaseException] = []

    def run(d: Dispatcher) -> None:
        barrier.wait()
        try:
            for _ in range(5):
                d.tick(world.clock.now())
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(d,)) for d in ds]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert errors == []
    everything = world.store.items()
    assert {str(i.state) for i in everything} == {"published"}, [
        (i.id, i.channel_id, str(i.state), i.reason) for i in everything
        if str(i.state) != "published"]
    assert sorted(calls) == sorted(i.dedupe_key for i in everything)
    assert set(calls.values()) == {1}  # every item sent once, none twice
    actors = Counter(e.actor for i in everything for e in world.store.item_events(i.id)
                     if e.state == "published")
    assert sum(actors.values()) == len(everything)


def test_a_dispatcher_that_waits_for_real_sends_on_several_lanes(world: World):
    real = Dispatcher(store=world.store, catalog=world.catalog, publishers=world.publishers,
                      settings=DispatchSettings(), worker_id="w")
    simulated = Dispatcher(store=world.store, catalog=world.catalog,
                           publishers=world.publishers, settings=DispatchSettings(),
                           worker_id="w", sleep=lambda s: None)
    assert (real.lanes, simulated.lanes) == (MAX_LANES, 1)
