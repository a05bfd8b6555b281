"""Fixtures for the publisher tests: one harness per adapter over its mocked platform."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta

import httpx
import pytest
import requests
import responses
import respx

from crisiscomms.adapters.publishers import (
    BlueskyPublisher,
    DryRunPublisher,
    FacebookPublisher,
    MastodonPublisher,
    XPublisher,
)
from crisiscomms.domain.clock import FixedClock

from .publisher_fakes import FakeBluesky, FakeFacebook, FakeMastodon, FakeX
from .publisher_support import (
    BLUESKY_CREDENTIALS,
    CHANNEL,
    FB_CREDENTIALS,
    MASTODON_CREDENTIALS,
    NOW,
    X_CREDENTIALS,
    Harness,
    epoch,
    requests_connect_error,
)


@pytest.fixture
def clock() -> FixedClock:
    return FixedClock(NOW)


@pytest.fixture
def x_fake(clock: FixedClock) -> Iterator[tuple[FakeX, XPublisher]]:
    with responses.RequestsMock(assert_all_requests_are_fired=False) as rsps:
        fake = FakeX(rsps)
        publisher = XPublisher(
            CHANNEL, credentials=X_CREDENTIALS, clock=clock, base_url=fake.base, account="nhs"
        )
        yield fake, publisher
        publisher.close()


@pytest.fixture
def facebook_fake(clock: FixedClock) -> Iterator[tuple[FakeFacebook, FacebookPublisher]]:
    with respx.mock(assert_all_called=False) as router:
        fake = FakeFacebook(router)
        publisher = FacebookPublisher(
            CHANNEL, page_id=fake.page, credentials=FB_CREDENTIALS, clock=clock, base_url=fake.base
        )
        yield fake, publisher
        publisher.close()


@pytest.fixture
def mastodon_fake(clock: FixedClock) -> Iterator[tuple[FakeMastodon, MastodonPublisher]]:
    with respx.mock(assert_all_called=False) as router:
        fake = FakeMastodon(router)
        publisher = MastodonPublisher(
            CHANNEL, base_url=fake.base, credentials=MASTODON_CREDENTIALS, clock=clock
        )
        yield fake, publisher
        publisher.close()


@pytest.fixture
def bluesky_fake(clock: FixedClock) -> Iterator[tuple[FakeBluesky, BlueskyPublisher]]:
    with respx.mock(assert_all_called=False) as router:
        fake = FakeBluesky(router)
        publisher = BlueskyPublisher(
            CHANNEL,
            identifier="nhs.test",
            credentials=BLUESKY_CREDENTIALS,
            clock=clock,
            base_url=fake.base,
        )
        yield fake, publisher
        publisher.close()


@pytest.fixture(params=["x", "facebook", "mastodon", "bluesky", "dryrun"])
def harness(request: pytest.FixtureRequest, clock: FixedClock) -> Harness:
    name = request.param
    httpx_errors = (httpx.ReadTimeout("timed out"), httpx.ConnectError("[Errno 111] refused"))
    if name == "x":
        fake, pub = request.getfixturevalue("x_fake")
        reset = NOW + timedelta(minutes=15)
        return Harness(
            name,
            pub,
            fake,
            fake.faults,
            "42-SECRET-access",
            {"x-rate-limit-reset": epoch(reset)},
            reset,
            requests.exceptions.ReadTimeout("Read timed out. (read timeout=15)"),
            requests_connect_error(),
        )
    if name == "facebook":
        fake, pub = request.getfixturevalue("facebook_fake")
        return Harness(
            name,
            pub,
            fake,
            fake.faults,
            "EAAB-SECRET-page-token",
            {"Retry-After": "120"},
            NOW + timedelta(seconds=120),
            *httpx_errors,
        )
    if name == "mastodon":
        fake, pub = request.getfixturevalue("mastodon_fake")
        return Harness(
            name,
            pub,
            fake,
            fake.faults,
            "mastodon-SECRET-token",
            {"X-RateLimit-Reset": "2026-03-01T12:05:00.000Z"},
            NOW + timedelta(minutes=5),
            *httpx_errors,
        )
    if name == "bluesky":
        fake, pub = request.getfixturevalue("bluesky_fake")
        reset = NOW + timedelta(minutes=10)
        return Harness(
            name,
            pub,
            fake,
            fake.faults,
            "abcd-SECRET-efgh-ijkl",
            {"ratelimit-reset": epoch(reset)},
            reset,
            *httpx_errors,
        )
    pub = DryRunPublisher(CHANNEL, clock)
    return Harness(name, pub, None, None, "", {}, NOW, None, None)
