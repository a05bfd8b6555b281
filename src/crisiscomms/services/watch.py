"""The watcher's polling half: sources in, updates stored, matched and queued exactly once.

``poll_cycle(now)`` polls every due source concurrently (bounded by the fetcher's limits);
one source's failure is recorded against that source only and backs it off, without delaying
any other. Each source's updates, its new state and the outbox items they become are written
in one transaction, so a crash can never separate "seen" from "queued".
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta

import structlog

from crisiscomms.adapters.store import SQLiteStore
from crisiscomms.domain.config import Catalog
from crisiscomms.domain.errors import SourceError
from crisiscomms.domain.matching import all_lead_sources, match, priority
from crisiscomms.domain.models import (
    Incident,
    NewOutboxItem,
    PollResult,
    RecordedUpdate,
    SourceState,
)
from crisiscomms.ports import Source
from crisiscomms.retry import backoff_delay
from crisiscomms.settings import PollingSettings

log = structlog.get_logger(__name__)

NOT_BEFORE = "not_before"  # in SourceState.extra: a reset the source named (429)
REFUSED_SEEN = "refused_seen"  # in SourceState.extra: refusals already audited (bounded)
REFUSALS = frozenset({"redirect_refused", "private_address", "bad_url", "too_many_redirects"})


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
    errors: dict[str, str] = field(default_factory=dict)


class Watcher:
    """Polls the sources that matter now and queues what they publish."""

    def __init__(self, *, store: SQLiteStore, catalog: Catalog, sources: Sequence[Source],
                 settings: PollingSettings, rng: random.Random | None = None) -> None:
        self.store = store
        self.catalog = catalog
        self.sources = list(sources)
        self.settings = settings
        self.rng = rng or random.Random()

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
    async def poll_cycle(self, now: datetime) -> CycleStats:
        """Poll every source that is due at ``now``; record results per source."""
        incidents = self.store.active_incidents()
        watched = self.watched_ids(incidents)
        incident_ids = self.incident_source_ids(incidents)
        states = {s.source_id: s for s in self.store.source_states()}
        due: list[tuple[Source, SourceState]] = []
        for src in self.sources:
            if not any(sid in watched for sid in src.source_ids):
                continue
            st = states.get(src.key) or SourceState(source_id=src.key)
            if st.next_poll_at is not None and st.next_poll_at > now and \
                    not self._incident_fast_path(src, st, now, incident_ids):
                continue
            due.append((src, st))
        stats = CycleStats()
        if not due:
            return stats
        results = await asyncio.gather(*(self._poll(src, st, now) for src, st in due))
        for (src, st), result in zip(due, results, strict=True):
            stats.polled += 1
            interval = self._interval(src, incident_ids)
            if isinstance(result, SourceError):
                self._record_failure(src, st, result, now, stats)
                continue
            self._record_success(src, st, result, now, interval, incidents, stats)
        return stats

    async def _poll(self, src: Source, st: SourceState, now: datetime) -> PollResult | SourceError:
        try:
            return await src.poll(st, now)
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

    def _audit_refused(self, src: Source, state: SourceState, result: PollResult,
                       now: datetime) -> None:
        """Audit each refused item once (e.g. an X post from an id that is not pinned)."""
        if not result.refused:
            return
        seen = list(state.extra.get(REFUSED_SEEN, []))
        for what in result.refused:
            if what in seen:
                continue
            seen.append(what)
            self.store.append_audit(actor="watcher", action="source.refused_item",
                                    subject=f"source:{src.key}", reason=what, now=now)
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
        self.store.save_source_state(new)
        if exc.error_class in REFUSALS and exc.error_class != st.last_error_class:
            # A security refusal (redirect to another host, https downgrade, private
            # address) is audited the first time, not only after repeated failures.
            self.store.append_audit(actor="watcher", action="source.refused",
                                    subject=f"source:{src.key}", reason=exc.error_class,
                                    now=now, details={"error": str(exc)[:300]})
        stats.failed += 1
        stats.errors[src.key] = exc.error_class
        log.warning("source.failed", source=src.key, error_class=exc.error_class,
                    error=str(exc)[:300], failures=failures, retry_in_s=round(wait, 1))
        if failures == self.settings.failure_alert_after:
            self.store.append_audit(
                actor="watcher", action="source.failing", subject=f"source:{src.key}",
                reason=f"{failures} consecutive failures; last: {exc.error_class}",
                now=now, details={"error": str(exc)[:300]})

    def _record_success(self, src: Source, st: SourceState, result: PollResult, now: datetime,
                        interval: float, incidents: Sequence[Incident],
                        stats: CycleStats) -> None:
        next_at = now + timedelta(seconds=interval + self._jitter())
        extra = {k: v for k, v in {**st.extra, **result.extra}.items() if k != NOT_BEFORE}
        if result.rate_limited_until is not None:
            next_at = max(next_at, result.rate_limited_until)
            extra[NOT_BEFORE] = result.rate_limited_until.isoformat()
        if st.failures >= self.settings.failure_alert_after:
            self.store.append_audit(actor="watcher", action="source.recovered",
                                    subject=f"source:{src.key}",
                                    reason=f"polled successfully after {st.failures} failures",
                                    now=now)
        new = replace(
            st, last_polled_at=now, next_poll_at=next_at, last_ok_at=now, failures=0,
            etag=result.etag if result.etag is not None else st.etag,
            last_modified=result.last_modified if result.last_modified is not None
            else st.last_modified,
            cursor=result.cursor if result.cursor is not None else st.cursor,
            extra=extra, baseline_done=True)
        self._audit_refused(src, new, result, now)
        if result.not_modified or not result.updates:
            stats.not_modified += int(result.not_modified)
            self.store.save_source_state(new)
            log.debug("source.polled", source=src.key, not_modified=result.not_modified)
            return
        baseline = not st.baseline_done
        leads = all_lead_sources(self.catalog, incidents)
        ordered = sorted((u for u in result.updates
                          if u.source_id in src.source_ids and u.source_id in
                          self.catalog.sources), key=lambda u: priority(u, leads))
        def plan(recorded: list[RecordedUpdate]) -> tuple[list[NewOutboxItem], dict[int, str]]:
            items: list[NewOutboxItem] = []
            dispositions: dict[int, str] = {}
            for rec in recorded:
                m = match(rec, catalog=self.catalog, incidents=incidents, baseline=baseline,
                          now=now)
                dispositions[rec.update.id or 0] = m.disposition
                items += m.items
            stats.queued += len(items)
            return items, dispositions

        recorded = self.store.record_poll(new, ordered, baseline=baseline, plan=plan)
        stats.new_updates += len(recorded)
        log.info("source.polled", source=src.key, updates=len(result.updates),
                 new=len(recorded), baseline=baseline)
