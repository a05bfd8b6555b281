"""Two watchers on one database, a platform slower than the lease (issue 10's reproduction).

Watcher A starts a send; the platform takes longer than the lease to answer; watcher B ticks in
the middle. Before the fix, B found the lease expired (it was dated from the start of A's round),
found nothing on the platform yet, and sent again; then A's success was written anyway. Now A
renews its lease while the request is out, so B leaves the item alone, and a write from a worker
whose lease *was* taken over is refused and audited.
"""

from __future__ import annotations

import random
import time
from datetime import timedelta

from crisiscomms.adapters.store import open_store
from crisiscomms.domain.models import ActionKind, NewOutboxItem, OutboxItem
from crisiscomms.services.dispatch import Dispatcher
from crisiscomms.settings import DispatchSettings
from crisiscomms.testing import claim_and_start_send, enqueue
from tests.core.helpers import make_world

from .test_dispatcher import activate

LEASE = DispatchSettings(lease_seconds=5)


def dispatcher(store, world, worker: str) -> Dispatcher:  # type: ignore[no-untyped-def]
    return Dispatcher(store=store, catalog=world.catalog, publishers=world.publishers,
                      settings=LEASE, worker_id=worker, rng=random.Random(1),
                      sleep=lambda s: None, clock=world.clock)


def wait_for(cond, timeout: float = 10.0) -> None:  # type: ignore[no-untyped-def]
    """Wait (bounded) for the lease keeper's background renewal: an event, not a fixed sleep."""
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, "condition never became true"
        time.sleep(0.05)


def test_a_send_slower_than_the_lease_is_not_taken_over_or_duplicated(tmp_path, playbooks_dir):
    world = make_world(tmp_path, playbooks_dir)
    inc = activate(world)
    (item_id,) = enqueue(world.store, [NewOutboxItem(
        dedupe_key="slow:1", channel_id="x", action=ActionKind.POST, text="slow one",
        incident_id=inc.id)], now=world.clock.now())
    other_store = open_store(f"sqlite:///{world.store.path}")
    a = dispatcher(world.store, world, "A")
    b = dispatcher(other_store, world, "B")
    x = world.publishers["x"]
    seen_by_b: list[int] = []

    def slow(item: OutboxItem) -> None:
        if item.id != item_id or seen_by_b:
            return
        started = world.clock.now()
        world.clock.advance(timedelta(seconds=4))
        # A's lease keeper renews from its own thread while the request is out.
        wait_for(lambda: (other_store.get_item(item_id).lease_until or started)
                 > started + timedelta(seconds=5))
        world.clock.advance(timedelta(seconds=3))  # past the lease as first dated
        seen_by_b.append(b.tick(world.clock.now()).published)
        # B did not take the item over: A still holds it under its own token.
        held = other_store.get_item(item_id)
        assert (str(held.state), held.lease_owner, held.fence) == ("sending", "A", 1)

    x.on_publish = slow
    for it in world.store.items(states=["queued"]):
        if it.id != item_id:  # only the slow item matters here
            from crisiscomms.services import queue as ops

            ops.reject(world.store, world.catalog, world.clock, it.id, "alice", "not this test")
    a.tick(world.clock.now())
    assert seen_by_b == [0], "B published while A's send was in flight"
    assert [p.dedupe_key for p in x.posts] == ["slow:1"]
    assert str(world.store.get_item(item_id).state) == "published"


def test_a_worker_whose_lease_was_taken_over_cannot_record_its_send(tmp_path, playbooks_dir):
    world = make_world(tmp_path, playbooks_dir)
    inc = activate(world)
    (item_id,) = enqueue(world.store, [NewOutboxItem(
        dedupe_key="dead:1", channel_id="x", action=ActionKind.POST, text="one",
        incident_id=inc.id)], now=world.clock.now())
    # A claims and starts the send, then stalls (no renewal: the process is paused).
    stale = claim_and_start_send(world.store, item_id, worker="A", now=world.clock.now(),
                                 lease_seconds=5)
    world.publishers["x"].publish(stale, None)  # the platform accepted A's request
    world.clock.advance(timedelta(seconds=6))
    b = dispatcher(world.store, world, "B")
    b.recover(world.clock.now())  # B takes over, asks the platform, finds the post
    assert str(world.store.get_item(item_id).state) == "published"
    # A wakes up and tries to record its own result: refused, reported, nothing written.
    a = dispatcher(world.store, world, "A")
    from crisiscomms.domain.models import PublishResult
    from crisiscomms.services.dispatch import DispatchStats

    stats = DispatchStats()
    assert not a._published(stale, PublishResult(post_id="x-99"), world.clock.now(), stats)
    assert stats.overtaken == 1
    assert world.store.get_item(item_id).platform_post_id == "x-1"
    assert any(e.action == "outbox.stale_write_refused" for e in world.store.audit_events())
    assert len(world.publishers["x"].posts) == 1
