"""The dry-run publisher: remembers what it would have posted and posts nothing."""

from __future__ import annotations

import threading
from dataclasses import dataclass
from datetime import datetime

import structlog

from crisiscomms.domain.models import ActionKind, OutboxItem, PublishResult, Update
from crisiscomms.ports import Clock

log = structlog.get_logger(__name__)


@dataclass(frozen=True, slots=True)
class DryRunRecord:
    """One post that would have been made."""

    item_id: int
    dedupe_key: str
    channel_id: str
    action: ActionKind
    body: str
    url: str
    at: datetime
    result: PublishResult


class DryRunPublisher:
    """A ``Publisher`` that records instead of posting (``--dry-run``, or missing credentials).

    Publishing the same item twice returns the first record, as a real idempotent channel would.
    """

    def __init__(self, channel_id: str, clock: Clock) -> None:
        self.channel_id = channel_id
        self._clock = clock
        self._lock = threading.Lock()
        self.records: list[DryRunRecord] = []
        self._by_key: dict[object, DryRunRecord] = {}  # item id and dedupe key -> record

    def publish(self, item: OutboxItem, update: Update | None) -> PublishResult:
        """Record ``item`` and return a result marked ``dry_run``."""
        with self._lock:
            earlier = self._find(item)
            if earlier is not None:
                return earlier.result
            result = PublishResult(post_id=f"dry-run:{item.id}", url=item.url, dry_run=True)
            record = DryRunRecord(
                item_id=item.id,
                dedupe_key=item.dedupe_key,
                channel_id=self.channel_id,
                action=item.action,
                body=item.body,
                url=item.url,
                at=self._clock.now(),
                result=result,
            )
            self.records.append(record)
            self._by_key[("id", item.id)] = record
            self._by_key[("key", item.dedupe_key)] = record
        log.info(
            "publisher.dry_run",
            channel=self.channel_id,
            item=item.id,
            action=str(item.action),
            chars=len(item.body),
        )
        return result

    def find_existing(self, item: OutboxItem, update: Update | None) -> PublishResult | None:
        """The result recorded for ``item`` earlier, or ``None``."""
        with self._lock:
            earlier = self._find(item)
        return earlier.result if earlier is not None else None

    def close(self) -> None:
        """Nothing to release."""

    def _find(self, item: OutboxItem) -> DryRunRecord | None:
        return self._by_key.get(("id", item.id)) or self._by_key.get(("key", item.dedupe_key))
