"""The fetcher's own HTTP/1.1 path (``wire.WirePool``, llhttp through httptools) against real
loopback servers that answer with scripted bytes, through the real fetch path
(``HttpFetcher`` on ``make_async_client``).

What it must keep from httpcore (which it replaced on the polling path because httpcore + h11
cost about 0.6 ms of CPU per idle conditional GET in the watch loop): connections reused per
origin, never across policies, bounded; a body not read to its end, a ``Connection: close``,
a truncated body, a malformed head all close the connection; errors become ``SourceError``s.
What it adds: a GET sent once more on a new connection when a reused one was closed by the
server before any byte of the answer (the keep-alive race).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field

import httpcore
import pytest

from crisiscomms.adapters.sources.http import FetchLimits, HttpFetcher, make_async_client
from crisiscomms.adapters.sources.pinning import PinnedBackend
from crisiscomms.adapters.sources.wire import _request
from crisiscomms.domain.errors import FeedTooLargeError, TransientSourceError

pytestmark = pytest.mark.anyio

OK = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 5\r\n\r\nhello"
NOT_MODIFIED = b'HTTP/1.1 304 Not Modified\r\nETag: "v1"\r\n\r\n'
CLOSE = None  # close the connection without answering


@dataclass
class Scripted:
    """Answers the n-th request (over all connections) with ``answer(n, request_head)``."""

    answer: Callable[[int, bytes], bytes | None]
    connections: int = 0
    requests: int = 0
    heads: list[bytes] = field(default_factory=list)
    closed_by_client: int = 0
    port: int = 0
    on_conn: list[tuple[int, int]] = field(default_factory=list)  # (connection, its n-th)

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        conn, nth = self.connections, 0
        try:
            while True:
                try:
                    head = await reader.readuntil(b"\r\n\r\n")
                except asyncio.IncompleteReadError:
                    self.closed_by_client += 1
                    return
                self.heads.append(head)
                nth += 1
                self.on_conn.append((conn, nth))
                out = self.answer(self.requests, head)
                self.requests += 1
                if out is None:
                    return
                writer.write(out)
                await writer.drain()
        except ConnectionError:
            pass
        finally:
            writer.close()


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


async def serve(answer: Callable[[int, bytes], bytes | None],
                host: str = "127.0.0.1") -> tuple[Scripted, asyncio.Server]:
    srv = Scripted(answer)
    running = await asyncio.start_server(srv.handle, host, 0)
    srv.port = running.sockets[0].getsockname()[1]
    return srv, running


@pytest.fixture
async def fetcher() -> AsyncIterator[HttpFetcher]:
    client = make_async_client(timeout=3.0)
    try:
        yield HttpFetcher(client, FetchLimits(per_host=2))
    finally:
        await client.aclose()


async def get(fetcher: HttpFetcher, srv: Scripted, host: str = "127.0.0.1",
              path: str = "/feed", **kw: object) -> int:
    got = await fetcher.fetch(f"http://{host}:{srv.port}{path}", source_id="s",
                              allow_private=True, **kw)  # type: ignore[arg-type]
    return got.status


async def test_connections_are_kept_per_origin(fetcher: HttpFetcher) -> None:
    hosts = ("127.0.0.1", "127.0.0.2", "127.0.0.3")
    servers = [await serve(lambda n, h: NOT_MODIFIED, host) for host in hosts]
    try:
        for _ in range(20):
            for host, (srv, _) in zip(hosts, servers, strict=True):
                assert await get(fetcher, srv, host, etag='"v1"') == 304
        assert [s.connections for s, _ in servers] == [1, 1, 1]
        assert [s.requests for s, _ in servers] == [20, 20, 20]
        wire = fetcher.client.lean.wire  # type: ignore[attr-defined]
        assert wire.origins == 3
    finally:
        for _, running in servers:
            running.close()


class LoopbackBackend(PinnedBackend):
    """Connects anywhere it is told (the pool's key, not the backend, is under test)."""

    async def addresses(self, host: str, port: int) -> list[str]:
        return [host]


async def test_a_policy_is_part_of_the_key(fetcher: HttpFetcher) -> None:
    srv, running = await serve(lambda n, h: OK)
    wire = fetcher.client.lean.wire  # type: ignore[attr-defined]
    wire.backend = LoopbackBackend()
    timeouts = {"connect": 2.0, "read": 2.0, "write": 2.0}
    head = [(b"Host", f"127.0.0.1:{srv.port}".encode())]
    try:
        for allow_private in (True, False, True, False):
            key = (allow_private, b"http", b"127.0.0.1", srv.port)
            resp = await wire.get(key, b"/", head, timeouts)
            assert b"".join([c async for c in resp.aiter_stream()]) == b"hello"
            await resp.aclose()
        assert srv.connections == 2  # one per policy, each reused once
        assert wire.idle((True, b"http", b"127.0.0.1", srv.port)) == 1
        assert wire.idle((False, b"http", b"127.0.0.1", srv.port)) == 1
    finally:
        running.close()


async def test_past_the_cap_the_least_recently_used_origin_is_let_go() -> None:
    client = make_async_client(timeout=3.0, max_origins=2)
    fetcher = HttpFetcher(client, FetchLimits(per_host=2))
    hosts = ("127.0.0.1", "127.0.0.2", "127.0.0.3")
    servers = [await serve(lambda n, h: NOT_MODIFIED, host) for host in hosts]
    (a, _), (b, _), (c, _) = servers
    try:
        await get(fetcher, a, hosts[0])
        await get(fetcher, b, hosts[1])
        await get(fetcher, a, hosts[0])  # a is now the most recently used
        await get(fetcher, c, hosts[2])  # b's idle connection goes
        assert client.lean.wire.origins == 2  # type: ignore[attr-defined]
        await asyncio.sleep(0.05)
        assert b.closed_by_client == 1
        await get(fetcher, a, hosts[0])
        await get(fetcher, b, hosts[1])  # a new connection
        assert [a.connections, b.connections, c.connections] == [1, 2, 1]
    finally:
        await client.aclose()
        for _, running in servers:
            running.close()


async def test_a_reused_connection_closed_before_the_answer_is_asked_again_once(
        fetcher: HttpFetcher) -> None:
    # The second request arrives on the kept connection and the server closes it unanswered
    # (it had timed the connection out just then): the GET goes again on a new one.
    srv, running = await serve(lambda n, h: CLOSE if n == 1 else NOT_MODIFIED)
    try:
        assert await get(fetcher, srv) == 304
        assert await get(fetcher, srv) == 304
        assert (srv.connections, srv.requests) == (2, 3)
    finally:
        running.close()


async def test_a_new_connection_closed_before_the_answer_is_an_error_not_a_loop(
        fetcher: HttpFetcher) -> None:
    srv, running = await serve(lambda n, h: CLOSE)
    try:
        with pytest.raises(TransientSourceError) as info:
            await get(fetcher, srv)
        assert info.value.error_class == "network"
        assert srv.requests == 1
    finally:
        running.close()


@pytest.mark.parametrize(("answer", "body"), [
    (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
     b"5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n", b"hello world"),
    (b"HTTP/1.1 100 Continue\r\n\r\n" + OK, b"hello"),
])
async def test_bodies_the_parser_frames_are_read_whole_and_the_connection_kept(
        fetcher: HttpFetcher, answer: bytes, body: bytes) -> None:
    srv, running = await serve(lambda n, h: answer)
    try:
        for _ in range(3):
            got = await fetcher.fetch(f"http://127.0.0.1:{srv.port}/f", source_id="s",
                                      allow_private=True)
            assert (got.status, got.body) == (200, body)
        assert srv.connections == 1
    finally:
        running.close()


async def test_a_body_that_runs_to_the_close_is_read_and_the_connection_not_kept(
        fetcher: HttpFetcher) -> None:
    srv, running = await serve(lambda n, h: None)

    async def until_close(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        srv.connections += 1
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\nall of it")
        await writer.drain()
        writer.close()

    running.close()
    running = await asyncio.start_server(until_close, "127.0.0.1", srv.port)
    try:
        for _ in range(2):
            got = await fetcher.fetch(f"http://127.0.0.1:{srv.port}/f", source_id="s",
                                      allow_private=True)
            assert got.body == b"all of it"
        assert srv.connections == 2
    finally:
        running.close()


@pytest.mark.parametrize("answer", [
    b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nonly this",  # truncated
    b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nBad Header\r\n\r\nhello",  # malformed head
    b"NOT HTTP AT ALL\r\n\r\n",
])
async def test_broken_answers_are_network_errors(fetcher: HttpFetcher, answer: bytes) -> None:
    srv, running = await serve(lambda n, h: answer)

    async def then_close(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(answer)
        await writer.drain()
        writer.close()

    running.close()
    running = await asyncio.start_server(then_close, "127.0.0.1", srv.port)
    try:
        with pytest.raises(TransientSourceError) as info:
            await get(fetcher, srv)
        assert info.value.error_class == "network"
    finally:
        running.close()


async def test_connection_close_and_unread_bodies_close_the_connection(
        fetcher: HttpFetcher) -> None:
    big = b"x" * 300_000  # more than one read: the head comes before the body has
    answers = [
        b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 5\r\n\r\nhello",
        b"HTTP/1.1 200 OK\r\nContent-Length: 300000\r\n\r\n" + big,  # over the cap below
        OK,
        OK,
    ]
    srv, running = await serve(lambda n, h: answers[n])
    try:
        assert await get(fetcher, srv) == 200  # the server says close: not kept
        with pytest.raises(FeedTooLargeError):
            await get(fetcher, srv, max_bytes=1000)  # the body is not read: not kept
        assert await get(fetcher, srv) == 200
        assert await get(fetcher, srv) == 200  # read to its end: kept
        assert (srv.connections, srv.requests) == (3, 4)
    finally:
        running.close()


async def test_an_idle_connection_past_its_expiry_is_not_reused() -> None:
    client = make_async_client(timeout=3.0, keepalive_expiry=0.05)
    fetcher = HttpFetcher(client, FetchLimits(per_host=2))
    srv, running = await serve(lambda n, h: NOT_MODIFIED)
    try:
        await get(fetcher, srv)
        await asyncio.sleep(0.15)
        await get(fetcher, srv)
        assert srv.connections == 2
    finally:
        await client.aclose()
        running.close()


async def test_our_request_carries_our_headers_once(fetcher: HttpFetcher) -> None:
    srv, running = await serve(lambda n, h: NOT_MODIFIED)
    try:
        await get(fetcher, srv, path="/feed?x=1", etag='"v1"',
                  last_modified="Tue, 01 Dec 2026 10:00:00 GMT")
        head = srv.heads[0].decode("latin-1").split("\r\n")
        assert head[0] == "GET /feed?x=1 HTTP/1.1"
        names = [line.split(":", 1)[0].lower() for line in head[1:] if line]
        assert names.count("host") == 1 and names.count("user-agent") == 1
        assert 'If-None-Match: "v1"' in head
        assert "If-Modified-Since: Tue, 01 Dec 2026 10:00:00 GMT" in head
    finally:
        running.close()


def test_a_header_value_that_would_split_the_request_is_refused() -> None:
    with pytest.raises(httpcore.LocalProtocolError):
        _request(b"/feed", [(b"If-None-Match", b'"v1"\r\nX-Injected: 1')])
    with pytest.raises(httpcore.LocalProtocolError):
        _request(b"/feed HTTP/1.1\r\nX: y", [])


async def test_the_second_try_goes_on_a_new_connection_even_with_others_kept(
        fetcher: HttpFetcher) -> None:
    # Two connections kept; the server then drops each one unanswered when it is used again
    # (a restart): the GET is asked once more on a new connection, not on the other dead one.
    srv: Scripted

    def answer(n: int, head: bytes) -> bytes | None:
        conn, nth = srv.on_conn[-1]
        return CLOSE if conn in (1, 2) and nth > 1 else NOT_MODIFIED

    srv, running = await serve(answer)
    try:
        first = asyncio.ensure_future(get(fetcher, srv))
        second = asyncio.ensure_future(get(fetcher, srv))
        assert await asyncio.gather(first, second) == [304, 304]  # two connections kept
        assert srv.connections == 2
        assert await get(fetcher, srv) == 304
        assert srv.connections == 3 and srv.on_conn[-1] == (3, 1)
    finally:
        running.close()
