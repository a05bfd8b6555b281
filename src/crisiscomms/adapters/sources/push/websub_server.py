"""The WebSub callback server: a starlette app on ``uvicorn.Server.serve``, run as a task of
the current event loop (the watcher's), on a socket bound here (so a port in use is a plain
``OSError``, not uvicorn's ``SystemExit``). No signal handlers (the watcher owns them), no
access log, uvicorn's logging config left alone (the project's ``logs.configure`` owns it).

Every path ends in the subscription's token (``<callback_url>/<token>``); only the last segment
counts, so a reverse proxy may keep or strip a path prefix. ``GET`` is a hub's verification,
``POST`` a content distribution (body capped at ``MAX_BODY``: 413 above it).
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route

Verify = Callable[[str, dict[str, str]], tuple[int, str]]
Deliver = Callable[[str, str | None, bytes], int]
MAX_BODY = 1 << 20
_START_TIMEOUT = 10.0
_STOP_TIMEOUT = 3.0


class _Server(uvicorn.Server):
    """uvicorn inside someone else's event loop: never touches signals."""

    def install_signal_handlers(self) -> None:  # older uvicorn
        return

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:  # newer uvicorn
        yield


@dataclass
class RunningServer:
    server: _Server
    task: asyncio.Task[None]
    address: tuple[str, int]

    async def stop(self) -> None:
        """Stop serving (idempotent); cancel the task if it does not stop in time."""
        self.server.should_exit = True
        try:
            done, _ = await asyncio.wait({self.task}, timeout=_STOP_TIMEOUT)
        finally:
            if not self.task.done():
                self.task.cancel()
        if done and not self.task.cancelled():
            self.task.exception()  # retrieved: its own failure is not news on the way out


def bind(listen: str) -> socket.socket:
    """A listening TCP socket for ``host:port`` (``[::1]:8780`` for IPv6)."""
    host, _, port = listen.rpartition(":")
    host = host.strip("[]") or "127.0.0.1"
    family, kind, proto, _, address = socket.getaddrinfo(
        host, int(port), type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP)[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(128)
    except OSError:
        sock.close()
        raise
    return sock


def _token(path: str) -> str:
    return path.rstrip("/").rsplit("/", 1)[-1]


def callback_app(verify: Verify, deliver: Deliver) -> Starlette:
    """The callback endpoints (``verify``/``deliver`` are the connection's, called in-loop)."""

    async def endpoint(request: Request) -> Response:
        token = _token(request.url.path)
        if not token:
            return Response(status_code=404)
        if request.method == "GET":
            status, body = verify(token, dict(request.query_params))
            return PlainTextResponse(body, status)
        declared = request.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > MAX_BODY:
            return Response(status_code=413)
        chunks: list[bytes] = []
        size = 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > MAX_BODY:
                return Response(status_code=413)
            chunks.append(chunk)
        return Response(status_code=deliver(token, request.headers.get("x-hub-signature"),
                                            b"".join(chunks)))

    return Starlette(routes=[Route("/{path:path}", endpoint, methods=["GET", "POST"])])


async def start_server(listen: str, verify: Verify, deliver: Deliver) -> RunningServer:
    """Serve the callback app on ``listen`` (``host:port``) until ``stop()``."""
    sock = bind(listen)
    config = uvicorn.Config(callback_app(verify, deliver), log_config=None,
                            log_level="warning", access_log=False, lifespan="off", ws="none",
                            timeout_graceful_shutdown=1, server_header=False)
    server = _Server(config)
    task = asyncio.get_running_loop().create_task(server.serve(sockets=[sock]))
    address = sock.getsockname()[:2]
    task.add_done_callback(lambda _: sock.close())
    deadline = asyncio.get_running_loop().time() + _START_TIMEOUT
    while not server.started:
        if task.done():
            task.result()  # raises what stopped it
            raise RuntimeError("the callback server did not start")
        if asyncio.get_running_loop().time() > deadline:
            task.cancel()
            raise RuntimeError("the callback server did not start in time")
        await asyncio.sleep(0.01)
    return RunningServer(server, task, (str(address[0]), int(address[1])))
