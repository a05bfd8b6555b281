from __future__ import annotations

from datetime import UTC, datetime, timedelta

import httpx
import pytest
from pydantic import SecretStr
from structlog.testing import capture_logs

from crisiscomms.adapters.publishers import (
    REQUIRED_CREDENTIALS,
    BlueskyPublisher,
    DryRunPublisher,
    FacebookPublisher,
    MastodonPublisher,
    XPublisher,
    build_publisher,
    missing_credentials,
)
from crisiscomms.adapters.publishers._common import (
    error_for_transport,
    html_to_text,
    match_key,
    redact,
    reset_from_headers,
    secret_values,
)
from crisiscomms.domain.clock import FixedClock
from crisiscomms.domain.config import ChannelConfig
from crisiscomms.domain.errors import ConfigError, OutcomeUnknownError, PermanentPublishError
from crisiscomms.domain.models import Platform

from .publisher_support import NOW, make_item

CLOCK = FixedClock(NOW)


def creds(platform: Platform) -> dict[str, SecretStr]:
    return {role: SecretStr(f"{role}-value") for role in REQUIRED_CREDENTIALS[platform]}


def channel(
    platform: Platform, account: str = "@nhs@m.test", base_url: str | None = None
) -> ChannelConfig:
    return ChannelConfig(id="chan", platform=platform, account=account, base_url=base_url)


def test_every_platform_lists_its_credentials() -> None:
    assert set(REQUIRED_CREDENTIALS) == set(Platform)


@pytest.mark.parametrize(
    ("platform", "cls"),
    [
        (Platform.X, XPublisher),
        (Platform.FACEBOOK, FacebookPublisher),
        (Platform.MASTODON, MastodonPublisher),
        (Platform.BLUESKY, BlueskyPublisher),
    ],
)
def test_builds_the_adapter_for_each_platform(platform: Platform, cls: type) -> None:
    with httpx.Client() as client:
        pub = build_publisher(channel(platform), creds(platform), clock=CLOCK, http_client=client)
        assert isinstance(pub, cls)
        assert pub.channel_id == "chan"
        pub.close()
        assert not client.is_closed  # a shared client belongs to the caller


@pytest.mark.parametrize("platform", list(Platform))
def test_dry_run_flag(platform: Platform) -> None:
    pub = build_publisher(channel(platform), creds(platform), clock=CLOCK, dry_run=True)
    assert isinstance(pub, DryRunPublisher)


@pytest.mark.parametrize("platform", list(Platform))
def test_missing_credential_means_dry_run_and_a_log_line(platform: Platform) -> None:
    partial = creds(platform)
    dropped = REQUIRED_CREDENTIALS[platform][0]
    partial[dropped] = SecretStr("")
    with capture_logs() as logs:
        pub = build_publisher(channel(platform), partial, clock=CLOCK)
    assert isinstance(pub, DryRunPublisher)
    [event] = [e for e in logs if e["event"] == "publisher.credentials_missing"]
    assert event["roles"] == [dropped]
    assert "value" not in str(event)
    assert missing_credentials(platform, partial) == [dropped]


def test_mastodon_needs_an_instance() -> None:
    with pytest.raises(ConfigError, match="base_url"):
        build_publisher(
            channel(Platform.MASTODON, account="@nhs"), creds(Platform.MASTODON), clock=CLOCK
        )


def test_facebook_page_id_from_credential_or_account() -> None:
    import respx

    from crisiscomms.adapters.publishers.facebook import DEFAULT_GRAPH_VERSION

    with respx.mock() as router:
        route = router.post(url__regex=r"https://graph\.facebook\.com/v\d+\.\d+/\w+/feed").mock(
            return_value=httpx.Response(200, json={"id": "1_2"})
        )
        for extra, page in [({}, "100064000000001"), ({"page_id": SecretStr("999")}, "999")]:
            pub = build_publisher(
                channel(Platform.FACEBOOK, account="100064000000001"),
                {**creds(Platform.FACEBOOK), **extra},
                clock=CLOCK,
            )
            pub.publish(make_item(), None)
            pub.close()
            assert route.calls.last.request.url.path == f"/{DEFAULT_GRAPH_VERSION}/{page}/feed"


def test_channel_base_url_is_used() -> None:
    import respx

    with respx.mock() as router:
        route = router.post(
            "http://127.0.0.1:8080/bsky/xrpc/com.atproto.server.createSession"
        ).mock(return_value=httpx.Response(401, json={"error": "AuthenticationRequired"}))
        pub = build_publisher(
            channel(Platform.BLUESKY, account="@nhs.test", base_url="http://127.0.0.1:8080/bsky"),
            creds(Platform.BLUESKY),
            clock=CLOCK,
        )
        with pytest.raises(PermanentPublishError):
            pub.publish(make_item(), None)
        pub.close()
        assert route.called
        assert (
            route.calls.last.request.content
            == b'{"identifier":"nhs.test","password":"app_password-value"}'
        )


# -- shared helpers ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        (
            {"x-rate-limit-reset": str(int((NOW + timedelta(minutes=15)).timestamp()))},
            NOW + timedelta(minutes=15),
        ),
        ({"X-RateLimit-Reset": "2026-03-01T12:05:00.000Z"}, NOW + timedelta(minutes=5)),
        (
            {"X-RateLimit-Reset": "2026-03-01T12:05:00.123456+00:00"},
            NOW + timedelta(minutes=5, microseconds=123456),
        ),
        (
            {"ratelimit-reset": str(int((NOW + timedelta(minutes=2)).timestamp()))},
            NOW + timedelta(minutes=2),
        ),
        ({"Retry-After": "90"}, NOW + timedelta(seconds=90)),
        ({"Retry-After": "Sun, 01 Mar 2026 12:30:00 GMT"}, NOW + timedelta(minutes=30)),
        ({}, NOW + timedelta(seconds=60)),
        ({"Retry-After": "soon"}, NOW + timedelta(seconds=60)),
        (
            {"x-rate-limit-reset": str(int((NOW - timedelta(hours=1)).timestamp()))},
            NOW + timedelta(seconds=1),
        ),  # in the past (clock skew): try again shortly
        ({"Retry-After": str(10 * 86400)}, NOW + timedelta(hours=24)),  # capped
    ],
)
def test_reset_from_headers(headers: dict[str, str], expected: datetime) -> None:
    assert reset_from_headers(headers, NOW) == expected
    assert reset_from_headers(headers, NOW).tzinfo is not None


def test_reset_from_headers_accepts_naive_now() -> None:
    naive = NOW.replace(tzinfo=None)
    assert reset_from_headers({}, naive) == datetime(2026, 3, 1, 12, 1, tzinfo=UTC)


@pytest.mark.parametrize(
    ("exc", "kind"),
    [
        (httpx.ConnectError("refused"), "TransientPublishError"),
        (httpx.ConnectTimeout("slow"), "TransientPublishError"),
        (httpx.PoolTimeout("busy"), "TransientPublishError"),
        (httpx.WriteTimeout("slow"), "TransientPublishError"),
        (httpx.ReadTimeout("slow"), "OutcomeUnknownError"),
        (httpx.ReadError("reset"), "OutcomeUnknownError"),
        (
            httpx.RemoteProtocolError("Server disconnected without sending a response."),
            "OutcomeUnknownError",
        ),
        (httpx.UnsupportedProtocol("ftp"), "PermanentPublishError"),
    ],
)
def test_error_for_transport(exc: httpx.TransportError, kind: str) -> None:
    error = error_for_transport(exc, platform="p", channel_id="c")
    assert type(error).__name__ == kind
    assert error.channel_id == "c"


def test_redact_and_secret_values() -> None:
    values = secret_values(
        {"a": SecretStr("short-token"), "b": SecretStr("short-token-longer"), "c": SecretStr("")}
    )
    assert values == ("short-token-longer", "short-token")
    assert redact("x short-token-longer y short-token", values) == "x *** y ***"


def test_match_key_ignores_urls_entities_and_spacing() -> None:
    ours = "Road closed &  diverted\nhttps://example.test/long/path #Flood"
    theirs = "Road closed &amp; diverted https://t.co/abc #Flood"
    assert match_key(ours) == match_key(theirs)
    assert match_key(ours) != match_key("Road open https://t.co/abc #Flood")


def test_html_to_text() -> None:
    markup = '<p>Line one<br/>line &amp; two</p><p><a href="u"><span class="invisible">https://</span>a.test</a></p>'
    assert " ".join(html_to_text(markup).split()) == "Line one line & two https://a.test"


def test_find_existing_failures_keep_their_status() -> None:
    from crisiscomms.adapters.publishers._common import cannot_tell
    from crisiscomms.domain.errors import TransientPublishError

    err = cannot_tell(TransientPublishError("boom", status=503), platform="p", channel_id="c")
    assert isinstance(err, OutcomeUnknownError) and err.status == 503


def test_dry_run_records_once_per_item() -> None:
    pub = DryRunPublisher("chan", CLOCK)
    item = make_item()
    first = pub.publish(item, None)
    assert first.post_id == "dry-run:1" and first.dry_run
    assert pub.publish(item, None) == first
    assert len(pub.records) == 1
    record = pub.records[0]
    assert (record.item_id, record.body, record.at) == (1, item.body, NOW)
