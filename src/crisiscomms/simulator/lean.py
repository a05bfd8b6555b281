"""A lean HTTP/1.1 server for the simulator's app on the caller's own event loop
(``LoopSimulator``): what a drill's feed requests need and no more.

uvicorn's h11 protocol validates every header and event through a full state machine; served
to one trusted client on loopback (the drill's own watcher), that machinery cost more than the
feed handlers themselves, about 12,000 times a drill. This protocol reads a request line,
headers and a ``Content-Length`` body, hands the ASGI app a standard scope (with the transport,
so faults can still drop a connection), and writes the answer with its length, or chunked when
the app streams without one. Keep-alive and requests one after another on a connection are
kept. Not supported, and refused with a status and a closed connection: chunked request
bodies (411), WebSocket upgrades (501), malformed requests (400). The threaded uvicorn server
(``RunningSimulator``) still serves everything else.
"""

from __future__ import annotations

import asyncio
import contextlib
from http import HTTPStatus
from typing import Any
from urllib.parse import unquote

import structlog

from crisiscomms.simulator.app import TRANSPORT_EXTENSION

log = structlog.get_logger(__name__)

_MAX_HEAD = 64 * 1024  # request line and headers
_MAX_BODY = 16 * 1024 * 1024


def _reason(status: int) -> bytes:
    try:
        return HTTPStatus(status).phrase.encode()
    except ValueError:
        return b""


class LeanHTTP(asyncio.Protocol):
    """One connection: requests handled one at a time, in order."""

    def __init__(self, app: Any, server: tuple[str, int], open_: set[LeanHTTP]) -> None:
        self.app = app
        self.server = server
        self.open = open_
        self.transport: asyncio.Transport | None = None
        self.buf = bytearray()
        self.busy: asyncio.Task[None] | None = None
        self.gone = asyncio.Event()
        self.closing = False

    # -- asyncio.Protocol ---------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        self.open.add(self)

    def data_received(self, data: bytes) -> None:
        self.buf += data
        if self.busy is None:
            self._next()

    def connection_lost(self, exc: Exception | None) -> None:
        self.gone.set()
        self.closing = True
        self.open.discard(self)

    # -- requests -----------------------------------------------------------------------
    def _refuse(self, status: int) -> None:
        self._write_head(status, [(b"content-length", b"0")], keep_alive=False)
        self._close()

    def _close(self) -> None:
        self.closing = True
        if self.transport is not None and not self.transport.is_closing():
            self.transport.close()

    def _next(self) -> None:
        """Start the next complete request in the buffer, if there is one."""
        if self.closing:
            return
        end = self.buf.find(b"\r\n\r\n")
        if end < 0:
            if len(self.buf) > _MAX_HEAD:
                self._refuse(431)
            return
        try:
            lines = bytes(self.buf[:end]).decode("latin-1").split("\r\n")
            method, target, version = lines[0].split(" ")
            if not version.startswith("HTTP/1."):
                raise ValueError(version)
            headers: list[tuple[bytes, bytes]] = []
            for line in lines[1:]:
                name, _, value = line.partition(":")
                if not _ or not name or name != name.strip():
                    raise ValueError(line)
                headers.append((name.lower().encode("latin-1"), value.strip().encode("latin-1")))
        except ValueError:
            self._refuse(400)
            return
        fields = dict(headers)
        if b"chunked" in fields.get(b"transfer-encoding", b"").lower():
            self._refuse(411)
            return
        if b"websocket" in fields.get(b"upgrade", b"").lower():
            self._refuse(501)
            return
        try:
            length = int(fields.get(b"content-length", b"0") or 0)
        except ValueError:
            self._refuse(400)
            return
        if length < 0 or length > _MAX_BODY:
            self._refuse(413)
            return
        start = end + 4
        if len(self.buf) < start + length:
            return  # the body is still on its way
        body = bytes(self.buf[start:start + length])
        del self.buf[:start + length]
        connection = fields.get(b"connection", b"").lower()
        keep_alive = b"close" not in connection and (version == "HTTP/1.1"
                                                     or b"keep-alive" in connection)
        self.busy = asyncio.ensure_future(
            self._handle(method, target, version[5:], headers, body, keep_alive))

    async def _handle(self, method: str, target: str, http_version: str,
                      headers: list[tuple[bytes, bytes]], body: bytes,
                      keep_alive: bool) -> None:
        path, _, query = target.partition("?")
        assert self.transport is not None
        transport = self.transport
        scope: dict[str, Any] = {
            "type": "http", "asgi": {"version": "3.0", "spec_version": "2.3"},
            "http_version": http_version, "method": method, "scheme": "http",
            "path": unquote(path), "raw_path": path.encode("latin-1"),
            "query_string": query.encode("latin-1"), "root_path": "", "headers": headers,
            "client": transport.get_extra_info("peername"), "server": self.server,
            "extensions": {TRANSPORT_EXTENSION: transport}, "state": {},
        }
        received = False
        started: dict[str, Any] = {}
        chunked = False
        finished = False

        async def receive() -> dict[str, Any]:
            nonlocal received
            if not received:
                received = True
                return {"type": "http.request", "body": body, "more_body": False}
            await self.gone.wait()
            return {"type": "http.disconnect"}

        async def send(message: dict[str, Any]) -> None:
            nonlocal chunked, finished
            if self.closing or finished:
                return
            if message["type"] == "http.response.start":
                started.update(message)
                return
            if message["type"] != "http.response.body" or not started:
                return
            chunk = bytes(message.get("body", b""))
            more = bool(message.get("more_body", False))
            out = list(started.get("headers", []))
            if "length" not in started:
                started["length"] = any(k.lower() == b"content-length" for k, _ in out)
                if not started["length"] and more:
                    chunked = True
                    out.append((b"transfer-encoding", b"chunked"))
                elif not started["length"]:
                    out.append((b"content-length", str(len(chunk)).encode()))
                self._write_head(int(started["status"]), out, keep_alive)
            if method == "HEAD":
                pass
            elif chunked:
                if chunk:
                    transport.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
                if not more:
                    transport.write(b"0\r\n\r\n")
            elif chunk:
                transport.write(chunk)
            if not more:
                finished = True

        try:
            await self.app(scope, receive, send)
        except Exception as exc:
            log.warning("simulator.lean_app_failed", path=path, error=str(exc))
            if not started and not self.closing:
                self._refuse(500)
            self._close()
            return
        finally:
            self.busy = None
        if not finished:  # the app ended without a complete answer: nothing sane to keep
            if not started and not self.closing:
                self._refuse(500)
            self._close()
            return
        if not keep_alive:
            self._close()
            return
        self._next()

    def _write_head(self, status: int, headers: list[tuple[bytes, bytes]],
                    keep_alive: bool) -> None:
        if self.transport is None or self.transport.is_closing():
            return
        head = [b"HTTP/1.1 %d %s\r\n" % (status, _reason(status))]
        head += [b"%s: %s\r\n" % (k, v) for k, v in headers]
        if not keep_alive:
            head.append(b"connection: close\r\n")
        head.append(b"\r\n")
        self.transport.write(b"".join(head))


class LeanServer:
    """``app`` served from the running loop on a listening socket; ``stop`` closes it and
    every connection still open (a request in progress is abandoned)."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self.open: set[LeanHTTP] = set()
        self._server: asyncio.Server | None = None

    async def start(self, sock: Any) -> None:
        loop = asyncio.get_running_loop()
        host, port = sock.getsockname()[:2]
        self._server = await loop.create_server(
            lambda: LeanHTTP(self.app, (host, port), self.open), sock=sock)

    async def stop(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            server.close()
        for proto in list(self.open):
            proto.gone.set()
            if proto.busy is not None:
                proto.busy.cancel()
            proto._close()
        await asyncio.sleep(0)  # let connection_lost run
        if server is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(server.wait_closed(), 1.0)
