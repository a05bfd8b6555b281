"""The one error tree of crisiscomms.

Every error the library raises on purpose is a ``CrisisCommsError``; the CLI turns
each into one line and the exit code named on its class::

    CrisisCommsError                      exit 1 unless a subclass says otherwise
    ├── ConfigError                       exit 2  bad settings, playbook, scenario (file, key)
    │   └── PlaybookError                 exit 2  a playbook file is invalid
    ├── NotFoundError                     exit 2  unknown playbook, incident, item, source, channel
    ├── RefusedError                      exit 3  an operator or action is not allowed (audited)
    │   └── TransitionRefusedError        exit 3  an outbox item is not in a state that allows it
    ├── StoreError                        exit 1  the database cannot be used
    │   ├── StoreLockedError              exit 1  another process holds the lock too long
    │   ├── StoreCorruptError             exit 1  not a crisiscomms database / corrupt / too new
    │   └── StaleWriteError               exit 1  a lease or version was overtaken: nothing written
    ├── AuditChainError                   exit 1  the audit chain does not verify
    ├── SourceError                       (per source; the watcher logs, counts and carries on)
    │   ├── TransientSourceError          network, 5xx, timeouts: back off and try again
    │   └── PermanentSourceError          4xx, refused redirect, unparseable body
    │       └── FeedTooLargeError         body over the size cap
    └── PublishError                      (per channel; the dispatcher records and carries on)
        ├── TransientPublishError         network, 5xx: retried with backoff
        │   └── RateLimitedError          429: the channel pauses until ``reset_at``
        ├── PermanentPublishError         400/401/403 and duplicate refusals: not retried blindly
        └── OutcomeUnknownError           the request may have reached the platform

Adapters translate vendor exceptions (httpx, tweepy/requests, feedparser) into this tree
at their boundary, and decide there, once, whether a failure is transient or permanent.
Messages must never contain secrets.
"""

from __future__ import annotations

from datetime import datetime


class CrisisCommsError(Exception):
    """Base of every error crisiscomms raises on purpose."""

    exit_code = 1


class ConfigError(CrisisCommsError):
    """Settings, playbooks or scenarios are invalid. The message names file and key."""

    exit_code = 2


class PlaybookError(ConfigError):
    """A playbook file is invalid."""


class NotFoundError(CrisisCommsError):
    """Something named on the command line does not exist."""

    exit_code = 2


class RefusedError(CrisisCommsError):
    """The action is not allowed (unlisted operator, unpinned X source, ...)."""

    exit_code = 3


class TransitionRefusedError(RefusedError):
    """An outbox item is not in a state from which the asked transition is allowed."""


class StoreError(CrisisCommsError):
    """The store cannot be used."""


class StoreLockedError(StoreError):
    """The database stayed locked by another process past the busy timeout."""


class StoreCorruptError(StoreError):
    """The database file is corrupt, not ours, or from a newer version."""


class StaleWriteError(StoreError):
    """A write carried a fencing token or version that another worker or operator has since
    overtaken (its lease expired and was taken over, or the item changed): nothing was written.
    """


class AuditChainError(CrisisCommsError):
    """The audit chain does not verify."""


class SourceError(CrisisCommsError):
    """A source could not be polled. Scoped to that source."""

    def __init__(self, message: str, *, source_id: str = "", error_class: str = "",
                 retry_at: datetime | None = None) -> None:
        super().__init__(message)
        self.source_id = source_id
        self.error_class = error_class or type(self).__name__
        self.retry_at = retry_at  # the source said "not before" (429, Retry-After)


class TransientSourceError(SourceError):
    """Worth retrying later: network errors, timeouts, 5xx, 429."""


class PermanentSourceError(SourceError):
    """Retrying soon will not help: 4xx, bad content, refused redirect."""


class FeedTooLargeError(PermanentSourceError):
    """The body exceeded the configured size cap."""


class PublishError(CrisisCommsError):
    """A channel could not publish an item. Scoped to that channel."""

    def __init__(self, message: str, *, channel_id: str = "", status: int | None = None) -> None:
        super().__init__(message)
        self.channel_id = channel_id
        self.status = status


class TransientPublishError(PublishError):
    """Network error or 5xx: retry with backoff."""


class RateLimitedError(TransientPublishError):
    """The platform said 429. No request may go to the channel before ``reset_at``."""

    def __init__(
        self, message: str, *, reset_at: datetime, channel_id: str = "", status: int | None = 429
    ) -> None:
        super().__init__(message, channel_id=channel_id, status=status)
        self.reset_at = reset_at


class PermanentPublishError(PublishError):
    """The platform refused the item for good (400/401/403, duplicate content)."""


class OutcomeUnknownError(PublishError):
    """The request may or may not have reached the platform (timeout after sending)."""
