"""Simulated Bluesky Jetstream (``/jetstream/subscribe``) and the AppView's ``resolveHandle``.

The WebSocket endpoint speaks the protocol of bluesky-social/jetstream (its README):

* query ``wantedCollections`` (repeated; ``app.bsky.*`` prefixes allowed), ``wantedDids``
  (repeated, at most 10,000), ``cursor`` (unix microseconds: replay from there; absent or
  in the future: live tail), ``requireHello=true`` (nothing is sent until the client's first
  ``{"type": "options_update", "payload": {...}}``), ``maxMessageSizeBytes``;
* every simulated Bluesky post (``world.add_item(handle, "bluesky", ...)``) becoming visible
  after the connection opened (or after ``cursor``) is sent as a ``commit`` event
  ``create``; an edit as ``update``, a removal as ``delete``; ``time_us`` is the simulated
  instant it changed. The author's DID is ``ids.did_for(handle)``, as ``getAuthorFeed`` says.

Fault knobs (call them from a test or drill thread): ``drop_jetstream(world)`` drops every open
connection now (TCP reset, no close frame); ``refuse_jetstream(world)`` answers new handshakes
503; ``silence_jetstream(world)`` stops sending and stops reading (so pings go unanswered: a
half-open connection) without closing. ``jetstream_identity`` sends an ``identity`` event,
``jetstream_send_raw`` any frame (hostile ones too); ``jetstream_log`` lists the connections
seen, with what they asked for. Every connection closes when the simulator stops.

``GET /bluesky/xrpc/com.atproto.identity.resolveHandle?handle=H`` answers ``{"did": ...}`` for
a handle the world knows (a scripted Bluesky source or our account), else 400
``{"error": "InvalidRequest", "message": "Unable to resolve handle"}`` as the AppView does;
``set_handle(world, handle, did_or_None)`` moves a handle or makes it unresolvable.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import threading
from collections import deque
from dataclasses import dataclass, field
from typing import Any, cast

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route, WebSocketRoute
from starlette.websockets import WebSocket, WebSocketDisconnect, WebSocketState

from crisiscomms.domain.clock import isoformat, parse_instant
from crisiscomms.simulator.common import limited, world_of
from crisiscomms.simulator.ids import did_for, tid
from crisiscomms.simulator.routes_bluesky import _scripted_posts
from crisiscomms.simulator.world import World

__all__ = [
    "MAX_WANTED_DIDS",
    "drop_jetstream",
    "jetstream_identity",
    "jetstream_log",
    "jetstream_open",
    "jetstream_routes",
    "jetstream_send_raw",
    "refuse_jetstream",
    "set_handle",
    "silence_jetstream",
]

MAX_WANTED_DIDS = 10_000
MAX_WANTED_COLLECTIONS = 100
_STATE_KEY = "jetstream"
_TICK = 0.02  # seconds between looks at the world (real time)


@dataclass
class _Conn:
    """One open subscriber (shared between the server thread and the caller's thread)."""

    dids: frozenset[str]
    collections: tuple[str, ...]
    drop: threading.Event = field(default_factory=threading.Event)
    raw: deque[str | bytes] = field(default_factory=deque)


@dataclass
class _State:
    refuse: bool = False
    silent: bool = False
    open: list[_Conn] = field(default_factory=list)
    log: list[dict[str, Any]] = field(default_factory=list)
    handles: dict[str, str | None] = field(default_factory=dict)


def _state(world: World) -> _State:
    with world.lock:
        state = world.state.get(_STATE_KEY)
        if not isinstance(state, _State):
            state = world.state[_STATE_KEY] = _State()
        return state


# -- knobs ----------------------------------------------------------------------------------

def drop_jetstream(world: World) -> int:
    """Drop every open Jetstream connection now (as a network failure would); returns how many."""
    state = _state(world)
    with world.lock:
        conns = list(state.open)
    for conn in conns:
        conn.drop.set()
    return len(conns)


def refuse_jetstream(world: World, on: bool = True) -> None:
    """Answer new Jetstream handshakes with HTTP 503 (``on=False``: accept them again)."""
    state = _state(world)
    with world.lock:
        state.refuse = on


def silence_jetstream(world: World, on: bool = True) -> None:
    """Open connections (and new ones) send nothing and read nothing, without closing."""
    state = _state(world)
    with world.lock:
        state.silent = on


def jetstream_send_raw(world: World, frame: str | bytes) -> int:
    """Send ``frame`` as it is (text for ``str``, binary for ``bytes``) on every open connection."""
    state = _state(world)
    with world.lock:
        conns = list(state.open)
    for conn in conns:
        conn.raw.append(frame)
    return len(conns)


def jetstream_identity(world: World, handle: str, new_handle: str | None = None) -> int:
    """Send an ``identity`` event for ``handle``'s DID to the connections that want it."""
    did = did_for(handle)
    now = world.now()
    event = {
        "did": did, "time_us": _micros(isoformat(now)), "kind": "identity",
        "identity": {"did": did, "handle": new_handle or handle, "seq": world.next_seq(),
                     "time": isoformat(now)},
    }
    frame = json.dumps(event)
    state = _state(world)
    with world.lock:
        conns = [c for c in state.open if not c.dids or did in c.dids]
    for conn in conns:
        conn.raw.append(frame)
    return len(conns)


def jetstream_log(world: World) -> list[dict[str, Any]]:
    """Every subscription seen: ``{"dids", "collections", "cursor", "hello", "refused"}``."""
    state = _state(world)
    with world.lock:
        return [dict(entry) for entry in state.log]


def jetstream_open(world: World) -> int:
    """How many Jetstream connections are open now."""
    state = _state(world)
    with world.lock:
        return len(state.open)


def set_handle(world: World, handle: str, did: str | None) -> None:
    """``resolveHandle`` answers ``did`` for ``handle`` from now on (``None``: unresolvable)."""
    state = _state(world)
    with world.lock:
        state.handles[handle.lower()] = did


# -- resolveHandle ---------------------------------------------------------------------------

@limited("bluesky", "bluesky:read")
async def resolve_handle(request: Request) -> Response:
    """com.atproto.identity.resolveHandle?handle=H."""
    world = world_of(request)
    handle = request.query_params.get("handle", "").strip().lower()
    if not handle:
        return JSONResponse({"error": "InvalidRequest",
                             "message": "Params must have the property \"handle\""}, 400)
    state = _state(world)
    with world.lock:
        overridden = handle in state.handles
        did = state.handles.get(handle)
    if not overridden:
        known = {h.lower() for h in world.known_sources("bluesky")}
        known.add(world.accounts.bluesky_handle.lower())
        did = did_for(handle) if handle in known else None
    if did is None:
        return JSONResponse({"error": "InvalidRequest", "message": "Unable to resolve handle"},
                            400)
    return JSONResponse({"did": did})


# -- the stream ------------------------------------------------------------------------------

def _micros(iso: str) -> int:
    return int(parse_instant(iso).timestamp() * 1_000_000)


def _int(value: str | None) -> int | None:
    if value is None or not value.strip().lstrip("-").isdigit():
        return None
    return int(value)


def _wanted(collections: tuple[str, ...], collection: str) -> bool:
    if not collections:
        return True
    for want in collections:
        if want == collection or (want.endswith(".*") and collection.startswith(want[:-1])):
            return True
    return False


def _transport(websocket: WebSocket) -> asyncio.Transport | None:
    """The connection's transport, when the server exposes it (uvicorn's WebSocket protocols
    do, through the bound ``receive``): needed to drop without a close frame or to stop
    reading. ``None`` elsewhere; the knobs then fall back to a close frame."""
    protocol = getattr(getattr(websocket, "_receive", None), "__self__", None)
    transport = getattr(protocol, "transport", None)
    return transport if isinstance(transport, asyncio.Transport) else None


class _Feed:
    """What one subscriber has been told about: post uri -> version (cid, indexedAt)."""

    def __init__(self, world: World, conn: _Conn, cursor: int | None) -> None:
        self.world = world
        self.conn = conn
        self.seen: dict[str, tuple[str, str]] = {}
        self.cursor = cursor

    def _posts(self) -> dict[str, dict[str, Any]]:
        return {post["uri"]: post for post in _scripted_posts(self.world)}

    def _wants(self, did: str) -> bool:
        return (not self.conn.dids or did in self.conn.dids) and _wanted(
            self.conn.collections, "app.bsky.feed.post")

    def start(self) -> None:
        """The baseline: what is visible now was published before we connected (live tail),
        unless a cursor asks for a replay of what changed since."""
        for uri, post in self._posts().items():
            if self.cursor is None or _micros(post["indexedAt"]) < self.cursor:
                self.seen[uri] = (post["cid"], post["indexedAt"])

    def events(self) -> list[dict[str, Any]]:
        """The commit events (of the DIDs and collections wanted now) since the last call,
        oldest first. Every change is noted, wanted or not, so that a filter widened later
        (an options_update) does not replay the past as new."""
        out: list[dict[str, Any]] = []
        posts = self._posts()
        for uri, post in posts.items():
            version = (post["cid"], post["indexedAt"])
            before = self.seen.get(uri)
            if before == version:
                continue
            self.seen[uri] = version
            if self._wants(post["author"]["did"]):
                out.append(self._commit(post, "create" if before is None else "update"))
        for uri in [u for u in self.seen if u not in posts]:
            del self.seen[uri]
            did, _, rest = uri.removeprefix("at://").partition("/")
            collection, _, rkey = rest.partition("/")
            if not self._wants(did):
                continue
            now = self.world.now()
            out.append({"did": did, "time_us": _micros(isoformat(now)), "kind": "commit",
                        "commit": {"rev": tid(now, self.world.next_seq()),
                                   "operation": "delete", "collection": collection,
                                   "rkey": rkey}})
        out.sort(key=lambda e: int(e["time_us"]))
        return out

    def _commit(self, post: dict[str, Any], operation: str) -> dict[str, Any]:
        at = parse_instant(post["indexedAt"])
        return {
            "did": post["author"]["did"],
            "time_us": _micros(post["indexedAt"]),
            "kind": "commit",
            "commit": {"rev": tid(at, self.world.next_seq()), "operation": operation,
                       "collection": "app.bsky.feed.post", "rkey": post["rkey"],
                       "record": post["record"], "cid": post["cid"]},
        }


async def subscribe(websocket: WebSocket) -> None:
    """``/jetstream/subscribe``: a Jetstream subscriber."""
    world = cast(World, websocket.app.state.world)
    stopping = cast(threading.Event, websocket.app.state.stopping)
    state = _state(world)
    q = websocket.query_params
    dids = tuple(q.getlist("wantedDids"))
    collections = tuple(q.getlist("wantedCollections"))
    cursor = _int(q.get("cursor"))
    hello = q.get("requireHello", "").lower() == "true"
    entry: dict[str, Any] = {"dids": list(dids), "collections": list(collections),
                             "cursor": cursor, "hello": hello, "refused": False}
    with world.lock:
        refuse = state.refuse
        state.log.append(entry)
    problem = ""
    if len(dids) > MAX_WANTED_DIDS:
        problem = f"too many wanted DIDs ({len(dids)} > {MAX_WANTED_DIDS})"
    elif len(collections) > MAX_WANTED_COLLECTIONS:
        problem = f"too many wanted collections ({len(collections)} > {MAX_WANTED_COLLECTIONS})"
    if refuse or problem:
        entry["refused"] = True
        status = 400 if problem else 503
        await _deny(websocket, status, problem or "Service Unavailable")
        return
    conn = _Conn(frozenset(dids), collections)
    feed = _Feed(world, conn, cursor)
    # The baseline is taken before the handshake completes: a post the client's first
    # reaction (after the handshake) makes visible is new to this connection, never baseline.
    feed.start()
    with world.lock:
        state.open.append(conn)
    try:
        await websocket.accept()
    except BaseException:
        with world.lock:
            state.open.remove(conn)
        raise
    messages: asyncio.Queue[str] = asyncio.Queue()
    gone = asyncio.Event()
    reader = asyncio.create_task(_read(websocket, messages, gone))
    try:
        await _serve(websocket, world, state, conn, feed, hello, entry, messages, gone, stopping)
    finally:
        reader.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await reader
        with world.lock:
            if conn in state.open:
                state.open.remove(conn)


async def _serve(websocket: WebSocket, world: World, state: _State, conn: _Conn, feed: _Feed,
                 hello: bool, entry: dict[str, Any], messages: asyncio.Queue[str],
                 gone: asyncio.Event, stopping: threading.Event) -> None:
    paused_reading = False
    waiting = hello  # requireHello: nothing is sent before the first options_update
    while not gone.is_set():
        if stopping.is_set():
            await _close(websocket, 1001, "simulator stopping", abort=paused_reading)
            return
        if conn.drop.is_set():
            transport = _transport(websocket)
            if transport is not None:
                transport.abort()
            else:
                await _close(websocket, 1011, "simulated drop")
            return
        with world.lock:
            silent = state.silent
        if silent:
            if not paused_reading and (transport := _transport(websocket)) is not None:
                transport.pause_reading()
                paused_reading = True
            await asyncio.sleep(_TICK)
            continue
        if paused_reading and (transport := _transport(websocket)) is not None:
            transport.resume_reading()
            paused_reading = False
        while not messages.empty():
            if not _options_update(messages.get_nowait(), conn, entry):
                await _close(websocket, 1008, "invalid options update")
                return
            waiting = False
        while conn.raw:
            frame = conn.raw.popleft()
            if isinstance(frame, bytes):
                await websocket.send_bytes(frame)
            else:
                await websocket.send_text(frame)
        if not waiting:
            for event in feed.events():
                await websocket.send_text(json.dumps(event))
        await asyncio.sleep(_TICK)


def _options_update(text: str, conn: _Conn, entry: dict[str, Any]) -> bool:
    """Apply a subscriber-sourced message; False if it is invalid (Jetstream disconnects)."""
    try:
        message = json.loads(text)
    except ValueError:
        return False
    if not isinstance(message, dict):
        return False
    if message.get("type") == "heartbeat":
        return True
    payload = message.get("payload")
    if message.get("type") != "options_update" or not isinstance(payload, dict):
        return False
    dids = payload.get("wantedDids") or []
    collections = payload.get("wantedCollections") or []
    if not (isinstance(dids, list) and isinstance(collections, list)
            and all(isinstance(d, str) for d in dids)
            and all(isinstance(c, str) for c in collections)
            and len(dids) <= MAX_WANTED_DIDS and len(collections) <= MAX_WANTED_COLLECTIONS):
        return False
    conn.dids = frozenset(dids)
    conn.collections = tuple(collections)
    entry["dids"], entry["collections"] = list(dids), list(collections)
    entry["options_updates"] = int(entry.get("options_updates", 0)) + 1
    return True


async def _read(websocket: WebSocket, messages: asyncio.Queue[str], gone: asyncio.Event) -> None:
    try:
        while True:
            message = await websocket.receive()
            if message["type"] == "websocket.disconnect":
                break
            text = message.get("text")
            if isinstance(text, str):
                messages.put_nowait(text)
    except (WebSocketDisconnect, RuntimeError, OSError):
        pass
    finally:
        gone.set()


async def _deny(websocket: WebSocket, status: int, message: str) -> None:
    response = JSONResponse({"error": "Refused", "message": message}, status)
    try:
        await websocket.send_denial_response(response)
    except RuntimeError:  # the server has no denial extension: a close before accept (403)
        await websocket.close(code=1013, reason=message)


async def _close(websocket: WebSocket, code: int, reason: str, *, abort: bool = False) -> None:
    transport = _transport(websocket) if abort else None
    if transport is not None:
        transport.abort()
        return
    if websocket.application_state is WebSocketState.CONNECTED:
        with contextlib.suppress(RuntimeError, OSError):
            await websocket.close(code=code, reason=reason)


def jetstream_routes() -> list[BaseRoute]:
    """The Jetstream endpoint and the AppView's resolveHandle (under the Bluesky prefix)."""
    return [
        WebSocketRoute("/jetstream/subscribe", subscribe),
        Route("/bluesky/xrpc/com.atproto.identity.resolveHandle", resolve_handle,
              methods=["GET"]),
    ]
