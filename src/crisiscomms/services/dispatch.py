"""The dispatch service: every pending outbox item gets a policy decision, and what may go out
goes out exactly once.

The states and their transitions are ``crisiscomms.domain.outbox``. A request is only sent after
``sending`` is committed, so after a crash the dispatcher knows which items may have reached the
platform and asks the platform (``find_existing``) before ever sending them again. Every claim
carries a fencing token: a worker whose lease was taken over cannot publish, requeue or fail the
item any more (the store refuses, and the refusal is logged and audited). The lease of a send is
dated from the moment the send starts and renewed while the request is in flight, so a slow
platform never lets a second worker take the item over from a live one.
"""

from __future__ import annotations

import contextlib
import random
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta

import structlog

from crisiscomms.domain import outbox
from crisiscomms.domain.clock import isoformat
from crisiscomms.domain.config import Catalog
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
from crisiscomms.domain.outbox import PENDING
from crisiscomms.domain.policy import decide
from crisiscomms.domain.workcal import local, week_start
from crisiscomms.ports import Clock, Publisher, Store
from crisiscomms.retry import backoff_delay, call_with_retry
from crisiscomms.settings import DispatchSettings

log = structlog.get_logger(__name__)

# ``settings.send_deadline_seconds``: how long one send may take, all retries included
# (``call_with_retry``'s deadline): a request started less than this (plus its own time-out and
# a margin) ago may still land on the platform, so its absence there is not yet proof that it
# failed.
LOOKUP_ATTEMPTS = 3  # a lookup answered 5xx is asked again at once, this many times in all
SETTLE_MARGIN_S = 5.0

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


def channel_counters(store: Store, catalog: Catalog, channel_id: str,
                     now: datetime) -> ChannelCounters:
    """A channel's counters for the policy week and local day containing ``now``."""
    policy = catalog.policy
    day_start = local(now, policy).replace(hour=0, minute=0, second=0, microsecond=0)
    with store.reader() as r:
        return r.outbox.counters(channel_id, now=now, week_start=week_start(now, policy),
                                 day_start=day_start)


def sort_key(item: OutboxItem) -> tuple[int, int, str, int]:
    """Lead agency first, then CAP severity, then age: who gets a scarce quota first."""
    published = item.published_at.isoformat() if item.published_at else ""
    return (0 if item.is_lead else 1, -item.severity_rank, published, item.id)


class LeaseKeeper:
    """Renews an in-flight item's lease while its request is out, from a background thread, so
    only a worker that died or stalled loses it; says so if the lease was lost meanwhile."""

    def __init__(self, store: Store, item: OutboxItem, lease: timedelta,
                 now: Callable[[], datetime]) -> None:
        self.store, self.item, self.lease, self.now = store, item, lease, now
        self.lost = False
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True,
                                        name=f"lease-{item.id}")

    def _run(self) -> None:
        interval = max(0.05, self.lease.total_seconds() / 3)
        while not self._stop.wait(interval):
            try:
                with self.store.unit_of_work() as uow:
                    ok = uow.outbox.renew(self.item, until=self.now() + self.lease)
                    uow.commit()
            except StoreError as exc:
                log.warning("outbox.lease_renew_failed", item=self.item.id, error=str(exc))
                continue
            if not ok:
                self.lost = True
                log.error("outbox.lease_lost", item=self.item.id, token=self.item.fence)
                return

    def __enter__(self) -> LeaseKeeper:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


class Dispatcher:
    """Decides and sends pending items, one channel at a time, each channel isolated."""

    def __init__(self, *, store: Store, catalog: Catalog,
                 publishers: Mapping[str, Publisher], settings: DispatchSettings,
                 worker_id: str, rng: random.Random | None = None,
                 sleep: Callable[[float], None] | None = None,
                 measure: bool = False, clock: Clock | None = None) -> None:
        self.store = store
        self.catalog = catalog
        self.publishers = dict(publishers)
        self.settings = settings
        self.worker_id = worker_id
        self.rng = rng or random.Random()
        self.sleep = sleep
        self.measure = measure
        self.clock = clock
        self.lease = timedelta(seconds=settings.lease_seconds)
        # Set on shutdown: the tick finishes the send in flight and starts no other.
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
        """Recover expired leases, then decide and send every pending item once."""
        stats = DispatchStats()
        self._apply_pending()  # a reloaded catalogue takes effect between ticks only
        if not self._problems:  # first tick: say which channels cannot post at all
            for channel_id, publisher in sorted(self.publishers.items()):
                self._channel_problem(channel_id, getattr(publisher, "unavailable", None))
        self.recover(now, stats)
        with self.store.reader() as r:
            incidents = r.incidents.list()
            windows = r.windows.list()
            pending = r.outbox.list(states=[str(s) for s in PENDING])
        by_channel: dict[str, list[OutboxItem]] = {}
        for item in pending:
            by_channel.setdefault(item.channel_id, []).append(item)
        for channel_id, items in by_channel.items():
            if self.stop_requested.is_set():
                break
            try:
                self._channel_tick(channel_id, sorted(items, key=sort_key), now, incidents,
                                   windows, stats)
            except StoreError:
                raise
            except Exception:
                log.exception("channel.tick_failed", channel=channel_id)
        return stats

    def counters(self, channel_id: str, now: datetime) -> ChannelCounters:
        return channel_counters(self.store, self.catalog, channel_id, now)

    # -- persisting transitions -------------------------------------------------------
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

    def _decide(self, item: OutboxItem, state: ItemState, reason: str, now: datetime) -> None:
        if item.state is state and item.reason == reason:
            return  # unchanged: nothing to record
        # The decision's "hold until" is not stored as the item's schedule: the policy decides
        # again on every tick, so a hold ends as soon as its cause does.
        with contextlib.suppress(StaleWriteError):  # changed meanwhile: decided next tick
            self._save(item, outbox.decide(item, state, reason, now), now, reason)

    def _channel_tick(self, channel_id: str, items: Sequence[OutboxItem], now: datetime,
                      incidents: Sequence[Incident], windows: Sequence[LiveWindow],
                      stats: DispatchStats) -> None:
        channel = self.catalog.channels.get(channel_id)
        publisher = self.publishers.get(channel_id)
        if channel is None or publisher is None:
            for item in items:
                self._decide(item, ItemState.HELD, f"channel {channel_id!r} is not configured",
                             now)
            return
        problem = getattr(publisher, "unavailable", None)
        self._channel_problem(channel_id, problem)
        counters = self.counters(channel_id, now)
        for item in items:
            if self.stop_requested.is_set():
                return
            t0 = time.perf_counter() if self.measure else 0.0
            decision = decide(item, channel, now, counters, self.catalog.policy, incidents,
                              self.catalog.playbooks, windows)
            if self.measure:
                stats.decision_seconds.append(time.perf_counter() - t0)
            stats.decided += 1
            if decision.action is not DecisionAction.PUBLISH:
                self._decide(item, _STATE_FOR[decision.action], decision.reason, now)
                stats.held += decision.action is DecisionAction.HOLD
                continue
            if problem:
                # The channel cannot post at all: fail loudly, send nothing; 'queue retry'
                # sends it once the channel is fixed.
                with contextlib.suppress(StaleWriteError):
                    self._save(item, outbox.refuse(item, reason=str(problem), at=now), now,
                               str(problem), audit="outbox.failed",
                               audit_details={"channel": channel_id})
                    stats.failed += 1
                continue
            reply_to: str | None = None
            if item.reply_to_item is not None:
                parent = self.store.get_item(item.reply_to_item)
                if parent.state is not ItemState.PUBLISHED:
                    self._wait_for_parent(item, parent, now)
                    continue
                reply_to = parent.platform_post_id
            if item.update_id is not None:
                with self.store.reader() as r:
                    earlier = r.outbox.published_for(item.update_id, channel_id)
                if earlier is not None:
                    self._decide(item, ItemState.SKIPPED,
                                 f"duplicate: update already relayed on {channel_id} as item "
                                 f"{earlier.id}", now)
                    continue
            outcome = self._send(item, publisher, now, decision.out_of_hours,
                                 decision.over_cap, stats, reply_to=reply_to)
            if outcome == "published":
                normal = int(item.incident_id is None)
                counters = replace(counters, week_count=counters.week_count + 1,
                                   last_hour_count=counters.last_hour_count + 1,
                                   normal_week_count=counters.normal_week_count + normal,
                                   normal_day_count=counters.normal_day_count + normal)
            elif outcome == "rate_limited":
                counters = self.counters(channel_id, now)  # carries the new paused_until

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

    def _wait_for_parent(self, item: OutboxItem, parent: OutboxItem, now: datetime) -> None:
        """A reply waits for the post it answers; if that never goes out, neither does it."""
        if parent.state in (ItemState.REJECTED, ItemState.SKIPPED, ItemState.FAILED):
            self._decide(item, ItemState.SKIPPED,
                         f"the alert it follows up (item {parent.id}) was not relayed on "
                         f"{item.channel_id} ({parent.state}): nothing to answer", now)
        else:
            self._decide(item, ItemState.HELD,
                         f"waiting for item {parent.id} (the alert it follows up) to go out on "
                         f"{item.channel_id}, to reply to it", now)

    def _send(self, item: OutboxItem, publisher: Publisher, now: datetime, out_of_hours: bool,
              over_cap: bool, stats: DispatchStats, reply_to: str | None = None) -> str:
        try:
            claimed = self._save(
                item, outbox.claim(item, owner=self.worker_id, until=now + self.lease,
                                   out_of_hours=out_of_hours, over_cap=over_cap),
                now, f"leased by {self.worker_id}", skip_locked=True)
        except StaleWriteError:
            return "taken"  # another worker (or an operator) got there first
        update = self._update(claimed)
        started = self._now(now)
        try:
            sending = self._save(claimed, outbox.start_send(claimed, at=started,
                                                            until=started + self.lease),
                                 started, "request sent")
        except StaleWriteError as exc:
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

        try:
            with LeaseKeeper(self.store, sending, self.lease, lambda: self._now(started)):
                result = call_with_retry(
                    attempt,
                    what=f"publish:{item.channel_id}", retry_on=(TransientPublishError,),
                    attempts=3, initial_s=1.0, deadline_s=self.settings.send_deadline_seconds,
                    sleep=self.sleep)
        except RateLimitedError as exc:
            t = self._now(now)
            reset = max(exc.reset_at, t + timedelta(seconds=1))
            self._pause(item.channel_id, reset, t, f"429 from {item.channel_id}")
            self._release(sending, ItemState.QUEUED, t, stats,
                          "rate limited; waiting for the platform's reset", error=str(exc)[:300],
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
                                        + self.settings.timeout_seconds + SETTLE_MARGIN_S)

    def recover(self, now: datetime, stats: DispatchStats | None = None) -> None:
        """Take up items whose worker's lease expired (it crashed or stalled): a leased one
        goes back to the queue; a sending one is looked up on the platform first."""
        stats = stats or DispatchStats()
        with self.store.reader() as r:
            expired = r.outbox.expired(now)
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
