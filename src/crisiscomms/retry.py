"""The one retry policy of crisiscomms (in the spirit of hynek/stamina), built on tenacity.

Rules:

* Retry only named transient errors (``TransientPublishError``, ``TransientSourceError`` by
  default). Never retry ``RateLimitedError`` (the dispatcher pauses the whole channel until the
  reset instead) nor ``OutcomeUnknownError`` (a resend could post twice): they are re-raised at
  once, even when a caller names a base class that contains them.
* Jittered exponential backoff, capped per wait (``max_delay_s``), in number of attempts and in
  total time (``deadline_s``; tenacity's ``stop_before_delay`` never sleeps past it).
* One structured ``retry.scheduled`` event per retry: what, attempt, wait, error class. Never
  the message or arguments, so no secret can leak through it.
* ``set_testing(True)`` or ``with no_waits():`` removes every wait (tests stay fast).

``backoff_delay`` is the same idea as a pure function, for schedules kept across ticks (the
watcher's per-source backoff).
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TypeVar

import structlog
import tenacity

from crisiscomms.domain.errors import (
    OutcomeUnknownError,
    RateLimitedError,
    TransientPublishError,
    TransientSourceError,
)

T = TypeVar("T")

log = structlog.get_logger(__name__)

DEFAULT_RETRY_ON: tuple[type[BaseException], ...] = (TransientPublishError, TransientSourceError)
# Subclasses of a retryable error that must still never be retried in-call.
NEVER_RETRY: tuple[type[BaseException], ...] = (RateLimitedError, OutcomeUnknownError)

_testing_lock = threading.Lock()
_testing = False


def set_testing(on: bool) -> None:
    """Switch off (``True``) or back on (``False``) every retry wait, process-wide."""
    global _testing
    with _testing_lock:
        _testing = on


def is_testing() -> bool:
    """True while waits are switched off."""
    return _testing


@contextmanager
def no_waits() -> Iterator[None]:
    """Run the block with retry waits switched off, restoring the previous setting after."""
    previous = _testing
    set_testing(True)
    try:
        yield
    finally:
        set_testing(previous)


def _sleep(seconds: float) -> None:
    if not _testing:
        time.sleep(seconds)


def _should_retry(retry_on: tuple[type[BaseException], ...]) -> Callable[[BaseException], bool]:
    def predicate(exc: BaseException) -> bool:
        return isinstance(exc, retry_on) and not isinstance(exc, NEVER_RETRY)

    return predicate


def retrying(
    what: str,
    *,
    retry_on: tuple[type[BaseException], ...] = DEFAULT_RETRY_ON,
    attempts: int = 5,
    initial_s: float = 1.0,
    max_delay_s: float = 30.0,
    deadline_s: float = 120.0,
    sleep: Callable[[float], None] | None = None,
) -> tenacity.Retrying:
    """A tenacity ``Retrying`` with the project's policy, for ``for attempt in ...:`` loops.

    ``what`` names the operation in log events (e.g. ``"publish:x-main"``). ``attempts`` counts
    the first call. ``sleep`` replaces the waiting function (tests record waits with it).
    The last error is re-raised as itself, never wrapped in ``tenacity.RetryError``.
    """
    if attempts < 1:
        raise ValueError("attempts must be at least 1")

    def before_sleep(state: tenacity.RetryCallState) -> None:
        exc = state.outcome.exception() if state.outcome is not None else None
        wait = state.next_action.sleep if state.next_action is not None else 0.0
        log.warning(
            "retry.scheduled",
            what=what,
            attempt=state.attempt_number,
            wait=round(float(wait), 3),
            error=type(exc).__name__ if exc is not None else None,
            status=getattr(exc, "status", None),
        )

    return tenacity.Retrying(
        retry=tenacity.retry_if_exception(_should_retry(retry_on)),
        wait=tenacity.wait_exponential_jitter(initial=initial_s, max=max_delay_s, jitter=initial_s),
        stop=tenacity.stop_after_attempt(attempts) | tenacity.stop_before_delay(deadline_s),
        sleep=sleep if sleep is not None else _sleep,
        before_sleep=before_sleep,
        reraise=True,
    )


def call_with_retry(
    fn: Callable[[], T],
    *,
    what: str,
    retry_on: tuple[type[BaseException], ...] = DEFAULT_RETRY_ON,
    attempts: int = 5,
    initial_s: float = 1.0,
    max_delay_s: float = 30.0,
    deadline_s: float = 120.0,
    sleep: Callable[[float], None] | None = None,
) -> T:
    """Call ``fn()`` and retry it under the project's policy (see ``retrying``).

    Returns what ``fn`` returns; raises its last error unchanged. ``RateLimitedError`` and
    ``OutcomeUnknownError`` propagate from the first attempt.
    """
    policy = retrying(
        what,
        retry_on=retry_on,
        attempts=attempts,
        initial_s=initial_s,
        max_delay_s=max_delay_s,
        deadline_s=deadline_s,
        sleep=sleep,
    )
    return policy(fn)


def backoff_delay(
    failures: int,
    *,
    base: float = 60.0,
    cap: float = 3600.0,
    rng: random.Random | None = None,
) -> float:
    """Seconds to wait after ``failures`` consecutive failures: ``base * 2**(failures-1)``
    capped at ``cap``, then "equal jitter" (between half and all of it) so sources that failed
    together do not all come back in the same second. ``failures <= 0`` gives ``0.0``.

    Pure apart from ``rng``; pass a seeded ``random.Random`` for a reproducible schedule.
    """
    if failures <= 0:
        return 0.0
    # Cap the exponent before computing it: 2**failures overflows float for large counts.
    exponent = min(failures - 1, 62)
    ceiling = min(cap, base * (2.0**exponent))
    draw = rng.random() if rng is not None else random.random()
    return ceiling / 2 + draw * ceiling / 2
