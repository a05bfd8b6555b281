"""The ports: narrow interfaces between the core and its adapters.

The core (models, policy, watcher, dispatcher) depends only on these Protocols; adapters in
``sources/``, ``publishers/`` and ``store/`` implement them and never import each other.
Fakes in ``crisiscomms.testing`` satisfy them structurally (no inheritance needed).
"""

from __future__ import annotations

from datetime import datetime
from typing import Protocol, runtime_checkable

from crisiscomms.domain.models import OutboxItem, PollResult, PublishResult, SourceState, Update


@runtime_checkable
class Clock(Protocol):
    """Where the time comes from. Injected everywhere; nothing else reads the system time."""

    def now(self) -> datetime: ...


@runtime_checkable
class Source(Protocol):
    """Polls one official source (or one batch of them, as X does).

    ``key`` names the state row the watcher keeps for it (cursor, ETag, failures);
    ``source_ids`` are the catalogue ids whose updates it may return. ``poll`` raises only
    ``SourceError`` subclasses; vendor exceptions are translated at the adapter boundary.
    """

    key: str
    source_ids: tuple[str, ...]

    async def poll(self, state: SourceState, now: datetime) -> PollResult: ...

    async def aclose(self) -> None: ...


@runtime_checkable
class Publisher(Protocol):
    """Publishes outbox items to one of our channels.

    ``publish`` raises only ``PublishError`` subclasses. ``find_existing`` is asked after an
    attempt whose outcome is unknown: it returns the earlier post if the platform has it,
    ``None`` if the platform certainly does not, and raises ``OutcomeUnknownError`` when it
    cannot tell (the item then goes to needs-review rather than risk a duplicate).
    """

    channel_id: str

    def publish(self, item: OutboxItem, update: Update | None) -> PublishResult: ...

    def find_existing(self, item: OutboxItem, update: Update | None) -> PublishResult | None: ...

    def close(self) -> None: ...
