"""Claiming the next items with one query (``OutboxRepository.next_due``), on every backend:
the due pending items of a channel in dispatch order, a page at a time, each locked for the
unit of work that claims it; several workers racing for one queue each get other items, none
claims an item twice and none loses a claim it was handed (PostgreSQL: ``FOR UPDATE SKIP
LOCKED``)."""

from __future__ import annotations

import threading
from datetime import datetime, timedelta

import pytest

from crisiscomms.domain import outbox
from crisiscomms.domain.errors import StaleWriteError
from crisiscomms.domain.models import (
    ActionKind,
    ItemEvent,
    ItemState,
    NewOutboxItem,
    OutboxItem,
)
from crisiscomms.ports import Store

from .conftest import Backend
from .test_store_contract import LEASE, NOW, add_items, claim, save


def item(key: str, channel: str = "x", *, lead: bool = False, severity: int = 0,
         minutes: int | None = None) -> NewOutboxItem:
    return NewOutboxItem(dedupe_key=key, channel_id=channel, action=ActionKind.POST, text=key,
                         is_lead=lead, severity_rank=severity,
                         published_at=None if minutes is None else NOW + timedelta(
                             minutes=minutes))


def next_due(store: Store, channel: str = "x", *, after: OutboxItem | None = None,
             limit: int = 10, now: datetime = NOW) -> list[OutboxItem]:
    """A page, locked while the unit of work lasts (left without commit: nothing written)."""
    with store.unit_of_work() as uow:
        return uow.outbox.next_due(channel, now=now, after=after, limit=limit)


def keys(items: list[OutboxItem]) -> list[str]:
    return [i.dedupe_key for i in items]


def test_next_due_is_the_dispatch_order_a_page_at_a_time(store: Store):
    add_items(store, item("late", minutes=9), item("early", minutes=1),
              item("severe", severity=3, minutes=5), item("lead", lead=True, minutes=20),
              item("undated"), item("other-channel", "fb", lead=True))
    order = ["lead", "severe", "undated", "early", "late"]
    assert keys(next_due(store)) == order
    first = next_due(store, limit=2)
    assert keys(first) == order[:2]
    second = next_due(store, after=first[-1], limit=2)
    assert keys(second) == order[2:4]
    assert keys(next_due(store, after=second[-1], limit=2)) == order[4:]
    assert next_due(store, after=next_due(store)[-1]) == []
    with store.unit_of_work() as uow:
        assert uow.outbox.due_channels(NOW) == ["fb", "x"]


def test_only_pending_due_items_are_next(store: Store):
    add_items(store, *(item(k) for k in ("queued", "held", "approval", "later", "retry-now",
                                          "leased", "skipped", "held-by-alice")))
    it = {i.dedupe_key: i for i in store.items()}
    save(store, it["held"], outbox.decide(it["held"], ItemState.HELD, "out of hours", NOW))
    save(store, it["held-by-alice"], outbox.hold(it["held-by-alice"], until=None,
                                                 reason="held by alice"))
    save(store, it["approval"], outbox.decide(it["approval"], ItemState.NEEDS_APPROVAL,
                                              "normal", NOW))
    for key, not_before in (("later", NOW + timedelta(seconds=1)), ("retry-now", NOW)):
        leased = claim(store, it[key], "w")
        save(store, leased, outbox.release(leased, state=ItemState.QUEUED, reason="retry",
                                           at=NOW, not_before=not_before))
    claim(store, it["leased"], "w")
    save(store, it["skipped"], outbox.decide(it["skipped"], ItemState.SKIPPED, "no", NOW))
    assert sorted(keys(next_due(store))) == ["approval", "held", "queued", "retry-now"]
    assert "later" in keys(next_due(store, now=NOW + timedelta(seconds=1)))
    with store.unit_of_work() as uow:
        assert uow.outbox.due_channels(NOW) == ["x"]
        assert uow.outbox.due_channels(NOW - timedelta(days=1)) == ["x"]  # queued, held...
    add_items(store, item("fb-later", "fb"))
    fb = store.items(channel_id="fb")[0]
    leased = claim(store, fb, "w")
    save(store, leased, outbox.release(leased, state=ItemState.QUEUED, reason="retry", at=NOW,
                                       not_before=NOW + timedelta(hours=1)))
    with store.unit_of_work() as uow:  # a channel whose items are all not yet due is not due
        assert uow.outbox.due_channels(NOW) == ["x"]
        assert uow.outbox.due_channels(NOW + timedelta(hours=1)) == ["fb", "x"]


def _drain(store: Store, worker: str, barrier: threading.Barrier, limit: int,
           claimed: list[int], lost: list[int]) -> None:
    barrier.wait()
    while True:
        with store.unit_of_work() as uow:
            batch = uow.outbox.next_due("x", now=NOW, limit=limit)
            if not batch:
                return
            for it in batch:
                after = outbox.claim(it, owner=worker, until=NOW + LEASE, out_of_hours=False,
                                     over_cap=False)
                try:
                    uow.outbox.save(it, after, ItemEvent(NOW, "leased", f"leased by {worker}",
                                                         worker))
                except StaleWriteError:  # handed an item another worker had claimed
                    lost.append(it.id)
                    continue
                claimed.append(it.id)
            uow.commit()


@pytest.mark.parametrize("workers", [2, 4])
def test_workers_racing_for_one_queue_each_claim_other_items(backend: Backend, workers: int):
    ids = add_items(backend.open(), *(item(f"k{i:03d}", minutes=i) for i in range(60)))
    stores = [backend.open() for _ in range(workers)]
    barrier = threading.Barrier(workers)
    claimed: list[list[int]] = [[] for _ in range(workers)]
    lost: list[int] = []
    threads = [threading.Thread(target=_drain, args=(stores[i], f"w{i}", barrier, 4,
                                                     claimed[i], lost))
               for i in range(workers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    every = [i for mine in claimed for i in mine]
    assert sorted(every) == sorted(ids)  # each item claimed, none twice
    assert lost == []  # nobody was handed an item someone else was claiming
    final = stores[0].items()
    assert {(str(i.state), i.fence) for i in final} == {("leased", 1)}
    assert all(len(stores[0].item_events(i)) == 2 for i in ids)  # queued, leased: once


def test_a_worker_that_holds_its_page_does_not_block_the_next(pg_url):
    """PostgreSQL: a second worker gets the next page at once (SKIP LOCKED), not after the
    first one's transaction ends, and never the first one's items."""
    from crisiscomms.adapters.store import open_store

    url = pg_url()
    a, b = open_store(url), open_store(url)
    try:
        add_items(a, *(item(f"k{i}", minutes=i) for i in range(6)))
        seen_by_b: list[str] = []
        with a.unit_of_work() as uow:
            mine = uow.outbox.next_due("x", now=NOW, limit=2)
            t = threading.Thread(target=lambda: seen_by_b.extend(keys(_locked_page(b))))
            t.start()
            t.join(timeout=10)
            assert not t.is_alive(), "the second worker waited for the first one's rows"
            uow.commit()
        assert keys(mine) == ["k0", "k1"]
        assert seen_by_b == ["k2", "k3"]  # the rows the first worker holds are skipped
    finally:
        a.close()
        b.close()


def _locked_page(store: Store) -> list[OutboxItem]:
    with store.unit_of_work() as uow:
        page = uow.outbox.next_due("x", now=NOW, limit=2)
        uow.commit()
    return page
