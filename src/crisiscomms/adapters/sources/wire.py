"""The fetcher's HTTP/1.1 GETs on pinned connections, parsed by ``httptools`` (llhttp).

Why not httpcore: ``make bench`` measured the real watch loop over 1,000 sources at 0.15
CPU-s per cycle with the HTTP stubbed out and 0.66-0.86 with httpcore + h11 under it (about
0.6 ms per idle conditional GET in the loop, twice the single-connection micro-benchmark):
h11 validates and re-normalises every header in Python, and httpcore's pool takes anyio locks,
cancel-shields and a trace context around each request. A poll is always the same thing (a
GET, a handful of our own headers, a response head and maybe a body), so it is written here
once, on the same pinned asyncio streams (``pinning.PinnedBackend``: the private-address check
and the no-second-resolution rule are unchanged), and the response is parsed by llhttp, the
parser Node.js uses, through ``httptools`` (MagicStack, what uvicorn parses with): the
parsing, chunked decoding and keep-alive rules are that library's, not ours.

What this module owns: writing the request (header values with CR, LF or NUL are refused:
an ETag comes from the server and is sent back), keeping idle connections per origin and
policy (a connection opened for a source allowed private addresses is never reused for one
that is not), reusing one only if it is neither expired nor readable (data or a close while
idle means it cannot be), sending a GET once more on a new connection when a reused one was
closed by the server before any byte of the answer (the keep-alive race; a GET is
idempotent), and handing the body's raw chunks to the fetcher, which decodes and caps them.
A response whose body is not read to its end closes its connection. Errors are httpcore's
exception types, so ``http.translate_httpx_errors`` maps them to ``SourceError`` as before.
"""

from __future__ import annotations

import ssl
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Mapping, Sequence
from typing import TYPE_CHECKING

import httpcore
import httptools

if TYPE_CHECKING:
    from crisiscomms.adapters.sources.pinning import PinnedBackend

Key = tuple[bool, bytes, bytes, int]  # (allow_private, scheme, host, port)

MAX_ORIGINS = 128
"""Origins whose idle connections are kept; past that the least recently used one's are
closed, so idle sockets stay bounded (about this times ``FetchLimits.per_host``)."""
MAX_IDLE_PER_ORIGIN = 8
_READ = 64 * 1024
_NO_BODY = (204, 304)


class _Stale(httpcore.RemoteProtocolError):
    """A reused connection closed before any byte of the answer."""


class _Conn:
    __slots__ = ("idle_since", "stream")

    def __init__(self, stream: httpcore.AsyncNetworkStream) -> None:
        self.stream = stream
        self.idle_since = 0.0


class _Message:
    """httptools' callbacks for one response."""

    __slots__ = ("body", "complete", "headers", "headers_done", "keep_alive", "parser")

    def __init__(self) -> None:
        self.parser = httptools.HttpResponseParser(self)
        self.headers: list[tuple[bytes, bytes]] = []
        self.headers_done = False
        self.keep_alive = False
        self.body: list[bytes] = []
        self.complete = False

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name, value))

    def on_headers_complete(self) -> None:
        self.headers_done = True
        # Asked here: once the message is complete llhttp no longer says keep-alive.
        self.keep_alive = self.parser.should_keep_alive()

    def on_body(self, body: bytes) -> None:
        self.body.append(body)

    def on_message_complete(self) -> None:
        self.complete = True


def _feed(parser: httptools.HttpResponseParser, data: bytes) -> None:
    try:
        parser.feed_data(data)
    except httptools.HttpParserUpgrade as exc:
        raise httpcore.RemoteProtocolError("unexpected protocol upgrade") from exc
    except httptools.HttpParserError as exc:
        raise httpcore.RemoteProtocolError(f"malformed HTTP response: {exc}") from exc


class WireResponse:
    """A response head; ``aiter_stream()`` yields the raw body; ``aclose()`` gives the
    connection back (when the body was read to its end and the server keeps it alive) or
    closes it."""

    __slots__ = ("_conn", "_done", "_key", "_message", "_pool", "_read_timeout",
                 "_until_close", "headers", "status")

    def __init__(self, pool: WirePool, key: Key, conn: _Conn, message: _Message,
                 read_timeout: float | None) -> None:
        self._pool, self._key, self._conn = pool, key, conn
        self._message = message
        self._read_timeout = read_timeout
        self._done = False
        self.status: int = message.parser.get_status_code()
        self.headers = message.headers
        names = {k.lower() for k, _ in message.headers}
        # Neither a length nor chunked: the body runs to the connection's close.
        self._until_close = (self.status not in _NO_BODY and self.status >= 200
                             and b"content-length" not in names
                             and b"transfer-encoding" not in names)

    async def aiter_stream(self) -> AsyncIterator[bytes]:
        message = self._message
        while True:
            if message.body:
                chunks, message.body = message.body, []
                for chunk in chunks:
                    yield chunk
            if message.complete:
                return
            data = await self._conn.stream.read(_READ, self._read_timeout)
            if not data:
                if self._until_close:
                    message.complete = True
                    continue
                raise httpcore.RemoteProtocolError(
                    "the server closed the connection before the end of the body")
            _feed(message.parser, data)

    async def aclose(self) -> None:
        if self._done:
            return
        self._done = True
        if self._message.complete and self._message.keep_alive:
            self._pool._release(self._key, self._conn)
        else:
            await self._conn.stream.aclose()


class WirePool:
    """Idle connections per origin and policy, and the GET itself."""

    def __init__(self, backend: PinnedBackend, ssl_context: ssl.SSLContext, *,
                 keepalive_expiry: float | None, max_origins: int = MAX_ORIGINS,
                 max_idle_per_origin: int = MAX_IDLE_PER_ORIGIN) -> None:
        self.backend = backend
        self._ssl = ssl_context
        self._expiry = keepalive_expiry if keepalive_expiry is not None else 5.0
        self._max_origins = max(1, max_origins)
        self._max_idle = max(1, max_idle_per_origin)
        self._idle: OrderedDict[Key, list[_Conn]] = OrderedDict()
        self._swept = time.monotonic()

    @property
    def origins(self) -> int:
        """How many origins have idle connections kept."""
        return len(self._idle)

    def idle(self, key: Key) -> int:
        """Idle connections kept for ``key``."""
        return len(self._idle.get(key, ()))

    async def get(self, key: Key, target: bytes, headers: Sequence[tuple[bytes, bytes]],
                  timeouts: Mapping[str, float | None]) -> WireResponse:
        """Send ``GET target`` to ``key``'s origin and return the response head."""
        request = _request(target, headers)
        for attempt in (0, 1):
            # Asked again: on a new connection (the others kept may be just as dead).
            conn, reused = await self._acquire(key, timeouts.get("connect"), fresh=bool(attempt))
            try:
                await conn.stream.write(request, timeouts.get("write"))
                return await self._head(key, conn, reused, timeouts.get("read"))
            except _Stale:
                await conn.stream.aclose()
                if attempt:
                    raise
            except BaseException:
                await conn.stream.aclose()
                raise
        raise AssertionError("unreachable")  # pragma: no cover

    async def aclose(self) -> None:
        idle = [c for conns in self._idle.values() for c in conns]
        self._idle.clear()
        for conn in idle:
            await conn.stream.aclose()

    async def _acquire(self, key: Key, connect_timeout: float | None, *,
                       fresh: bool = False) -> tuple[_Conn, bool]:
        now = time.monotonic()
        if now - self._swept > self._expiry / 4:
            self._sweep(now)
        conns = None if fresh else self._idle.get(key)
        while conns:
            conn = conns.pop()
            if (now - conn.idle_since > self._expiry
                    or conn.stream.get_extra_info("is_readable")):
                self._discard(conn)
                continue
            return conn, True
        _, scheme, host, port = key
        name = host.decode("ascii")
        stream = await self.backend.connect_tcp(name, port, timeout=connect_timeout)
        if scheme == b"https":
            stream = await stream.start_tls(self._ssl, server_hostname=name,
                                            timeout=connect_timeout)
        return _Conn(stream), False

    async def _head(self, key: Key, conn: _Conn, reused: bool,
                    read_timeout: float | None) -> WireResponse:
        message = _Message()
        got = False
        while not message.headers_done:
            data = await conn.stream.read(_READ, read_timeout)
            if not data:
                if reused and not got:
                    raise _Stale("the server closed an idle connection")
                raise httpcore.RemoteProtocolError(
                    "the server closed the connection without a complete response head")
            got = True
            _feed(message.parser, data)
            if message.headers_done and message.parser.get_status_code() < 200:
                message = _Message()  # an interim 1xx answer: the real one follows
        return WireResponse(self, key, conn, message, read_timeout)

    def _release(self, key: Key, conn: _Conn) -> None:
        conn.idle_since = time.monotonic()
        conns = self._idle.get(key)
        if conns is None:
            conns = self._idle[key] = []
        else:
            self._idle.move_to_end(key)
        if len(conns) >= self._max_idle:
            self._discard(conn)
            return
        conns.append(conn)
        while len(self._idle) > self._max_origins:
            _, old = self._idle.popitem(last=False)
            for c in old:
                self._discard(c)

    @staticmethod
    def _discard(conn: _Conn) -> None:
        """Close an idle connection without waiting (nothing is in flight on it)."""
        close = getattr(conn.stream, "close_now", None)
        if close is not None:
            close()

    def _sweep(self, now: float) -> None:
        """Let the connections idle past their expiry go (the polls' path never waits on it)."""
        self._swept = now
        for key in list(self._idle):
            conns = self._idle[key]
            keep = [c for c in conns if now - c.idle_since <= self._expiry]
            for c in conns:
                if c not in keep:
                    self._discard(c)
            if keep:
                self._idle[key] = keep
            else:
                del self._idle[key]


def _request(target: bytes, headers: Sequence[tuple[bytes, bytes]]) -> bytes:
    """The request's bytes; a CR, LF or NUL inside the target or a header (which would split
    the request or smuggle a header in) is refused."""
    parts = [b"GET ", target, b" HTTP/1.1\r\n"]
    for name, value in headers:
        parts += (name, b": ", value, b"\r\n")
    parts.append(b"\r\n")
    out = b"".join(parts)
    lines = len(headers) + 2  # the request line, each header, the empty line
    if (out.count(b"\r\n") != lines or out.count(b"\n") != lines or out.count(b"\r") != lines
            or b"\0" in out or target.count(b" ")):
        raise httpcore.LocalProtocolError("illegal character in the request target or a header")
    return out
