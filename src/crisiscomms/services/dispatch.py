"""The dispatch service: every pending outbox item gets a policy decision, and what may go out
goes out exactly once.

The states and their transitions are ``crisiscomms.domain.outbox``. A request is only sent after
``sending`` is committed, so after a crash the dispatcher knows which items may have reached the
platform and asks the platform (``find_existing``) before ever sending them again. Every claim
carries a fencing token: a worker whose lease was taken over cannot publish, requeue or fail the
item any more (the store refuses, and the refusal is logged and audited). The lease of a send is
dated from the moment the send starts and renewed while the request is in flight, so a slow
platform never lets a second worker take the item over from a live one.

A tick sends on its channels at the same time (``crisiscomms.services.lanes``: a few daemon
threads, one channel on one thread), so one slow platform does not delay the others; each
channel's items still go one after another, in dispatch order, under that channel's rate-limit
pause and ceilings. A channel's due items are decided a page at a time: one ``next_due`` query
locks the next few rows nobody else is claiming, the policy decides each, and what may go is
leased in the same unit of work, so several dispatchers drain one queue without trying each
other's items. Claimed items wait under the channel's lease keeper until their turn; on stop,
or after a 429, the unsent ones go back to the queue.
"""

from __future__ import annotations

import contextlib
import random
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta

import structlog

from crisiscomms.domain import outbox
from crisiscomms.domain.clock import isoformat
from crisiscomms.domain.config import Catalog, ChannelConfig
from crisiscomms.domain.errors import (
    OutcomeUnknownError,
    PermanentPublishError,
    PublishError,
    RateLimitedError,
    StaleWriteError,
    StoreError,
    TransientPublishError,
)
from crisiscomms.domain.models import (
    ChannelCounters,
    DecisionAction,
    Incident,
    ItemEvent,
    ItemState,
    LiveWindow,
    NewAuditEvent,
    OutboxItem,
    PublishResult,
    Update,
)
from crisiscomms.domain.policy import decide
from crisiscomms.domain.workcal import local, week_start
from crisiscomms.ports import Clock, Publisher, Store, UnitOfWork
from crisiscomms.retry import backoff_delay, call_with_retry
from crisiscomms.services.lanes import MAX_LANES, LeaseKeeper, each_channel
from crisiscomms.settings import DispatchSettings

log = structlog.get_logger(__name__)

# ``settings.send_deadline_seconds``: how long one send may take, all retries included
# (``call_with_retry``'s deadline): a request started less than this (plus its own time-out and
# ``settings.settle_margin_seconds``) ago may still land on the platform, so its absence there
# is not yet proof that it failed.
LOOKUP_ATTEMPTS = 3  # a lookup answered 5xx is asked again at once, this many times in all
# Items of one channel decided and claimed per unit of work (one ``next_due`` query). Small: a
# worker that dies holds at most this many claimed, unsent items per channel until its lease
# runs out (they then go back to the queue, nothing sent).
PAGE_SIZE = 10
MAX_PAGE_SIZE = 200  # a page where nothing may go grows up to this

_STATE_FOR = {
    DecisionAction.HOLD: ItemState.HELD,
    DecisionAction.NEEDS_APPROVAL: ItemState.NEEDS_APPROVAL,
    DecisionAction.SKIP: ItemState.SKIPPED,
}


@dataclass
class DispatchStats:
    """What one dispatch tick did."""

    decided: int = 0
    published: int = 0
    held: int = 0
    failed: int = 0
    rate_limited: int = 0
    recovered: int = 0
    overtaken: int = 0  # writes refused because another worker took the item over
    decision_seconds: list[float] = field(default_factory=list)

    def add(self, other: DispatchStats) -> None:
        """Count ``other`` (one channel's part of the tick) in."""
        for name in ("decided", "published", "held", "failed", "rate_limited", "recovered",
                     "overtaken"):
            setattr(self, name, getattr(self, name) + getattr(other, name))
        self.decision_seconds.extend(other.decision_seconds)


def channel_counters(store: Store, catalog: Catalog, channel_id: str,
                     now: datetime) -> ChannelCounters:
    """A channel's counters for the policy week and local day containing ``now``."""
    with store.reader() as r:
        return counters_in(r, catalog, channel_id, now)


def counters_in(uow: UnitOfWork, catalog: Catalog, channel_id: str,
                now: datetime) -> ChannelCounters:
    """``channel_counters`` read in a unit of work the caller holds."""
    policy = catalog.policy
    day_start = local(now, policy).replace(hour=0, minute=0, second=0, microsecond=0)
    return uow.outbox.counters(channel_id, now=now, week_start=week_start(now, policy),
                               day_start=day_start)


def _due(item: OutboxItem, now: datetime) -> bool:
    """Whether ``next_due`` at ``now`` would return this pending item (its ``not_before``)."""
    return item.state in outbox.PENDING and (item.not_before is None or item.not_before <= now)


def _bump(counters: ChannelCounters, item: OutboxItem, by: int) -> ChannelCounters:
    """The counters once ``item`` is out (``by=1``), or after all not (``by=-1``)."""
    normal = by * int(item.incident_id is None)
    return replace(counters, week_count=counters.week_count + by,
                   last_hour_count=counters.last_hour_count + by,
                   normal_week_count=counters.normal_week_count + normal,
                   normal_day_count=counters.normal_day_count + normal)


@dataclass(frozen=True)
class _Claimed:
    """An item leased to this worker in a page's unit of work, and the post it answers."""

    item: OutboxItem
    reply_to: str | None = None


@dataclass
class _Lane:
    """One channel's part of a tick: what it decides with, and its running counters."""

    channel_id: str
    now: datetime
    incidents: Sequence[Incident]
    windows: Sequence[LiveWindow]
    stats: DispatchStats
    channel: ChannelConfig | None = None
    publisher: Publisher | None = None
    problem: str | None = None
    counters: ChannelCounters = field(default_factory=ChannelCounters)


class Dispatcher:
    """Decides and sends pending items: the channels of a tick at the same time (up to
    ``lanes`` of them), each channel's items one after another, each channel isolated.
    ``lanes`` defaults to ``MAX_LANES``, or to 1 when ``sleep`` is injected (see below)."""

    def __init__(self, *, store: Store, catalog: Catalog,
                 publishers: Mapping[str, Publisher], settings: DispatchSettings,
                 worker_id: str, rng: random.Random | None = None,
                 sleep: Callable[[float], None] | None = None,
                 measure: bool = False, clock: Clock | None = None,
                 page_size: int = PAGE_SIZE, lanes: int | None = None) -> None:
        self.store = store
        self.catalog = catalog
        self.publishers = dict(publishers)
        self.settings = settings
        self.worker_id = worker_id
        self.rng = rng or random.Random()
        self.sleep = sleep
        self.measure = measure
        self.clock = clock
        self.page_size = page_size
        # Channels sent on at once. A run that does not really wait (``sleep`` injected: a
        # drill, a test) is a simulation: one lane keeps its writes in the same order run
        # after run (a drill is compared row by row with its own rerun).
        self.lanes = lanes if lanes is not None else MAX_LANES if sleep is None else 1
        self.lease = timedelta(seconds=settings.lease_seconds)
        # Set on shutdown: each channel finishes its send in flight and starts no other.
        self.stop_requested = threading.Event()
        self._problems: dict[str, str | None] = {}  # what the store says of each channel
        self._paused: dict[str, datetime] = {}  # rate-limit pauses this dispatcher was told of
        self._lock = threading.Lock()
        self._pending: tuple[Catalog, dict[str, Publisher], set[str]] | None = None

    def reconfigure(self, catalog: Catalog, publishers: Mapping[str, Publisher],
                    removed: set[str]) -> None:
        """Use a reloaded catalogue from the next tick on (never in the middle of one):
        ``publishers`` replace (or add) those channels' publishers, ``removed`` channels lose
        theirs (their items are held as not configured)."""
        with self._lock:
            if self._pending is not None:  # two reloads before a tick: the later one wins
                _, earlier, gone = self._pending
                publishers = {**{k: v for k, v in earlier.items() if k not in removed},
                              **publishers}
                removed = (gone | removed) - set(publishers)
            self._pending = (catalog, dict(publishers), set(removed))

    def _apply_pending(self) -> None:
        with self._lock:
            pending, self._pending = self._pending, None
        if pending is None:
            return
        catalog, publishers, removed = pending
        old = {k: v for k, v in self.publishers.items() if k in removed or k in publishers}
        self.catalog = catalog
        self.publishers = {**{k: v for k, v in self.publishers.items() if k not in removed},
                           **publishers}
        for channel_id, publisher in old.items():
            if self.publishers.get(channel_id) is not publisher:
                with contextlib.suppress(Exception):
                    publisher.close()
        for channel_id in removed:
            self._problems.pop(channel_id, None)
        log.info("dispatch.reconfigured", channels=sorted(self.publishers),
                 replaced=sorted(publishers), removed=sorted(removed))

    def _now(self, fallback: datetime) -> datetime:
        """The time now (a send's lease starts when the send starts, not the round)."""
        return self.clock.now() if self.clock is not None else fallback

    # -- one tick -------------------------------------------------------------------
    def tick(self, now: datetime) -> DispatchStats:
        """Recover expired leases, then decide every due pending item once and send what may
        go: the channels at the same time, each channel's items in dispatch order."""
        stats = DispatchStats()
        self._apply_pending()  # a reloaded catalogue takes effect between ticks only
        if not self._problems:  # first tick: say which channels cannot post at all
            for channel_id, publisher in sorted(self.publishers.items()):
                self._channel_problem(channel_id, getattr(publisher, "unavailable", None))
        # One read for the tick when no lease has expired (the usual case): what expired,
        # then what the channels decide with.
        with self.store.reader() as r:
            expired = r.outbox.expired(now)
            if not expired:
                incidents = r.incidents.list()
                windows = r.windows.list()
                channel_ids = r.outbox.due_channels(now)
        if expired:
            self._take_up(expired, now, stats)
            with self.store.reader() as r:
                incidents = r.incidents.list()
                windows = r.windows.list()
                channel_ids = r.outbox.due_channels(now)
        lanes = {cid: _Lane(cid, now, incidents, windows, DispatchStats()) for cid in channel_ids}
        try:
            each_channel(channel_ids, lambda cid: self._channel_tick(lanes[cid]),
                         stop=self.stop_requested, lanes=self.lanes)
        finally:
            for lane in lanes.values():
                stats.add(lane.stats)
        return stats

    def counters(self, channel_id: str, now: datetime) -> ChannelCounters:
        return channel_counters(self.store, self.catalog, channel_id, now)

    # -- persisting transitions -------------------------------------------------------
    def _record(self, uow: UnitOfWork, before: OutboxItem, after: OutboxItem, now: datetime,
                reason: str, *, details: dict[str, object] | None = None,
                audit: str | None = None,
                audit_details: dict[str, object] | None = None) -> OutboxItem:
        """One transition, its history line and (if named) its audit event, in ``uow``."""
        saved = uow.outbox.save(before, after, ItemEvent(now, str(after.state), reason,
                                                         self.worker_id, dict(details or {})))
        if audit:
            uow.audit.append(NewAuditEvent(self.worker_id, audit, f"item:{before.id}", reason,
                                           now, dict(audit_details or {})))
        return saved

    def _save(self, before: OutboxItem, after: OutboxItem, now: datetime, reason: str, *,
              details: dict[str, object] | None = None, audit: str | None = None,
              audit_details: dict[str, object] | None = None,
              skip_locked: bool = False) -> OutboxItem:
        """One transition, its history line and (if named) its audit event, atomically."""
        with self.store.unit_of_work() as uow:
            saved = uow.outbox.save(before, after, ItemEvent(now, str(after.state), reason,
                                                             self.worker_id, dict(details or {})),
                                    skip_locked=skip_locked)
            if audit:
                uow.audit.append(NewAuditEvent(self.worker_id, audit, f"item:{before.id}",
                                               reason, now, dict(audit_details or {})))
            uow.commit()
        return saved

    def _overtaken(self, item: OutboxItem, exc: StaleWriteError, now: datetime,
                   stats: DispatchStats, what: str) -> None:
        """A stale write was refused: report it (log and audit), never write it."""
        stats.overtaken += 1
        log.error("outbox.stale_write_refused", item=item.id, channel=item.channel_id,
                  token=item.fence, what=what, error=str(exc))
        with contextlib.suppress(StoreError), self.store.unit_of_work() as uow:
            uow.audit.append(NewAuditEvent(
                self.worker_id, "outbox.stale_write_refused", f"item:{item.id}",
                f"{what} refused: {exc}"[:500], now,
                {"token": item.fence, "channel": item.channel_id}))
            uow.commit()

    def _decide(self, uow: UnitOfWork, item: OutboxItem, state: ItemState, reason: str,
                now: datetime) -> None:
        if item.state is state and item.reason == reason:
            return  # unchanged: nothing to record
        # The decision's "hold until" is not stored as the item's schedule: the policy decides
        # again on every tick, so a hold ends as soon as its cause does.
        with contextlib.suppress(StaleWriteError):  # changed meanwhile: decided next tick
            self._record(uow, item, outbox.decide(item, state, reason, now), now, reason)

    # -- one channel ------------------------------------------------------------------
    def _channel_tick(self, lane: _Lane) -> None:
        """Decide a channel's due items a page at a time and send each page's claimed items
        one after another. A page is claimed with one query in the unit of work that decides
        it (``next_due``: the rows another worker is claiming are skipped), so several
        dispatchers share a queue without trying the same items."""
        channel_id = lane.channel_id
        lane.channel = self.catalog.channels.get(channel_id)
        lane.publisher = self.publishers.get(channel_id)
        if lane.channel is not None and lane.publisher is not None:
            problem = getattr(lane.publisher, "unavailable", None)
            self._channel_problem(channel_id, problem)
            lane.problem = str(problem) if problem else None
        if self._unchanged(lane):
            return  # every due item keeps the decision it has: nothing to write
        keeper = LeaseKeeper(self.store, self.lease, lambda: self._now(lane.now),
                             name=f"lease-{channel_id}")
        with keeper:
            after: OutboxItem | None = None
            size = self.page_size
            while not self.stop_requested.is_set():
                claimed, last, drained = self._claim_page(lane, after, size)
                if last is None:
                    return  # nothing more is due on this channel
                after = last
                # Pages of items that only stay held (out of hours, awaiting approval) grow:
                # fewer units of work for what cannot go; a page that sends is small again.
                size = self.page_size if claimed else min(2 * size, MAX_PAGE_SIZE)
                for c in claimed:
                    keeper.hold(c.item)
                self._send_page(lane, claimed, keeper)
                if drained:
                    return  # the page held the channel's last due items

    def _unchanged(self, lane: _Lane) -> bool:
        """Read the channel's counters and, when every due item would keep the decision it
        already has (held, or awaiting approval, for the same reason), count them decided and
        say so: most ticks of a quiet channel then read once and write nothing, instead of
        deciding the same items again under the writer's lock. Anything else (an item that
        may go, or whose decision changes) is left to the claim, which decides it again
        under its lock. The counters are set on the lane either way."""
        stats, now, channel_id = lane.stats, lane.now, lane.channel_id
        configured = lane.channel is not None and lane.publisher is not None
        with self.store.reader() as r:
            if configured:
                lane.counters = counters_in(r, self.catalog, channel_id, now)
            due = [i for i in r.outbox.list(states=sorted(outbox.PENDING),
                                            channel_id=channel_id) if _due(i, now)]
        times: list[float] = []
        held = 0
        for item in due:
            if lane.channel is None or lane.publisher is None:
                state, reason = ItemState.HELD, f"channel {channel_id!r} is not configured"
            else:
                t0 = time.perf_counter() if self.measure else 0.0
                decision = decide(item, lane.channel, now, lane.counters, self.catalog.policy,
                                  lane.incidents, self.catalog.playbooks, lane.windows)
                if self.measure:
                    times.append(time.perf_counter() - t0)
                if decision.action not in (DecisionAction.HOLD, DecisionAction.NEEDS_APPROVAL):
                    return False
                state, reason = _STATE_FOR[decision.action], decision.reason
                held += decision.action is DecisionAction.HOLD
            if item.state is not state or item.reason != reason:
                return False
        stats.decided += len(due)
        stats.held += held
        stats.decision_seconds.extend(times)
        return True

    def _claim_page(self, lane: _Lane, after: OutboxItem | None, size: int,
                    ) -> tuple[list[_Claimed], OutboxItem | None, bool]:
        """Decide the next page of due items in one unit of work: the policy's holds are
        recorded, what may go is leased to this worker. Returns the claimed items, the last
        item decided (None: nothing was due) and whether that was the channel's last due item
        (a page shorter than asked for, every item of it decided)."""
        claimed: list[_Claimed] = []
        updates: set[int] = set()
        last: OutboxItem | None = None
        with self.store.unit_of_work() as uow:
            page = uow.outbox.next_due(lane.channel_id, now=lane.now, after=after, limit=size)
            drained = len(page) < max(1, size)
            for item in page:
                if len(claimed) >= self.page_size or \
                        item.reply_to_item in {c.item.id for c in claimed} or \
                        (item.update_id is not None and item.update_id in updates):
                    # Enough claimed for one page; or it waits for an item of this page to go
                    # out first: the next page begins with it.
                    drained = False
                    break
                last = item
                leased = self._claim_one(uow, lane, item, updates)
                if leased is not None:
                    claimed.append(leased)
                    lane.counters = _bump(lane.counters, item, 1)
            uow.commit()
        return claimed, last, drained

    def _claim_one(self, uow: UnitOfWork, lane: _Lane, item: OutboxItem,
                   updates: set[int]) -> _Claimed | None:
        """The policy's decision on one due item, recorded in ``uow``; the item leased to
        this worker if it may go out now."""
        stats, now, channel_id = lane.stats, lane.now, lane.channel_id
        stats.decided += 1
        if lane.channel is None or lane.publisher is None:
            self._decide(uow, item, ItemState.HELD, f"channel {channel_id!r} is not configured",
                         now)
            return None
        t0 = time.perf_counter() if self.measure else 0.0
        decision = decide(item, lane.channel, now, lane.counters, self.catalog.policy,
                          lane.incidents, self.catalog.playbooks, lane.windows)
        if self.measure:
            stats.decision_seconds.append(time.perf_counter() - t0)
        if decision.action is not DecisionAction.PUBLISH:
            self._decide(uow, item, _STATE_FOR[decision.action], decision.reason, now)
            stats.held += decision.action is DecisionAction.HOLD
            return None
        if lane.problem:
            # The channel cannot post at all: fail loudly, send nothing; 'queue retry'
            # sends it once the channel is fixed.
            with contextlib.suppress(StaleWriteError):
                self._record(uow, item, outbox.refuse(item, reason=lane.problem, at=now), now,
                             lane.problem, audit="outbox.failed",
                             audit_details={"channel": channel_id})
                stats.failed += 1
            return None
        reply_to: str | None = None
        if item.reply_to_item is not None:
            parent = uow.outbox.get(item.reply_to_item)
            if parent.state is not ItemState.PUBLISHED:
                self._wait_for_parent(uow, item, parent, now)
                return None
            reply_to = parent.platform_post_id
        if item.update_id is not None:
            earlier = uow.outbox.published_for(item.update_id, channel_id)
            if earlier is not None:
                self._decide(uow, item, ItemState.SKIPPED,
                             f"duplicate: update already relayed on {channel_id} as item "
                             f"{earlier.id}", now)
                return None
            updates.add(item.update_id)
        try:
            # The lease runs from the claim itself, not from the start of a long tick.
            until = self._now(now) + self.lease
            leased = self._record(
                uow, item, outbox.claim(item, owner=self.worker_id, until=until,
                                        out_of_hours=decision.out_of_hours,
                                        over_cap=decision.over_cap),
                now, f"leased by {self.worker_id}")
        except StaleWriteError:
            return None  # changed under our lock: cannot be; decided again next tick
        return _Claimed(leased, reply_to)

    def _send_page(self, lane: _Lane, claimed: Sequence[_Claimed], keeper: LeaseKeeper) -> None:
        """Send a page's claimed items in order. On stop, once the platform says wait, or if
        the step fails, the ones not yet sent go back to the queue."""
        todo = deque(claimed)
        try:
            while todo:
                if self.stop_requested.is_set():
                    self._give_back(todo, lane, keeper, "not sent: the dispatcher stopped")
                    return
                c = todo.popleft()
                assert lane.publisher is not None
                outcome = self._send(c.item, lane.publisher, lane.now, lane.stats, keeper,
                                     reply_to=c.reply_to)
                if outcome != "published":
                    lane.counters = _bump(lane.counters, c.item, -1)
                if outcome == "rate_limited":
                    self._give_back(todo, lane, keeper,
                                    self._rate_limited_reason(lane.channel_id),
                                    not_before=self._paused.get(lane.channel_id))
                    lane.counters = self.counters(lane.channel_id, lane.now)  # the new pause
                    return
        except BaseException:
            with contextlib.suppress(Exception):
                self._give_back(todo, lane, keeper, "not sent: the dispatch step failed")
            raise

    def _give_back(self, todo: deque[_Claimed], lane: _Lane, keeper: LeaseKeeper,
                   reason: str, not_before: datetime | None = None) -> None:
        """Claimed, never sent: back to the queue (nothing of them reached a platform)."""
        t = self._now(lane.now)
        while todo:
            c = todo.popleft()
            keeper.drop(c.item)
            self._release(c.item, ItemState.QUEUED, t, lane.stats, reason,
                          not_before=not_before)

    # -- sending ----------------------------------------------------------------------
    def _channel_problem(self, channel_id: str, problem: object) -> None:
        """Record a channel's problem (or its end) in the store when it changes."""
        text = str(problem) if problem else None
        if self._problems.get(channel_id, "unknown") == text:
            return
        with self.store.unit_of_work() as uow:
            uow.channels.set_problem(channel_id, text)
            uow.commit()
        self._problems[channel_id] = text
        if text:
            log.error("channel.broken", channel=channel_id, problem=text)

    def _wait_for_parent(self, uow: UnitOfWork, item: OutboxItem, parent: OutboxItem,
                         now: datetime) -> None:
        """A reply waits for the post it answers; if that never goes out, neither does it."""
        if parent.state in (ItemState.REJECTED, ItemState.SKIPPED, ItemState.FAILED):
            self._decide(uow, item, ItemState.SKIPPED,
                         f"the alert it follows up (item {parent.id}) was not relayed on "
                         f"{item.channel_id} ({parent.state}): nothing to answer", now)
        else:
            self._decide(uow, item, ItemState.HELD,
                         f"waiting for item {parent.id} (the alert it follows up) to go out on "
                         f"{item.channel_id}, to reply to it", now)

    def _send(self, claimed: OutboxItem, publisher: Publisher, now: datetime,
              stats: DispatchStats, keeper: LeaseKeeper, reply_to: str | None = None) -> str:
        """Send one claimed item: ``sending`` is committed first, the request goes out under
        the channel's lease keeper, then the outcome is recorded (fenced)."""
        item = claimed
        update = self._update(claimed)
        started = self._now(now)
        try:
            sending = self._save(claimed, outbox.start_send(claimed, at=started,
                                                            until=started + self.lease),
                                 started, "request sent")
        except StaleWriteError as exc:
            keeper.drop(claimed)
            self._overtaken(claimed, exc, started, stats, "start of send")
            return "taken"
        outgoing = replace(sending, reply_to=reply_to)  # the thread it answers, if any

        def attempt() -> PublishResult:
            try:
                return publisher.publish(outgoing, update)
            except TransientPublishError as exc:
                if not isinstance(exc, RateLimitedError) and exc.status is not None and \
                        exc.status >= 500:
                    # A 5xx answers a request the platform received: it may have recorded the
                    # post before failing. Unknown, so look before any resend.
                    raise OutcomeUnknownError(
                        f"{exc} (after the request reached the platform)",
                        channel_id=exc.channel_id, status=exc.status) from exc
                raise

        keeper.hold(sending)  # renewed while the request is out
        try:
            try:
                result = call_with_retry(
                    attempt,
                    what=f"publish:{item.channel_id}", retry_on=(TransientPublishError,),
                    attempts=3, initial_s=1.0, deadline_s=self.settings.send_deadline_seconds,
                    sleep=self.sleep)
            finally:
                keeper.drop(sending)  # from here on the outcome is written under the token
        except RateLimitedError as exc:
            t = self._now(now)
            reset = max(exc.reset_at, t + timedelta(seconds=1))
            self._pause(item.channel_id, reset, t, f"429 from {item.channel_id}")
            self._release(sending, ItemState.QUEUED, t, stats,
                          self._rate_limited_reason(item.channel_id), error=str(exc)[:300],
                          not_before=reset)
            stats.rate_limited += 1
            log.warning("channel.rate_limited", channel=item.channel_id, until=reset.isoformat())
            return "rate_limited"
        except OutcomeUnknownError as exc:
            return self._resolve_unknown(sending, publisher, update, self._now(now), str(exc),
                                         stats)
        except PermanentPublishError as exc:
            if sending.attempts > 1 and "duplicate" in str(exc).lower():
                # A resend refused as a duplicate: the earlier attempt most likely went out.
                return self._resolve_unknown(sending, publisher, update, self._now(now),
                                             f"resend refused as duplicate: {exc}", stats,
                                             resend_refused=True)
            self._fail(sending, self._now(now), f"refused by {item.channel_id}: {exc}", stats)
            return "failed"
        except PublishError as exc:
            self._retry_later(sending, self._now(now), str(exc), stats)
            return "retry"
        except Exception as exc:
            log.exception("publisher.crashed", channel=item.channel_id, item=item.id)
            return self._resolve_unknown(sending, publisher, update, self._now(now),
                                         f"unexpected {type(exc).__name__}", stats)
        if not self._published(sending, result, self._now(now), stats):
            return "taken"
        log.info("outbox.published", item=item.id, channel=item.channel_id,
                 action=str(item.action), post_id=result.post_id, dry_run=result.dry_run)
        return "published"

    def _published(self, item: OutboxItem, result: PublishResult, now: datetime,
                   stats: DispatchStats, recovered: bool = False) -> bool:
        reason = "found on platform after unknown outcome" if recovered else (
            "dry run: recorded, not posted" if result.dry_run else "published")
        details = {"post_id": result.post_id, "url": result.url, "dry_run": result.dry_run}
        try:
            self._save(item, outbox.publish(item, post_id=result.post_id, url=result.url, at=now,
                                            dry_run=result.dry_run), now, reason,
                       details=details, audit="outbox.published",
                       audit_details={"channel": item.channel_id, "action": str(item.action),
                                      "incident": item.incident_id, "update": item.update_id,
                                      **details, "out_of_hours": item.out_of_hours,
                                      "over_cap": item.over_cap})
        except StaleWriteError as exc:
            self._overtaken(item, exc, now, stats, f"publish of post {result.post_id}")
            return False
        stats.published += 1
        stats.recovered += int(recovered)
        return True

    def _release(self, item: OutboxItem, state: ItemState, now: datetime,
                 stats: DispatchStats, reason: str, *, error: str | None = None,
                 not_before: datetime | None = None, audit: str | None = None) -> bool:
        try:
            self._save(item, outbox.release(item, state=state, reason=reason, at=now,
                                            error=error, not_before=not_before), now, reason,
                       details={"error": error} if error else None, audit=audit,
                       audit_details={"error": error})
        except StaleWriteError as exc:
            self._overtaken(item, exc, now, stats, f"release to {state}")
            return False
        return True

    def _rate_limited_reason(self, channel_id: str) -> str:
        """Why an item waits for a platform's reset, and until when (the policy's zone)."""
        until = self._paused.get(channel_id)
        if until is None:
            return "rate limited; waiting for the platform's reset"
        wall = local(until, self.catalog.policy)
        return (f"rate limited by {channel_id} until {wall:%H:%M} "
                f"{self.catalog.policy.timezone}")

    def _pause(self, channel_id: str, until: datetime, now: datetime, reason: str) -> None:
        """Record a platform rate-limit pause; no request may go before ``until``."""
        wait = max(0.0, (until - now).total_seconds())
        self._paused[channel_id] = until  # seen at once by the rest of this tick's requests
        with self.store.unit_of_work() as uow:
            uow.channels.pause(channel_id, until=until, reason=reason, wait_seconds=wait)
            uow.audit.append(NewAuditEvent("dispatcher", "channel.rate_limited",
                                           f"channel:{channel_id}", reason, now,
                                           {"until": isoformat(until),
                                            "wait_seconds": round(wait, 3)}))
            uow.commit()

    def _update(self, item: OutboxItem) -> Update | None:
        if item.update_id is None:
            return None
        return self.store.get_update(item.update_id)

    def _fail(self, item: OutboxItem, now: datetime, reason: str, stats: DispatchStats) -> None:
        if self._release(item, ItemState.FAILED, now, stats, reason[:500], error=reason[:500],
                         audit="outbox.failed"):
            stats.failed += 1
            log.error("outbox.failed", item=item.id, channel=item.channel_id,
                      reason=reason[:300])

    def _retry_later(self, item: OutboxItem, now: datetime, error: str,
                     stats: DispatchStats) -> None:
        attempts = item.attempts
        if attempts >= self.settings.max_attempts:
            self._fail(item, now, f"gave up after {attempts} attempts: {error}", stats)
            return
        wait = backoff_delay(attempts, base=self.settings.retry_base_seconds, cap=900.0,
                             rng=self.rng)
        self._release(item, ItemState.QUEUED, now, stats,
                      f"attempt {attempts} failed; retrying in {wait:.0f}s", error=error[:300],
                      not_before=now + timedelta(seconds=wait))
        log.warning("outbox.retry", item=item.id, channel=item.channel_id, attempt=attempts,
                    wait_s=round(wait, 1))

    def _resolve_unknown(self, item: OutboxItem, publisher: Publisher, update: Update | None,
                         now: datetime, why: str, stats: DispatchStats,
                         resend_refused: bool = False) -> str:
        """The request may have reached the platform: look before sending again."""
        try:
            found = self._look(publisher, item, update)
        except PublishError as exc:
            status = exc.status
            transient = status is None or status >= 500 or status == 429
            if transient and item.lookups + 1 < self.settings.max_lookups:
                # The platform is down or busy, not saying no: ask again later rather than
                # hand a probably-published item to a person at once.
                wait = backoff_delay(item.lookups + 1, base=self.settings.retry_base_seconds,
                                     cap=900.0, rng=self.rng)
                until = now + timedelta(seconds=wait)
                if isinstance(exc, RateLimitedError):
                    # A 429 to a lookup pauses the channel like one to a post: no request,
                    # lookups included, goes there before the reset.
                    self._pause(item.channel_id, exc.reset_at, now,
                                f"rate limited (lookup): {exc}"[:300])
                    until = max(until, exc.reset_at)
                reason = f"platform could not confirm yet; asking again at {isoformat(until)}"
                try:
                    self._save(item, outbox.defer_lookup(item, until=until,
                                                         error=str(exc)[:300]),
                               now, reason, details={"error": str(exc)[:300]})
                except StaleWriteError as stale:
                    self._overtaken(item, stale, now, stats, "deferred lookup")
                return "deferred"
            self._release(
                item, ItemState.NEEDS_REVIEW, now, stats,
                f"outcome unknown ({why}) and the platform could not confirm: check "
                f"{item.channel_id} by hand, then 'queue retry' or 'queue reject'",
                error=str(exc)[:300], audit="outbox.needs_review")
            return "review"
        if found is not None:
            return "published" if self._published(item, found, now, stats, recovered=True) \
                else "taken"
        settled = self._settled_at(item)
        if not resend_refused and settled is not None and now < settled:
            # Not there *yet*: the request (ours, or a dead worker's) may still be in flight
            # and land. A resend now could make a duplicate; ask again once it cannot land.
            reason = (f"not on {item.channel_id} yet; the request sent at "
                      f"{isoformat(item.sent_at or now)} may still land: asking again at "
                      f"{isoformat(settled)}")
            try:
                self._save(item, outbox.defer_lookup(item, until=settled, error=why[:300],
                                                     count=False), now, reason)
            except StaleWriteError as stale:
                self._overtaken(item, stale, now, stats, "deferred lookup")
            return "deferred"
        if resend_refused:
            self._release(
                item, ItemState.NEEDS_REVIEW, now, stats,
                f"{item.channel_id} refused a resend as duplicate content but the earlier "
                "post was not found: check by hand, then 'queue retry --force' or "
                "'queue reject'", error=why[:300], audit="outbox.needs_review")
            return "review"
        self._retry_later(item, now, f"not on the platform after: {why}", stats)
        return "retry"

    def _look(self, publisher: Publisher, item: OutboxItem,
              update: Update | None) -> PublishResult | None:
        """``find_existing``, asked again at once when a busy platform answers 5xx (a lookup
        is a read, safe to repeat; it may take several pages, any of which can fail)."""
        for attempt in range(LOOKUP_ATTEMPTS):
            try:
                return publisher.find_existing(item, update)
            except PublishError as exc:
                busy = exc.status is not None and exc.status >= 500
                if not busy or attempt == LOOKUP_ATTEMPTS - 1:
                    raise
                log.info("outbox.lookup_retry", item=item.id, channel=item.channel_id,
                         attempt=attempt + 1, status=exc.status)
                (self.sleep or time.sleep)(1.0 * (attempt + 1))
        raise AssertionError("unreachable")  # pragma: no cover

    def _settled_at(self, item: OutboxItem) -> datetime | None:
        """When the item's last request can no longer land on the platform."""
        if item.sent_at is None:
            return None
        return item.sent_at + timedelta(seconds=self.settings.send_deadline_seconds
                                        + self.settings.timeout_seconds
                                        + self.settings.settle_margin_seconds)

    def recover(self, now: datetime, stats: DispatchStats | None = None) -> None:
        """Take up items whose worker's lease expired (it crashed or stalled): a leased one
        goes back to the queue; a sending one is looked up on the platform first."""
        stats = stats or DispatchStats()
        with self.store.reader() as r:
            expired = r.outbox.expired(now)
        if expired:
            self._take_up(expired, now, stats)

    def _take_up(self, expired: Sequence[OutboxItem], now: datetime,
                 stats: DispatchStats) -> None:
        """``recover``'s work on the items found expired."""
        with self.store.reader() as r:
            paused = {cid for cid, st in r.channels.list().items()
                      if st.paused_until is not None and st.paused_until > now}
        for item in expired:
            if item.channel_id in paused or self._paused.get(item.channel_id, now) > now:
                continue  # the platform said wait: not even a lookup goes before its reset
            try:
                mine = self._save(item, outbox.take_over(item, owner=self.worker_id, now=now,
                                                         until=now + self.lease),
                                  now, "lease expired; taken over", skip_locked=True)
            except StaleWriteError:
                continue  # another worker took it over first
            if item.state is ItemState.LEASED:
                self._release(mine, ItemState.QUEUED, now, stats,
                              f"lease of {item.lease_owner} expired before sending")
                continue
            publisher = self.publishers.get(item.channel_id)
            if publisher is None:
                continue
            why = (f"worker {item.lease_owner} stopped while sending" if item.lease_owner
                   else "asking the platform again")
            self._resolve_unknown(mine, publisher, self._update(mine), now, why, stats)
