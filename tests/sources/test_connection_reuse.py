"""Connections go back to the pool whatever the answer: a conditional GET answered 304, a
redirect and an error answer all leave the connection open for the next poll (issue 14: each
idle poll used to cost a new TCP, and over TLS a new handshake).

The server is a real loopback HTTP/1.1 server that counts the TCP connections it accepts; the
requests go through the real fetch path (``RssSource`` -> ``HttpFetcher`` -> httpx).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field

import pytest

from crisiscomms.adapters.sources.http import FetchLimits, HttpFetcher, make_async_client
from crisiscomms.adapters.sources.parsing import FeedParserPool
from crisiscomms.adapters.sources.rss import RssSource
from crisiscomms.domain.errors import SourceError
from crisiscomms.domain.models import SourceKind

from .sources_helpers import NOW, fixture_bytes, make_config, state_for

pytestmark = pytest.mark.anyio

ETAG = '"v1"'
N_POLLS = 50
PER_HOST = 2


@dataclass
class Answer:
    status: int
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""
    hang: bool = False  # send the head, then nothing more on this connection


@dataclass
class CountingServer:
    """HTTP/1.1 with keep-alive; ``route(path, headers)`` answers each request."""

    route: Callable[[str, dict[str, str]], Answer]
    connections: int = 0
    requests: int = 0
    port: int = 0

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                lines = head.decode("latin-1").split("\r\n")
                path = lines[0].split(" ")[1]
                headers = {k.strip().lower(): v.strip()
                           for k, _, v in (ln.partition(":") for ln in lines[1:] if ln)}
                self.requests += 1
                answer = self.route(path, headers)
                reason = {200: "OK", 302: "Found", 304: "Not Modified", 404: "Not Found",
                          500: "Internal Server Error"}[answer.status]
                out = [f"HTTP/1.1 {answer.status} {reason}"]
                out += [f"{k}: {v}" for k, v in answer.headers.items()]
                if answer.status != 304 and "Content-Length" not in answer.headers:
                    out.append(f"Content-Length: {len(answer.body)}")
                writer.write(("\r\n".join(out) + "\r\n\r\n").encode("latin-1") + answer.body)
                await writer.drain()
                if answer.hang:
                    await reader.read()  # until the client gives up on this connection
                    return
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


FEED = fixture_bytes("rss20.xml")


def feed_route(path: str, headers: dict[str, str]) -> Answer:
    """``/feed``: the feed, 304 when the validator matches; ``/old``: a redirect to it;
    ``/gone``: a 404 with a page; ``/broken``: a 500 with a page."""
    if path == "/old":
        return Answer(302, {"Location": "/feed"}, b"<p>moved</p>")
    if path == "/old-huge":  # declares a large body and never sends it
        return Answer(302, {"Location": "/feed", "Content-Length": "50000000"}, b"",
                      hang=True)
    if path == "/gone":
        return Answer(404, {"Content-Type": "text/html"}, b"<h1>Not Found</h1>" * 20)
    if path == "/broken":
        return Answer(500, {"Content-Type": "text/html"}, b"<h1>Oops</h1>" * 20)
    if headers.get("if-none-match") == ETAG:
        return Answer(304, {"ETag": ETAG})
    return Answer(200, {"ETag": ETAG, "Content-Type": "application/rss+xml"}, FEED)


@pytest.fixture
async def server() -> AsyncIterator[CountingServer]:
    srv = CountingServer(feed_route)
    running = await asyncio.start_server(srv.handle, "127.0.0.1", 0)
    srv.port = running.sockets[0].getsockname()[1]
    try:
        yield srv
    finally:
        running.close()
        await running.wait_closed()


@pytest.fixture
async def fetcher() -> AsyncIterator[HttpFetcher]:
    client = make_async_client(timeout=5.0)
    try:
        yield HttpFetcher(client, FetchLimits(per_host=PER_HOST))
    finally:
        await client.aclose()


def rss(server: CountingServer, fetcher: HttpFetcher, pool: FeedParserPool,
        path: str = "/feed") -> RssSource:
    config = make_config(SourceKind.RSS, url=f"{server.base}{path}",
                         allow_private_network=True)
    return RssSource(config, fetcher, pool)


async def test_idle_conditional_polls_reuse_connections(
    server: CountingServer, fetcher: HttpFetcher, pool: FeedParserPool
) -> None:
    src = rss(server, fetcher, pool)
    first = await src.poll(state_for(src.key), NOW)
    assert first.updates and first.etag == ETAG
    for _ in range(N_POLLS):
        result = await src.poll(state_for(src.key, etag=first.etag), NOW)
        assert result.not_modified and not result.updates
    assert server.requests == N_POLLS + 1
    assert server.connections <= PER_HOST, (
        f"{server.connections} connections for {server.requests} requests")


async def test_concurrent_idle_polls_stay_within_the_per_host_limit(
    server: CountingServer, fetcher: HttpFetcher, pool: FeedParserPool
) -> None:
    src = rss(server, fetcher, pool)
    state = state_for(src.key, etag=ETAG)
    for _ in range(N_POLLS // 5):
        results = await asyncio.gather(*(src.poll(state, NOW) for _ in range(5)))
        assert all(r.not_modified for r in results)
    assert server.requests == N_POLLS
    assert server.connections <= PER_HOST, (
        f"{server.connections} connections for {server.requests} requests")


async def test_redirects_reuse_connections(
    server: CountingServer, fetcher: HttpFetcher, pool: FeedParserPool
) -> None:
    src = rss(server, fetcher, pool, "/old")
    for _ in range(N_POLLS // 2):
        result = await src.poll(state_for(src.key, etag=ETAG), NOW)
        assert result.not_modified
    assert server.requests == N_POLLS  # each poll: the redirect, then the 304
    assert server.connections <= PER_HOST, (
        f"{server.connections} connections for {server.requests} requests")


@pytest.mark.parametrize(("path", "error_class"), [("/gone", "http_404"),
                                                   ("/broken", "http_500")])
async def test_error_answers_reuse_connections(
    server: CountingServer, fetcher: HttpFetcher, pool: FeedParserPool, path: str,
    error_class: str,
) -> None:
    src = rss(server, fetcher, pool, path)
    for _ in range(N_POLLS // 2):
        with pytest.raises(SourceError) as info:
            await src.poll(state_for(src.key), NOW)
        assert info.value.error_class == error_class
    assert server.connections <= PER_HOST, (
        f"{server.connections} connections for {server.requests} requests")


async def test_a_redirect_with_a_large_body_is_followed_without_reading_it(
    server: CountingServer, fetcher: HttpFetcher, pool: FeedParserPool
) -> None:
    """Only a body known to be short is drained: a redirect declaring 50 MB (and sending
    nothing) costs its connection, not a wait for a body nobody needs."""
    src = rss(server, fetcher, pool, "/old-huge")
    started = asyncio.get_running_loop().time()
    result = await src.poll(state_for(src.key, etag=ETAG), NOW)
    assert result.not_modified
    assert asyncio.get_running_loop().time() - started < 2.0  # the client's timeout is 5 s


class _LaterClock:
    """httpcore's view of ``time`` with ``monotonic`` moved on by ``offset`` seconds."""

    def __init__(self) -> None:
        import time

        self._real = time.monotonic
        self.offset = 0.0

    def monotonic(self) -> float:
        return self._real() + self.offset


async def test_connections_outlive_the_idle_time_between_two_cycles(
    server: CountingServer, fetcher: HttpFetcher, pool: FeedParserPool,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A source polled every 30 s (60 s outside a crisis) finds its connection still open:
    httpx's default keep-alive expiry (5 s) would close it between two cycles."""
    import httpcore._async.http11 as http11

    later = _LaterClock()
    monkeypatch.setattr(http11, "time", later)
    src = rss(server, fetcher, pool)
    state = state_for(src.key, etag=ETAG)
    for _ in range(5):
        assert (await src.poll(state, NOW)).not_modified
        later.offset += 61.0  # the idle time between two normal-mode cycles
    assert server.requests == 5
    assert server.connections == 1
