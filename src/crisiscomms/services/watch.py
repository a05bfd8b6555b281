"""The watcher's polling half: sources in, updates stored, matched and queued exactly once.

``poll_cycle(now)`` polls every due source concurrently (bounded by the fetcher's limits);
one source's failure is recorded against that source only and backs it off, without delaying
any other. Each source's updates, its new state and the outbox items they become are written
in one transaction, so a crash can never separate "seen" from "queued".

A lean loop: the sources' states are kept in memory between cycles and their due times in a
heap (``services.schedule``), so a tick that finds nothing due costs one query (the active
incidents) and no scan of every source. The store stays the truth: the claim returns each
claimed row as stored (what the poll starts from), a source whose claim fails (another
watcher polled it, or holds it) is read again, and every state is loaded afresh after a
restart or a reload. Polls that found nothing new (the 304s) are written together, in one
transaction per cycle, under the same fencing as one by one; a batch refused because one
lease was taken over is written again one by one, so only that source's result is dropped.
Sources of an active incident are paced by ``domain.pacing`` (about every 5 s, never faster
than the publisher, the answer's max-age or the platform's read budget allow).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import random
from collections import Counter
from collections.abc import Callable, Sequence
from collections.abc import Set as AbstractSet
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta

import structlog

from crisiscomms import aio
from crisiscomms.domain.config import Catalog
from crisiscomms.domain.errors import (
    SourceError,
    StaleWriteError,
    StoreError,
    TransientSourceError,
)
from crisiscomms.domain.matching import (
    all_lead_sources,
    follows_up,
    match,
    priority,
    referenced_ids,
)
from crisiscomms.domain.models import (
    Doorbell,
    Incident,
    NewAuditEvent,
    NewOutboxItem,
    PollResult,
    PushStatus,
    RecordedUpdate,
    SourceState,
    Update,
)
from crisiscomms.domain.pacing import next_poll
from crisiscomms.ports import Clock, PushListener, Source, Store, UnitOfWork
from crisiscomms.retry import backoff_delay
from crisiscomms.services.schedule import Schedule
from crisiscomms.settings import PollingSettings, PushSettings

log = structlog.get_logger(__name__)

NOT_BEFORE = "not_before"  # in SourceState.extra: a reset the source named (429)
REFUSED_SEEN = "refused_seen"  # in SourceState.extra: refusals already audited (bounded)
REFUSALS = frozenset({"redirect_refused", "private_address", "bad_url", "too_many_redirects"})


async def _close(src: Source) -> None:
    try:
        await src.aclose()
    except Exception as exc:  # a stopped adapter's close failing is not the loop's failure
        log.warning("source.close_failed", source=src.key, error=str(exc))


_CLOSING: set[asyncio.Future[None]] = set()  # closes in progress (kept until they finish)


def _close_later(src: Source, _task: object = None) -> None:
    with contextlib.suppress(RuntimeError):  # the loop is gone: the process is exiting
        fut = asyncio.ensure_future(_close(src))
        _CLOSING.add(fut)
        fut.add_done_callback(_CLOSING.discard)


def _respecting_reset(state: SourceState, now: datetime) -> bool:
    value = state.extra.get(NOT_BEFORE)
    return bool(value) and datetime.fromisoformat(str(value)) > now


@dataclass
class CycleStats:
    """What one polling cycle did."""

    polled: int = 0
    not_modified: int = 0
    failed: int = 0
    new_updates: int = 0
    queued: int = 0
    overtaken: int = 0  # polls whose lease another watcher took over: not recorded
    errors: dict[str, str] = field(default_factory=dict)


GATE_SHIFT_SECONDS = 1.0
"""A poll that waited at least this long for its turn (``polling.concurrency``) is recorded
from when it ran (the watcher's clock then), not from its cycle's start, so its next poll is
an interval after it. A watcher without a clock (a benchmark's, a test's), or on a drill's
clock that stands still during a step, keeps the cycle's instant."""


CLAIM_AHEAD_MAX = 4
"""A watcher holds at most ``concurrency`` x this many claimed polls (running or waiting for
a slot). Each waits at most one deadline per round ahead of it and then runs within its
deadline, so a claim never outlives its lease (deadline + margin) in the queue: as many
rounds ahead as the margin covers whole deadlines, plus the running one (the defaults, 60 s
and 30 s: only what can start at once). Found by ``benchmarks/shared_pg.py``: claiming every
due source let the leases at the back of the queue run out, and the other watcher polled
those sources again."""


CLAIM_TRIES_FACTOR = 10
"""A step of the run loop tries to claim at most this many times its capacity of due
sources (claims another watcher won included) before it lets the event loop run; the next
step follows at once."""


class Watcher:
    """Polls the sources that matter now and queues what they publish."""

    def __init__(self, *, store: Store, catalog: Catalog, sources: Sequence[Source],
                 settings: PollingSettings, rng: random.Random | None = None,
                 owner: str = "watcher", push: PushSettings | None = None,
                 listeners: Callable[[Catalog], Sequence[PushListener]] | None = None,
                 clock: Clock | None = None) -> None:
        self.store = store
        self.clock = clock  # asked only when a poll waited its turn (GATE_SHIFT_SECONDS)
        self.catalog = catalog
        self.sources = list(sources)
        self.settings = settings
        self.rng = rng or random.Random()
        self.owner = owner
        # A poll's lease outlives its longest possible poll (the fetch deadline), so another
        # watcher takes a source over only from a watcher that died or stalled.
        self.lease = timedelta(seconds=settings.deadline_seconds
                               + settings.lease_margin_seconds)
        self._running: dict[str, asyncio.Future[None]] = {}
        # A cycle claims no more sources than can start within their lease (``_room``): the
        # rest stay due, and a poll finishing wakes the loop once ``_refill`` slots are free.
        ahead = min(CLAIM_AHEAD_MAX, 1 + int(settings.lease_margin_seconds
                                             // settings.deadline_seconds))
        self._capacity = settings.concurrency * ahead
        self._refill = max(1, settings.concurrency // 2)
        self._held_back = False
        self._scope_cache: tuple[Catalog, tuple[tuple[str, bool], ...],
                                 tuple[frozenset[str], frozenset[str]]] | None = None
        self._by_key: tuple[list[Source], dict[str, Source]] | None = None
        # made on the loop that polls (a semaphore belongs to one event loop)
        self._gate: tuple[asyncio.AbstractEventLoop, asyncio.Semaphore] | None = None
        self._pending: tuple[Catalog, list[Source], set[str]] | None = None
        self._superseded: list[Source] = []  # built by a reload, replaced before they started
        # The lean loop: states in memory (None: read them all from the store next cycle),
        # due times in a heap, and the quiet polls' states waiting for the cycle's write.
        self._states: dict[str, SourceState] | None = None
        self._schedule = Schedule()
        self._scheduled_for: tuple[frozenset[str], frozenset[str]] | None = None
        self._unsaved: dict[str, tuple[Source, SourceState, datetime]] = {}
        self._cycle_tasks: set[asyncio.Future[None]] = set()
        # Push (``ring``): doorbells waiting for the next cycle, the pushed due times laid
        # over the schedule until a poll starts after them, and the pushed posts a poll has
        # not seen yet (polled again shortly: an index may lag its stream).
        self.push = push or PushSettings()
        self._make_listeners = listeners
        self._listeners: dict[str, tuple[PushListener, asyncio.Future[None] | None,
                                         tuple[str, ...]]] = {}
        self._pushing = False
        self._bells: list[Doorbell] = []
        self._pushed_at: dict[str, datetime] = {}
        self._expect: dict[str, tuple[set[str], int]] = {}
        self.wake = asyncio.Event()  # set by a doorbell: the poll loop need not wait its tick
        self.queued = asyncio.Event()  # set when a cycle queued items: dispatch them now

    # -- following the playbooks ------------------------------------------------------
    def reconfigure(self, catalog: Catalog, added: Sequence[Source], dropped: set[str]) -> None:
        """Use a reloaded catalogue from the next cycle on (never in the middle of one):
        the adapters keyed ``dropped`` stop (each when its poll in progress, if any, ends) and
        ``added`` start; the others keep polling with their state, as after a restart."""
        if self._pending is not None:  # two reloads before a cycle: the later one wins
            _, earlier, gone = self._pending
            # The later reload was planned on the running adapters: only what IT rebuilt
            # replaces an adapter the earlier one built (which then never starts).
            self._superseded += [a for a in earlier if a.key in dropped]
            added = [*(a for a in earlier if a.key not in dropped), *added]
            dropped = dropped | gone
        self._pending = (catalog, list(added), set(dropped))

    def pending_sources(self) -> list[Source]:
        """Adapters a reload built that no cycle has started yet (closed with the others)."""
        return [*(self._pending[1] if self._pending is not None else []), *self._superseded]

    async def _apply_pending(self) -> None:
        pending, self._pending = self._pending, None
        superseded, self._superseded = self._superseded, []
        for src in superseded:
            await _close(src)
        if pending is None:
            return
        catalog, added, dropped = pending
        gone = [s for s in self.sources if s.key in dropped]
        self.catalog = catalog
        self.sources = [*(s for s in self.sources if s.key not in dropped), *added]
        self._states = None  # read every state afresh, and schedule the new sources

        log.info("watch.reconfigured", sources=[s.key for s in self.sources],
                 started=[s.key for s in added], stopped=sorted(dropped))
        self._follow_listeners()
        for src in gone:
            task = self._running.get(src.key)
            if task is None:
                await _close(src)
            else:  # its poll ends first (a poll is never cut short by a reload)
                task.add_done_callback(functools.partial(_close_later, src))

    # -- push -----------------------------------------------------------------------
    def ring(self, bell: Doorbell) -> None:
        """A push connection's news (never blocks): the sources it names are polled at the
        next cycle, which the poll loop starts at once (``wake``). Applied in ``poll_cycle``:
        only watched sources, never before a reset the source named, a failing source's
        backoff or the publisher's floor; a source being polled is polled again after."""
        self._bells.append(bell)
        self.wake.set()

    def start_push(self) -> None:
        """Open the push connections (in the running event loop) until ``stop_push``."""
        self._pushing = True
        self._follow_listeners()

    async def stop_push(self) -> None:
        """Close every push connection."""
        self._pushing = False
        tasks = [t for _, t, _ in self._listeners.values() if t is not None]
        self._listeners.clear()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    def push_status(self) -> tuple[PushStatus, ...]:
        """How each push connection is (the heartbeat carries it to ``status``)."""
        return tuple(listener.status() for listener, _, _ in self._listeners.values())

    def _follow_listeners(self) -> None:
        """The connections the current catalogue asks for: unchanged ones (same key, same
        sources) keep running; changed or gone ones close; new ones open."""
        if not self._pushing or self._make_listeners is None:
            return
        try:
            wanted = {lst.key: lst for lst in self._make_listeners(self.catalog)}
        except Exception as exc:  # a push problem never stops polling
            log.error("push.build_failed", error=str(exc)[:300],
                      note="sources are polled only until the next reload")
            wanted = {}
        for key, (_old, task, built_for) in list(self._listeners.items()):
            new = wanted.get(key)
            # Compared with the sources it was built for (a connection may narrow its own
            # set once running: WebSub keeps only the feeds that advertise a hub).
            if new is not None and new.source_ids == built_for:
                wanted.pop(key)
                continue
            del self._listeners[key]
            if task is not None:
                task.cancel()
        for key, listener in wanted.items():
            task = asyncio.ensure_future(listener.run(self.ring))
            task.add_done_callback(functools.partial(self._listener_ended, key))
            self._listeners[key] = (listener, task, tuple(listener.source_ids))

    def _listener_ended(self, key: str, task: asyncio.Future[None]) -> None:
        if not task.cancelled() and task.exception() is not None:
            log.error("push.listener_crashed", connection=key, error=str(task.exception()),
                      note="its sources are polled only")

    def _apply_bells(self, now: datetime, watched: AbstractSet[str]) -> None:
        """Doorbells rung since the last cycle: each watched source named is due now (or as
        soon as its reset, backoff and floor allow)."""
        bells, self._bells = self._bells, []
        if not bells:
            return
        assert self._states is not None
        key_of = {sid: src for src in self.sources for sid in src.source_ids}
        for bell in bells:
            for sid in bell.source_ids:
                src = key_of.get(sid)
                if src is None or sid not in watched:
                    continue
                key = src.key
                st = self._states.get(key) or SourceState(source_id=key)
                at = now
                if st.failures and st.next_poll_at is not None:
                    at = max(at, st.next_poll_at)  # a failing source keeps its backoff
                value = st.extra.get(NOT_BEFORE)
                if value:
                    at = max(at, datetime.fromisoformat(str(value)))
                floor = self._floor(src)
                if floor and st.last_polled_at is not None:
                    at = max(at, st.last_polled_at + timedelta(seconds=floor))
                if bell.reason == "pushed" and bell.expect_id:
                    ids, tries = self._expect.get(key, (set(), 0))
                    self._expect[key] = ({*ids, bell.expect_id}, tries)
                earlier = self._pushed_at.get(key)
                self._pushed_at[key] = at if earlier is None else min(earlier, at)
                log.debug("push.rung", source=key, reason=bell.reason, via=bell.via)
                if key in self._running or key in self._unsaved:
                    continue  # polled again once this poll is recorded (the overlay stays)
                due = self._schedule.due_at(key)
                self._schedule.set(key, at if due is None else min(due, at))

    def _after_push(self, key: str, result: PollResult, now: datetime) -> None:
        """A pushed post this poll did not return is looked for again shortly (an AppView
        lagging Jetstream), a few times, then left to ordinary polling."""
        wanted = self._expect.get(key)
        if wanted is None:
            return
        ids, tries = wanted
        if {u.external_id for u in result.updates} & ids or tries >= self.push.expect_retries:
            del self._expect[key]
            return
        self._expect[key] = (ids, tries + 1)
        self._pushed_at[key] = now + timedelta(
            seconds=self.push.expect_retry_seconds * 2 ** tries)

    # -- scheduling -----------------------------------------------------------------
    def incident_source_ids(self, incidents: Sequence[Incident]) -> set[str]:
        """Sources named by the playbooks of active incidents."""
        ids: set[str] = set()
        for inc in incidents:
            pb = self.catalog.playbooks.get(inc.playbook)
            if pb is not None and inc.active:
                ids |= {s.source for s in pb.sources}
        return ids

    def watched_ids(self, incidents: Sequence[Incident]) -> set[str]:
        """Sources polled now: ``watch: always`` ones, plus those of active incidents."""
        always = {s.id for s in self.catalog.sources.values() if s.watch == "always"}
        return always | self.incident_source_ids(incidents)

    def _interval(self, source: Source, incident_ids: AbstractSet[str]) -> float:
        in_incident = any(sid in incident_ids for sid in source.source_ids)
        base = (self.settings.incident_interval_seconds if in_incident
                else self.settings.interval_seconds)
        for sid in source.source_ids:
            cfg = self.catalog.sources.get(sid)
            if cfg is None:
                continue
            if cfg.interval_seconds:
                base = min(base, cfg.interval_seconds) if in_incident else cfg.interval_seconds
            base = max(base, cfg.min_interval_seconds)  # a publisher's floor always holds
        return base

    def _floor(self, source: Source) -> float:
        """The publisher's floor in a crisis: ``min_interval_seconds`` and the kind's."""
        floor = 0.0
        for sid in source.source_ids:
            cfg = self.catalog.sources.get(sid)
            if cfg is not None:
                floor = max(floor, float(cfg.min_interval_seconds),
                            self.settings.crisis_floor_seconds.get(str(cfg.kind), 0.0))
        return floor

    def _crisis_interval(self, source: Source, incident_ids: AbstractSet[str]) -> float:
        """How soon a source of an incident may be polled again, before its answer says."""
        return max(min(self.settings.crisis_interval_seconds,
                       self._interval(source, incident_ids)), self._floor(source))

    def _kind(self, source: Source) -> str:
        cfg = next((c for sid in source.source_ids if (c := self.catalog.sources.get(sid))),
                   None)
        return str(cfg.kind) if cfg is not None else ""

    # -- the schedule ---------------------------------------------------------------
    def _due_time(self, src: Source, st: SourceState, now: datetime,
                  incident_ids: AbstractSet[str]) -> datetime:
        """When ``src`` is due: its stored next poll, or sooner for a source newly in an
        incident (the fast path: it does not wait out its long normal interval)."""
        pushed = self._pushed_at.get(src.key)
        if pushed is not None:
            return min(pushed, self._stored_due(src, st, now, incident_ids))
        return self._stored_due(src, st, now, incident_ids)

    def _stored_due(self, src: Source, st: SourceState, now: datetime,
                    incident_ids: AbstractSet[str]) -> datetime:
        if st.next_poll_at is None:
            return now
        due = st.next_poll_at
        if any(sid in incident_ids for sid in src.source_ids) and \
                st.last_polled_at is not None and st.failures == 0 and \
                not _respecting_reset(st, now):
            due = min(due, st.last_polled_at
                      + timedelta(seconds=self._crisis_interval(src, incident_ids)))
        return due

    def _reschedule(self, now: datetime, watched: AbstractSet[str],
                    incident_ids: AbstractSet[str]) -> None:
        """Every watched source's due time from its state (after a load, or when what is
        watched or in an incident changed)."""
        assert self._states is not None
        self._schedule.clear()
        for src in self.sources:
            if src.key in self._running or src.key in self._unsaved or \
                    not any(sid in watched for sid in src.source_ids):
                continue
            st = self._states.get(src.key) or SourceState(source_id=src.key)
            self._schedule.set(src.key, self._due_time(src, st, now, incident_ids))
        self._scheduled_for = (frozenset(watched), frozenset(incident_ids))

    def _remember(self, src: Source, st: SourceState, now: datetime) -> None:
        """Keep ``st`` as the source's state and schedule its next poll (if watched)."""
        if self._states is None:
            return  # everything is read afresh next cycle
        self._states[src.key] = st
        if self._scheduled_for is None:
            return
        watched, incident_ids = self._scheduled_for
        if any(sid in watched for sid in src.source_ids):
            self._schedule.set(src.key, self._due_time(src, st, now, incident_ids))

    def next_due_at(self) -> datetime | None:
        """When the next poll is due (a loop may sleep until then); ``None`` while sources
        wait for room to be claimed (a finishing poll sets ``wake`` when there is)."""
        if self._held_back and self._room() < self._refill:
            return None
        return self._schedule.next_at()

    def _scope(self, incidents: Sequence[Incident]) -> tuple[frozenset[str], frozenset[str]]:
        """The watched sources and those of active incidents, worked out again only when
        the catalogue or the active incidents changed (a step need not scan every source)."""
        key = tuple((inc.playbook, inc.active) for inc in incidents)
        cached = self._scope_cache
        if cached is None or cached[0] is not self.catalog or cached[1] != key:
            cached = (self.catalog, key, (frozenset(self.watched_ids(incidents)),
                                          frozenset(self.incident_source_ids(incidents))))
            self._scope_cache = cached
        return cached[2]

    def _sources_by_key(self) -> dict[str, Source]:
        cached = self._by_key
        if cached is None or cached[0] is not self.sources or len(cached[1]) != len(
                self.sources):
            cached = (self.sources, {src.key: src for src in self.sources})
            self._by_key = cached
        return cached[1]

    def _room(self) -> int:
        """How many more polls may be claimed now (``CLAIM_AHEAD_MAX``)."""
        return max(0, self._capacity - len(self._running))

    # -- one cycle ------------------------------------------------------------------
    async def poll_cycle(self, now: datetime, *, wait: bool = True) -> CycleStats:
        """Poll every source that is due at ``now``; record each result as soon as it is in
        (the quiet ones together, when the cycle's polls are done or at the next cycle).

        With ``wait=False`` (the run loop) the polls go on in the background and the next
        cycle starts without them: a source still being polled is simply not due again, so
        one slow server delays nothing but itself. ``cancel_running()`` abandons them."""
        await self._apply_pending()
        self.flush()  # the previous cycle's quiet polls, before anything is claimed again
        catalog = self.catalog  # one configuration for the whole cycle, each poll included
        incidents = self.store.active_incidents()
        scope = self._scope(incidents)
        watched, incident_ids = scope
        if self._states is None:
            self._states = {s.source_id: s for s in self.store.source_states()}
            self._scheduled_for = None
        if self._scheduled_for is not scope and self._scheduled_for != scope:
            self._reschedule(now, watched, incident_ids)
        self._scheduled_for = scope
        self._apply_bells(now, watched)
        stats = CycleStats()
        self._held_back = False
        if not wait:
            # The run loop claims at most what may start now (CLAIM_AHEAD_MAX): the rest
            # stays due in the schedule, and a finishing poll wakes the loop when there is
            # room. Claims another watcher won take no room: the step goes on to the next
            # due sources (up to CLAIM_TRIES_FACTOR x capacity; then the next step at once).
            tried = 0
            while (room := self._room()) > 0 and tried < self._capacity * CLAIM_TRIES_FACTOR:
                batch = self._pop_due(now, room)
                if not batch:
                    break
                tried += len(batch)
                for task in self._claim_and_start(batch, now, incidents, incident_ids, stats,
                                                  catalog):
                    self._cycle_tasks.add(task)
                    task.add_done_callback(self._cycle_task_done)
            next_at = self._schedule.next_at()
            if next_at is not None and next_at <= now:  # more is due
                if self._room() > 0:
                    self.wake.set()
                else:
                    self._held_back = True
            return stats
        due = self._pop_due(now, None)
        held: list[tuple[Source, SourceState]] = []
        room = self._room()
        if len(due) > room:  # the rest is claimed as slots free up
            due, held = due[:room], due[room:]
        tasks = self._claim_and_start(due, now, incidents, incident_ids, stats, catalog)
        while held:  # wait=True: claim the rest as slots free up
            while self._running and self._room() < min(len(held), self._refill):
                await asyncio.wait(set(self._running.values()),
                                   return_when=asyncio.FIRST_COMPLETED)
            if self.clock is not None:
                now = max(now, self.clock.now())
            room = self._room()
            tasks += self._claim_and_start(held[:room], now, incidents, incident_ids, stats,
                                           catalog)
            held = held[room:]
        if tasks:
            await asyncio.gather(*tasks)
            self.flush()
        return stats

    def _pop_due(self, now: datetime, limit: int | None) -> list[tuple[Source, SourceState]]:
        """Up to ``limit`` due sources with the states they are claimed from, taken off the
        schedule; one being polled, or whose poll is not written yet, is scheduled again
        from its state next cycle."""
        assert self._states is not None
        by_key = self._sources_by_key()
        busy: list[str] = []

        def in_hand(key: str) -> bool:
            if key in self._running or key in self._unsaved:
                busy.append(key)
                return True
            return key not in by_key

        keys = self._schedule.pop_due(now, limit=limit, skip=in_hand)
        if busy:
            self._scheduled_for = None
        return [(by_key[k], self._states.get(k) or SourceState(source_id=k)) for k in keys]

    def _claim_and_start(self, due: list[tuple[Source, SourceState]], now: datetime,
                         incidents: Sequence[Incident], incident_ids: AbstractSet[str],
                         stats: CycleStats,
                         catalog: Catalog) -> list[asyncio.Future[None]]:
        """Claim ``due`` and start the polls of what was claimed."""
        assert self._states is not None
        if not due:
            return []
        # Claim what is due: a source another watcher polls (or polled since we looked) is
        # skipped, so each due source is polled by one watcher per interval; its row is read
        # again (our copy was stale) and it is scheduled from that.
        try:
            with self.store.unit_of_work() as uow:
                claimed = uow.sources.claim({src.key: st for src, st in due},
                                            owner=self.owner, now=now, lease=self.lease)
                fresh = uow.sources.get_many(src.key for src, _ in due
                                             if src.key not in claimed)
                uow.commit()
        except BaseException:
            self._scheduled_for = None  # the sources popped as due are scheduled again
            raise
        for src, _ in due:
            st = fresh.get(src.key)
            if st is None:
                continue
            self._states[src.key] = st
            when = self._due_time(src, st, now, incident_ids)
            if st.lease_until is not None and st.lease_until >= now:  # another is polling it
                # Held up to and including the instant it names (the store's rule): free just
                # after it, not at it, or this step would claim it again and again.
                when = max(when, min(st.lease_until + timedelta(microseconds=1),
                                     now + timedelta(seconds=self._interval(src,
                                                                            incident_ids))))
            self._schedule.set(src.key, when)
        due = [(src, claimed[src.key]) for src, _ in due if src.key in claimed]
        if not due:
            return []
        sharers = Counter(self._kind(src) for src, _ in due)
        tasks: list[asyncio.Future[None]] = []
        for src, st in due:
            self._states[src.key] = st
            self._pushed_at.pop(src.key, None)  # this poll reads what was pushed before it
            task = asyncio.ensure_future(self._poll_and_record(
                src, st, now, self._interval(src, incident_ids), incidents, stats, catalog,
                in_crisis=any(sid in incident_ids for sid in src.source_ids),
                sharers=sharers[self._kind(src)]))
            self._running[src.key] = task
            task.add_done_callback(functools.partial(self._finished, src.key))
            tasks.append(task)
        return tasks

    def _cycle_task_done(self, task: asyncio.Future[None]) -> None:
        self._cycle_tasks.discard(task)
        if not self._cycle_tasks and self._unsaved:
            # The cycle's polls are all in: write their states now, not at the next tick.
            with contextlib.suppress(RuntimeError):
                asyncio.get_running_loop().call_soon(self._flush_quietly)

    def _flush_quietly(self) -> None:
        try:
            self.flush()
        except StoreError as exc:  # kept; written at the next cycle (which reports it)
            log.warning("watch.store_unavailable", what="source states", error=str(exc))

    def flush(self) -> None:
        """Write the states of the polls that found nothing new, in one transaction. If one
        lease was taken over meanwhile the batch is written again one by one, so only that
        poll's result is dropped (and reported). A store failure keeps them for the next
        call."""
        if not self._unsaved:
            return
        batch = list(self._unsaved.values())
        try:
            with self.store.unit_of_work() as uow:
                for _, new, _ in batch:
                    uow.sources.save(new, owner=self.owner)
                uow.commit()
        except StaleWriteError:
            for src, new, polled_at in batch:
                try:
                    with self.store.unit_of_work() as uow:
                        uow.sources.save(new, owner=self.owner)
                        uow.commit()
                except StaleWriteError as exc:
                    self._unsaved.pop(src.key, None)
                    self._overtaken(src, exc, polled_at, CycleStats())
                else:
                    self._unsaved.pop(src.key, None)
            return
        for src, _, _ in batch:
            self._unsaved.pop(src.key, None)

    async def _poll_and_record(self, src: Source, st: SourceState, now: datetime,
                               interval: float, incidents: Sequence[Incident],
                               stats: CycleStats, catalog: Catalog, *,
                               in_crisis: bool = False, sharers: int = 1) -> None:
        try:
            result, now = await self._poll(src, st, now)  # when it ran (see _poll)
        except asyncio.CancelledError:
            # Abandoned (the watcher is stopping): give the lease back so the next watcher
            # need not wait for it to expire; nothing of this poll is recorded.
            with contextlib.suppress(StoreError, StaleWriteError), \
                    self.store.unit_of_work() as uow:
                uow.sources.save(st, owner=self.owner)
                uow.commit()
            self._states = None  # what the store holds now is read again
            raise
        stats.polled += 1
        try:
            if isinstance(result, SourceError):
                self._record_failure(src, st, result, now, stats)
            else:
                self._record_success(src, st, result, now, interval, incidents, stats,
                                     catalog, in_crisis=in_crisis, sharers=sharers)
        except StaleWriteError as exc:
            self._overtaken(src, exc, now, stats)

    def _finished(self, key: str, _task: asyncio.Future[None]) -> None:
        self._running.pop(key, None)
        if self._held_back and self._room() >= self._refill:
            self._held_back = False
            self.wake.set()  # sources are waiting for room: claim them now
        if key not in self._schedule and key not in self._unsaved:
            # Nothing recorded (a store failure, a cancelled poll): scheduled again from its
            # state at the next cycle, never forgotten.
            self._scheduled_for = None

    def running(self) -> int:
        """How many polls are still in progress."""
        return len(self._running)

    async def cancel_running(self) -> None:
        """Abandon the polls in progress (their leases are given back)."""
        tasks = list(self._running.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._flush_quietly()  # the polls that did finish give their leases back now

    def _overtaken(self, src: Source, exc: StaleWriteError, now: datetime,
                   stats: CycleStats) -> None:
        """Another watcher took this source's lease over while we polled: our result is
        dropped (theirs counts), and that is reported, never silently written."""
        stats.overtaken += 1
        log.warning("source.poll_overtaken", source=src.key, error=str(exc))
        with self.store.unit_of_work() as uow:
            uow.audit.append(NewAuditEvent(self.owner, "source.poll_overtaken",
                                           f"source:{src.key}", str(exc)[:300], now))
            theirs = uow.sources.get(src.key)
            uow.commit()
        self._remember(src, theirs, now)  # the other watcher's state is the truth

    async def _poll(self, src: Source, st: SourceState,
                    now: datetime) -> tuple[PollResult | SourceError, datetime]:
        """The poll's result, and the instant it counts from: ``now``, or the clock's time
        when it ran if it waited ``GATE_SHIFT_SECONDS`` or more for its turn."""
        deadline = self.settings.deadline_seconds
        loop = asyncio.get_running_loop()
        if self._gate is None or self._gate[0] is not loop:
            self._gate = (loop, asyncio.Semaphore(self.settings.concurrency))
        try:
            # At most ``concurrency`` polls run at a time (the fetcher's slots) and the
            # deadline starts when one does: queued behind others for a slot, a poll was
            # failed as "too slow" (``benchmarks/shared_pg.py``, 20,000 sources).
            queued = loop.time()
            async with self._gate[1]:
                if loop.time() - queued >= GATE_SHIFT_SECONDS and self.clock is not None:
                    now = max(now, self.clock.now())
                return await aio.wait_for(src.poll(st, now), deadline), now
        except TimeoutError:
            return TransientSourceError(
                f"{src.key}: the poll did not finish within {deadline:g}s (a server answering "
                "too slowly); abandoned, tried again later", source_id=src.key,
                error_class="deadline"), now
        except SourceError as exc:
            exc.source_id = exc.source_id or src.key
            return exc, now
        except Exception as exc:
            log.exception("source.crashed", source=src.key)
            return SourceError(f"{src.key}: unexpected {type(exc).__name__}",
                               source_id=src.key, error_class="internal"), now

    def _audit_refused(self, uow: UnitOfWork, src: Source, state: SourceState,
                       result: PollResult, now: datetime) -> None:
        """Audit each refused item once (e.g. an X post from an id that is not pinned)."""
        if not result.refused:
            return
        seen = list(state.extra.get(REFUSED_SEEN, []))
        for what in result.refused:
            if what in seen:
                continue
            seen.append(what)
            uow.audit.append(NewAuditEvent("watcher", "source.refused_item",
                                           f"source:{src.key}", what, now))
        state.extra[REFUSED_SEEN] = seen[-200:]

    def _record_failure(self, src: Source, st: SourceState, exc: SourceError, now: datetime,
                        stats: CycleStats) -> None:
        failures = st.failures + 1
        wait = backoff_delay(failures, base=self.settings.interval_seconds,
                             cap=self.settings.max_backoff_seconds, rng=self.rng)
        next_at = now + timedelta(seconds=wait)
        self._expect.pop(src.key, None)  # the backoff decides when it is polled again
        extra = {k: v for k, v in st.extra.items() if k != NOT_BEFORE}
        if exc.retry_at is not None:
            # The source named its reset: nothing goes to it before then.
            next_at = max(next_at, exc.retry_at)
            extra[NOT_BEFORE] = exc.retry_at.isoformat()
        new = replace(st, last_polled_at=now, next_poll_at=next_at, extra=extra,
                      failures=failures, last_error=str(exc)[:500],
                      last_error_class=exc.error_class, error_count=st.error_count + 1,
                      lease_owner=None, lease_until=None)
        with self.store.unit_of_work() as uow:
            uow.sources.save(new, owner=self.owner)
            if exc.error_class in REFUSALS and exc.error_class != st.last_error_class:
                # A security refusal (redirect to another host, https downgrade, private
                # address) is audited the first time, not only after repeated failures.
                uow.audit.append(NewAuditEvent("watcher", "source.refused",
                                               f"source:{src.key}", exc.error_class, now,
                                               {"error": str(exc)[:300]}))
            if failures == self.settings.failure_alert_after:
                uow.audit.append(NewAuditEvent(
                    "watcher", "source.failing", f"source:{src.key}",
                    f"{failures} consecutive failures; last: {exc.error_class}", now,
                    {"error": str(exc)[:300]}))
            uow.commit()
        self._remember(src, new, now)
        stats.failed += 1
        stats.errors[src.key] = exc.error_class
        log.warning("source.failed", source=src.key, error_class=exc.error_class,
                    error=str(exc)[:300], failures=failures, retry_in_s=round(wait, 1))

    def _record_success(self, src: Source, st: SourceState, result: PollResult, now: datetime,
                        interval: float, incidents: Sequence[Incident],
                        stats: CycleStats, catalog: Catalog | None = None, *,
                        in_crisis: bool = False, sharers: int = 1) -> None:
        catalog = catalog or self.catalog
        self._after_push(src.key, result, now)
        spread = self.rng.random() if self.settings.jitter_seconds else 0.0
        pace = next_poll(now, normal_interval=interval, in_crisis=in_crisis,
                         floor_seconds=self._floor(src), hints=result.hints,
                         settings=self.settings, jitter=spread, sharers=sharers)
        next_at = pace.at
        extra = {k: v for k, v in {**st.extra, **result.extra}.items() if k != NOT_BEFORE}
        if result.rate_limited_until is not None:
            next_at = max(next_at, result.rate_limited_until)
            extra[NOT_BEFORE] = result.rate_limited_until.isoformat()
        new = replace(
            st, last_polled_at=now, next_poll_at=next_at, last_ok_at=now, failures=0,
            etag=result.etag if result.etag is not None else st.etag,
            last_modified=result.last_modified if result.last_modified is not None
            else st.last_modified,
            cursor=result.cursor if result.cursor is not None else st.cursor,
            extra=extra, baseline_done=True, lease_owner=None, lease_until=None)
        baseline = not st.baseline_done
        quiet = (not result.updates and st.failures < self.settings.failure_alert_after
                 and not result.refused)
        if quiet:
            # Nothing to record but the state: written with the cycle's others, in one
            # transaction (``flush``); the source is not claimed again before then.
            self._unsaved[src.key] = (src, new, now)
            self._remember(src, new, now)
            stats.not_modified += int(result.not_modified)
            log.debug("source.polled", source=src.key, not_modified=result.not_modified,
                      next_in_s=round(pace.interval, 1), pace=pace.reason)
            return
        leads = all_lead_sources(catalog, incidents)
        ordered = sorted((u for u in result.updates
                          if u.source_id in src.source_ids and u.source_id in
                          catalog.sources), key=lambda u: priority(u, leads))
        with self.store.unit_of_work() as uow:
            if st.failures >= self.settings.failure_alert_after:
                uow.audit.append(NewAuditEvent(
                    "watcher", "source.recovered", f"source:{src.key}",
                    f"polled successfully after {st.failures} failures", now))
            self._audit_refused(uow, src, new, result, now)
            recorded = self._record_updates(uow, ordered, baseline)
            items: list[NewOutboxItem] = []
            for rec in recorded:
                threads = None
                if follows_up(rec.update):
                    # Where we relayed the alert it refers to: it is answered there, only.
                    threads = uow.outbox.threads(rec.update.source_id,
                                                 referenced_ids(rec.update))
                m = match(rec, catalog=catalog, incidents=incidents, baseline=baseline,
                          now=now, threads=threads)
                uow.updates.set_disposition(rec.update.id or 0, m.disposition)
                items += m.items
            uow.outbox.add(items, at=now)
            # The new state (cursor, ETag) is saved with what it found, in one transaction:
            # a crash can never separate "seen" from "queued".
            uow.sources.save(new, owner=self.owner)
            uow.commit()
        self._remember(src, new, now)
        stats.queued += len(items)
        if items:
            self.queued.set()
        stats.new_updates += len(recorded)
        if result.not_modified or not result.updates:
            stats.not_modified += int(result.not_modified)
            log.debug("source.polled", source=src.key, not_modified=result.not_modified)
            return
        log.info("source.polled", source=src.key, updates=len(result.updates),
                 new=len(recorded), baseline=baseline)

    @staticmethod
    def _record_updates(uow: UnitOfWork, updates: Sequence[Update],
                        baseline: bool) -> list[RecordedUpdate]:
        """Each update is new, a new revision (same id, different content), or already seen."""
        out: list[RecordedUpdate] = []
        for u in updates:
            latest = uow.updates.latest(u.source_id, u.external_id)
            if latest is not None and latest[1] == u.content_hash:
                continue
            stored = uow.updates.add(u, revision=1 if latest is None else latest[0] + 1,
                                     baseline=baseline)
            out.append(RecordedUpdate(stored, "new" if latest is None else "revision"))
        return out
