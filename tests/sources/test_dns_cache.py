"""DNS answers cached within their TTL (issue 14 item 3), the private-address check kept on
every request, and new connections pinned to the addresses that were checked."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Iterator

import httpcore
import httpx
import pytest
import respx

from crisiscomms.adapters.sources.dns import DnsAnswer, DnsCache, getaddrinfo_lookup, system_lookup
from crisiscomms.adapters.sources.http import FetchLimits, HttpFetcher, make_async_client
from crisiscomms.adapters.sources.parsing import FeedParserPool
from crisiscomms.adapters.sources.pinning import Pin, PinnedBackend, pinned
from crisiscomms.adapters.sources.rss import RssSource
from crisiscomms.domain.errors import PermanentSourceError, SourceError

from .sources_helpers import FEED_URL, NOW, PUBLIC_IP, FakeResolver, make_config, state_for

pytestmark = pytest.mark.anyio
HOST = "feeds.example.gov.uk"


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class FakeLookup:
    """A name server for tests: counts the questions, answers from ``answers``."""

    def __init__(self, ttl: float = 60.0) -> None:
        self.ttl = ttl
        self.answers: dict[str, tuple[str, ...] | Exception] = {}
        self.asked: list[str] = []

    async def __call__(self, host: str) -> DnsAnswer:
        self.asked.append(host)
        await asyncio.sleep(0)
        answer = self.answers.get(host, (PUBLIC_IP,))
        if isinstance(answer, Exception):
            raise answer
        return DnsAnswer(answer, self.ttl)


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def lookup() -> FakeLookup:
    return FakeLookup()


@pytest.fixture
def cache(lookup: FakeLookup, clock: Clock) -> DnsCache:
    return DnsCache(lookup, clock=clock)


@pytest.fixture
def source(client: httpx.AsyncClient, cache: DnsCache, mock: respx.MockRouter,
           pool: FeedParserPool) -> Iterator[RssSource]:
    mock.get(FEED_URL).mock(return_value=httpx.Response(304))
    yield RssSource(make_config(), HttpFetcher(client, FetchLimits(), resolver=cache), pool)


async def poll(source: RssSource) -> None:
    result = await source.poll(state_for(make_config().id, etag='"v1"', baseline_done=True), NOW)
    assert result.not_modified


# --------------------------------------------------------------------------- the cache


async def test_two_polls_within_the_ttl_resolve_once(
    source: RssSource, lookup: FakeLookup, clock: Clock
) -> None:
    await poll(source)
    clock.now += 59
    await poll(source)
    assert lookup.asked == [HOST]


async def test_after_the_ttl_the_name_is_resolved_again(
    source: RssSource, lookup: FakeLookup, clock: Clock
) -> None:
    await poll(source)
    clock.now += 60
    await poll(source)
    assert lookup.asked == [HOST, HOST]


async def test_an_answer_that_turns_private_is_refused_after_the_ttl(
    source: RssSource, lookup: FakeLookup, clock: Clock, mock: respx.MockRouter
) -> None:
    await poll(source)
    lookup.answers[HOST] = (PUBLIC_IP, "10.0.0.9")
    clock.now += 61
    with pytest.raises(PermanentSourceError) as info:
        await poll(source)
    assert info.value.error_class == "private_address"
    assert mock.routes[0].call_count == 1  # the refused poll sent nothing
    with pytest.raises(PermanentSourceError):  # and a cached private answer is refused too
        await poll(source)
    assert lookup.asked == [HOST, HOST]


async def test_an_injected_resolver_is_still_asked_on_every_request(
    client: httpx.AsyncClient, mock: respx.MockRouter, pool: FeedParserPool
) -> None:
    mock.get(FEED_URL).mock(return_value=httpx.Response(304))
    resolver = FakeResolver()
    source = RssSource(make_config(), HttpFetcher(client, resolver=resolver), pool)
    await poll(source)
    await poll(source)
    assert resolver.calls == [HOST, HOST]


async def test_ttls_are_clamped(lookup: FakeLookup, clock: Clock) -> None:
    cache = DnsCache(lookup, clock=clock, min_ttl=5, max_ttl=300)
    lookup.ttl = 0
    await cache("a.example", 443)
    clock.now += 4.9
    await cache("a.example", 443)
    assert lookup.asked == ["a.example"]
    clock.now += 0.2
    lookup.ttl = 86_400
    await cache("a.example", 443)
    clock.now += 300
    await cache("a.example", 443)
    assert lookup.asked == ["a.example"] * 3


async def test_a_name_that_does_not_exist_is_remembered_briefly(
    lookup: FakeLookup, clock: Clock
) -> None:
    cache = DnsCache(lookup, clock=clock, negative_ttl=10)
    lookup.answers["gone.example"] = socket.gaierror(socket.EAI_NONAME, "no such name")
    for _ in range(2):
        with pytest.raises(socket.gaierror):
            await cache("gone.example", 443)
    assert lookup.asked == ["gone.example"]
    clock.now += 10
    lookup.answers["gone.example"] = ("8.8.8.8",)
    assert await cache("gone.example", 443) == ["8.8.8.8"]


async def test_a_failed_lookup_is_not_cached(lookup: FakeLookup, clock: Clock) -> None:
    cache = DnsCache(lookup, clock=clock)
    lookup.answers["flaky.example"] = socket.gaierror(socket.EAI_AGAIN, "timed out")
    with pytest.raises(socket.gaierror):
        await cache("flaky.example", 443)
    lookup.answers["flaky.example"] = ("8.8.8.8",)
    assert await cache("flaky.example", 443) == ["8.8.8.8"]


async def test_the_cache_holds_at_most_max_entries(lookup: FakeLookup, clock: Clock) -> None:
    cache = DnsCache(lookup, clock=clock, max_entries=3)
    for i in range(5):
        await cache(f"h{i}.example", 443)
    assert len(cache) == 3
    await cache("h4.example", 443)  # the newest are kept
    assert lookup.asked.count("h4.example") == 1
    await cache("h0.example", 443)  # the oldest went first
    assert lookup.asked.count("h0.example") == 2


async def test_concurrent_questions_for_one_name_share_one_lookup(
    lookup: FakeLookup, cache: DnsCache
) -> None:
    got = await asyncio.gather(*(cache("Busy.Example.", 443) for _ in range(20)))
    assert got == [[PUBLIC_IP]] * 20
    assert lookup.asked == ["busy.example"]


async def test_localhost_comes_from_the_system_resolver() -> None:
    got = await system_lookup("localhost")
    assert got.addresses and all(a in ("127.0.0.1", "::1") for a in got.addresses)
    assert (await getaddrinfo_lookup("localhost")).ttl > 0


# --------------------------------------------------------------------------- pinning


class RecordingBackend(PinnedBackend):
    """Records where a new connection would go instead of connecting."""

    def __init__(self) -> None:
        super().__init__(resolve=FakeResolver())
        self.targets: list[list[str]] = []

    async def connect_tcp(self, host: str, port: int, timeout: float | None = None,
                          local_address: str | None = None,
                          socket_options: object = None) -> httpcore.AsyncNetworkStream:
        self.targets.append(await self.addresses(host, port))
        raise httpcore.ConnectError("not in tests")


async def test_a_new_connection_goes_to_the_checked_addresses_without_asking_again() -> None:
    answers = iter([["8.8.8.8"], ["127.0.0.1"]])  # rebinding: the second answer is loopback
    asked: list[str] = []

    async def rebinding(host: str, port: int) -> list[str]:
        asked.append(host)
        return next(answers)

    client = make_async_client(timeout=2.0)
    assert client.lean is not None  # type: ignore[attr-defined]
    backend = RecordingBackend()
    client.lean.wire.backend = backend  # type: ignore[attr-defined]
    try:
        fetcher = HttpFetcher(client, resolver=rebinding)
        with pytest.raises(SourceError) as info:
            await fetcher.fetch("http://rebind.example/feed", source_id="s")
        assert info.value.error_class == "connect"
    finally:
        await client.aclose()
    assert asked == ["rebind.example"]
    assert backend.targets == [["8.8.8.8"]]


async def test_a_connection_without_a_pin_checks_its_own_addresses() -> None:
    resolver = FakeResolver()
    resolver.answers["inside.example"] = ["10.1.1.1"]
    backend = PinnedBackend(resolve=resolver)
    for host in ("inside.example", "127.0.0.1"):
        with pytest.raises(PermanentSourceError) as info:
            await backend.connect_tcp(host, 80, timeout=1)
        assert info.value.error_class == "private_address"


async def test_a_pin_for_another_host_does_not_open_it() -> None:
    resolver = FakeResolver()
    resolver.answers["other.example"] = ["10.1.1.1"]
    backend = PinnedBackend(resolve=resolver)
    with pinned(Pin("feeds.example", 80, ("8.8.8.8",), resolver, "s")), pytest.raises(
            PermanentSourceError):
        await backend.connect_tcp("other.example", 80, timeout=1)


async def test_a_pin_that_allows_private_addresses_connects_to_them() -> None:
    server = await asyncio.start_server(lambda r, w: w.close(), "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    resolver = FakeResolver()
    resolver.answers["lan.example"] = ["127.0.0.1"]
    backend = PinnedBackend()
    try:
        with pinned(Pin("lan.example", port, None, resolver, "s")):
            stream = await backend.connect_tcp("lan.example", port, timeout=2)
        await stream.aclose()
    finally:
        server.close()
        await server.wait_closed()
    assert backend.connections == 1 and resolver.calls == ["lan.example"]
