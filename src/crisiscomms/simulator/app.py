"""The simulator's ASGI app: all platform routes plus fault injection and the request log."""

from __future__ import annotations

import asyncio
import json
import threading
from typing import Any

import structlog
from starlette.applications import Starlette
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from crisiscomms.simulator.routes_bluesky import bluesky_routes
from crisiscomms.simulator.routes_facebook import facebook_routes
from crisiscomms.simulator.routes_jetstream import jetstream_routes
from crisiscomms.simulator.routes_mastodon import mastodon_routes
from crisiscomms.simulator.routes_mastodon_stream import mastodon_stream_routes
from crisiscomms.simulator.routes_sources import source_routes
from crisiscomms.simulator.routes_websub import websub_routes
from crisiscomms.simulator.routes_x import x_routes
from crisiscomms.simulator.world import RequestRecord, World

log = structlog.get_logger(__name__)

# Set by server.py's protocol so a fault can drop the connection without any response.
TRANSPORT_EXTENSION = "crisiscomms.transport"
_HANG_STEP = 0.05


def platform_of(path: str) -> str:
    """Which simulated platform a path belongs to (``sources`` for official sources)."""
    head = path.strip("/").split("/", 1)[0]
    if head in ("x", "mastodon", "bluesky", "facebook"):
        return head
    return "sources"


class FaultsAndLog:
    """ASGI middleware: apply the world's faults, then log (time, method, path, status)."""

    def __init__(self, app: ASGIApp, holder: Starlette) -> None:
        self.app = app
        self.holder = holder  # read the world per request so it can be swapped

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        world: World = self.holder.state.world
        at, method, path = world.now(), scope["method"], scope["path"]
        platform = platform_of(path)
        state: dict[str, Any] = scope.setdefault("state", {})
        roll = world.roll_faults(method, path)
        if roll.slow_seconds > 0:
            await asyncio.sleep(roll.slow_seconds)
        if roll.slow_accept:
            # The whole request has arrived; the platform takes its time before it records the
            # post, and records it even if the client has gone meanwhile (as a real one does).
            receive = await _buffered(receive)
            await asyncio.sleep(world.faults.slow_accept_seconds)
        if roll.drop:
            world.log_request(RequestRecord(at, method, path, 0, platform, note="drop"))
            log.info("simulator.fault", fault="drop", path=path)
            await _drop(scope)
            return
        if roll.error:
            status = world.faults.status_5xx
            world.log_request(RequestRecord(at, method, path, status, platform, note="5xx"))
            await _send_error(send, status)
            return
        logged = False
        note_fault = ["accept_then_5xx"]  # cleared when the fault does not apply

        def record(status: int) -> None:
            # Log before the client can see the response, so tests that read the log right
            # after a request never race the server.
            nonlocal logged
            if logged:
                return
            logged = True
            hung = roll.hang and 200 <= status < 300
            note = f"accept_then_timeout:{status}" if hung else (
                f"accept_then_5xx:{status}" if roll.accept_5xx and note_fault[0] else (
                    "slow_accept" if roll.slow_accept else ""))
            quota_key, reset_at = str(state.get("quota_key", "")), state.get("reset_at")
            world.log_request(
                RequestRecord(
                    at,
                    method,
                    path,
                    0 if hung else status,
                    platform,
                    quota_key,
                    reset_at,
                    note,
                )
            )

        replaced = False  # accepted (2xx), then answered 5xx instead
        hang = [False]  # accepted (2xx), then the connection hangs and drops

        async def capture(message: Message) -> None:
            nonlocal replaced
            if message["type"] == "http.response.start":
                status = int(message["status"])
                # Only a post the platform accepted can be "accepted, then 5xx"; a refusal
                # (a 429, a 400) is answered as it is.
                replaced = roll.accept_5xx and 200 <= status < 300
                hang[0] = roll.hang and 200 <= status < 300
                if roll.accept_5xx and not replaced:
                    note_fault[0] = ""
                record(status)
            if replaced:
                return  # the real answer is replaced by a 5xx below
            if not hang[0]:
                await send(message)

        try:
            await self.app(scope, receive, capture)
        except Exception:
            record(500)  # Starlette's error middleware answers 500 outside this one
            raise
        if replaced:
            log.info("simulator.fault", fault="accept_then_5xx", path=path)
            await _send_error(send, world.faults.status_5xx)
            return
        if hang[0]:
            log.info("simulator.fault", fault="accept_then_timeout", path=path)
            for _ in range(int(world.faults.hang_seconds / _HANG_STEP)):
                if self.holder.state.stopping.is_set():
                    break
                await asyncio.sleep(_HANG_STEP)
            await _drop(scope)


async def _buffered(receive: Receive) -> Receive:
    """Read the request body now; replay it to the app later."""
    messages: list[Message] = []
    while True:
        message = await receive()
        messages.append(message)
        if message["type"] != "http.request" or not message.get("more_body"):
            break

    async def replay() -> Message:
        if messages:
            return messages.pop(0)
        return {"type": "http.disconnect"}

    return replay


async def _drop(scope: Scope) -> None:
    transport = scope.get("extensions", {}).get(TRANSPORT_EXTENSION)
    if transport is None:
        raise ConnectionAbortedError("simulated connection drop")
    transport.abort()
    # Let connection_lost run so the server knows not to send its own 500.
    for _ in range(3):
        await asyncio.sleep(0)


async def _send_error(send: Send, status: int) -> None:
    body = json.dumps(
        {
            "title": "Service Unavailable",
            "detail": "Simulated server error",
            "status": status,
            "type": "about:blank",
            "error": "Simulated server error",
        }
    ).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


def build_app(world: World) -> Starlette:
    """The Starlette app serving every simulated platform for ``world``."""
    app = Starlette(
        routes=[
            *source_routes(),
            *x_routes(),
            *mastodon_routes(),
            *bluesky_routes(),
            *facebook_routes(),
            *mastodon_stream_routes(),
            *jetstream_routes(),
            *websub_routes(),
        ]
    )
    app.state.world = world
    app.state.stopping = threading.Event()  # set on shutdown to release hanging requests
    app.add_middleware(FaultsAndLog, holder=app)
    return app
