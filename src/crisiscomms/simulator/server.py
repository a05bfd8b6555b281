"""Run the simulator on 127.0.0.1 in a background thread (uvicorn), or in the foreground.

Only the loopback address is allowed: the simulator accepts any token and must never be
reachable from another machine.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import socket
import threading
from collections.abc import Callable, Iterator
from types import TracebackType
from typing import Any
from urllib.parse import quote

import structlog
import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol

from crisiscomms.domain.errors import ConfigError
from crisiscomms.simulator.app import TRANSPORT_EXTENSION, build_app
from crisiscomms.simulator.world import World

log = structlog.get_logger(__name__)
LOOPBACK = "127.0.0.1"
_START_TIMEOUT = 10.0
_STOP_TIMEOUT = 5.0


class _TransportH11(H11Protocol):
    """h11 protocol that hands the transport to the app, so faults can drop connections."""

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        inner = self.app

        async def app(scope: Any, receive: Any, send: Any) -> None:
            scope.setdefault("extensions", {})[TRANSPORT_EXTENSION] = transport
            await inner(scope, receive, send)

        self.app = app


class _ThreadServer(uvicorn.Server):
    """uvicorn without signal handlers (it runs in a thread) that reports readiness."""

    def __init__(self, config: uvicorn.Config) -> None:
        super().__init__(config)
        self.ready = threading.Event()
        self.failure: BaseException | None = None

    def install_signal_handlers(self) -> None:  # older uvicorn
        return

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:  # newer uvicorn
        yield

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets=sockets)
        self.ready.set()


def check_loopback(host: str) -> str:
    """Return the loopback address for ``host`` or raise ``ConfigError`` for anything else."""
    if host == "localhost":
        return LOOPBACK
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        raise ConfigError(f"simulator host {host!r} refused: only {LOOPBACK} is allowed") from None
    if str(address) != LOOPBACK:
        raise ConfigError(f"simulator host {host!r} refused: only {LOOPBACK} is allowed")
    return LOOPBACK


class RunningSimulator:
    """A simulator serving ``world`` on ``base_url``; a context manager that stops it on exit."""

    def __init__(self, world: World, host: str = LOOPBACK, port: int = 0) -> None:
        host = check_loopback(host)
        self._app = build_app(world)
        # IPPROTO_TCP explicitly: asyncio only disables Nagle (TCP_NODELAY) on sockets whose
        # proto says TCP, and without it every response stalls ~40 ms on delayed ACKs.
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        try:
            self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            self._sock.bind((host, port))
            self._sock.listen(128)
        except OSError:
            self._sock.close()
            raise
        self.host = host
        self.port: int = self._sock.getsockname()[1]
        self.base_url = f"http://{host}:{self.port}"
        config = uvicorn.Config(
            self._app,
            log_level="warning",
            lifespan="off",
            access_log=False,
            http=_TransportH11,
            ws="websockets-sansio",  # the simulated Jetstream is a WebSocket endpoint
            timeout_graceful_shutdown=3,
        )
        self._server = _ThreadServer(config)
        self._thread = threading.Thread(
            target=self._run, name=f"simulator-{self.port}", daemon=True
        )
        self._stopped = False
        self._thread.start()
        if not self._server.ready.wait(_START_TIMEOUT) or self._server.failure is not None:
            self.stop()
            raise RuntimeError(f"simulator did not start on {self.base_url}") from (
                self._server.failure
            )
        log.info("simulator.started", base_url=self.base_url)

    def _run(self) -> None:
        try:
            asyncio.run(self._server.serve(sockets=[self._sock]))
        except BaseException as exc:  # SystemExit from uvicorn startup failures included
            self._server.failure = exc
        finally:
            self._server.ready.set()

    @property
    def world(self) -> World:
        """The world being served."""
        world: World = self._app.state.world
        return world

    def replace_world(self, world: World) -> None:
        """Serve a different world from now on (tests reuse one server across cases)."""
        self._app.state.world = world

    def url_for(self, kind: str, source_id: str = "") -> str:
        """Where a client should point for ``kind``.

        Source kinds (rss, atom, cap) give the feed URL; ``ea-floods`` gives the floods list
        filtered by county ``source_id`` (unfiltered when empty). Platform kinds give the
        base a client library needs: ``x`` replaces ``https://api.twitter.com``, ``mastodon``
        is the instance base (API under /api/v1), ``bluesky`` replaces ``https://bsky.social``
        (XRPC under /xrpc), ``facebook`` replaces ``https://graph.facebook.com``;
        ``jetstream`` is the WebSocket URL replacing Bluesky's public Jetstream.
        """
        if kind == "jetstream":
            return f"ws://{self.host}:{self.port}/jetstream/subscribe"
        sid = quote(source_id, safe="@.")
        if kind in ("rss", "atom", "cap"):
            return f"{self.base_url}/sources/{kind}/{sid}"
        if kind == "ea-floods":
            url = f"{self.base_url}/ea/flood-monitoring/id/floods"
            return f"{url}?county={quote(source_id)}" if source_id else url
        if kind in ("x", "mastodon", "facebook", "bluesky"):
            return f"{self.base_url}/{kind}"
        raise ValueError(f"unknown kind {kind!r}")

    def stop(self) -> None:
        """Stop serving (idempotent): release hanging requests, shut uvicorn down, join."""
        if self._stopped:
            return
        self._stopped = True
        self._app.state.stopping.set()
        self._server.should_exit = True
        self._thread.join(_STOP_TIMEOUT)
        if self._thread.is_alive():
            self._server.force_exit = True
            self._thread.join(_STOP_TIMEOUT)
        self._sock.close()
        log.info("simulator.stopped", base_url=self.base_url)

    def __enter__(self) -> RunningSimulator:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def serve(world: World, host: str = LOOPBACK, port: int = 0) -> RunningSimulator:
    """Start serving ``world`` on ``host:port`` (0 picks a free port) and wait until ready.

    Use as ``with serve(world) as sim: ...``; ``sim.base_url`` is e.g. http://127.0.0.1:54321.
    Raises ``ConfigError`` for a non-loopback host, ``OSError`` if the port is taken.
    """
    return RunningSimulator(world, host, port)


def run_forever(
    world: World,
    host: str = LOOPBACK,
    port: int = 0,
    on_ready: Callable[[RunningSimulator], None] | None = None,
) -> None:
    """Serve ``world`` until KeyboardInterrupt (for ``crisiscomms simulate``), then stop."""
    with serve(world, host, port) as sim, contextlib.suppress(KeyboardInterrupt):
        if on_ready is not None:
            on_ready(sim)
        threading.Event().wait()
