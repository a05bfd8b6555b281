"""Official-source endpoints: RSS/Atom feeds, CAP index + documents, EA flood warnings.

``redirect_source(world, path, location, status)`` moves any of them: the path then answers
``status`` with ``Location: location`` (relative or absolute), as a publisher does when a
feed moves host or path (``www.metoffice.gov.uk`` -> ``weather.metoffice.gov.uk``).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from datetime import datetime
from typing import Any
from urllib.parse import unquote

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from crisiscomms.domain.clock import parse_instant, utc
from crisiscomms.simulator import render
from crisiscomms.simulator.common import Endpoint, conditional, limited, world_of
from crisiscomms.simulator.world import VisibleItem, World

_REDIRECTS = "sources.redirects"
_RENDERED = "sources.rendered"
_RENDERED_MAX = 256


def _rendered(world: World, kind: str, source_id: str, url: str,
              render_body: Callable[[datetime | None], bytes]) -> tuple[bytes, datetime | None]:
    """A feed's body and last change, rendered again only when what the source shows may have
    changed (a scripted item added, edited or removed; or one's time came): a drill polls each
    feed every simulated minute and almost always gets the same document (and a 304)."""
    changed = world.last_changed(kind, source_id)
    key = (kind, source_id, url, world.items_version(), changed)
    with world.lock:
        cache: dict[tuple[Any, ...], bytes] = world.state.setdefault(_RENDERED, {})
        body = cache.get(key)
    if body is None:
        body = render_body(changed)
        with world.lock:
            if len(cache) >= _RENDERED_MAX:
                cache.clear()
            cache[key] = body
    return body, changed


def redirect_source(world: World, path: str, location: str | None, status: int = 301) -> None:
    """Answer ``path`` (e.g. ``/sources/rss/met-old``) with a ``status`` redirect to
    ``location``; ``location=None`` serves the path again."""
    if status not in (301, 302, 303, 307, 308):
        raise ValueError(f"not a redirect status: {status}")
    with world.lock:
        moves: dict[str, tuple[int, str]] = world.state.setdefault(_REDIRECTS, {})
        if location is None:
            moves.pop(path, None)
        else:
            moves[path] = (status, location)


def _movable(endpoint: Endpoint) -> Endpoint:
    """Answer the redirect set for this path, if any, instead of the endpoint."""

    @functools.wraps(endpoint)
    async def handler(request: Request) -> Response:
        moves = world_of(request).state.get(_REDIRECTS) or {}
        # The path as ``request.url.path`` has it, without building the whole URL.
        move = moves.get(request.scope.get("root_path", "") + request.scope["path"]) \
            if moves else None
        if move is not None:
            status, location = move
            return Response(status_code=status, headers={"Location": location})
        return await endpoint(request)

    return handler


def _base(request: Request) -> str:
    return str(request.base_url).rstrip("/")


def _by_published(items: list[VisibleItem], field: str) -> list[VisibleItem]:
    def key(vis: VisibleItem) -> tuple[Any, str]:
        value = vis.item.get(field)
        if isinstance(value, datetime):
            when = utc(value)
        elif isinstance(value, str) and value:
            when = parse_instant(value)
        else:
            when = vis.first_at
        return when, vis.key

    return sorted(items, key=key, reverse=True)


@limited("sources", "sources:rss")
@_movable
async def rss_feed(request: Request) -> Response:
    """GET /sources/rss/{source_id}: RSS 2.0, newest first."""
    world = world_of(request)
    source_id = request.path_params["source_id"]
    url = f"{_base(request)}/sources/rss/{source_id}"
    body, changed = _rendered(world, "rss", source_id, url, lambda changed: render.rss_document(
        source_id, url, _by_published(world.visible_items("rss", source_id), "pubDate"),
        changed))
    return conditional(request, body, "application/rss+xml", changed)


@limited("sources", "sources:atom")
@_movable
async def atom_feed(request: Request) -> Response:
    """GET /sources/atom/{source_id}: the same items as Atom."""
    world = world_of(request)
    source_id = request.path_params["source_id"]
    url = f"{_base(request)}/sources/atom/{source_id}"
    body, changed = _rendered(world, "atom", source_id, url, lambda changed: render.atom_document(
        source_id, url, _by_published(world.visible_items("rss", source_id), "pubDate"),
        changed))
    return conditional(request, body, "application/atom+xml", changed)


@limited("sources", "sources:cap")
@_movable
async def cap_index(request: Request) -> Response:
    """GET /sources/cap/{source_id}: Atom index linking to each alert's CAP document."""
    world = world_of(request)
    source_id = request.path_params["source_id"]
    url = f"{_base(request)}/sources/cap/{source_id}"
    body, changed = _rendered(world, "cap", source_id, url, lambda changed: render.cap_index(
        source_id, url, url, _by_published(world.visible_items("cap", source_id), "sent"),
        changed))
    return conditional(request, body, "application/atom+xml", changed)


@limited("sources", "sources:cap")
@_movable
async def cap_doc(request: Request) -> Response:
    """GET /sources/cap/{source_id}/{identifier}.xml: one CAP 1.2 alert (404 if not visible)."""
    world = world_of(request)
    source_id = request.path_params["source_id"]
    identifier = unquote(request.path_params["doc"]).removesuffix(".xml")
    for vis in world.visible_items("cap", source_id):
        if vis.key == identifier:
            return conditional(
                request, render.cap_document(vis), "application/cap+xml", vis.changed_at
            )
    return Response("not found", 404, media_type="text/plain")


@limited("sources", "sources:ea-floods")
@_movable
async def ea_floods(request: Request) -> Response:
    """GET /ea/flood-monitoring/id/floods?county=&min-severity=: current warnings as JSON."""
    world = world_of(request)
    county = request.query_params.get("county", "").strip().lower()
    min_severity = request.query_params.get("min-severity")
    base = _base(request)
    out: list[dict[str, Any]] = []
    for vis in world.visible_items("ea-floods"):
        item = dict(vis.item)
        if county and county not in str(item.get("county", "")).lower():
            continue
        if min_severity and int(item.get("severityLevel", 4)) > int(min_severity):
            continue
        item.setdefault("@id", f"{base}/ea/flood-monitoring/id/floods/{item['floodAreaID']}")
        item.setdefault("isTidal", False)
        out.append(item)
    out.sort(
        key=lambda i: (str(i.get("timeMessageChanged", "")), str(i["floodAreaID"])), reverse=True
    )
    body = {
        "@context": f"{base}/ea/flood-monitoring/meta/context.jsonld",
        "meta": {
            "publisher": "Environment Agency (simulated)",
            "licence": "http://www.nationalarchives.gov.uk/doc/open-government-licence/version/3/",
            "documentation": "http://environment.data.gov.uk/flood-monitoring/doc/reference",
            "version": "0.9",
            "comment": "Status: simulated",
            "hasFormat": [],
        },
        "items": out,
    }
    return JSONResponse(body)


def source_routes() -> list[BaseRoute]:
    """Routes for official sources."""
    return [
        Route("/sources/rss/{source_id}", rss_feed, methods=["GET"]),
        Route("/sources/atom/{source_id}", atom_feed, methods=["GET"]),
        Route("/sources/cap/{source_id}", cap_index, methods=["GET"]),
        Route("/sources/cap/{source_id}/{doc}", cap_doc, methods=["GET"]),
        Route("/ea/flood-monitoring/id/floods", ea_floods, methods=["GET"]),
    ]
