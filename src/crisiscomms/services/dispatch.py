"""The dispatch half of the watcher: every pending outbox item gets a policy decision, and what
may go out goes out exactly once.

The outbox is a state machine::

    queued ──► leased ──► sending ──► published
      ▲  │        │          │ ├────► failed         (permanent error, or attempts used up)
      │  │        │          │ ├────► queued/held    (transient error or 429: later)
      │  │        │          │ └────► needs_review   (outcome unknown, platform can't tell)
      │  ├─► held / needs_approval / skipped          (policy decisions; operators act on them)
      └──┴── lease expired (crashed worker): leased ─► queued; sending ─► ask the platform

A request is only sent after ``sending`` is committed, so after a crash the dispatcher knows
which items may have reached the platform and asks the platform (``find_existing``) before
ever sending them again.
"""

from __future__ import annotations

import contextlib
import random
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta

import structlog

from crisiscomms.adapters.store import SQLiteStore
from crisiscomms.adapters.store.sqlite import PENDING
from crisiscomms.domain.config import Catalog
from crisiscomms.domain.errors import (
    OutcomeUnknownError,
    PermanentPublishError,
    PublishError,
    RateLimitedError,
    StoreError,
    TransientPublishError,
)
from crisiscomms.domain.models import (
    ChannelCounters,
    DecisionAction,
    Incident,
    ItemState,
    LiveWindow,
    OutboxItem,
    Update,
)
from crisiscomms.domain.policy import decide
from crisiscomms.domain.workcal import local, week_start
from crisiscomms.ports import Publisher
from crisiscomms.retry import backoff_delay, call_with_retry
from crisiscomms.settings import DispatchSettings

log = structlog.get_logger(__name__)

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
    decision_seconds: list[float] = field(default_factory=list)


def channel_counters(store: SQLiteStore, catalog: Catalog, channel_id: str,
                     now: datetime) -> ChannelCounters:
    """A channel's counters for the policy week and local day containing ``now``."""
    policy = catalog.policy
    day_start = local(now, policy).replace(hour=0, minute=0, second=0, microsecond=0)
    return store.channel_counters(channel_id, now=now, week_start=week_start(now, policy),
                                  day_start=day_start)


def sort_key(item: OutboxItem) -> tuple[int, int, str, int]:
    """Lead agency first, then CAP severity, then age: who gets a scarce quota first."""
    published = item.published_at.isoformat() if item.published_at else ""
    return (0 if item.is_lead else 1, -item.severity_rank, published, item.id)


class Dispatcher:
    """Decides and sends pending items, one channel at a time, each channel isolated."""

    def __init__(self, *, store: SQLiteStore, catalog: Catalog,
                 publishers: Mapping[str, Publisher], settings: DispatchSettings,
                 worker_id: str, rng: random.Random | None = None,
                 sleep: Callable[[float], None] | None = None,
                 measure: bool = False) -> None:
        self.store = store
        self.catalog = catalog
        self.publishers = dict(publishers)
        self.settings = settings
        self.worker_id = worker_id
        self.rng = rng or random.Random()
        self.sleep = sleep
        self.measure = measure
        self.lease = timedelta(seconds=settings.lease_seconds)

    # -- one tick -------------------------------------------------------------------
    def tick(self, now: datetime) -> DispatchStats:
        """Recover expired leases, then decide and send every pending item once."""
        stats = DispatchStats()
        self.recover(now, stats)
        incidents = self.store.incidents()
        windows = self.store.windows()
        pending = self.store.items(states=[str(s) for s in PENDING])
        by_channel: dict[str, list[OutboxItem]] = {}
        for item in pending:
            by_channel.setdefault(item.channel_id, []).append(item)
        for channel_id, items in by_channel.items():
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

    def _channel_tick(self, channel_id: str, items: Sequence[OutboxItem], now: datetime,
                      incidents: Sequence[Incident], windows: Sequence[LiveWindow],
                      stats: DispatchStats) -> None:
        channel = self.catalog.channels.get(channel_id)
        publisher = self.publishers.get(channel_id)
        if channel is None or publisher is None:
            for item in items:
                self.store.set_decision(item.id, state=ItemState.HELD, now=now,
                                        reason=f"channel {channel_id!r} is not configured")
            return
        counters = self.counters(channel_id, now)
        for item in items:
            t0 = time.perf_counter() if self.measure else 0.0
            decision = decide(item, channel, now, counters, self.catalog.policy, incidents,
                              self.catalog.playbooks, windows)
            if self.measure:
                stats.decision_seconds.append(time.perf_counter() - t0)
            stats.decided += 1
            if decision.action is not DecisionAction.PUBLISH:
                self.store.set_decision(item.id, state=_STATE_FOR[decision.action],
                                        reason=decision.reason, now=now)
                stats.held += decision.action is DecisionAction.HOLD
                continue
            if item.update_id is not None:
                earlier = self.store.published_for_update(item.update_id, channel_id)
                if earlier is not None:
                    self.store.set_decision(
                        item.id, state=ItemState.SKIPPED, now=now,
                        reason=f"duplicate: update already relayed on {channel_id} as item "
                               f"{earlier.id}")
                    continue
            outcome = self._send(item, publisher, now, decision.out_of_hours,
                                 decision.over_cap, stats)
            if outcome == "published":
                normal = int(item.incident_id is None)
                counters = replace(counters, week_count=counters.week_count + 1,
                                   last_hour_count=counters.last_hour_count + 1,
                                   normal_week_count=counters.normal_week_count + normal,
                                   normal_day_count=counters.normal_day_count + normal)
            elif outcome == "rate_limited":
                counters = self.counters(channel_id, now)  # carries the new paused_until

    # -- sending ----------------------------------------------------------------------
    def _send(self, item: OutboxItem, publisher: Publisher, now: datetime, out_of_hours: bool,
              over_cap: bool, stats: DispatchStats) -> str:
        claimed = self.store.claim(item.id, worker=self.worker_id, now=now, lease=self.lease,
                                   out_of_hours=out_of_hours, over_cap=over_cap)
        if claimed is None:
            return "taken"  # another worker leased it first
        update = self._update(claimed)
        if not self.store.mark_sending(item.id, worker=self.worker_id, now=now,
                                       lease=self.lease):
            return "taken"
        try:
            result = call_with_retry(
                lambda: publisher.publish(claimed, update), what=f"publish:{item.channel_id}",
                retry_on=(TransientPublishError,), attempts=3, initial_s=1.0,
                deadline_s=30.0, sleep=self.sleep)
        except RateLimitedError as exc:
            reset = max(exc.reset_at, now + timedelta(seconds=1))
            self.store.pause_channel(item.channel_id, until=reset, now=now,
                                     reason=f"429 from {item.channel_id}")
            self.store.release(item.id, state=ItemState.QUEUED, now=now, worker=self.worker_id,
                               reason="rate limited; waiting for the platform's reset",
                               error=str(exc)[:300], not_before=reset)
            stats.rate_limited += 1
            log.warning("channel.rate_limited", channel=item.channel_id, until=reset.isoformat())
            return "rate_limited"
        except OutcomeUnknownError as exc:
            return self._resolve_unknown(claimed, publisher, update, now, str(exc), stats)
        except PermanentPublishError as exc:
            if claimed.attempts > 0 and "duplicate" in str(exc).lower():
                # A resend refused as a duplicate: the earlier attempt most likely went out.
                return self._resolve_unknown(claimed, publisher, update, now,
                                             f"resend refused as duplicate: {exc}", stats,
                                             resend_refused=True)
            self._fail(item, now, f"refused by {item.channel_id}: {exc}", stats)
            return "failed"
        except PublishError as exc:
            self._retry_later(claimed, now, str(exc), stats)
            return "retry"
        except Exception as exc:
            log.exception("publisher.crashed", channel=item.channel_id, item=item.id)
            return self._resolve_unknown(claimed, publisher, update, now,
                                         f"unexpected {type(exc).__name__}", stats)
        self.store.mark_published(item.id, post_id=result.post_id, url=result.url, now=now,
                                  worker=self.worker_id, dry_run=result.dry_run)
        stats.published += 1
        log.info("outbox.published", item=item.id, channel=item.channel_id,
                 action=str(item.action), post_id=result.post_id, dry_run=result.dry_run)
        return "published"

    def _update(self, item: OutboxItem) -> Update | None:
        if item.update_id is None:
            return None
        return self.store.get_update(item.update_id)

    def _fail(self, item: OutboxItem, now: datetime, reason: str, stats: DispatchStats) -> None:
        self.store.release(item.id, state=ItemState.FAILED, now=now, worker=self.worker_id,
                           reason=reason[:500], error=reason[:500], audit_action="outbox.failed")
        stats.failed += 1
        log.error("outbox.failed", item=item.id, channel=item.channel_id, reason=reason[:300])

    def _retry_later(self, item: OutboxItem, now: datetime, error: str,
                     stats: DispatchStats) -> None:
        attempts = item.attempts + 1
        if attempts >= self.settings.max_attempts:
            self._fail(item, now, f"gave up after {attempts} attempts: {error}", stats)
            return
        wait = backoff_delay(attempts, base=self.settings.retry_base_seconds, cap=900.0,
                             rng=self.rng)
        self.store.release(item.id, state=ItemState.QUEUED, now=now, worker=self.worker_id,
                           reason=f"attempt {attempts} failed; retrying in {wait:.0f}s",
                           error=error[:300], not_before=now + timedelta(seconds=wait))
        log.warning("outbox.retry", item=item.id, channel=item.channel_id, attempt=attempts,
                    wait_s=round(wait, 1))

    def _resolve_unknown(self, item: OutboxItem, publisher: Publisher, update: Update | None,
                         now: datetime, why: str, stats: DispatchStats,
                         resend_refused: bool = False) -> str:
        """The request may have reached the platform: look before sending again."""
        try:
            found = publisher.find_existing(item, update)
        except PublishError as exc:
            status = exc.status
            transient = status is None or status >= 500 or status == 429
            if transient and item.lookups + 1 < self.settings.max_lookups:
                # The platform is down or busy, not saying no: ask again later rather than
                # hand a probably-published item to a person at once.
                wait = backoff_delay(item.lookups + 1, base=self.settings.retry_base_seconds,
                                     cap=900.0, rng=self.rng)
                self.store.defer_lookup(item.id, worker=self.worker_id, now=now,
                                        until=now + timedelta(seconds=wait),
                                        error=str(exc)[:300])
                return "deferred"
            self.store.release(
                item.id, state=ItemState.NEEDS_REVIEW, now=now, worker=self.worker_id,
                reason=f"outcome unknown ({why}) and the platform could not confirm: check "
                       f"{item.channel_id} by hand, then 'queue retry' or 'queue reject'",
                error=str(exc)[:300], audit_action="outbox.needs_review")
            return "review"
        if found is not None:
            with contextlib.suppress(StoreError):
                self.store.mark_published(item.id, post_id=found.post_id, url=found.url, now=now,
                                          worker=self.worker_id, dry_run=found.dry_run,
                                          recovered=True)
            stats.recovered += 1
            stats.published += 1
            return "published"
        if resend_refused:
            self.store.release(
                item.id, state=ItemState.NEEDS_REVIEW, now=now, worker=self.worker_id,
                reason=f"{item.channel_id} refused a resend as duplicate content but the earlier "
                       "post was not found: check by hand, then 'queue retry --force' or "
                       "'queue reject'", error=why[:300], audit_action="outbox.needs_review")
            return "review"
        self._retry_later(item, now, f"not on the platform after: {why}", stats)
        return "retry"

    def recover(self, now: datetime, stats: DispatchStats | None = None) -> None:
        """Take up items whose worker's lease expired (it crashed or hung)."""
        for item in self.store.expired_leases(now):
            if not self.store.take_over(item.id, worker=self.worker_id, now=now,
                                        lease=self.lease):
                continue
            if item.state is ItemState.LEASED:
                self.store.release(item.id, state=ItemState.QUEUED, now=now,
                                   worker=self.worker_id,
                                   reason=f"lease of {item.lease_owner} expired before sending")
                continue
            publisher = self.publishers.get(item.channel_id)
            if publisher is None:
                continue
            self._resolve_unknown(item, publisher, self._update(item), now,
                                  f"worker {item.lease_owner} stopped while sending",
                                  stats or DispatchStats())
