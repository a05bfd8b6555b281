from __future__ import annotations

import json
from datetime import timedelta

import httpx
import pytest

from crisiscomms.adapters.publishers.facebook import FacebookPublisher, regain_access_at
from crisiscomms.domain.errors import (
    OutcomeUnknownError,
    PermanentPublishError,
    RateLimitedError,
    TransientPublishError,
)

from .publisher_fakes import Failure, FakeFacebook
from .publisher_support import BODY, LINK, NOW, make_item

Fixture = tuple[FakeFacebook, FacebookPublisher]
TOKEN = "EAAB-SECRET-page-token"


def fb_error(
    code: int, message: str = "Application request limit reached", **extra: object
) -> dict:
    return {"error": {"message": message, "type": "OAuthException", "code": code, **extra}}


def test_token_travels_in_the_body_never_the_url(facebook_fake: Fixture) -> None:
    fake, pub = facebook_fake
    result = pub.publish(make_item(), None)
    [request] = fake.requests
    assert TOKEN not in str(request.url)
    form = dict(httpx.QueryParams(request.content.decode()))
    assert form == {"message": BODY, "link": LINK, "access_token": TOKEN}
    assert result.url == f"https://www.facebook.com/{result.post_id}"


def test_find_existing_sends_the_token_in_a_header(facebook_fake: Fixture) -> None:
    fake, pub = facebook_fake
    pub.find_existing(make_item(), None)
    [request] = fake.requests
    assert TOKEN not in str(request.url)
    assert request.headers["Authorization"] == f"Bearer {TOKEN}"
    assert request.url.params["fields"] == "id,message,link"


def test_find_existing_requires_the_same_link(facebook_fake: Fixture) -> None:
    _fake, pub = facebook_fake
    pub.publish(make_item(), None)
    assert pub.find_existing(make_item(url="https://elsewhere.test/2"), None) is None


@pytest.mark.parametrize("code", [4, 17, 32, 613])
def test_throttle_codes_are_rate_limits(facebook_fake: Fixture, code: int) -> None:
    fake, pub = facebook_fake
    fake.faults.add("write", Failure(400, fb_error(code)))
    with pytest.raises(RateLimitedError) as caught:
        pub.publish(make_item(), None)
    assert caught.value.reset_at == NOW + timedelta(minutes=5)
    assert f"(code {code})" in str(caught.value)


def test_business_use_case_header_gives_the_reset(facebook_fake: Fixture) -> None:
    fake, pub = facebook_fake
    usage = {"1234": [{"type": "pages", "call_count": 100, "estimated_time_to_regain_access": 7}]}
    fake.faults.add(
        "write",
        Failure(400, fb_error(32), headers={"X-Business-Use-Case-Usage": json.dumps(usage)}),
    )
    with pytest.raises(RateLimitedError) as caught:
        pub.publish(make_item(), None)
    assert caught.value.reset_at == NOW + timedelta(minutes=7)


@pytest.mark.parametrize(
    "error",
    [fb_error(2, "Service temporarily unavailable"), fb_error(100, "Try again", is_transient=True)],
)
def test_transient_facebook_errors(facebook_fake: Fixture, error: dict) -> None:
    fake, pub = facebook_fake
    fake.faults.add("write", Failure(400, error))
    with pytest.raises(TransientPublishError) as caught:
        pub.publish(make_item(), None)
    assert not isinstance(caught.value, RateLimitedError)


def test_duplicate_status_is_permanent(facebook_fake: Fixture) -> None:
    fake, pub = facebook_fake
    fake.faults.add("write", Failure(400, fb_error(506, "Duplicate status message")))
    with pytest.raises(PermanentPublishError, match="Duplicate status message"):
        pub.publish(make_item(), None)


def test_unreadable_success_is_outcome_unknown(facebook_fake: Fixture) -> None:
    fake, pub = facebook_fake
    fake.faults.add("write", Failure(exc=None, status=200, body=["not", "an", "object"]))
    with pytest.raises(OutcomeUnknownError):
        pub.publish(make_item(), None)


@pytest.mark.parametrize(
    ("header", "minutes"),
    [
        (None, None),
        ("not json", None),
        (json.dumps({"1": [{"estimated_time_to_regain_access": 0}]}), None),
        (
            json.dumps(
                {
                    "1": [{"estimated_time_to_regain_access": 3}],
                    "2": [{"estimated_time_to_regain_access": 11}],
                }
            ),
            11,
        ),
    ],
)
def test_regain_access_at(header: str | None, minutes: int | None) -> None:
    headers = {"x-business-use-case-usage": header} if header else {}
    expected = NOW + timedelta(minutes=minutes) if minutes else None
    assert regain_access_at(headers, NOW) == expected
