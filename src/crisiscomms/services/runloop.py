"""The one run loop: poll what is due, dispatch what may go, say we are alive, repeat.

``RunLoop.tick(now)`` does one iteration and ``run()`` only loops (huey's ``Worker.loop``), so
the drill drives the very same tick on its simulated clock. A database that goes away does not
end the watcher: the tick fails as a whole (no send goes out whose claim was not recorded), the
loop backs off and tries again until the database answers.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
from dataclasses import dataclass, field
from datetime import datetime

import structlog

from crisiscomms.domain.errors import StoreError
from crisiscomms.domain.models import WatcherInfo
from crisiscomms.ports import Clock, Store
from crisiscomms.retry import backoff_delay
from crisiscomms.services.dispatch import Dispatcher, DispatchStats
from crisiscomms.services.watch import CycleStats, Watcher

log = structlog.get_logger(__name__)

HEARTBEAT_SECONDS = 10.0


@dataclass
class RunLoop:
    """A watcher and a dispatcher on one store, with this process's heartbeat."""

    store: Store
    clock: Clock
    watcher: Watcher
    dispatcher: Dispatcher
    identity: WatcherInfo
    rng: random.Random = field(default_factory=random.Random)
    _last_beat: datetime | None = None

    def heartbeat(self, now: datetime) -> None:
        """Tell ``status`` (and the other watchers) that this one is alive."""
        if self._last_beat is not None and \
                (now - self._last_beat).total_seconds() < HEARTBEAT_SECONDS:
            return
        with self.store.unit_of_work() as uow:
            uow.watchers.heartbeat(WatcherInfo(self.identity.worker_id, self.identity.host,
                                               self.identity.pid, self.identity.started_at,
                                               now))
            uow.commit()
        self._last_beat = now

    async def tick(self, now: datetime | None = None) -> tuple[CycleStats, DispatchStats]:
        """One iteration: heartbeat, poll the due sources, dispatch."""
        now = now or self.clock.now()
        self.heartbeat(now)
        cycle = await self.watcher.poll_cycle(now)
        dispatched = await asyncio.to_thread(self.dispatcher.tick, self.clock.now())
        return cycle, dispatched

    async def run(self, stop: asyncio.Event, *, once: bool = False, tick_seconds: float = 2.0,
                  max_ticks: int | None = None) -> tuple[CycleStats, DispatchStats]:
        """Tick until stopped; a store that fails is retried with backoff, not fatal."""
        last = (CycleStats(), DispatchStats())
        ticks = failures = 0
        try:
            while True:
                wait = tick_seconds
                try:
                    last = await self.tick()
                    failures = 0
                except StoreError as exc:
                    if once:
                        raise
                    failures += 1
                    wait = backoff_delay(failures, base=tick_seconds, cap=60.0, rng=self.rng)
                    log.error("watch.store_unavailable", error=str(exc), failures=failures,
                              retry_in_s=round(wait, 1))
                ticks += 1
                if once or stop.is_set() or (max_ticks is not None and ticks >= max_ticks):
                    break
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), timeout=wait)
                if stop.is_set():
                    break
        finally:
            with contextlib.suppress(StoreError), self.store.unit_of_work() as uow:
                uow.watchers.remove(self.identity.worker_id)
                uow.commit()
        return last
