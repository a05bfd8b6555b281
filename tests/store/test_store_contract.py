"""The store contract (huey's ``StorageTests`` idea): every backend of the Store port (memory,
SQLite, PostgreSQL) must behave the same, method by method, transition by transition, under
fencing and under concurrency."""

from __future__ import annotations

import threading
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest

from crisiscomms.adapters.store.migrations import POSTGRES_MIGRATIONS, SQLITE_MIGRATIONS
from crisiscomms.domain import outbox
from crisiscomms.domain.errors import (
    NotFoundError,
    RefusedError,
    StaleWriteError,
    TransitionRefusedError,
)
from crisiscomms.domain.models import (
    ActionKind,
    ItemEvent,
    ItemState,
    NewAuditEvent,
    NewOutboxItem,
    OutboxItem,
    SourceKind,
    SourceState,
    Update,
    WatcherInfo,
)
from crisiscomms.ports import Store

from .conftest import Backend

NOW = datetime(2026, 11, 27, 18, 0, tzinfo=UTC)
LEASE = timedelta(minutes=2)
LATEST = max(v for v, _, _ in SQLITE_MIGRATIONS)


def new_item(key: str = "k1", channel: str = "x") -> NewOutboxItem:
    return NewOutboxItem(dedupe_key=key, channel_id=channel, action=ActionKind.POST, text="hi")


def add_items(store: Store, *items: NewOutboxItem) -> list[int]:
    with store.unit_of_work() as uow:
        ids = uow.outbox.add(list(items), at=NOW)
        uow.commit()
    return ids


def save(store: Store, before: OutboxItem, after: OutboxItem, why: str = "t",
         skip_locked: bool = False) -> OutboxItem:
    with store.unit_of_work() as uow:
        saved = uow.outbox.save(before, after, ItemEvent(NOW, str(after.state), why, "test"),
                                skip_locked=skip_locked)
        uow.commit()
    return saved


def claim(store: Store, item: OutboxItem, owner: str, now: datetime = NOW) -> OutboxItem:
    return save(store, item, outbox.claim(item, owner=owner, until=now + LEASE,
                                          out_of_hours=False, over_cap=False), skip_locked=True)


def update(ext: str = "e1", text: str = "flood warning") -> Update:
    return Update(id=None, source_id="ea", agency="Environment Agency", kind=SourceKind.RSS,
                  external_id=ext, url="https://example.gov.uk/1", title="t", text=text,
                  published_at=NOW, fetched_at=NOW, content_hash=f"h-{text}")


# -- incidents ---------------------------------------------------------------------------------
def test_incidents_add_get_list_and_one_active_per_playbook(store: Store):
    with store.unit_of_work() as uow:
        inc = uow.incidents.add(playbook="flooding", hashtags=["#EssexFlood"], lead="ea",
                                reason="r", operator="alice", at=NOW)
        uow.commit()
    assert inc.id is not None and inc.active and inc.hashtags == ("#EssexFlood",)
    assert store.get_incident(inc.id) == inc
    assert store.active_incidents() == [inc]
    with pytest.raises(RefusedError, match="already active"), store.unit_of_work() as uow:
        uow.incidents.add(playbook="flooding", hashtags=[], lead="ea", reason="r",
                          operator="bob", at=NOW)
    with store.unit_of_work() as uow:
        assert uow.incidents.stand_down(inc.id, at=NOW, operator="alice", reason="over")
        assert not uow.incidents.stand_down(inc.id, at=NOW, operator="alice", reason="again")
        assert not uow.incidents.change_lead(inc.id, lead="police")
        uow.commit()
    (closed,) = store.incidents()
    assert not closed.active and closed.deactivated_by == "alice"
    assert store.active_incidents() == []
    with pytest.raises(NotFoundError, match="unknown incident 999"):
        store.get_incident(999)


def test_a_unit_of_work_without_commit_writes_nothing(store: Store):
    with store.unit_of_work() as uow:
        uow.incidents.add(playbook="p", hashtags=[], lead="l", reason="r", operator="o",
                          at=NOW)
        uow.outbox.add([new_item()], at=NOW)
        uow.audit.append(NewAuditEvent("o", "test.event", "s", "r", NOW))
    assert store.incidents() == [] and store.items() == []
    assert store.audit_events() == [] and store.verify_audit().ok


def test_an_error_inside_a_unit_of_work_rolls_everything_back(store: Store):
    with pytest.raises(RuntimeError), store.unit_of_work() as uow:
        uow.outbox.add([new_item()], at=NOW)
        uow.audit.append(NewAuditEvent("o", "test.event", "s", "r", NOW))
        raise RuntimeError("boom")
    assert store.items() == [] and store.audit_events() == []


# -- updates and sources -------------------------------------------------------------------------
def test_updates_revisions_dispositions_and_filters(store: Store):
    with store.unit_of_work() as uow:
        assert uow.updates.latest("ea", "e1") is None
        first = uow.updates.add(update(), revision=1, baseline=True)
        second = uow.updates.add(update(text="flood warning (updated)"), revision=2,
                                 baseline=False)
        uow.updates.set_disposition(second.id or 0, "queued")
        uow.commit()
    assert first.id and second.id and first.id != second.id
    with store.reader() as r:
        assert r.updates.latest("ea", "e1") == (2, "h-flood warning (updated)")
    rows = store.updates(source_ids=["ea"])
    assert [(u.revision, d, b) for u, d, b in rows] == [(1, "", True), (2, "queued", False)]
    assert store.updates(source_ids=[]) == []
    assert store.updates(published_from=NOW + timedelta(seconds=1)) == []
    assert store.get_update(second.id).text == "flood warning (updated)"


def test_the_same_revision_cannot_be_stored_twice(backend: Backend):
    a, b = backend.open(), backend.open()
    with a.unit_of_work() as uow:
        uow.updates.add(update(), revision=1, baseline=False)
        uow.commit()
    with pytest.raises(Exception), b.unit_of_work() as uow:
        uow.updates.add(update(text="other"), revision=1, baseline=False)
        uow.commit()
    assert len(a.updates()) == 1


def test_source_state_claim_save_and_fencing(backend: Backend):
    a, b = backend.open(), backend.open()
    seen = a.source_state("ea")
    assert seen == SourceState(source_id="ea")
    with a.unit_of_work() as uow:
        got = uow.sources.claim({"ea": seen}, owner="w1", now=NOW, lease=LEASE)
        uow.commit()
    with b.unit_of_work() as uow:  # held by w1: w2 gets nothing
        assert uow.sources.claim({"ea": seen}, owner="w2", now=NOW, lease=LEASE) == {}
        uow.commit()
    mine = got["ea"]
    assert mine.lease_owner == "w1" and mine.fence == seen.fence + 1
    # w1 stalls past its lease; w2 takes the source over and records its poll.
    later = NOW + LEASE + timedelta(seconds=1)
    with b.unit_of_work() as uow:
        theirs = uow.sources.claim({"ea": b.source_state("ea")}, owner="w2", now=later,
                                   lease=LEASE)["ea"]
        uow.commit()
    with b.unit_of_work() as uow:
        uow.sources.save(replace(theirs, cursor="c2", last_polled_at=later), owner="w2")
        uow.commit()
    with pytest.raises(StaleWriteError, match="taken over"), a.unit_of_work() as uow:
        uow.sources.save(replace(mine, cursor="c1"), owner="w1")
        uow.commit()
    final = a.source_state("ea")
    assert final.cursor == "c2" and final.lease_owner is None
    # A state seen before that poll is stale: claiming with it gets nothing.
    with a.unit_of_work() as uow:
        assert uow.sources.claim({"ea": seen}, owner="w1", now=later, lease=LEASE) == {}
        uow.commit()
    assert [s.source_id for s in a.source_states()] == ["ea"]


def test_many_states_are_read_and_claimed_in_one_go(backend: Backend):
    # The watcher reads again, in one query, the sources whose claim another watcher won,
    # and claims a batch with one statement per chunk (a round trip per source on PostgreSQL
    # cost the shared-pg benchmark's watchers a sixth of their time).
    a, b = backend.open(), backend.open()
    keys = [f"s{i:04d}" for i in range(1203)]  # more than one chunk of IN (...)
    with a.unit_of_work() as uow:
        mine = uow.sources.claim({k: SourceState(source_id=k) for k in keys[::2]},
                                 owner="w1", now=NOW, lease=LEASE)
        uow.commit()
    assert sorted(mine) == keys[::2]
    assert all(st.lease_owner == "w1" and st.fence == 1 for st in mine.values())
    with b.unit_of_work() as uow:
        theirs = uow.sources.claim({k: SourceState(source_id=k) for k in keys},
                                   owner="w2", now=NOW, lease=LEASE)
        got = uow.sources.get_many([*keys, "never-stored"])
        uow.commit()
    assert sorted(theirs) == keys[1::2]  # the ones w1 holds are skipped
    assert set(got) == {*keys, "never-stored"}
    assert got["never-stored"] == SourceState(source_id="never-stored")
    assert got[keys[0]].lease_owner == "w1" and got[keys[1]].lease_owner == "w2"
    assert got[keys[0]] == a.source_state(keys[0])
    with b.unit_of_work() as uow:
        assert uow.sources.get_many([]) == {}


def test_a_state_read_during_another_watchers_poll_is_stale_once_it_is_recorded(
        backend: Backend):
    # Found by benchmarks/shared_pg.py: w2 looked while w1's lease was held (so it saw w1's
    # fence); w1 then recorded its poll, which does not move the fence. The copy w2 read must
    # not claim the source when the lease is over: it was polled since w2 looked.
    a, b = backend.open(), backend.open()
    with a.unit_of_work() as uow:
        mine = uow.sources.claim({"ea": a.source_state("ea")}, owner="w1", now=NOW,
                                 lease=LEASE)["ea"]
        uow.commit()
    during = b.source_state("ea")  # w2's look: leased to w1
    assert during.lease_owner == "w1"
    with a.unit_of_work() as uow:
        uow.sources.save(replace(mine, last_polled_at=NOW, lease_owner=None, lease_until=None,
                                 next_poll_at=NOW + timedelta(seconds=300)), owner="w1")
        uow.commit()
    later = NOW + LEASE + timedelta(seconds=1)
    with b.unit_of_work() as uow:
        assert uow.sources.claim({"ea": during}, owner="w2", now=later, lease=LEASE) == {}
        uow.commit()
    with b.unit_of_work() as uow:  # read again, it can be claimed (when it is due)
        assert "ea" in uow.sources.claim({"ea": b.source_state("ea")}, owner="w2",
                                         now=later, lease=LEASE)
        uow.commit()


def test_an_update_another_watcher_recorded_meanwhile_is_a_stale_write(backend: Backend):
    # Found by benchmarks/shared_pg.py: two watchers whose polls of one source overlapped (a
    # lease run out while the poll queued) both recorded its new entries; the second insert
    # escaped as the driver's unique violation and killed the poll's task unhandled. It is
    # the other watcher's poll that counts: a StaleWriteError, nothing written.
    a, b = backend.open(), backend.open()
    with a.unit_of_work() as uow:
        uow.updates.add(update("e9"), revision=1, baseline=False)
        uow.commit()
    with pytest.raises(StaleWriteError, match="another watcher"), b.unit_of_work() as uow:
        uow.updates.add(update("e9"), revision=1, baseline=False)
        uow.commit()
    assert len(a.updates()) == 1
    with b.unit_of_work() as uow:  # the store is usable afterwards
        uow.updates.add(update("e10"), revision=1, baseline=False)
        uow.commit()


def test_two_watchers_racing_for_due_sources_split_them(backend: Backend):
    keys = [f"s{i:02d}" for i in range(20)]
    stores = [backend.open(), backend.open()]
    won: dict[str, list[str]] = {"w0": [], "w1": []}
    barrier = threading.Barrier(2)

    def go(i: int) -> None:
        s = stores[i]
        seen = {k: s.source_state(k) for k in keys}
        barrier.wait()
        with s.unit_of_work() as uow:
            got = uow.sources.claim(seen, owner=f"w{i}", now=NOW, lease=LEASE)
            uow.commit()
        won[f"w{i}"] = sorted(got)

    threads = [threading.Thread(target=go, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(won["w0"] + won["w1"]) == keys  # each source claimed exactly once


# -- the outbox ----------------------------------------------------------------------------------
def test_outbox_add_is_idempotent_and_lists_filter(store: Store):
    assert add_items(store, new_item("k1"), new_item("k2", "fb")) != []
    assert add_items(store, new_item("k1")) == []
    assert [i.dedupe_key for i in store.items()] == ["k1", "k2"]
    assert [i.dedupe_key for i in store.items(channel_id="fb")] == ["k2"]
    assert [i.dedupe_key for i in store.items(states=["queued"], limit=1)] == ["k1"]
    assert store.queue_counts() == {"queued": 2}
    (first, _) = store.items()
    assert [e.reason for e in store.item_events(first.id)] == ["queued"]
    with pytest.raises(NotFoundError, match="unknown outbox item 999"):
        store.get_item(999)


def test_the_whole_happy_path_of_an_item(store: Store):
    (item_id,) = add_items(store, new_item())
    item = store.get_item(item_id)
    leased = claim(store, item, "w1")
    assert leased.state is ItemState.LEASED and leased.version == item.version + 1
    sending = save(store, leased, outbox.start_send(leased, at=NOW, until=NOW + LEASE))
    assert sending.attempts == 1
    done = save(store, sending, outbox.publish(sending, post_id="123", url="u", at=NOW))
    stored = store.get_item(item_id)
    assert stored == done and stored.state is ItemState.PUBLISHED
    assert stored.platform_post_id == "123" and stored.lease_owner is None
    assert [e.state for e in store.item_events(item_id)] == ["queued", "leased", "sending",
                                                             "published"]
    with store.reader() as r:
        assert r.outbox.published_for(0, "x") is None
        c = r.outbox.counters("x", now=NOW, week_start=NOW - timedelta(days=1),
                              day_start=NOW - timedelta(hours=1))
    assert c.week_count == 1 and c.normal_week_count == 1 and c.last_hour_count == 1


def test_a_write_from_a_stale_copy_is_refused_and_changes_nothing(store: Store):
    (item_id,) = add_items(store, new_item())
    item = store.get_item(item_id)
    save(store, item, outbox.hold(item, until=None, reason="held by alice"))
    with pytest.raises(StaleWriteError, match=f"item {item_id}"):
        save(store, item, outbox.approve(item, by="bob", at=NOW, reason="ok"))
    now = store.get_item(item_id)
    assert now.state is ItemState.HELD and now.approved_by is None
    assert len(store.item_events(item_id)) == 2


@pytest.mark.parametrize("name", sorted(outbox.TRANSITIONS))
def test_every_transition_is_refused_from_a_state_it_may_not_start_in(store: Store,
                                                                     name: str):
    (item_id,) = add_items(store, new_item())
    item = store.get_item(item_id)
    t = outbox.TRANSITIONS[name]
    wrong = sorted(set(ItemState) - t.allowed_from)
    assert wrong, f"{name} is allowed from every state"
    for state in wrong:
        with pytest.raises(TransitionRefusedError, match=f"'{name}' needs it to be one of"):
            outbox.check(replace(item, state=state), name)
    assert store.get_item(item_id) == item


def test_fencing_a_stale_owner_cannot_publish_requeue_or_fail(backend: Backend):
    a, b = backend.open(), backend.open()
    (item_id,) = add_items(a, new_item())
    leased = claim(a, a.get_item(item_id), "w1")
    sending = save(a, leased, outbox.start_send(leased, at=NOW, until=NOW + LEASE))
    # w1 hangs; its lease expires; w2 takes over (new token) and finds the post on the platform.
    later = NOW + LEASE + timedelta(seconds=1)
    with b.reader() as r:
        (expired,) = r.outbox.expired(later)
    with pytest.raises(TransitionRefusedError, match="lease of w1 runs until"):
        outbox.take_over(expired, owner="w2", now=NOW, until=NOW + LEASE)
    mine = save(b, expired, outbox.take_over(expired, owner="w2", now=later,
                                             until=later + LEASE), skip_locked=True)
    assert mine.fence == sending.fence + 1
    with a.unit_of_work() as uow:  # w1's lease keeper can no longer renew
        assert not uow.outbox.renew(sending, until=later + LEASE)
        uow.commit()
    for stale in (outbox.publish(sending, post_id="dup", url="", at=later),
                  outbox.release(sending, state=ItemState.QUEUED, reason="retry", at=later),
                  outbox.release(sending, state=ItemState.FAILED, reason="gave up", at=later)):
        with pytest.raises(StaleWriteError):
            save(a, sending, stale)
    done = save(b, mine, outbox.publish(mine, post_id="123", url="", at=later))
    assert store_state(b, item_id) == ("published", "123")
    assert done.fence == mine.fence
    with b.unit_of_work() as uow:
        assert uow.outbox.renew(done, until=later) is False  # not in flight any more
        uow.commit()


def store_state(store: Store, item_id: int) -> tuple[str, str | None]:
    it = store.get_item(item_id)
    return str(it.state), it.platform_post_id


def test_the_holder_renews_its_lease(store: Store):
    (item_id,) = add_items(store, new_item())
    leased = claim(store, store.get_item(item_id), "w1")
    sending = save(store, leased, outbox.start_send(leased, at=NOW, until=NOW + LEASE))
    with store.unit_of_work() as uow:
        assert uow.outbox.renew(sending, until=NOW + 2 * LEASE)
        uow.commit()
    with store.reader() as r:
        assert r.outbox.expired(NOW + LEASE + timedelta(seconds=1)) == []
        assert [i.id for i in r.outbox.expired(NOW + 3 * LEASE)] == [item_id]
    # Renewal does not change the version: the holder's next transition still applies.
    save(store, sending, outbox.publish(sending, post_id="1", url="", at=NOW))


def test_two_units_of_work_racing_for_one_item_one_wins(backend: Backend):
    stores = [backend.open() for _ in range(4)]
    (item_id,) = add_items(stores[0], new_item())
    item = stores[0].get_item(item_id)
    barrier = threading.Barrier(len(stores))
    results: list[str] = []

    def go(i: int) -> None:
        barrier.wait()
        try:
            claim(stores[i], item, f"w{i}")
            results.append("won")
        except StaleWriteError:
            results.append("lost")

    threads = [threading.Thread(target=go, args=(i,)) for i in range(len(stores))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(results) == ["lost"] * 3 + ["won"]
    assert stores[0].get_item(item_id).fence == 1


def test_racing_activations_leave_one_incident(backend: Backend):
    stores = [backend.open() for _ in range(6)]
    barrier = threading.Barrier(len(stores))
    results: list[str] = []

    def go(s: Store) -> None:
        barrier.wait()
        try:
            with s.unit_of_work() as uow:
                uow.incidents.add(playbook="flooding", hashtags=["#A"], lead="l", reason="r",
                                  operator="o", at=NOW)
                uow.audit.append(NewAuditEvent("o", "incident.activated", "i", "r", NOW))
                uow.commit()
            results.append("ok")
        except RefusedError:
            results.append("refused")

    threads = [threading.Thread(target=go, args=(s,)) for s in stores]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(results) == ["ok"] + ["refused"] * 5
    assert len(stores[0].active_incidents()) == 1
    assert stores[0].verify_audit().count == 1


# -- the audit chain -----------------------------------------------------------------------------
def test_audit_append_events_and_verify(store: Store):
    with store.unit_of_work() as uow:
        for i in range(3):
            uow.audit.append(NewAuditEvent("a", "test.event", f"s{i}", "r", NOW, {"i": i}))
        uow.audit.append(NewAuditEvent("b", "other.thing", "s", "r", NOW + timedelta(hours=1)))
        uow.commit()
    events = store.audit_events()
    assert [e.seq for e in events] == [1, 2, 3, 4]
    assert events[0].details == {"i": 0} and events[1].prev_hash == events[0].hash
    assert [e.seq for e in store.audit_events(action_prefix="test.")] == [1, 2, 3]
    assert [e.seq for e in store.audit_events(since=NOW + timedelta(minutes=1))] == [4]
    assert [e.seq for e in store.audit_events(limit=2)] == [1, 2]
    assert store.audit_events(action_prefix="test_") == []  # '_' is not a wildcard
    report = store.verify_audit()
    assert report.ok and report.count == 4 and report.head_hash == events[-1].hash


def test_concurrent_appends_make_one_chain_with_no_gaps(backend: Backend):
    stores = [backend.open() for _ in range(4)]
    barrier = threading.Barrier(len(stores))

    def go(i: int) -> None:
        barrier.wait()
        for n in range(10):
            with stores[i].unit_of_work() as uow:
                uow.audit.append(NewAuditEvent(f"w{i}", "test.event", f"{i}:{n}", "r", NOW))
                uow.commit()

    threads = [threading.Thread(target=go, args=(i,)) for i in range(len(stores))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    report = stores[0].verify_audit()
    assert report.ok and report.count == 40
    assert [e.seq for e in stores[0].audit_events()] == list(range(1, 41))


# -- channels, windows, watchers -----------------------------------------------------------------
def test_channel_pauses_accumulate(store: Store):
    with store.unit_of_work() as uow:
        uow.channels.pause("x", until=NOW + timedelta(minutes=15), reason="429", wait_seconds=900)
        uow.channels.pause("x", until=NOW + timedelta(minutes=5), reason="429 again",
                           wait_seconds=300)
        uow.commit()
    (x,) = store.channel_states().values()
    assert x.paused_until == NOW + timedelta(minutes=5) and x.rate_limit_waits == 2
    assert x.rate_limit_wait_seconds == 1200 and x.last_error == "429 again"
    with store.reader() as r:
        assert r.outbox.counters("x", now=NOW, week_start=NOW, day_start=NOW).paused_until \
            == NOW + timedelta(minutes=5)


def test_windows_add_list_remove(store: Store):
    with store.unit_of_work() as uow:
        w = uow.windows.add(start=NOW, end=NOW + timedelta(hours=1), reason="Q&A",
                            operator="alice", at=NOW)
        uow.commit()
    assert store.windows() == [w] and w.created_by == "alice"
    with store.unit_of_work() as uow:
        assert uow.windows.remove(w.id or 0)
        assert not uow.windows.remove(w.id or 0)
        uow.commit()
    assert store.windows() == []


def test_watchers_heartbeat_list_and_remove(store: Store):
    a = WatcherInfo("host-a:1", "host-a", 1, NOW, NOW)
    b = WatcherInfo("host-b:2", "host-b", 2, NOW, NOW + timedelta(seconds=5))
    with store.unit_of_work() as uow:
        uow.watchers.heartbeat(a)
        uow.watchers.heartbeat(b)
        uow.watchers.heartbeat(replace(a, last_seen_at=NOW + timedelta(seconds=10)))
        uow.commit()
    assert [(w.worker_id, w.last_seen_at) for w in store.watchers()] == [
        ("host-a:1", NOW + timedelta(seconds=10)), ("host-b:2", NOW + timedelta(seconds=5))]
    with store.unit_of_work() as uow:
        uow.watchers.remove("host-a:1")
        uow.commit()
    assert [w.host for w in store.watchers()] == ["host-b"]


def test_watchers_record_whether_they_page(store: Store):
    """The heartbeat says whether the watcher pages (notify URLs, real clock): the pager is
    elected among those that do."""
    service = WatcherInfo("relay:1", "relay", 1, NOW, NOW, pages=True)
    officer = WatcherInfo("laptop:2", "laptop", 2, NOW - timedelta(hours=1), NOW)
    with store.unit_of_work() as uow:
        uow.watchers.heartbeat(service)
        uow.watchers.heartbeat(officer)
        uow.commit()
    assert {w.worker_id: w.pages for w in store.watchers()} == {"relay:1": True,
                                                                 "laptop:2": False}
    with store.unit_of_work() as uow:  # a restart with other settings: the flag follows
        uow.watchers.heartbeat(replace(service, pages=False, last_seen_at=NOW + LEASE))
        uow.watchers.heartbeat(replace(officer, pages=True, last_seen_at=NOW + LEASE))
        uow.commit()
    assert {w.worker_id: w.pages for w in store.watchers()} == {"relay:1": False,
                                                                 "laptop:2": True}


def test_watchers_record_their_push_connections(store: Store):
    """The heartbeat carries how each push connection is, for ``status`` in another process;
    the next heartbeat replaces it."""
    from crisiscomms.domain.models import PushStatus

    down = PushStatus("jetstream", "jetstream", ("essex-fire-bsky", "ea-bsky"), connected=False,
                      since=NOW, failures=3, last_error="ConnectionClosed: 1006")
    up = PushStatus("mastodon-stream", "mastodon", ("essex-police-m",), connected=True,
                    since=NOW - timedelta(minutes=5), last_event_at=NOW, events=7)
    info = WatcherInfo("relay:1", "relay", 1, NOW, NOW, push=(down, up))
    with store.unit_of_work() as uow:
        uow.watchers.heartbeat(info)
        uow.commit()
    [got] = store.watchers()
    assert got.push == (down, up)
    with store.unit_of_work() as uow:
        uow.watchers.heartbeat(replace(info, push=(), last_seen_at=NOW + LEASE))
        uow.commit()
    assert store.watchers()[0].push == ()


def test_a_heartbeat_written_before_migration_9_reads_as_not_paging(
        backend: Backend, monkeypatch: pytest.MonkeyPatch):
    """A watchers row of an older version (no 'pages' column yet) upgrades to 'does not
    page': it is never elected to page until it heartbeats again with the new version."""
    if backend.memory is not None:
        pytest.skip("the memory store has no older rows")
    from crisiscomms.adapters.store import migrations, postgres

    monkeypatch.setattr(migrations, "SQLITE_MIGRATIONS",
                        [m for m in SQLITE_MIGRATIONS if m[0] < 9])
    monkeypatch.setattr(postgres, "POSTGRES_MIGRATIONS",
                        [m for m in POSTGRES_MIGRATIONS if m[0] < 9])
    old = backend.open()
    assert old.schema_version == 8
    insert = ("INSERT INTO watchers (worker_id, host, pid, started_at, last_seen_at) VALUES "
              "('old:1', 'old', 1, '2026-11-27T17:00:00.000000Z', '2026-11-27T18:00:00.000000Z')")
    if backend.name == "sqlite":
        import sqlite3

        db = sqlite3.connect(backend.url.removeprefix("sqlite:///"), isolation_level=None)
        db.execute(insert)
        db.close()
    else:
        import psycopg

        with psycopg.connect(backend.url, autocommit=True) as conn:
            conn.execute(insert)
    monkeypatch.undo()
    new = backend.open()
    assert new.schema_version == LATEST >= 9
    [w] = new.watchers()
    assert (w.worker_id, w.pages, w.last_seen_at) == ("old:1", False, NOW)


def test_a_reader_cannot_commit(store: Store):
    with pytest.raises(Exception, match="read-only"), store.reader() as r:
        r.commit()


def test_both_sql_dialects_have_the_same_migration_versions():
    assert [(v, n) for v, n, _ in SQLITE_MIGRATIONS] == [(v, n) for v, n, _ in
                                                         POSTGRES_MIGRATIONS]


def test_migrations_from_an_empty_database_and_again(backend: Backend):
    first = backend.open()
    assert first.schema_version == LATEST
    with first.unit_of_work() as uow:
        uow.outbox.add([new_item()], at=NOW)
        uow.commit()
    again = backend.open()  # re-opening migrates nothing and loses nothing
    assert again.schema_version == LATEST and len(again.items()) == 1
