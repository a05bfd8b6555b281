"""A simulated WebSub hub (W3C WebSub Recommendation, 2018) and feeds that advertise it.

* ``POST /websub/hub`` with ``hub.mode=subscribe|unsubscribe``, ``hub.topic``,
  ``hub.callback``, optional ``hub.secret`` and ``hub.lease_seconds``: answered 202, then a
  background task verifies the intent with ``GET <callback>?hub.mode=..&hub.topic=..&
  hub.challenge=..&hub.lease_seconds=..``; only a 2xx answer echoing the challenge activates
  (or removes) the subscription. ``hub.mode=publish`` with ``hub.url`` (a publisher's ping)
  is answered 204: the hub watches its feeds anyway.
* ``GET /websub/feeds/{rss|atom|cap}/{source_id}``: the same feed as ``/sources/...``, advertising
  the hub (``Link: <hub>; rel="hub"``, ``Link: <self>; rel="self"`` and ``atom:link``), unless
  ``advertise(world, source_id, False)``. The ordinary ``/sources/...`` feeds advertise
  nothing unless ``advertise(world, source_id, True)`` and their route asks ``hub_for``.
* Content distribution: a background task (started with the first subscription, stopped with
  the server) looks at every active subscription's feed every ``_TICK`` seconds; when its
  items changed (a new item, an edit, a removal) it POSTs the feed body to the callback with
  ``X-Hub-Signature: sha256=<HMAC of the body with the subscription's secret>`` (no
  signature without a secret).

Leases run on the real (monotonic) clock, as the subscriber's renewals do: an expired
subscription gets nothing more. Fault knobs (``set_hub_faults``): ``deliver=False`` (verify,
never deliver), ``bad_signature`` (sign with another key), ``unsigned`` (no signature),
``lease_seconds`` (grant this lease whatever was asked). ``hub_subscriptions`` and
``hub_events`` show what happened; secrets never appear in either, nor in a log.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import secrets
import time
from dataclasses import dataclass, field, replace
from typing import Any
from urllib.parse import unquote, urlsplit

import httpx
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import BaseRoute, Route

from crisiscomms.simulator import render
from crisiscomms.simulator.common import conditional, params, world_of
from crisiscomms.simulator.world import World

HUB_PATH = "/websub/hub"
FEEDS_PATH = "/websub/feeds"
_STATE = "websub.hub"
_TICK = 0.05  # seconds between two looks at the subscribed feeds
_DEFAULT_LEASE = 86_400
_MAX_LEASE = 10 * 86_400
_TIMEOUT = 5.0
_FEED_KINDS = {"rss": "rss", "atom": "rss", "cap": "cap"}  # path kind -> world kind


@dataclass(frozen=True)
class HubFaults:
    """How the simulated hub misbehaves (all off by default)."""

    deliver: bool = True  # False: subscriptions are verified but nothing is ever delivered
    bad_signature: bool = False  # sign deliveries with another key
    unsigned: bool = False  # send deliveries without X-Hub-Signature
    lease_seconds: int | None = None  # grant this lease whatever the subscriber asked


@dataclass
class HubSubscription:
    """One subscription the hub holds (``secret`` is never shown)."""

    callback: str
    topic: str
    kind: str
    source_id: str
    secret: str = field(default="", repr=False)
    lease_seconds: int = 0
    active: bool = False
    expires_at: float = 0.0  # time.monotonic()
    verified: int = 0  # successful verifications: 1 the first, then one per renewal
    deliveries: int = 0
    fingerprint: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True)
class HubEvent:
    """What the hub did: ``requested`` (a subscribe/unsubscribe POST), ``verified`` or
    ``refused`` (the callback's answer to the challenge), ``delivered``, ``expired``."""

    what: str
    mode: str
    topic: str
    callback: str
    status: int = 0
    lease_seconds: int = 0
    at: float = 0.0  # time.monotonic()


@dataclass
class _Hub:
    subs: dict[tuple[str, str], HubSubscription] = field(default_factory=dict)
    events: list[HubEvent] = field(default_factory=list)
    faults: HubFaults = field(default_factory=HubFaults)
    advertise: dict[str, bool] = field(default_factory=dict)
    tasks: set[asyncio.Task[None]] = field(default_factory=set)


def _hub(world: World) -> _Hub:
    with world.lock:
        hub = world.state.get(_STATE)
        if not isinstance(hub, _Hub):
            hub = world.state[_STATE] = _Hub()
        return hub


# -- what tests and drills use ------------------------------------------------------------


def set_hub_faults(world: World, faults: HubFaults | None = None, **changes: Any) -> HubFaults:
    """Replace the hub's faults (``None``: none), or change some (``deliver=False``)."""
    hub = _hub(world)
    with world.lock:
        hub.faults = replace(faults or (hub.faults if changes else HubFaults()), **changes)
        return hub.faults


def advertise(world: World, source_id: str, on: bool | None) -> None:
    """Whether ``source_id``'s feed advertises the hub (``None``: the route's default: yes
    under ``/websub/feeds``, no under ``/sources``)."""
    hub = _hub(world)
    with world.lock:
        if on is None:
            hub.advertise.pop(source_id, None)
        else:
            hub.advertise[source_id] = on


def hub_for(world: World, base_url: str, source_id: str, *, default: bool = False) -> str | None:
    """The hub URL a feed route should advertise for ``source_id`` (``None``: none)."""
    hub = _hub(world)
    with world.lock:
        on = hub.advertise.get(source_id, default)
    return f"{base_url.rstrip('/')}{HUB_PATH}" if on else None


def hub_subscriptions(world: World) -> list[HubSubscription]:
    """A snapshot of the hub's subscriptions (copies; secrets blanked)."""
    hub = _hub(world)
    with world.lock:
        return [replace(s, secret="") for s in hub.subs.values()]


def hub_events(world: World) -> list[HubEvent]:
    """Everything the hub did, in order."""
    hub = _hub(world)
    with world.lock:
        return list(hub.events)


def feed_url(base_url: str, kind: str, source_id: str) -> str:
    """The URL of ``source_id``'s feed that advertises the hub (``kind``: rss, atom, cap)."""
    return f"{base_url.rstrip('/')}{FEEDS_PATH}/{kind}/{source_id}"


# -- the feeds ------------------------------------------------------------------------------


def _target(topic: str) -> tuple[str, str, str] | None:
    """``(path kind, world kind, source id)`` of a topic URL this simulator serves."""
    path = urlsplit(topic).path
    for prefix in (FEEDS_PATH + "/", "/sources/"):
        if path.startswith(prefix):
            kind, _, sid = path[len(prefix):].partition("/")
            if kind in _FEED_KINDS and sid and "/" not in sid:
                return kind, _FEED_KINDS[kind], unquote(sid)
    return None


def _render(world: World, kind: str, source_id: str, self_url: str, base: str,
            hub: str | None) -> tuple[bytes, str, Any]:
    wkind = _FEED_KINDS[kind]
    items = world.visible_items(wkind, source_id)
    changed = world.last_changed(wkind, source_id)
    if kind == "rss":
        return (render.rss_document(source_id, self_url, items, changed, hub=hub),
                "application/rss+xml", changed)
    if kind == "atom":
        return (render.atom_document(source_id, self_url, items, changed, hub=hub),
                "application/atom+xml", changed)
    doc_base = f"{base}/sources/cap/{source_id}"
    return (render.cap_index(source_id, self_url, doc_base, items, changed, hub=hub),
            "application/atom+xml", changed)


async def websub_feed(request: Request) -> Response:
    """GET /websub/feeds/{kind}/{source_id}: the feed, advertising the hub."""
    kind = request.path_params["kind"]
    if kind not in _FEED_KINDS:
        return PlainTextResponse("not found", 404)
    world = world_of(request)
    source_id = request.path_params["source_id"]
    base = str(request.base_url).rstrip("/")
    self_url = feed_url(base, kind, source_id)
    hub = hub_for(world, base, source_id, default=True)
    body, media, changed = _render(world, kind, source_id, self_url, base, hub)
    response = conditional(request, body, media, changed)
    if hub is not None:
        response.headers.append("Link", f'<{hub}>; rel="hub"')
        response.headers.append("Link", f'<{self_url}>; rel="self"')
    return response


# -- the hub --------------------------------------------------------------------------------


def _fingerprint(world: World, kind: str, source_id: str) -> tuple[tuple[str, str], ...]:
    return tuple(sorted((v.key, v.changed_at.isoformat())
                        for v in world.visible_items(kind, source_id)))


def _lease(requested: str | None, faults: HubFaults) -> int:
    if faults.lease_seconds is not None:
        return max(1, faults.lease_seconds)
    try:
        asked = int(requested) if requested else _DEFAULT_LEASE
    except ValueError:
        asked = _DEFAULT_LEASE
    return min(max(asked, 1), _MAX_LEASE)


async def hub_endpoint(request: Request) -> Response:
    """POST /websub/hub: a subscription request (202, verified later) or a publish ping."""
    form = await params(request)
    mode = str(form.get("hub.mode", ""))
    if mode == "publish":
        return Response(status_code=204)
    topic, callback = str(form.get("hub.topic", "")), str(form.get("hub.callback", ""))
    if mode not in ("subscribe", "unsubscribe"):
        return PlainTextResponse("hub.mode must be subscribe or unsubscribe", 400)
    target = _target(topic)
    if target is None:
        return PlainTextResponse("hub.topic is not a feed of this hub", 400)
    if urlsplit(callback).scheme not in ("http", "https"):
        return PlainTextResponse("hub.callback must be an http(s) URL", 400)
    world = world_of(request)
    hub = _hub(world)
    with world.lock:
        lease = _lease(form.get("hub.lease_seconds"), hub.faults)
        hub.events.append(HubEvent("requested", mode, topic, callback, 202, lease,
                                   time.monotonic()))
    secret = str(form.get("hub.secret", ""))
    app: Starlette = request.app
    _spawn(hub, _verify(app, world, mode, callback, topic, target, secret, lease))
    _ensure_watching(app, hub)
    return Response(status_code=202)


def _spawn(hub: _Hub, work: Any) -> None:
    task: asyncio.Task[None] = asyncio.get_running_loop().create_task(work)
    hub.tasks.add(task)
    task.add_done_callback(hub.tasks.discard)


async def _verify(app: Starlette, world: World, mode: str, callback: str, topic: str,
                  target: tuple[str, str, str], secret: str, lease: int) -> None:
    _, wkind, source_id = target
    # What the feed holds before the subscriber even hears of the challenge: anything
    # published from here on is news to it (and is delivered once it is verified).
    baseline = _fingerprint(world, wkind, source_id)
    challenge = secrets.token_urlsafe(24)
    query = {"hub.mode": mode, "hub.topic": topic, "hub.challenge": challenge}
    if mode == "subscribe":
        query["hub.lease_seconds"] = str(lease)
    status, echoed = 0, False
    try:
        async with httpx.AsyncClient(timeout=_TIMEOUT, trust_env=False) as client:
            resp = await client.get(callback, params=query)
        status, echoed = resp.status_code, resp.text == challenge
    except httpx.HTTPError:
        pass
    ok = 200 <= status < 300 and echoed
    hub = _hub(world)
    with world.lock:
        key = (callback, topic)
        if ok and mode == "subscribe":
            sub = hub.subs.get(key)
            if sub is None:
                sub = hub.subs[key] = HubSubscription(callback, topic, wkind, source_id)
                sub.fingerprint = baseline
            elif not sub.active:
                sub.fingerprint = baseline
            sub.secret, sub.lease_seconds, sub.active = secret, lease, True
            sub.expires_at = time.monotonic() + lease
            sub.verified += 1
        elif ok:
            hub.subs.pop(key, None)
        hub.events.append(HubEvent("verified" if ok else "refused", mode, topic, callback,
                                   status, lease, time.monotonic()))


def _ensure_watching(app: Starlette, hub: _Hub) -> None:
    task = getattr(app.state, "websub_watch", None)
    if task is None or task.done():
        app.state.websub_watch = asyncio.get_running_loop().create_task(_watch(app))


async def _watch(app: Starlette) -> None:
    """Deliver every change of a subscribed feed until the server stops."""
    async with httpx.AsyncClient(timeout=_TIMEOUT, trust_env=False) as client:
        while not app.state.stopping.is_set():
            await asyncio.sleep(_TICK)
            world: World = app.state.world
            hub = _hub(world)
            due: list[tuple[HubSubscription, HubFaults]] = []
            now = time.monotonic()
            with world.lock:
                for sub in hub.subs.values():
                    if not sub.active:
                        continue
                    if now >= sub.expires_at:
                        sub.active = False
                        hub.events.append(HubEvent("expired", "subscribe", sub.topic,
                                                   sub.callback, 0, sub.lease_seconds, now))
                        continue
                    seen = _fingerprint(world, sub.kind, sub.source_id)
                    if seen != sub.fingerprint:
                        sub.fingerprint = seen
                        if hub.faults.deliver:
                            due.append((replace(sub), hub.faults))
            for sub, faults in due:
                await _deliver(client, world, hub, sub, faults)


def _signature(secret: str, body: bytes, faults: HubFaults) -> str | None:
    if faults.unsigned or not secret:
        return None
    key = (secret + "-wrong") if faults.bad_signature else secret
    return "sha256=" + hmac.new(key.encode(), body, hashlib.sha256).hexdigest()


async def _deliver(client: httpx.AsyncClient, world: World, hub: _Hub,
                   sub: HubSubscription, faults: HubFaults) -> None:
    parts = urlsplit(sub.topic)
    base = f"{parts.scheme}://{parts.netloc}"
    target = _target(sub.topic)
    kind = target[0] if target else "rss"
    hub_url = f"{base}{HUB_PATH}"
    body, media, _ = _render(world, kind, sub.source_id, sub.topic, base, hub_url)
    headers = {"Content-Type": media,
               "Link": f'<{hub_url}>; rel="hub", <{sub.topic}>; rel="self"'}
    signature = _signature(sub.secret, body, faults)
    if signature is not None:
        headers["X-Hub-Signature"] = signature
    status = 0
    with contextlib.suppress(httpx.HTTPError):
        status = (await client.post(sub.callback, content=body, headers=headers)).status_code
    with world.lock:
        held = hub.subs.get((sub.callback, sub.topic))
        if held is not None:
            held.deliveries += 1
        hub.events.append(HubEvent("delivered", "subscribe", sub.topic, sub.callback, status,
                                   sub.lease_seconds, time.monotonic()))


def websub_routes() -> list[BaseRoute]:
    """The hub and the feeds that advertise it."""
    return [
        Route(HUB_PATH, hub_endpoint, methods=["POST"]),
        Route(FEEDS_PATH + "/{kind}/{source_id}", websub_feed, methods=["GET"]),
    ]
