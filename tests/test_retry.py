from __future__ import annotations

import random
import time
from collections.abc import Iterator
from datetime import UTC, datetime

import pytest
from structlog.testing import capture_logs

from crisiscomms import retry
from crisiscomms.domain.errors import (
    OutcomeUnknownError,
    PermanentPublishError,
    PublishError,
    RateLimitedError,
    TransientPublishError,
    TransientSourceError,
)

RESET = datetime(2026, 1, 1, tzinfo=UTC)


class Flaky:
    """Fails with the given errors in turn, then returns "ok"."""

    def __init__(self, *errors: BaseException) -> None:
        self.errors = list(errors)
        self.calls = 0

    def __call__(self) -> str:
        self.calls += 1
        if self.errors:
            raise self.errors.pop(0)
        return "ok"


@pytest.fixture(autouse=True)
def _waits_on() -> Iterator[None]:
    # The suite's root conftest switches waits off; these tests check the switch itself.
    # Logs are captured so that a logging set-up left behind by another test cannot interfere.
    previous = retry.is_testing()
    retry.set_testing(False)
    with capture_logs():
        yield
    retry.set_testing(previous)


@pytest.fixture
def waits() -> list[float]:
    return []


@pytest.fixture(autouse=True)
def _no_real_sleep(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    def refuse(seconds: float) -> None:
        raise AssertionError(f"real sleep of {seconds}s in a test")

    monkeypatch.setattr(time, "sleep", refuse)
    yield


def test_retries_transient_errors_then_succeeds(waits: list[float]) -> None:
    fn = Flaky(TransientPublishError("500", status=500), TransientSourceError("timeout"))
    with capture_logs() as logs:
        assert retry.call_with_retry(fn, what="publish:x", sleep=waits.append) == "ok"
    assert fn.calls == 3
    assert len(waits) == 2
    events = [e for e in logs if e["event"] == "retry.scheduled"]
    assert [e["attempt"] for e in events] == [1, 2]
    assert events[0]["what"] == "publish:x"
    assert events[0]["error"] == "TransientPublishError"
    assert events[0]["status"] == 500
    assert events[1]["error"] == "TransientSourceError"
    assert events[0]["wait"] == pytest.approx(waits[0], abs=1e-3)
    # Only structured facts: no message text that could carry a secret.
    assert "500" not in {str(v) for k, v in events[0].items() if k not in ("status",)}


def test_rate_limited_is_never_retried(waits: list[float]) -> None:
    fn = Flaky(RateLimitedError("429", reset_at=RESET))
    with pytest.raises(RateLimitedError):
        retry.call_with_retry(fn, what="publish:x", sleep=waits.append)
    assert fn.calls == 1 and waits == []


def test_outcome_unknown_is_never_retried_even_if_base_class_named(waits: list[float]) -> None:
    fn = Flaky(OutcomeUnknownError("timeout after send"))
    with pytest.raises(OutcomeUnknownError):
        retry.call_with_retry(fn, what="p", retry_on=(PublishError,), sleep=waits.append)
    assert fn.calls == 1


@pytest.mark.parametrize("error", [PermanentPublishError("403"), ValueError("bug")])
def test_unnamed_errors_propagate_at_once(error: Exception, waits: list[float]) -> None:
    fn = Flaky(error)
    with pytest.raises(type(error)):
        retry.call_with_retry(fn, what="p", sleep=waits.append)
    assert fn.calls == 1


def test_gives_up_after_attempts_with_the_last_error(waits: list[float]) -> None:
    errors = [TransientPublishError(f"fail {i}") for i in range(10)]
    fn = Flaky(*errors)
    with pytest.raises(TransientPublishError, match="fail 3"):
        retry.call_with_retry(fn, what="p", attempts=4, sleep=waits.append)
    assert fn.calls == 4 and len(waits) == 3


def test_waits_grow_with_jitter_and_are_capped(waits: list[float]) -> None:
    fn = Flaky(*[TransientPublishError("x") for _ in range(7)])
    retry.call_with_retry(
        fn,
        what="p",
        attempts=8,
        initial_s=1.0,
        max_delay_s=5.0,
        deadline_s=1e6,
        sleep=waits.append,
    )
    assert len(waits) == 7
    assert all(0 < w <= 5.0 for w in waits)
    assert 1.0 <= waits[0] <= 2.0  # initial (1s) plus up to 1s of jitter
    assert 2.0 <= waits[1] <= 3.0
    assert 4.0 <= waits[2] <= 5.0
    assert waits[3:] == [5.0] * 4  # capped


def test_deadline_stops_before_a_wait_that_would_pass_it(waits: list[float]) -> None:
    fn = Flaky(TransientPublishError("x"), TransientPublishError("y"))
    with pytest.raises(TransientPublishError, match="x"):
        retry.call_with_retry(fn, what="p", initial_s=1.0, deadline_s=0.5, sleep=waits.append)
    assert fn.calls == 1 and waits == []


def test_retrying_loop_form(waits: list[float]) -> None:
    fn = Flaky(TransientPublishError("x"))
    for attempt in retry.retrying("loop", sleep=waits.append):
        with attempt:
            result = fn()
    assert result == "ok" and fn.calls == 2


def test_no_waits_switch_removes_sleeping() -> None:
    fn = Flaky(TransientPublishError("a"), TransientPublishError("b"))
    assert not retry.is_testing()
    with retry.no_waits():
        assert retry.is_testing()
        # Uses the module's own sleep: the autouse fixture would fail the test if it slept.
        assert retry.call_with_retry(fn, what="p") == "ok"
    assert not retry.is_testing()


def test_set_testing_toggles() -> None:
    retry.set_testing(True)
    try:
        assert retry.call_with_retry(Flaky(TransientPublishError("a")), what="p") == "ok"
    finally:
        retry.set_testing(False)
    assert not retry.is_testing()


def test_attempts_must_be_positive() -> None:
    with pytest.raises(ValueError):
        retry.retrying("p", attempts=0)


@pytest.mark.parametrize(
    ("failures", "low", "high"),
    [
        (0, 0.0, 0.0),
        (-3, 0.0, 0.0),
        (1, 30.0, 60.0),
        (2, 60.0, 120.0),
        (3, 120.0, 240.0),
        (10, 1800.0, 3600.0),
        (10_000, 1800.0, 3600.0),
    ],
)
def test_backoff_delay_bounds(failures: int, low: float, high: float) -> None:
    for seed in range(20):
        delay = retry.backoff_delay(failures, base=60.0, cap=3600.0, rng=random.Random(seed))
        assert low <= delay <= high


def test_backoff_delay_is_reproducible_and_jittered() -> None:
    a = [retry.backoff_delay(4, rng=random.Random(7)) for _ in range(3)]
    b = [retry.backoff_delay(4, rng=random.Random(7)) for _ in range(3)]
    assert a == b
    spread = {retry.backoff_delay(4, rng=random.Random(s)) for s in range(10)}
    assert len(spread) > 1
