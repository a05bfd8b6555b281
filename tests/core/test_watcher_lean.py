"""The lean watcher loop (issue 14): states kept in memory between cycles, due times in a
heap, the quiet polls of a cycle written in one transaction, every fencing rule kept; and
adaptive polling of an active incident's sources."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from crisiscomms.domain.models import PollHints, PollResult, ReadBudget, SourceState
from crisiscomms.services import incidents
from crisiscomms.services.watch import Watcher
from crisiscomms.settings import PollingSettings
from tests.core.helpers import make_world, update


@pytest.fixture
def world(tmp_path: Path, playbooks_dir: Path):
    return make_world(tmp_path, playbooks_dir)


def counting(calls: list[str], name: str, fn: Callable[..., Any]) -> Callable[..., Any]:
    def wrapper(*a: Any, **kw: Any) -> Any:
        calls.append(name)
        return fn(*a, **kw)
    return wrapper


def watcher(world, owner: str = "w1", **settings: Any) -> Watcher:
    return Watcher(store=world.store, catalog=world.catalog,
                   sources=list(world.sources.values()),
                   settings=PollingSettings(jitter_seconds=0, **settings),
                   rng=random.Random(1), owner=owner)


def cycle(w: Watcher, now: datetime):
    return asyncio.run(w.poll_cycle(now))


def states(world) -> dict[str, SourceState]:
    return {s.source_id: s for s in world.store.source_states()}


def test_states_are_read_once_and_a_tick_with_nothing_due_writes_nothing(world, monkeypatch):
    calls: list[str] = []
    monkeypatch.setattr(world.store, "source_states",
                        counting(calls, "source_states", world.store.source_states))
    monkeypatch.setattr(world.store, "unit_of_work",
                        counting(calls, "uow", world.store.unit_of_work))
    w = watcher(world)
    now = world.clock.now()
    stats = cycle(w, now)
    assert stats.polled == 2  # the two watch: always sources (nothing in an incident)
    # One read of every state, one claim, one write of both quiet polls (not one each).
    assert calls == ["source_states", "uow", "uow"]
    calls.clear()

    async def ticks() -> None:
        for i in range(1, 15):  # 28 s of 2 s ticks: nothing is due
            stats = await w.poll_cycle(now + timedelta(seconds=2 * i))
            assert stats.polled == 0
    asyncio.run(ticks())
    assert calls == []  # no state read, no transaction
    assert w.next_due_at() == now + timedelta(seconds=60)  # met-office-ee's normal interval


def test_another_watchers_poll_is_seen_through_the_failed_claim(world):
    a, b = watcher(world, "a"), watcher(world, "b")
    now = world.clock.now()
    assert cycle(a, now).polled == 2
    later = now + timedelta(seconds=60)
    assert cycle(b, later).polled == 1  # b polls met-office-ee first (EA: every 300 s)
    polls = {k: s.polls for k, s in world.sources.items()}
    # a's copy is stale: its claim fails (another fence), it reads the rows again and does
    # not poll them a second time in the same interval.
    assert cycle(a, later).polled == 0
    assert {k: s.polls for k, s in world.sources.items()} == polls
    assert a.next_due_at() == later + timedelta(seconds=60)  # from b's stored state
    assert cycle(a, later + timedelta(seconds=60)).polled == 1  # met-office-ee (EA: 300 s)


class SlowSource:
    """A quiet source whose poll ends only when ``release`` is set."""

    def __init__(self, key: str) -> None:
        self.key, self.source_ids, self.release = key, (key,), asyncio.Event()

    async def poll(self, state: SourceState, now: datetime) -> PollResult:
        await self.release.wait()
        return PollResult(not_modified=True)

    async def aclose(self) -> None:
        return None


async def settle() -> None:
    for _ in range(20):
        await asyncio.sleep(0)


def test_a_batch_with_one_lease_taken_over_still_records_the_others(world):
    """a's quiet polls wait for the cycle's write (a slow poll keeps the cycle open);
    meanwhile a's lease on one of them runs out and b takes it over: the batch is refused as
    a whole, then written one by one, so only that source's result is dropped (and audited),
    the other's is recorded."""
    activate(world)
    slow = SlowSource("essex-police-x")
    world.sources["essex-police-x"] = slow  # type: ignore[assignment]
    a = watcher(world, "a", deadline_seconds=1, lease_margin_seconds=1)
    b = watcher(world, "b")
    b.sources = [s for s in b.sources if s.key == "ea-floods-essex"]
    now = world.clock.now()

    async def run() -> None:
        stats = await a.poll_cycle(now, wait=False)
        await settle()
        assert stats.polled == 4 and set(a._unsaved) == {
            "eeast-x", "ecfrs-x", "met-office-ee", "ea-floods-essex"}  # not written yet
        # b, after a's 2 s lease ran out, takes ea-floods-essex over and polls it.
        assert (await b.poll_cycle(now + timedelta(seconds=3))).polled == 1
        slow.release.set()
        await asyncio.gather(*list(a._running.values()))
        await settle()  # the cycle's polls are all in: its quiet states are written
        assert not a._unsaved
    asyncio.run(run())
    st = states(world)
    assert st["met-office-ee"].last_polled_at == now and st["met-office-ee"].lease_owner is None
    assert st["ea-floods-essex"].last_polled_at == now + timedelta(seconds=3)  # b's result
    overtaken = world.store.audit_events(action_prefix="source.poll_overtaken")
    assert [e.subject for e in overtaken] == ["source:ea-floods-essex"]


def test_stopping_gives_every_lease_back(world):
    """On stop the slow poll is abandoned (its lease given back) and the finished quiet polls
    are written at once (a restarted watcher need not wait out their leases)."""
    activate(world)
    slow = SlowSource("essex-police-x")
    world.sources["essex-police-x"] = slow  # type: ignore[assignment]
    a = watcher(world, "a")
    now = world.clock.now()

    async def run() -> None:
        await a.poll_cycle(now, wait=False)
        await settle()
        assert a._unsaved
        await a.cancel_running()
    asyncio.run(run())
    st = states(world)
    assert all(s.lease_owner is None for s in st.values())
    assert st["met-office-ee"].last_polled_at == now
    assert st["essex-police-x"].last_polled_at is None  # abandoned: nothing recorded


def activate(world) -> None:
    incidents.activate(world.store, world.catalog, world.clock, playbook="flooding",
                       reason="test", operator="alice")


def test_incident_sources_are_polled_every_5_s_within_the_publishers_floor(world):
    activate(world)
    w = watcher(world)
    now = world.clock.now()
    cycle(w, now)
    nxt = {k: (s.next_poll_at - now).total_seconds() for k, s in states(world).items()
           if s.next_poll_at is not None}
    assert nxt["essex-police-x"] == 5.0 and nxt["met-office-ee"] == 5.0
    assert nxt["ea-floods-essex"] == 300.0  # sources.yaml's min_interval_seconds
    # Polled again 6 s on (the next 2 s tick after 5 s), not 30 s on.
    world.sources["essex-police-x"].set_snapshot([update("essex-police-x", "1")])
    stats = cycle(w, now + timedelta(seconds=6))
    assert stats.polled == 4 and stats.new_updates == 1


def test_normal_polling_is_unchanged(world):
    w = watcher(world)
    now = world.clock.now()
    cycle(w, now)
    assert states(world)["met-office-ee"].next_poll_at == now + timedelta(seconds=60)


class HintedSource:
    """A quiet source whose answers carry the given hints."""

    def __init__(self, key: str, hints: PollHints) -> None:
        self.key, self.source_ids, self.hints, self.polls = key, (key,), hints, 0

    async def poll(self, state: SourceState, now: datetime) -> PollResult:
        self.polls += 1
        return PollResult(not_modified=True, hints=self.hints)

    async def aclose(self) -> None:
        return None


@pytest.mark.parametrize(("hints", "seconds"), [
    (PollHints(max_age_seconds=20), 20.0),
    (PollHints(max_age_seconds=600), 30.0),  # honoured up to the incident interval
])
def test_an_incident_source_honours_its_max_age(world, hints, seconds):
    activate(world)
    world.sources["met-office-ee"] = HintedSource("met-office-ee", hints)  # type: ignore
    w = watcher(world)
    now = world.clock.now()
    cycle(w, now)
    assert states(world)["met-office-ee"].next_poll_at == now + timedelta(seconds=seconds)


def test_a_quiet_poll_after_failures_is_recorded_with_its_recovery(world):
    w = watcher(world, failure_alert_after=1)
    now = world.clock.now()
    from crisiscomms.domain.errors import TransientSourceError
    world.sources["met-office-ee"].fail_next(TransientSourceError("down", error_class="x"))
    cycle(w, now)
    assert states(world)["met-office-ee"].failures == 1
    cycle(w, now + timedelta(hours=1))
    assert states(world)["met-office-ee"].failures == 0
    assert world.store.audit_events(action_prefix="source.recovered")


def test_x_sources_in_a_crisis_share_the_apps_read_budget(world):
    """Three X sources polled together draw on one app budget: 40 requests left for 600 s,
    0.8 of it for polling, a third each -> one poll every 56.25 s, not every 5 s."""
    activate(world)
    now = world.clock.now()
    budget = PollHints(budgets=(ReadBudget(40, now + timedelta(seconds=600)),))
    for key in ("essex-police-x", "eeast-x", "ecfrs-x"):
        world.sources[key] = HintedSource(key, budget)  # type: ignore[assignment]
    w = watcher(world)
    cycle(w, now)
    st = states(world)
    for key in ("essex-police-x", "eeast-x", "ecfrs-x"):
        assert st[key].next_poll_at == now + timedelta(seconds=56.25)
    assert st["met-office-ee"].next_poll_at == now + timedelta(seconds=5)


class FailingOnce:
    """The store, whose next unit of work fails (the database went away for a moment)."""

    def __init__(self, inner: Any) -> None:
        self.inner, self.fail = inner, False

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def unit_of_work(self) -> Any:
        if self.fail:
            self.fail = False
            from crisiscomms.domain.errors import StoreError
            raise StoreError("connection lost")
        return self.inner.unit_of_work()


@pytest.mark.parametrize("stage", ["claim", "record"])
def test_a_store_failure_never_drops_a_source_from_the_schedule(world, stage):
    activate(world)
    flaky = FailingOnce(world.store)
    w = watcher(world)
    w.store = flaky  # type: ignore[assignment]
    now = world.clock.now()
    cycle(w, now)
    later = now + timedelta(seconds=6)
    world.sources["essex-police-x"].set_snapshot([update("essex-police-x", "1")])
    if stage == "claim":
        flaky.fail = True
        from crisiscomms.domain.errors import StoreError
        with pytest.raises(StoreError):
            cycle(w, later)
    else:  # the claim works, the poll's record fails (its task ends with the error)
        real = flaky.unit_of_work
        calls = {"n": 0}

        def second_fails() -> Any:
            calls["n"] += 1
            flaky.fail = calls["n"] == 2
            return real()
        flaky.unit_of_work = second_fails  # type: ignore[method-assign]
        from crisiscomms.domain.errors import StoreError
        with pytest.raises(StoreError):  # it surfaces from the poll's task
            cycle(w, later)
        flaky.unit_of_work = real  # type: ignore[method-assign]
    # Polled again once the store answers (after the lease it may still hold runs out).
    polled = 0
    t = later
    for _ in range(80):
        t += timedelta(seconds=2)
        polled += cycle(w, t).new_updates
        if polled:
            break
    assert polled == 1
