"""What every push connection shares: the reconnect loop, its status, and the catch-up ring.

A listener subclasses ``PushConnection`` and writes ``session``: open the stream, call
``connected()`` once it is established (the platform answered and the stream is open), then
``self.pushed(...)`` for every event that belongs to one of its sources, and return or raise
when the stream ends. Everything else is here, once:

* ``connected()`` rings every source of the connection with ``reason="connected"``: whatever
  was published while the connection was down (or before it first opened) is read by
  polling, so a gap never loses an update and push never doubles one (polling's cursor and
  the store decide what is new);
* a session that ends or fails is opened again after a backoff (``retry.backoff_delay``,
  from ``reconnect_base_seconds`` to ``reconnect_cap_seconds``, reset once a connection
  stayed up ``stable_seconds``); nothing but ``CancelledError`` leaves ``run``;
* ``idle()`` is the deadline a session should wait a stream's next bytes by (a stream
  silent past ``idle_timeout_seconds`` is dead: half-open TCP never says so itself);
* errors are described without URLs' query strings or tokens (``describe``).
"""

from __future__ import annotations

import asyncio
import random
import time
from dataclasses import replace
from datetime import UTC, datetime

from crisiscomms.domain.models import Doorbell, PushStatus
from crisiscomms.logs import get_logger
from crisiscomms.ports import Ring
from crisiscomms.retry import backoff_delay
from crisiscomms.settings import PushSettings

log = get_logger(__name__)


def describe(exc: BaseException) -> str:
    """A one-line description of a connection failure, with no URL query or credential."""
    text = str(exc).split("?", 1)[0].strip() or type(exc).__name__
    return f"{type(exc).__name__}: {text}"[:300]


class PushConnection:
    """One push connection covering ``source_ids`` (catalogue ids)."""

    kind = "push"

    def __init__(self, key: str, source_ids: tuple[str, ...], *, settings: PushSettings,
                 rng: random.Random | None = None) -> None:
        self.key = key
        self.source_ids = tuple(source_ids)
        self.settings = settings
        self.rng = rng or random.Random()
        self._status = PushStatus(key=key, kind=self.kind, source_ids=self.source_ids)
        self._ring: Ring | None = None
        self._up_since: float | None = None

    # -- what a session calls ------------------------------------------------------------
    def connected(self) -> None:
        """The stream is open: say so, and ring every source (the catch-up poll)."""
        self._up_since = time.monotonic()
        self._status = replace(self._status, connected=True, since=datetime.now(UTC),
                               last_error="")
        log.info("push.connected", connection=self.key, kind=self.kind,
                 sources=len(self.source_ids))
        if self.source_ids:  # a connection with nothing to push for rings no one
            self._send(Doorbell(self.source_ids, reason="connected", via=self.key))

    def pushed(self, source_ids: tuple[str, ...], expect_id: str | None = None) -> None:
        """An event for these sources arrived: ring them."""
        ids = tuple(s for s in source_ids if s in self.source_ids)
        if not ids:
            return
        self._status = replace(self._status, last_event_at=datetime.now(UTC),
                               events=self._status.events + 1)
        self._send(Doorbell(ids, reason="pushed", expect_id=expect_id, via=self.key))

    def note(self, text: str) -> None:
        """Say something about the connection that is not an error (shown by ``status``:
        e.g. which sources it cannot push for and why)."""
        self._status = replace(self._status, note=text[:300])

    def idle(self) -> float:
        """Seconds a session waits for the stream's next bytes before taking it as dead."""
        return self.settings.idle_timeout_seconds

    async def session(self) -> None:
        """Open the stream, ``connected()``, ``pushed(...)`` per event; return when it ends."""
        raise NotImplementedError

    # -- the loop ------------------------------------------------------------------------
    def status(self) -> PushStatus:
        return self._status

    def _send(self, bell: Doorbell) -> None:
        if self._ring is None:
            return
        try:
            self._ring(bell)
        except Exception:  # the watcher's side failing must not end the connection
            log.exception("push.ring_failed", connection=self.key)

    async def run(self, ring: Ring) -> None:
        self._ring = ring
        failures = 0
        while True:
            self._up_since = None
            try:
                await self.session()
                error = "the stream ended"
            except asyncio.CancelledError:
                self._status = replace(self._status, connected=False, since=datetime.now(UTC))
                raise
            except Exception as exc:
                error = describe(exc)
            stable = (self._up_since is not None and
                      time.monotonic() - self._up_since >= self.settings.stable_seconds)
            failures = 1 if stable else failures + 1
            wait = backoff_delay(failures, base=self.settings.reconnect_base_seconds,
                                 cap=self.settings.reconnect_cap_seconds, rng=self.rng)
            was_up = self._status.connected
            self._status = replace(self._status, connected=False, failures=failures,
                                   last_error=error,
                                   since=datetime.now(UTC) if was_up or self._status.since
                                   is None else self._status.since)
            log.warning("push.disconnected", connection=self.key, kind=self.kind, error=error,
                        failures=failures, retry_in_s=round(wait, 1),
                        note="its sources are polled meanwhile; caught up on reconnect")
            await asyncio.sleep(wait)


class PushContext:
    """What the builders get: the push settings, API-root overrides (a simulator: keys
    ``"mastodon_stream"``, ``"jetstream"``, ``"bluesky"``, ``"websub_hub"``), the Mastodon reader
    account's token, and whether loopback/private hosts are allowed (the simulator only)."""

    def __init__(self, settings: PushSettings, *, base_urls: dict[str, str] | None = None,
                 mastodon_token: object = None, allow_private: bool = False) -> None:
        self.settings = settings
        self.base_urls = dict(base_urls or {})
        self.mastodon_token = mastodon_token  # SecretStr | None, never logged
        self.allow_private = allow_private
