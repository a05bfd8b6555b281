"""The watcher's polling half: sources in, updates stored, matched and queued exactly once.

``poll_cycle(now)`` polls every due source concurrently (bounded by the fetcher's limits);
one source's failure is recorded against that source only and backs it off, without delaying
any other. Each source's updates, its new state and the outbox items they become are written
in one transaction, so a crash can never separate "seen" from "queued".
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import random
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta

import structlog

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
    Incident,
    NewAuditEvent,
    NewOutboxItem,
    PollResult,
    RecordedUpdate,
    SourceState,
    Update,
)
from crisiscomms.ports import Source, Store, UnitOfWork
from crisiscomms.retry import backoff_delay
from crisiscomms.settings import PollingSettings

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


class Watcher:
    """Polls the sources that matter now and queues what they publish."""

    def __init__(self, *, store: Store, catalog: Catalog, sources: Sequence[Source],
                 settings: PollingSettings, rng: random.Random | None = None,
                 owner: str = "watcher") -> None:
        self.store = store
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
        self._pending: tuple[Catalog, list[Source], set[str]] | None = None
        self._superseded: list[Source] = []  # built by a reload, replaced before they started

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
        log.info("watch.reconfigured", sources=[s.key for s in self.sources],
                 started=[s.key for s in added], stopped=sorted(dropped))
        for src in gone:
            task = self._running.get(src.key)
            if task is None:
                await _close(src)
            else:  # its poll ends first (a poll is never cut short by a reload)
                task.add_done_callback(functools.partial(_close_later, src))

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

    def _interval(self, source: Source, incident_ids: set[str]) -> float:
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

    # -- one cycle ------------------------------------------------------------------
    async def poll_cycle(self, now: datetime, *, wait: bool = True) -> CycleStats:
        """Poll every source that is due at ``now``; record each result as soon as it is in.

        With ``wait=False`` (the run loop) the polls go on in the background and the next
        cycle starts without them: a source still being polled is simply not due again, so
        one slow server delays nothing but itself. ``cancel_running()`` abandons them."""
        await self._apply_pending()
        catalog = self.catalog  # one configuration for the whole cycle, each poll included
        incidents = self.store.active_incidents()
        watched = self.watched_ids(incidents)
        incident_ids = self.incident_source_ids(incidents)
        states = {s.source_id: s for s in self.store.source_states()}
        due: list[tuple[Source, SourceState]] = []
        for src in self.sources:
            if src.key in self._running or not any(sid in watched for sid in src.source_ids):
                continue
            st = states.get(src.key) or SourceState(source_id=src.key)
            if st.next_poll_at is not None and st.next_poll_at > now and \
                    not self._incident_fast_path(src, st, now, incident_ids):
                continue
            due.append((src, st))
        stats = CycleStats()
        if not due:
            return stats
        # Claim what is due: a source another watcher polls (or polled since we looked) is
        # skipped, so each due source is polled by one watcher per interval.
        with self.store.unit_of_work() as uow:
            claimed = uow.sources.claim({src.key: st for src, st in due}, owner=self.owner,
                                        now=now, lease=self.lease)
            uow.commit()
        due = [(src, claimed[src.key]) for src, _ in due if src.key in claimed]
        if not due:
            return stats
        tasks = []
        for src, st in due:
            task = asyncio.ensure_future(self._poll_and_record(
                src, st, now, self._interval(src, incident_ids), incidents, stats, catalog))
            self._running[src.key] = task
            task.add_done_callback(functools.partial(self._finished, src.key))
            tasks.append(task)
        if wait:
            await asyncio.gather(*tasks)
        return stats

    async def _poll_and_record(self, src: Source, st: SourceState, now: datetime,
                               interval: float, incidents: Sequence[Incident],
                               stats: CycleStats, catalog: Catalog) -> None:
        try:
            result = await self._poll(src, st, now)
        except asyncio.CancelledError:
            # Abandoned (the watcher is stopping): give the lease back so the next watcher
            # need not wait for it to expire; nothing of this poll is recorded.
            with contextlib.suppress(StoreError, StaleWriteError), \
                    self.store.unit_of_work() as uow:
                uow.sources.save(st, owner=self.owner)
                uow.commit()
            raise
        stats.polled += 1
        try:
            if isinstance(result, SourceError):
                self._record_failure(src, st, result, now, stats)
            else:
                self._record_success(src, st, result, now, interval, incidents, stats,
                                     catalog)
        except StaleWriteError as exc:
            self._overtaken(src, exc, now, stats)

    def _finished(self, key: str, _task: asyncio.Future[None]) -> None:
        self._running.pop(key, None)

    def running(self) -> int:
        """How many polls are still in progress."""
        return len(self._running)

    async def cancel_running(self) -> None:
        """Abandon the polls in progress (their leases are given back)."""
        tasks = list(self._running.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    def _overtaken(self, src: Source, exc: StaleWriteError, now: datetime,
                   stats: CycleStats) -> None:
        """Another watcher took this source's lease over while we polled: our result is
        dropped (theirs counts), and that is reported, never silently written."""
        stats.overtaken += 1
        log.warning("source.poll_overtaken", source=src.key, error=str(exc))
        with self.store.unit_of_work() as uow:
            uow.audit.append(NewAuditEvent(self.owner, "source.poll_overtaken",
                                           f"source:{src.key}", str(exc)[:300], now))
            uow.commit()

    async def _poll(self, src: Source, st: SourceState, now: datetime) -> PollResult | SourceError:
        deadline = self.settings.deadline_seconds
        try:
            return await asyncio.wait_for(src.poll(st, now), timeout=deadline)
        except TimeoutError:
            return TransientSourceError(
                f"{src.key}: the poll did not finish within {deadline:g}s (a server answering "
                "too slowly); abandoned, tried again later", source_id=src.key,
                error_class="deadline")
        except SourceError as exc:
            exc.source_id = exc.source_id or src.key
            return exc
        except Exception as exc:
            log.exception("source.crashed", source=src.key)
            return SourceError(f"{src.key}: unexpected {type(exc).__name__}",
                               source_id=src.key, error_class="internal")

    def _incident_fast_path(self, src: Source, st: SourceState, now: datetime,
                            incident_ids: set[str]) -> bool:
        """A source newly in an incident does not wait out its long normal interval (but a
        failing or rate-limited one keeps its backoff)."""
        return (any(sid in incident_ids for sid in src.source_ids)
                and st.last_polled_at is not None and st.failures == 0
                and not _respecting_reset(st, now)
                and now - st.last_polled_at
                >= timedelta(seconds=self._interval(src, incident_ids)))

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

    def _jitter(self) -> float:
        return self.rng.uniform(0, self.settings.jitter_seconds)

    def _record_failure(self, src: Source, st: SourceState, exc: SourceError, now: datetime,
                        stats: CycleStats) -> None:
        failures = st.failures + 1
        wait = backoff_delay(failures, base=self.settings.interval_seconds,
                             cap=self.settings.max_backoff_seconds, rng=self.rng)
        next_at = now + timedelta(seconds=wait)
        extra = {k: v for k, v in st.extra.items() if k != NOT_BEFORE}
        if exc.retry_at is not None:
            # The source named its reset: nothing goes to it before then.
            next_at = max(next_at, exc.retry_at)
            extra[NOT_BEFORE] = exc.retry_at.isoformat()
        new = replace(st, last_polled_at=now, next_poll_at=next_at, extra=extra,
                      failures=failures, last_error=str(exc)[:500],
                      last_error_class=exc.error_class, error_count=st.error_count + 1)
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
        stats.failed += 1
        stats.errors[src.key] = exc.error_class
        log.warning("source.failed", source=src.key, error_class=exc.error_class,
                    error=str(exc)[:300], failures=failures, retry_in_s=round(wait, 1))

    def _record_success(self, src: Source, st: SourceState, result: PollResult, now: datetime,
                        interval: float, incidents: Sequence[Incident],
                        stats: CycleStats, catalog: Catalog | None = None) -> None:
        catalog = catalog or self.catalog
        next_at = now + timedelta(seconds=interval + self._jitter())
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
            extra=extra, baseline_done=True)
        baseline = not st.baseline_done
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
        stats.queued += len(items)
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
