"""The contract every Publisher honours, run against each adapter over its mocked platform."""

from __future__ import annotations

from datetime import timedelta

import pytest

from crisiscomms.domain.errors import (
    OutcomeUnknownError,
    PermanentPublishError,
    RateLimitedError,
    TransientPublishError,
)
from crisiscomms.domain.models import PublishResult
from crisiscomms.ports import Publisher

from .publisher_fakes import Failure
from .publisher_support import BODY, CHANNEL, NOW, Harness, make_item


def test_is_a_publisher(harness: Harness) -> None:
    assert isinstance(harness.publisher, Publisher)
    assert harness.publisher.channel_id == CHANNEL


def test_post_returns_a_result_with_an_id(harness: Harness) -> None:
    result = harness.publisher.publish(make_item(), None)
    assert isinstance(result, PublishResult)
    assert result.post_id
    assert result.dry_run is (harness.name == "dryrun")


def test_429_is_rate_limited_until_the_platform_reset(harness: Harness) -> None:
    faults = harness.need_faults()
    faults.add(
        "write",
        Failure(429, harness.error_body(429, "Too Many Requests"), harness.rate_limit_headers),
    )
    with pytest.raises(RateLimitedError) as caught:
        harness.publisher.publish(make_item(), None)
    assert caught.value.reset_at == harness.expected_reset
    assert caught.value.channel_id == CHANNEL
    assert caught.value.status == 429


def test_429_without_headers_falls_back_to_a_minute(harness: Harness) -> None:
    faults = harness.need_faults()
    faults.add("write", Failure(429, harness.error_body(429, "slow down")))
    with pytest.raises(RateLimitedError) as caught:
        harness.publisher.publish(make_item(), None)
    assert caught.value.reset_at == NOW + timedelta(seconds=60)


@pytest.mark.parametrize("status", [500, 502, 503])
def test_5xx_is_transient(harness: Harness, status: int) -> None:
    faults = harness.need_faults()
    faults.add("write", Failure(status, harness.error_body(status, "Internal error")))
    with pytest.raises(TransientPublishError) as caught:
        harness.publisher.publish(make_item(), None)
    assert not isinstance(caught.value, RateLimitedError)
    assert caught.value.status == status


@pytest.mark.parametrize("status", [400, 401, 403, 404, 422])
def test_4xx_is_permanent_with_reason_and_no_token(harness: Harness, status: int) -> None:
    faults = harness.need_faults()
    # Platforms sometimes echo what they were sent; the token must still not reach the message.
    reason = f"Invalid or expired token {harness.secret} for this account"
    faults.add("write", Failure(status, harness.error_body(status, reason)))
    with pytest.raises(PermanentPublishError) as caught:
        harness.publisher.publish(make_item(), None)
    message = str(caught.value)
    assert "Invalid or expired token" in message
    assert harness.secret not in message
    assert str(status) in message
    assert caught.value.status == status
    assert harness.secret not in repr(caught.value)


def test_read_timeout_after_sending_is_outcome_unknown(harness: Harness) -> None:
    faults = harness.need_faults()
    faults.add("write", Failure(exc=harness.read_timeout))
    with pytest.raises(OutcomeUnknownError):
        harness.publisher.publish(make_item(), None)


def test_connection_refused_is_transient(harness: Harness) -> None:
    faults = harness.need_faults()
    faults.add("write", Failure(exc=harness.connect_error))
    with pytest.raises(TransientPublishError):
        harness.publisher.publish(make_item(), None)


def test_find_existing_finds_an_earlier_post(harness: Harness) -> None:
    item = make_item()
    published = harness.publisher.publish(item, None)
    found = harness.publisher.find_existing(item, None)
    assert found is not None
    assert found.post_id == published.post_id


def test_find_existing_is_none_for_a_post_never_made(harness: Harness) -> None:
    harness.publisher.publish(make_item(), None)
    other = make_item(2, body="Stand down: " + BODY.replace("York", "Leeds"))
    assert harness.publisher.find_existing(other, None) is None


def test_find_existing_raises_outcome_unknown_when_it_cannot_look(harness: Harness) -> None:
    faults = harness.need_faults()
    item = make_item()
    harness.publisher.publish(item, None)
    for _ in range(3):
        faults.add("read", Failure(503, harness.error_body(503, "Service Unavailable")))
    with pytest.raises(OutcomeUnknownError):
        harness.publisher.find_existing(item, None)


def test_find_existing_timeout_is_outcome_unknown(harness: Harness) -> None:
    faults = harness.need_faults()
    faults.add("read", Failure(exc=harness.read_timeout))
    with pytest.raises(OutcomeUnknownError):
        harness.publisher.find_existing(make_item(), None)


def test_close_is_safe(harness: Harness) -> None:
    harness.publisher.close()
