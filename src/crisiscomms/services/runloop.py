"""The one run loop: poll what is due, dispatch what may go, say we are alive, repeat.

``RunLoop.tick(now)`` does one heartbeat, one poll and one dispatch, one after the other: the
drill and ``watch --once`` drive it. ``run()`` repeats the same steps on the real clock as loops
that never wait on each other (a feed that trickles a byte a second cannot keep a post queued;
a slow platform cannot delay a poll, nor the heartbeat: it has a loop of its own, every
``HEARTBEAT_SECONDS``, its store write in a thread, so a dispatch step held up by slow sends
never makes the watcher look dead to ``status`` or to the pager election). Dispatch runs in
a thread of its own; on stop it finishes the send in flight (a few seconds' grace) or abandons
it safely: the item stays ``sending`` under its lease and whoever dispatches next asks the
platform before any resend. A database that goes away does not end the watcher: the step
fails as a whole (no send goes out whose claim was not recorded), the loop backs off and
tries again until the database answers.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import signal
import threading
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any, Protocol, TypeVar

from crisiscomms import aio
from crisiscomms.domain.errors import StoreError
from crisiscomms.domain.models import WatcherInfo
from crisiscomms.logs import get_logger
from crisiscomms.ports import Clock, Store
from crisiscomms.retry import backoff_delay
from crisiscomms.services.dispatch import Dispatcher, DispatchStats
from crisiscomms.services.watch import CycleStats, Watcher

log = get_logger(__name__)

HEARTBEAT_SECONDS = 10.0
STOP_GRACE_SECONDS = 5.0  # how long a stop waits for the send in flight
MIN_WAIT_SECONDS = 0.1  # the shortest pause between two steps of a loop not woken
POLL_BATCH_SECONDS = 1.0
"""The shortest pause of the poll loop before sources that come due (a doorbell still wakes
it at once): polls falling due within it go out together, one claim and one write for the
batch. Jittered due times otherwise spread 1,000 sources over up to 300 cycles per 30 s
interval, each paying its own transactions (``make bench``: the watch-loop row)."""
T = TypeVar("T")


def in_daemon_thread(fn: Callable[[], T], *, name: str = "dispatch") -> asyncio.Future[T]:
    """Run ``fn`` in a daemon thread (an abandoned send never holds up the process's exit, as
    an executor's thread would)."""
    loop = asyncio.get_running_loop()
    fut: asyncio.Future[T] = loop.create_future()

    def settle(setter: Callable[[Any], object], value: Any) -> None:
        if not fut.done():
            setter(value)

    def run() -> None:
        try:
            result = fn()
        except BaseException as exc:  # handed to the awaiting task
            with contextlib.suppress(RuntimeError):  # the loop may be gone
                loop.call_soon_threadsafe(settle, fut.set_exception, exc)
            return
        with contextlib.suppress(RuntimeError):
            loop.call_soon_threadsafe(settle, fut.set_result, result)

    threading.Thread(target=run, name=name, daemon=True).start()
    return fut


class Chore(Protocol):
    """A periodic job of the watcher beside polling and dispatch (reloading changed playbooks,
    paging the on-call team). ``run`` must not block the event loop for long (put blocking I/O
    in a thread); an exception is logged and the chore runs again at its next interval."""

    name: str
    interval_seconds: float

    async def run(self, loop: RunLoop, now: datetime) -> None: ...


@dataclass
class RunLoop:
    """A watcher and a dispatcher on one store, with this process's heartbeat."""

    store: Store
    clock: Clock
    watcher: Watcher
    dispatcher: Dispatcher
    identity: WatcherInfo
    rng: random.Random = field(default_factory=random.Random)
    chores: list[Chore] = field(default_factory=list)
    _last_beat: datetime | None = None

    def heartbeat(self, now: datetime, *, force: bool = False) -> None:
        """Tell ``status`` (and the other watchers) that this one is alive (at most once per
        ``HEARTBEAT_SECONDS`` of ``now`` unless ``force``: the heartbeat loop paces itself)."""
        if not force and self._last_beat is not None and \
                (now - self._last_beat).total_seconds() < HEARTBEAT_SECONDS:
            return
        with self.store.unit_of_work() as uow:
            uow.watchers.heartbeat(replace(self.identity, last_seen_at=now,
                                           push=self.watcher.push_status()))
            uow.commit()
        self._last_beat = now

    async def tick(self, now: datetime | None = None, *, dispatch_inline: bool = False
                   ) -> tuple[CycleStats, DispatchStats]:
        """One iteration: heartbeat, poll the due sources, dispatch. ``dispatch_inline`` (the
        drills) runs the dispatch step on this thread: a drill's tick waits for it at once and
        runs nothing else meanwhile, and a thread started for every one of its thousands of
        ticks costs a start and two hand-overs of the GIL each time. Otherwise the step runs
        in a daemon thread, so an interrupted ``watch --once`` abandons a hanging send."""
        now = now or self.clock.now()
        self.heartbeat(now)
        cycle = await self.watcher.poll_cycle(now)
        if dispatch_inline:
            dispatched = self.dispatcher.tick(self.clock.now())
        else:
            dispatched = await in_daemon_thread(
                lambda: self.dispatcher.tick(self.clock.now()))
        for chore in self.chores:
            await self._run_chore(chore)
        return cycle, dispatched

    async def _run_chore(self, chore: Chore) -> None:
        """One run of a chore; its failure is logged, never the loop's."""
        try:
            await chore.run(self, self.clock.now())
        except StoreError:
            raise
        except Exception as exc:
            log.exception("watch.chore_failed", chore=chore.name, error=str(exc))

    async def run(self, stop: asyncio.Event, *, once: bool = False, tick_seconds: float = 2.0,
                  max_ticks: int | None = None) -> tuple[CycleStats, DispatchStats]:
        """Poll and dispatch until stopped, each in its own loop; ``once``: one tick."""
        if once:
            try:
                return await self.tick()
            finally:
                self._sign_off()
        last: dict[str, Any] = {"poll": CycleStats(), "dispatch": DispatchStats()}

        async def poll() -> None:
            last["poll"] = await self.watcher.poll_cycle(self.clock.now(), wait=False)

        async def dispatch() -> None:
            last["dispatch"] = await in_daemon_thread(
                lambda: self.dispatcher.tick(self.clock.now()))

        def chore_step(chore: Chore) -> Callable[[], Awaitable[None]]:
            return lambda: self._run_chore(chore)

        def until_due() -> float | None:
            due = self.watcher.next_due_at()
            return None if due is None else (due - self.clock.now()).total_seconds()

        # Woken early: the poll loop by a doorbell (push) or when its next source is due
        # before the tick; dispatch as soon as a poll queued something.
        self.watcher.wake, self.watcher.queued = asyncio.Event(), asyncio.Event()
        ended = asyncio.Event()  # the other loops are done: the heartbeat stops
        self.watcher.start_push()
        beats = asyncio.ensure_future(self._beat(ended, retry_seconds=tick_seconds))
        try:
            await asyncio.gather(
                self._repeat("poll", poll, stop, tick_seconds, max_ticks, abandon=True,
                             wake=self.watcher.wake, until=until_due,
                             min_wait=POLL_BATCH_SECONDS),
                self._repeat("dispatch", dispatch, stop, tick_seconds, max_ticks,
                             abandon=False, wake=self.watcher.queued),
                *(self._repeat(chore.name, chore_step(chore), stop, chore.interval_seconds,
                               max_ticks, abandon=True) for chore in self.chores))
        finally:
            await self.watcher.stop_push()
            ended.set()
            # A beat in flight finishes first: none is written after the sign-off.
            done, _ = await asyncio.wait({beats}, timeout=STOP_GRACE_SECONDS)
            if not done:
                beats.cancel()
                log.warning("watch.heartbeat_abandoned",
                            note="the store did not answer; the watcher's row may stay "
                                 "until it is a minute old")
            await self.watcher.cancel_running()
            self._sign_off()
        return last["poll"], last["dispatch"]

    async def _beat(self, ended: asyncio.Event, *, retry_seconds: float) -> None:
        """The heartbeat's own loop: one beat now and every ``HEARTBEAT_SECONDS`` until
        ``ended``, the store write in a thread (a slow database never holds up the event
        loop); a store failure is retried sooner (backing off, never beyond the interval)."""
        failures = 0
        while not ended.is_set():
            wait = HEARTBEAT_SECONDS
            try:
                await in_daemon_thread(lambda: self.heartbeat(self.clock.now(), force=True),
                                       name="heartbeat")
                failures = 0
            except StoreError as exc:
                failures += 1
                wait = backoff_delay(failures, base=min(retry_seconds, HEARTBEAT_SECONDS),
                                     cap=HEARTBEAT_SECONDS, rng=self.rng)
                log.error("watch.store_unavailable", what="heartbeat", error=str(exc),
                          failures=failures, retry_in_s=round(wait, 1))
            except Exception as exc:
                log.exception("watch.heartbeat_failed", error=str(exc))
            await aio.wait_event(ended, wait)

    def _sign_off(self) -> None:
        """Leave the heartbeat table (``status`` stops listing this watcher)."""
        with contextlib.suppress(StoreError), self.store.unit_of_work() as uow:
            uow.watchers.remove(self.identity.worker_id)
            uow.commit()

    async def _repeat(self, what: str, step: Callable[[], Awaitable[None]], stop: asyncio.Event,
                      tick_seconds: float, max_ticks: int | None, *, abandon: bool,
                      wake: asyncio.Event | None = None,
                      until: Callable[[], float | None] | None = None,
                      min_wait: float = MIN_WAIT_SECONDS) -> None:
        """Run ``step`` every ``tick_seconds`` until ``stop``; a store failure backs off. On stop
        a poll in progress is abandoned at once (nothing of it is written); a dispatch step is
        given ``STOP_GRACE_SECONDS`` to finish its send, then abandoned safely. ``wake`` set
        runs the next step at once; ``until()`` (seconds to the next known work) runs it
        sooner than the tick (never within ``min_wait``: a clock that stands still does not
        spin the loop, and work falling due close together is done in one step)."""
        ticks = failures = 0
        early = False  # this step was started before its tick (woken, or work due sooner)
        while not stop.is_set():
            wait = tick_seconds
            if wake is not None:
                wake.clear()  # what rings during the step wakes the next one
            task = asyncio.ensure_future(step())
            stopper = asyncio.ensure_future(stop.wait())
            try:
                await asyncio.wait({task, stopper}, return_when=asyncio.FIRST_COMPLETED)
                if not task.done():  # stop was asked for mid-step
                    if abandon:
                        task.cancel()
                    else:
                        self.dispatcher.stop_requested.set()
                        done, _ = await asyncio.wait({task}, timeout=STOP_GRACE_SECONDS)
                        if not done:
                            log.warning("watch.send_abandoned", what=what,
                                        note="the item stays 'sending' under its lease; the "
                                             "platform is asked before any resend")
                    with contextlib.suppress(asyncio.CancelledError, Exception):
                        if task.done():
                            task.result()
                    break
                task.result()
                failures = 0
            except StoreError as exc:
                failures += 1
                wait = backoff_delay(failures, base=tick_seconds, cap=60.0, rng=self.rng)
                log.error("watch.store_unavailable", what=what, error=str(exc),
                          failures=failures, retry_in_s=round(wait, 1))
            finally:
                stopper.cancel()
            # max_ticks bounds the loop's time (ticks of tick_seconds): a step started early
            # is extra work within a tick, not a tick.
            ticks += 0 if early else 1
            if max_ticks is not None and ticks >= max_ticks:
                break
            early = False
            if not failures:
                soon = until() if until is not None else None
                if soon is not None and soon < wait:
                    wait, early = max(soon, min_wait), True
            woken = await self._sleep(stop, wake, wait)
            early = early or woken
        if stop.is_set():
            self.dispatcher.stop_requested.set()


    @staticmethod
    async def _sleep(stop: asyncio.Event, wake: asyncio.Event | None, seconds: float) -> bool:
        """Wait ``seconds``, or until ``stop`` (or ``wake``) is set; True if woken."""
        if wake is None:
            await aio.wait_event(stop, seconds)
            return False
        waiters = {asyncio.ensure_future(stop.wait()), asyncio.ensure_future(wake.wait())}
        try:
            await asyncio.wait(waiters, timeout=seconds, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for w in waiters:
                w.cancel()
        return wake.is_set() and not stop.is_set()


class StopEvent(asyncio.Event):
    """The stop request, remembering the signal that made it (Ctrl-C exits 130)."""

    signal: int | None = None

    def stop_for(self, sig: int) -> None:
        self.signal = sig
        self.set()


@contextlib.contextmanager
def stop_on_signals() -> Iterator[StopEvent]:
    """SIGTERM/SIGINT ask the loop to finish its current tick and exit cleanly."""
    stop = StopEvent()
    loop = asyncio.get_event_loop()
    installed = []
    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stop.stop_for, sig)
            installed.append(sig)
    try:
        yield stop
    finally:
        for sig in installed:
            with contextlib.suppress(Exception):
                loop.remove_signal_handler(sig)
