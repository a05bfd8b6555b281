"""HttpFetcher: redirects, address checks, size caps, error translation, politeness."""

from __future__ import annotations

import asyncio
import gzip
import itertools
import ssl
import zlib
from datetime import timedelta

import httpx
import pytest
import respx

from crisiscomms.adapters.sources.base import SourceRateLimitedError
from crisiscomms.adapters.sources.http import FetchLimits, HttpFetcher, make_async_client
from crisiscomms.domain.errors import (
    FeedTooLargeError,
    PermanentSourceError,
    SourceError,
    TransientSourceError,
)

from .sources_helpers import FEED_URL, NOW, FakeResolver, gaierror

pytestmark = pytest.mark.anyio
SID = "test-src"


def encoded(data: bytes, encoding: str) -> httpx.Response:
    """A response whose body is sent as-is (``content=`` would decode it eagerly)."""
    return httpx.Response(
        200, stream=httpx.ByteStream(data), headers={"Content-Encoding": encoding}
    )


async def fetch_error(fetcher: HttpFetcher, url: str = FEED_URL, **kw: object) -> SourceError:
    with pytest.raises(SourceError) as info:
        await fetcher.fetch(url, source_id=SID, **kw)  # type: ignore[arg-type]
    assert SID in str(info.value)
    assert info.value.source_id == SID
    return info.value


async def test_conditional_get_sends_validators_and_maps_304(
    fetcher: HttpFetcher, mock: respx.MockRouter
) -> None:
    route = mock.get(FEED_URL).mock(
        side_effect=[
            httpx.Response(200, content=b"<rss/>", headers={"ETag": '"v1"'}),
            httpx.Response(304),
        ]
    )
    first = await fetcher.fetch(FEED_URL, source_id=SID)
    assert first.status == 200 and first.body == b"<rss/>" and first.headers["etag"] == '"v1"'
    second = await fetcher.fetch(FEED_URL, source_id=SID, etag='"v1"', last_modified="Tue, 10 Feb")
    assert second.not_modified and second.body == b""
    sent = route.calls[1].request.headers
    assert sent["if-none-match"] == '"v1"' and sent["if-modified-since"] == "Tue, 10 Feb"
    assert "if-none-match" not in route.calls[0].request.headers


@pytest.mark.parametrize(
    ("effect", "error_class"),
    [
        (httpx.ReadTimeout("slow"), "timeout"),
        (httpx.ConnectTimeout("slow"), "timeout"),
        (httpx.ConnectError("refused"), "connect"),
        (httpx.RemoteProtocolError("bad"), "network"),
        (httpx.ReadError("reset"), "network"),
    ],
)
async def test_network_failures_are_transient(
    fetcher: HttpFetcher, mock: respx.MockRouter, effect: Exception, error_class: str
) -> None:
    mock.get(FEED_URL).mock(side_effect=effect)
    err = await fetch_error(fetcher)
    assert isinstance(err, TransientSourceError)
    assert err.error_class == error_class


async def test_dns_and_tls_failures_are_classified(
    fetcher: HttpFetcher, mock: respx.MockRouter, resolver: FakeResolver
) -> None:
    resolver.answers["feeds.example.gov.uk"] = gaierror()
    err = await fetch_error(fetcher)
    assert isinstance(err, TransientSourceError) and err.error_class == "dns"



def _raising_client(exc: BaseException) -> httpx.AsyncClient:
    # respx replaces an exception's __cause__, so use a bare MockTransport to keep the chain.
    def handler(request: httpx.Request) -> httpx.Response:
        raise exc

    return make_async_client(transport=httpx.MockTransport(handler))


async def _chained(outer: Exception, inner: BaseException) -> SourceError:
    try:
        raise inner
    except BaseException as exc:
        outer.__cause__ = exc
    async with _raising_client(outer) as client:
        fetcher = HttpFetcher(client, resolver=FakeResolver())
        return await fetch_error(fetcher)


async def test_tls_and_dns_causes_are_found_in_the_chain() -> None:
    err = await _chained(
        httpx.ConnectError("handshake failed"),
        ssl.SSLCertVerificationError("certificate verify failed"),
    )
    assert isinstance(err, TransientSourceError) and err.error_class == "tls"
    err = await _chained(httpx.ConnectError("connect failed"), gaierror())
    assert isinstance(err, TransientSourceError) and err.error_class == "dns"
    err = await _chained(httpx.ConnectError("refused"), ConnectionRefusedError(111, "refused"))
    assert err.error_class == "connect"


@pytest.mark.parametrize(
    ("status", "kind"),
    [
        (400, PermanentSourceError), (401, PermanentSourceError), (403, PermanentSourceError),
        (404, PermanentSourceError), (410, PermanentSourceError), (408, TransientSourceError),
        (500, TransientSourceError), (502, TransientSourceError), (503, TransientSourceError),
        (418, PermanentSourceError),
    ],
)
async def test_http_status_mapping(
    fetcher: HttpFetcher, mock: respx.MockRouter, status: int, kind: type[SourceError]
) -> None:
    mock.get(FEED_URL).mock(return_value=httpx.Response(status, content=b"nope"))
    err = await fetch_error(fetcher)
    assert type(err) is kind
    assert err.error_class == f"http_{status}"


async def test_429_carries_retry_at(fetcher: HttpFetcher, mock: respx.MockRouter) -> None:
    mock.get(FEED_URL).mock(return_value=httpx.Response(429, headers={"Retry-After": "120"}))
    err = await fetch_error(fetcher, now=NOW)
    assert isinstance(err, SourceRateLimitedError) and isinstance(err, TransientSourceError)
    assert err.retry_at == NOW + timedelta(seconds=120)
    assert err.error_class == "http_429"

    mock.get(FEED_URL).mock(
        return_value=httpx.Response(503, headers={"Retry-After": "Tue, 10 Feb 2026 16:00:00 GMT"})
    )
    err = await fetch_error(fetcher, now=NOW)
    assert isinstance(err, SourceRateLimitedError)
    assert err.retry_at == NOW + timedelta(hours=1)

    mock.get(FEED_URL).mock(return_value=httpx.Response(
        429, headers={"X-RateLimit-Reset": "2026-02-10T15:05:00.000Z"}))
    err = await fetch_error(fetcher, now=NOW)
    assert isinstance(err, SourceRateLimitedError)
    assert err.retry_at == NOW + timedelta(minutes=5)


async def test_same_host_relative_redirect_is_followed(
    fetcher: HttpFetcher, mock: respx.MockRouter
) -> None:
    mock.get(FEED_URL).mock(return_value=httpx.Response(301, headers={"Location": "/new.xml"}))
    mock.get("https://feeds.example.gov.uk/new.xml").mock(
        return_value=httpx.Response(200, content=b"ok")
    )
    got = await fetcher.fetch(FEED_URL, source_id=SID)
    assert got.body == b"ok" and got.url == "https://feeds.example.gov.uk/new.xml"


async def test_redirect_loop_stops(fetcher: HttpFetcher, mock: respx.MockRouter) -> None:
    a = "https://feeds.example.gov.uk/a"
    b = "https://feeds.example.gov.uk/b"
    route_a = mock.get(a).mock(return_value=httpx.Response(302, headers={"Location": b}))
    mock.get(b).mock(return_value=httpx.Response(302, headers={"Location": a}))
    err = await fetch_error(fetcher, a)
    assert isinstance(err, PermanentSourceError) and err.error_class == "too_many_redirects"
    assert route_a.call_count == 3  # 6 requests in all: the first and 5 redirects


@pytest.mark.parametrize(
    "location",
    [
        "https://evil.example.com/feed.xml",
        "http://feeds.example.gov.uk/feed.xml",
        "ftp://feeds.example.gov.uk/feed.xml",
        "https://feeds.example.gov.uk.evil.example/x",
    ],
)
async def test_redirects_to_other_hosts_or_downgrades_are_refused(
    fetcher: HttpFetcher, mock: respx.MockRouter, location: str
) -> None:
    mock.get(FEED_URL).mock(return_value=httpx.Response(302, headers={"Location": location}))
    err = await fetch_error(fetcher)
    assert isinstance(err, PermanentSourceError) and err.error_class == "redirect_refused"


async def test_http_source_may_not_be_sent_to_https_elsewhere_but_may_upgrade(
    fetcher: HttpFetcher, mock: respx.MockRouter
) -> None:
    plain = "http://feeds.example.gov.uk/feed.xml"
    mock.get(plain).mock(return_value=httpx.Response(301, headers={"Location": FEED_URL}))
    mock.get(FEED_URL).mock(return_value=httpx.Response(200, content=b"up"))
    assert (await fetcher.fetch(plain, source_id=SID)).body == b"up"


@pytest.mark.parametrize(
    "address",
    ["127.0.0.1", "10.1.2.3", "192.168.0.10", "172.16.5.5", "169.254.169.254", "::1",
     "fe80::1", "::ffff:127.0.0.1", "100.64.0.1", "0.0.0.0", "fc00::1"],
)
async def test_private_addresses_are_refused(
    fetcher: HttpFetcher, mock: respx.MockRouter, resolver: FakeResolver, address: str
) -> None:
    route = mock.get(FEED_URL).mock(return_value=httpx.Response(200, content=b"secret"))
    resolver.answers["feeds.example.gov.uk"] = [PUBLIC_IP_2, address]
    err = await fetch_error(fetcher)
    assert isinstance(err, PermanentSourceError) and err.error_class == "private_address"
    assert route.call_count == 0
    got = await fetcher.fetch(FEED_URL, source_id=SID, allow_private=True)
    assert got.body == b"secret"


PUBLIC_IP_2 = "8.8.8.8"


async def test_ip_literal_private_hosts_are_refused_without_dns(
    fetcher: HttpFetcher, resolver: FakeResolver
) -> None:
    err = await fetch_error(fetcher, "http://127.0.0.1:8080/feed")
    assert err.error_class == "private_address"
    err = await fetch_error(fetcher, "http://[::1]/feed")
    assert err.error_class == "private_address"
    assert resolver.calls == []


async def test_redirect_to_private_address_on_same_host_port_is_checked(
    fetcher: HttpFetcher, mock: respx.MockRouter, resolver: FakeResolver
) -> None:
    url = "http://intranet.example/feed"
    resolver.answers["intranet.example"] = ["10.0.0.5"]
    mock.get(url).mock(return_value=httpx.Response(200))
    assert (await fetch_error(fetcher, url)).error_class == "private_address"


async def test_bad_urls_are_permanent(fetcher: HttpFetcher) -> None:
    for url in ("file:///etc/passwd", "gopher://x/", "", "https://"):
        err = await fetch_error(fetcher, url)
        assert isinstance(err, PermanentSourceError)
        assert err.error_class == "bad_url"


async def test_declared_too_large_body(fetcher: HttpFetcher, mock: respx.MockRouter) -> None:
    mock.get(FEED_URL).mock(return_value=httpx.Response(200, content=b"x" * 2000))
    err = await fetch_error(fetcher, max_bytes=1000)
    assert isinstance(err, FeedTooLargeError) and err.error_class == "too_large"


async def test_streamed_too_large_body_without_length(
    fetcher: HttpFetcher, mock: respx.MockRouter
) -> None:
    produced = 0

    async def endless() -> object:
        nonlocal produced
        for _ in range(10_000):
            produced += 64 * 1024
            yield b"x" * (64 * 1024)

    mock.get(FEED_URL).mock(return_value=httpx.Response(200, content=endless()))
    err = await fetch_error(fetcher, max_bytes=200_000)
    assert isinstance(err, FeedTooLargeError)
    assert produced < 1_000_000  # we stopped reading, not the generator


async def test_gzip_and_deflate_are_decoded(fetcher: HttpFetcher, mock: respx.MockRouter) -> None:
    body = b"<rss>" + b"hello " * 1000 + b"</rss>"
    for encoding, data in (
        ("gzip", gzip.compress(body)),
        ("deflate", zlib.compress(body)),
        ("deflate", zlib.compress(body)[2:-4]),  # raw deflate, as some servers send
        ("identity", body),
    ):
        mock.get(FEED_URL).mock(return_value=encoded(data, encoding))
        got = await fetcher.fetch(FEED_URL, source_id=SID)
        assert got.body == body, encoding


async def test_gzip_bomb_stops_at_the_cap(fetcher: HttpFetcher, mock: respx.MockRouter) -> None:
    # 100 MB of zeros compresses to ~100 KB: under the cap on the wire, far over decoded.
    compressor = zlib.compressobj(9, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
    chunk = bytes(1 << 20)
    bomb = b"".join(compressor.compress(chunk) for _ in range(100)) + compressor.flush()
    assert len(bomb) < 500_000
    mock.get(FEED_URL).mock(return_value=encoded(bomb, "gzip"))
    err = await fetch_error(fetcher, max_bytes=5_000_000)
    assert isinstance(err, FeedTooLargeError) and "decoded" in str(err)


async def test_corrupt_gzip_and_unknown_encoding(
    fetcher: HttpFetcher, mock: respx.MockRouter
) -> None:
    mock.get(FEED_URL).mock(return_value=encoded(b"not gzip", "gzip"))
    assert (await fetch_error(fetcher)).error_class == "decode"
    mock.get(FEED_URL).mock(return_value=encoded(b"x", "br"))
    assert (await fetch_error(fetcher)).error_class == "decode"


async def test_per_host_and_global_concurrency_bounds(
    client: httpx.AsyncClient, resolver: FakeResolver, mock: respx.MockRouter
) -> None:
    fetcher = HttpFetcher(client, FetchLimits(per_host=2, total=3), resolver=resolver)
    active: dict[str, int] = {}
    peak: dict[str, int] = {}
    total_peak = 0

    async def slow(request: httpx.Request) -> httpx.Response:
        nonlocal total_peak
        host = request.url.host
        active[host] = active.get(host, 0) + 1
        peak[host] = max(peak.get(host, 0), active[host])
        total_peak = max(total_peak, sum(active.values()))
        await asyncio.sleep(0.01)
        active[host] -= 1
        return httpx.Response(200, content=b"ok")

    mock.route(method="GET").mock(side_effect=slow)
    urls = [f"https://h{i % 3}.example/feed" for i in range(12)]
    await asyncio.gather(*(fetcher.fetch(u, source_id=SID) for u in urls))
    assert max(peak.values()) <= 2
    assert total_peak <= 3


# ------------------------------------------- redirects within one registrable domain (#11.12)

MET_OLD = "https://www.metoffice.gov.uk/public/data/PWSCache/WarningsRSS/Region/ee"
MET_NEW = "https://weather.metoffice.gov.uk/public/data/PWSCache/WarningsRSS/Region/ee"


@pytest.mark.parametrize("status", [301, 308])
async def test_permanent_redirect_to_a_sibling_host_is_followed_and_reported(
    fetcher: HttpFetcher, mock: respx.MockRouter, resolver: FakeResolver, status: int
) -> None:
    mock.get(MET_OLD).mock(return_value=httpx.Response(status, headers={"Location": MET_NEW}))
    mock.get(MET_NEW).mock(return_value=httpx.Response(200, content=b"<rss/>"))
    got = await fetcher.fetch(MET_OLD, source_id=SID)
    assert got.body == b"<rss/>" and got.url == MET_NEW
    assert got.moved_to == MET_NEW  # permanent: the source's new address, for `status`
    assert resolver.calls == ["www.metoffice.gov.uk", "weather.metoffice.gov.uk"]


async def test_temporary_redirect_to_www_is_followed_but_not_reported(
    fetcher: HttpFetcher, mock: respx.MockRouter
) -> None:
    bare = "https://example.gov.uk/news.rss"
    mock.get(bare).mock(return_value=httpx.Response(
        302, headers={"Location": "https://www.example.gov.uk/news.rss"}))
    mock.get("https://www.example.gov.uk/news.rss").mock(
        return_value=httpx.Response(200, content=b"ok"))
    got = await fetcher.fetch(bare, source_id=SID)
    assert got.body == b"ok" and got.moved_to is None


async def test_only_the_permanent_start_of_a_chain_is_reported(
    fetcher: HttpFetcher, mock: respx.MockRouter
) -> None:
    hop = "https://feeds.example.gov.uk/v2/feed.xml"
    mock.get(FEED_URL).mock(return_value=httpx.Response(301, headers={"Location": hop}))
    mock.get(hop).mock(return_value=httpx.Response(
        307, headers={"Location": "https://cdn.example.gov.uk/today.xml?sig=s3cr3t"}))
    mock.get("https://cdn.example.gov.uk/today.xml").mock(
        return_value=httpx.Response(200, content=b"ok"))
    got = await fetcher.fetch(FEED_URL, source_id=SID)
    assert got.body == b"ok"
    assert got.moved_to == hop  # the 307 after it is temporary and its query is never kept


async def test_moved_to_never_carries_a_query_string(
    fetcher: HttpFetcher, mock: respx.MockRouter
) -> None:
    mock.get(FEED_URL).mock(return_value=httpx.Response(
        301, headers={"Location": "https://feeds.example.gov.uk/new.xml?key=abc"}))
    mock.get("https://feeds.example.gov.uk/new.xml").mock(
        return_value=httpx.Response(200, content=b"ok"))
    got = await fetcher.fetch(FEED_URL, source_id=SID)
    assert got.moved_to == "https://feeds.example.gov.uk/new.xml"


@pytest.mark.parametrize(
    ("start", "location"),
    [
        # Only the public suffix in common (gov.uk, police.uk are public suffixes).
        ("https://example.gov.uk/feed", "https://evil.gov.uk/feed"),
        ("https://essex.police.uk/feed", "https://kent.police.uk/feed"),
        # A private suffix of the list: each github.io site belongs to someone else.
        ("https://agency.github.io/feed", "https://attacker.github.io/feed"),
        # Look-alikes.
        (MET_OLD, "https://metoffice.gov.uk.evil.example/feed"),
        (MET_OLD, "https://www.metoffice-gov.uk/feed"),
        # Addresses have no registrable domain: the same address or nothing.
        ("https://93.184.216.34/feed", "https://93.184.216.35/feed"),
    ],
)
async def test_redirect_to_another_registrable_domain_is_refused_in_one_clear_line(
    fetcher: HttpFetcher, mock: respx.MockRouter, start: str, location: str
) -> None:
    mock.get(start).mock(return_value=httpx.Response(302, headers={"Location": location}))
    target = mock.get(location.split("?")[0]).mock(return_value=httpx.Response(200))
    err = await fetch_error(fetcher, start)
    assert isinstance(err, PermanentSourceError) and err.error_class == "redirect_refused"
    message = str(err)
    assert "\n" not in message
    assert httpx.URL(start).host in message and httpx.URL(location).host in message
    assert target.call_count == 0


async def test_downgrade_stays_refused_within_the_domain(
    fetcher: HttpFetcher, mock: respx.MockRouter
) -> None:
    mock.get(MET_OLD).mock(return_value=httpx.Response(
        301, headers={"Location": MET_NEW.replace("https://", "http://")}))
    err = await fetch_error(fetcher, MET_OLD)
    assert err.error_class == "redirect_refused" and "downgrade" in str(err)


async def test_every_hop_of_a_followed_redirect_is_address_checked(
    fetcher: HttpFetcher, mock: respx.MockRouter, resolver: FakeResolver
) -> None:
    mock.get(MET_OLD).mock(return_value=httpx.Response(301, headers={"Location": MET_NEW}))
    target = mock.get(MET_NEW).mock(return_value=httpx.Response(200, content=b"internal"))
    resolver.answers["weather.metoffice.gov.uk"] = ["10.0.0.7"]
    err = await fetch_error(fetcher, MET_OLD)
    assert err.error_class == "private_address" and "weather.metoffice.gov.uk" in str(err)
    assert target.call_count == 0


async def test_hop_limit_holds_across_hosts_of_one_domain(
    fetcher: HttpFetcher, mock: respx.MockRouter
) -> None:
    hosts = [f"https://h{i}.example.gov.uk/feed" for i in range(8)]
    for here, there in itertools.pairwise(hosts):
        mock.get(here).mock(return_value=httpx.Response(301, headers={"Location": there}))
    err = await fetch_error(fetcher, hosts[0])
    assert err.error_class == "too_many_redirects"


async def test_authorization_goes_to_the_configured_host_only(
    fetcher: HttpFetcher, mock: respx.MockRouter
) -> None:
    from pydantic import SecretStr

    start = "https://social.example.gov.uk/api/v1/accounts/1/statuses"
    moved = "https://mastodon.example.gov.uk/api/v1/accounts/1/statuses"
    first = mock.get(start).mock(return_value=httpx.Response(
        301, headers={"Location": moved}))
    second = mock.get(moved).mock(return_value=httpx.Response(200, json=[]))
    await fetcher.fetch(start, source_id=SID, bearer=SecretStr("tok-123456"))
    assert first.calls[0].request.headers["authorization"] == "Bearer tok-123456"
    assert "authorization" not in second.calls[0].request.headers
