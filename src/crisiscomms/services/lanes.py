"""What lets one dispatch tick send on several channels at once, safely.

``each_channel`` runs one function per channel on a few daemon threads, one channel per thread
at a time: a channel's items still go one after another (its order, its rate-limit pause and
its ceilings hold), while a slow platform no longer delays the other channels. The threads are
daemon threads, like the dispatch thread itself: a send abandoned at shutdown never holds up
the process's exit (the item stays ``sending`` under its lease and is looked up before any
resend).

``LeaseKeeper`` renews the leases a channel holds (the items it has claimed and not yet
finished) from a background thread, so only a worker that died or stalled loses them.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable, Sequence
from datetime import datetime, timedelta

import structlog

from crisiscomms.domain.errors import StoreError
from crisiscomms.domain.models import OutboxItem
from crisiscomms.ports import Store

log = structlog.get_logger(__name__)

MAX_LANES = 8  # channels sent on at the same time by one dispatcher


class LeaseKeeper:
    """Renews the leases of the items a channel holds, every third of the lease, from a
    background thread; says so (``outbox.lease_lost``) if one was taken over meanwhile.

    ``hold`` an item once its claim is committed, ``drop`` it before writing its outcome (so a
    renewal racing with that write is not mistaken for a lost lease)."""

    def __init__(self, store: Store, lease: timedelta, now: Callable[[], datetime],
                 name: str = "lease") -> None:
        self.store, self.lease, self.now = store, lease, now
        self.lost: set[int] = set()
        self._items: dict[int, OutboxItem] = {}
        self._guard = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name=name)
        self._entered = self._started = False

    def hold(self, item: OutboxItem) -> None:
        with self._guard:
            self._items[item.id] = item
            # Started by the first item held: a channel tick that claims nothing (the items
            # it decides only stay held) starts no thread.
            if self._entered and not self._started:
                self._started = True
                self._thread.start()

    def drop(self, item: OutboxItem) -> None:
        with self._guard:
            self._items.pop(item.id, None)

    def _run(self) -> None:
        interval = max(0.05, self.lease.total_seconds() / 3)
        while not self._stop.wait(interval):
            with self._guard:
                items = list(self._items.values())
            if not items:
                continue
            try:
                with self.store.unit_of_work() as uow:
                    until = self.now() + self.lease
                    renewed = [(item, uow.outbox.renew(item, until=until)) for item in items]
                    uow.commit()
            except StoreError as exc:
                log.warning("outbox.lease_renew_failed", items=[i.id for i in items],
                            error=str(exc))
                continue
            for item, ok in renewed:
                with self._guard:
                    lost = not ok and self._items.pop(item.id, None) is not None
                if lost:  # still ours to send or finish, yet no longer leased to us
                    self.lost.add(item.id)
                    log.error("outbox.lease_lost", item=item.id, token=item.fence)

    def __enter__(self) -> LeaseKeeper:
        with self._guard:
            self._entered = True
            if self._items:
                self._started = True
                self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        with self._guard:
            self._entered = False
            started = self._started
        if started:
            self._thread.join()


def each_channel(channel_ids: Sequence[str], run: Callable[[str], None], *,
                 stop: threading.Event, lanes: int = MAX_LANES) -> None:
    """``run(channel_id)`` for every channel, up to ``lanes`` channels at a time (the calling
    thread is one lane), each channel on one thread only. A store failure, or a
    ``BaseException`` (an interrupt, a test's stand-in for a kill), starts no further channel
    and is raised once every running channel has finished; any other error is logged
    (``channel.tick_failed``) and costs only its own channel. ``stop`` starts no new one."""
    todo = deque(channel_ids)
    raised: list[BaseException] = []

    def lane() -> None:
        while not stop.is_set() and not raised:
            try:
                channel_id = todo.popleft()
            except IndexError:
                return
            try:
                run(channel_id)
            except StoreError as exc:
                raised.append(exc)
            except Exception:
                log.exception("channel.tick_failed", channel=channel_id)
            except BaseException as exc:
                raised.append(exc)

    extra = [threading.Thread(target=lane, daemon=True, name=f"dispatch-lane-{i + 1}")
             for i in range(min(lanes, len(todo)) - 1)]
    for t in extra:
        t.start()
    lane()
    for t in extra:
        t.join()
    if raised:
        raise raised[0]
