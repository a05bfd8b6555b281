"""The stand-in for a channel that cannot post (its credentials are missing): it refuses every
send with one clear reason, so its items wait as failed (resendable once fixed) and ``status``
shows the channel as broken. Never a silent dry run: outside a drill or an explicit dry run,
nothing may be counted as published that was not."""

from __future__ import annotations

from crisiscomms.domain.errors import OutcomeUnknownError, PermanentPublishError
from crisiscomms.domain.models import OutboxItem, PublishResult, Update


class UnavailablePublisher:
    """``Publisher`` for a channel that cannot post; ``unavailable`` says why."""

    def __init__(self, channel_id: str, unavailable: str) -> None:
        self.channel_id = channel_id
        self.unavailable = unavailable

    def publish(self, item: OutboxItem, update: Update | None) -> PublishResult:
        raise PermanentPublishError(self.unavailable, channel_id=self.channel_id)

    def find_existing(self, item: OutboxItem, update: Update | None) -> PublishResult | None:
        raise OutcomeUnknownError(f"{self.unavailable}: cannot look on the platform",
                                  channel_id=self.channel_id)

    def close(self) -> None:
        return None
