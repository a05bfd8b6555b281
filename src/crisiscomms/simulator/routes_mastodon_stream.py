"""Simulated Mastodon streaming API (server-sent events) under ``/mastodon``, as
docs.joinmastodon.org/methods/streaming describes it.

* ``GET /mastodon/api/v2/instance``: the instance, as Mastodon 4 answers it (the fields a
  client needs), with ``configuration.urls.streaming`` pointing back at this simulator
  (``ws://127.0.0.1:PORT/mastodon``; clients add ``/api/v1/streaming/...``) unless a test
  points it elsewhere (``set_mastodon_streaming_url``);
* ``GET /mastodon/api/v1/streaming/user``: the home timeline of the token's account, as
  ``text/event-stream``: a ``:)`` comment once open, a ``:thump`` heartbeat comment every
  ``heartbeat_seconds`` (15 by default, as Mastodon's streaming server), then per status of
  any simulated Mastodon account (the scripted sources' and our own posts and boosts) that
  becomes visible after the stream opened ``event: update`` + ``data: <Status JSON>``; an
  edit of one already seen: ``event: status.update``; one removed: ``event: delete`` +
  ``data: <id>``. A token the world refuses (``world.token_ok``) is answered 401 with
  Mastodon's ``{"error": ...}`` body.

The world is read every ``_TICK`` seconds of real time, at its own clock (real or a drill's);
heartbeats are real time too (they are what keeps a client's read timeout from firing).

Fault knobs for tests (all in ``world.state``, under ``world.lock``):
``drop_mastodon_streams`` ends every open stream now (or aborts its connection),
``refuse_mastodon_streams`` answers new streams with a status (401, 503, ...),
``set_mastodon_heartbeat`` changes the interval or stops heartbeats,
``send_mastodon_stream_event`` writes a raw event (any bytes a hostile server could send)
to every open stream, and ``mastodon_streams`` counts streams opened and open.
Every stream ends within ``_TICK`` when the simulator stops (``app.state.stopping``).
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import BaseRoute, Route

from crisiscomms.simulator.common import bearer, iso_ms, limited, world_of
from crisiscomms.simulator.routes_mastodon import all_statuses
from crisiscomms.simulator.world import World

_TICK = 0.1  # seconds between looks at the world
_KNOBS = "mastodon_stream.knobs"
_DOMAIN = "mastodon.example"  # the simulated instance's own domain (local accounts)


@dataclass
class _Knobs:
    heartbeat_seconds: float = 15.0
    heartbeats: bool = True
    refuse_status: int | None = None
    refuse_error: str = ""
    streaming_url: str | None = None  # None: back at this simulator
    generation: int = 0  # bumped by a drop: streams of an older generation end
    abrupt: bool = False  # the last drop aborts connections instead of ending them
    raw: list[tuple[int, str]] = field(default_factory=list)  # (seq, wire text)
    raw_seq: int = 0
    opened: int = 0
    open: int = 0


def _knobs(world: World) -> _Knobs:
    with world.lock:
        knobs = world.state.get(_KNOBS)
        if not isinstance(knobs, _Knobs):
            knobs = world.state[_KNOBS] = _Knobs()
        return knobs


# -- fault knobs ---------------------------------------------------------------------------

def drop_mastodon_streams(world: World, *, abrupt: bool = False) -> None:
    """End every open stream now (``abrupt``: reset the connection instead of ending the
    response cleanly, as a network failure would)."""
    with world.lock:
        knobs = _knobs(world)
        knobs.generation += 1
        knobs.abrupt = abrupt


def refuse_mastodon_streams(world: World, status: int | None = 401, error: str = "") -> None:
    """Answer new streams with ``status`` (``None``: accept them again). 401/403 carry
    Mastodon's ``{"error": ...}`` body."""
    with world.lock:
        knobs = _knobs(world)
        knobs.refuse_status = status
        knobs.refuse_error = error


def set_mastodon_heartbeat(world: World, seconds: float = 15.0, *, enabled: bool = True) -> None:
    """Send the ``:thump`` heartbeat every ``seconds`` (``enabled=False``: never)."""
    with world.lock:
        knobs = _knobs(world)
        knobs.heartbeat_seconds = seconds
        knobs.heartbeats = enabled


def set_mastodon_streaming_url(world: World, url: str | None) -> None:
    """What ``/api/v2/instance`` gives as ``configuration.urls.streaming`` (``None``: this
    simulator)."""
    with world.lock:
        _knobs(world).streaming_url = url


def send_mastodon_stream_event(world: World, event: str, data: str, *,
                               raw: str | None = None) -> None:
    """Write one event (``event: ...`` and ``data: ...``) to every open stream, or ``raw``
    text exactly as given (a hostile server's bytes)."""
    text = raw if raw is not None else f"event: {event}\ndata: {data}\n\n"
    with world.lock:
        knobs = _knobs(world)
        knobs.raw_seq += 1
        knobs.raw.append((knobs.raw_seq, text))
        del knobs.raw[:-1000]  # a stream further behind than that has long been dropped


def mastodon_streams(world: World) -> tuple[int, int]:
    """(streams opened so far, streams open now)."""
    with world.lock:
        knobs = _knobs(world)
        return knobs.opened, knobs.open


# -- routes --------------------------------------------------------------------------------

@limited("mastodon", "mastodon:account")
async def instance(request: Request) -> Response:
    """GET /api/v2/instance (the fields of Mastodon 4's answer a client needs)."""
    knobs = _knobs(world_of(request))
    streaming = knobs.streaming_url or f"ws://{request.url.netloc}/mastodon"
    return JSONResponse({
        "domain": _DOMAIN,
        "title": "Mastodon (simulated)",
        "version": "4.3.0",
        "source_url": "https://github.com/mastodon/mastodon",
        "description": "The crisiscomms simulator's Mastodon instance.",
        "usage": {"users": {"active_month": 1}},
        "languages": ["en"],
        "configuration": {
            "urls": {"streaming": streaming, "status": None},
            "accounts": {"max_featured_tags": 10, "max_pinned_statuses": 5},
            "statuses": {"max_characters": 500, "max_media_attachments": 4,
                         "characters_reserved_per_url": 23},
            "translation": {"enabled": False},
        },
        "registrations": {"enabled": False, "approval_required": False, "message": None},
        "contact": {"email": "", "account": None},
        "rules": [],
    })


def _fingerprint(status: dict[str, Any]) -> str:
    """What an edit changes (not counters such as ``reblogs_count``)."""
    return json.dumps([status.get("content"), status.get("spoiler_text"),
                       status.get("url")], sort_keys=True)


def _snapshot(world: World) -> dict[str, tuple[str, dict[str, Any]]]:
    with world.lock:
        return {str(s["id"]): (_fingerprint(s), s) for s in all_statuses(world)}


def _change_key(world: World) -> tuple[frozenset[tuple[str, str, Any, str]], int]:
    """Cheap to compute (a tenth of ``all_statuses``): equal while no status of any
    account appeared, changed or went, and no post of ours was added."""
    with world.lock:
        visible = world.visible_items("mastodon")
        return (frozenset((v.source_id, v.key, v.changed_at, repr(v.item)) for v in visible),
                len(world.posts))


@dataclass
class _Seen:
    key: tuple[frozenset[tuple[str, str, Any, str]], int]
    statuses: dict[str, tuple[str, dict[str, Any]]]


def _changes(world: World, seen: _Seen) -> list[str]:
    """The wire text of every change since ``seen`` (updated in place), oldest first."""
    key = _change_key(world)
    if key == seen.key:
        return []
    seen.key = key
    before = seen.statuses
    now = _snapshot(world)
    out: list[tuple[tuple[int, str], str]] = []
    for status_id, (print_, status) in now.items():
        was = before.get(status_id)
        if was is None:
            out.append((_order(status_id), _event("update", json.dumps(status))))
        elif was[0] != print_:
            edited = dict(status)
            edited["edited_at"] = edited.get("edited_at") or iso_ms(world.now())
            out.append((_order(status_id), _event("status.update", json.dumps(edited))))
    for status_id in before.keys() - now.keys():
        out.append((_order(status_id), _event("delete", status_id)))
    seen.statuses = now
    out.sort(key=lambda pair: pair[0])
    return [text for _, text in out]


def _order(status_id: str) -> tuple[int, str]:
    return len(status_id), status_id  # numeric ids in numeric order, others after


def _event(name: str, data: str) -> str:
    return f"event: {name}\ndata: {data}\n\n"


async def stream_user(request: Request) -> Response:
    """GET /api/v1/streaming/user: the home timeline as server-sent events."""
    world = world_of(request)
    knobs = _knobs(world)
    with world.lock:
        refuse, error = knobs.refuse_status, knobs.refuse_error
    if refuse is not None:
        if refuse in (401, 403):
            message = error or "Access token does not have the required scopes"
            return JSONResponse({"error": message}, refuse)
        return JSONResponse({"error": error or "Service Unavailable"}, refuse)
    if not world.token_ok("mastodon", bearer(request)):
        message = "Missing access token" if not bearer(request) else "Invalid access token"
        return JSONResponse({"error": message}, 401)
    stopping = request.app.state.stopping
    with world.lock:
        seen = _Seen(_change_key(world), _snapshot(world))
        generation = knobs.generation
        raw_from = knobs.raw_seq
        knobs.opened += 1
        knobs.open += 1
    # app.TRANSPORT_EXTENSION (app.py imports this module, so not imported from there)
    transport = request.scope.get("extensions", {}).get("crisiscomms.transport")

    async def body() -> AsyncIterator[str]:
        nonlocal raw_from
        try:
            yield ":)\n"
            last_beat = time.monotonic()
            while not stopping.is_set():
                with world.lock:
                    dropped = knobs.generation != generation
                    abrupt = knobs.abrupt
                    raw = [text for seq, text in knobs.raw if seq > raw_from]
                    raw_from = knobs.raw_seq
                    beat_every = knobs.heartbeat_seconds if knobs.heartbeats else None
                if dropped:
                    if abrupt and transport is not None:
                        transport.abort()
                    return
                for text in [*raw, *_changes(world, seen)]:
                    yield text
                if beat_every is not None and time.monotonic() - last_beat >= beat_every:
                    last_beat = time.monotonic()
                    yield ":thump\n"
                await asyncio.sleep(_TICK)
        finally:
            with world.lock:
                knobs.open -= 1

    return StreamingResponse(body(), media_type="text/event-stream",
                             headers={"Cache-Control": "private, no-store",
                                      "X-Accel-Buffering": "no"})


def mastodon_stream_routes() -> list[BaseRoute]:
    """The streaming routes (prefix /mastodon, as ``routes_mastodon``)."""
    p = "/mastodon/api"
    return [
        Route(f"{p}/v2/instance", instance, methods=["GET"]),
        Route(f"{p}/v1/streaming/user", stream_user, methods=["GET"]),
    ]
