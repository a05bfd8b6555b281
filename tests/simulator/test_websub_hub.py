"""The simulated WebSub hub: subscribe, verify with a challenge, deliver signed, faults.

The subscriber here is a tiny threaded HTTP server standing in for a callback: it echoes
the challenge (or not) and records what the hub delivered.
"""

from __future__ import annotations

import hashlib
import hmac
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest

from crisiscomms.simulator import RunningSimulator, World, render
from crisiscomms.simulator.routes_websub import (
    HubFaults,
    advertise,
    feed_url,
    hub_events,
    hub_subscriptions,
    set_hub_faults,
)

from .conftest import T0

WAIT = 5.0  # seconds a condition may take before the test gives up
SECRET = "s3cret-for-the-hub-test"


@dataclass
class Callback:
    """What the fake subscriber saw, and how it answers."""

    base: str = ""
    echo: bool = True
    gets: list[dict[str, str]] = field(default_factory=list)
    posts: list[tuple[dict[str, str], bytes]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)


@pytest.fixture
def callback() -> Iterator[Callback]:
    state = Callback()

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: Any) -> None:
            return

        def do_GET(self) -> None:
            query = {k: v[0] for k, v in parse_qs(urlsplit(self.path).query).items()}
            with state.lock:
                state.gets.append(query)
            body = (query.get("hub.challenge", "") if state.echo else "nope").encode()
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
            with state.lock:
                state.posts.append(({k.lower(): v for k, v in self.headers.items()}, body))
            self.send_response(202)
            self.send_header("Content-Length", "0")
            self.end_headers()

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    state.base = f"http://127.0.0.1:{server.server_address[1]}/cb/token1"
    try:
        yield state
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


def until(what: Callable[[], Any], timeout: float = WAIT) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = what()
        if got:
            return got
        time.sleep(0.02)
    raise AssertionError("condition not met in time")


def subscribe(client: httpx.Client, sim: RunningSimulator, cb: Callback, topic: str,
              mode: str = "subscribe", lease: int = 600) -> httpx.Response:
    return client.post("/websub/hub", data={
        "hub.mode": mode, "hub.topic": topic, "hub.callback": cb.base,
        "hub.secret": SECRET, "hub.lease_seconds": str(lease)})


def active(world: World) -> list[Any]:
    return [s for s in hub_subscriptions(world) if s.active]


def test_the_feed_advertises_the_hub_in_headers_and_body(
    world: World, sim: RunningSimulator, client: httpx.Client
) -> None:
    world.add_item("met", "rss", T0, {"guid": "g1", "title": "Warning"})
    url = feed_url(sim.base_url, "rss", "met")
    resp = client.get(url)
    assert resp.status_code == 200
    links = resp.headers.get_list("link")
    assert f'<{sim.base_url}/websub/hub>; rel="hub"' in links
    assert f'<{url}>; rel="self"' in links
    assert f'<atom:link rel="hub" href="{sim.base_url}/websub/hub"/>' in resp.text
    assert f'<atom:link rel="self" href="{url}"/>' in resp.text
    for kind in ("atom", "cap"):
        body = client.get(feed_url(sim.base_url, kind, "met")).text
        assert f'<link rel="hub" href="{sim.base_url}/websub/hub"/>' in body
    advertise(world, "met", False)
    resp = client.get(url)
    assert "link" not in resp.headers and "hub" not in resp.text


def test_the_ordinary_feeds_do_not_change(
    world: World, sim: RunningSimulator, client: httpx.Client
) -> None:
    world.add_item("met", "rss", T0, {"guid": "g1", "title": "Warning"})
    for kind in ("rss", "atom", "cap"):
        resp = client.get(sim.url_for(kind, "met"))
        assert "link" not in resp.headers
        assert 'rel="hub"' not in resp.text
    items = world.visible_items("rss", "met")
    assert render.rss_document("met", "u", items, T0) == render.rss_document(
        "met", "u", items, T0, hub=None)
    assert b"xmlns:atom" not in render.rss_document("met", "u", items, T0)


def test_a_subscription_is_verified_with_an_echoed_challenge(
    world: World, sim: RunningSimulator, client: httpx.Client, callback: Callback
) -> None:
    topic = feed_url(sim.base_url, "rss", "met")
    assert subscribe(client, sim, callback, topic).status_code == 202
    until(lambda: active(world))
    query = callback.gets[0]
    assert query["hub.mode"] == "subscribe" and query["hub.topic"] == topic
    assert query["hub.lease_seconds"] == "600" and len(query["hub.challenge"]) >= 16
    (sub,) = hub_subscriptions(world)
    assert sub.verified == 1 and sub.lease_seconds == 600 and sub.secret == ""
    assert SECRET not in repr(hub_subscriptions(world)) + repr(hub_events(world))


def test_a_callback_that_does_not_echo_is_not_subscribed(
    world: World, sim: RunningSimulator, client: httpx.Client, callback: Callback
) -> None:
    callback.echo = False
    subscribe(client, sim, callback, feed_url(sim.base_url, "rss", "met"))
    until(lambda: [e for e in hub_events(world) if e.what == "refused"])
    assert not active(world)


def test_unknown_topics_and_modes_are_refused(
    world: World, sim: RunningSimulator, client: httpx.Client, callback: Callback
) -> None:
    assert subscribe(client, sim, callback, "http://elsewhere.example/feed").status_code == 400
    assert subscribe(client, sim, callback, feed_url(sim.base_url, "rss", "m"),
                     mode="watch").status_code == 400
    assert client.post("/websub/hub", data={"hub.mode": "publish",
                                            "hub.url": "x"}).status_code == 204


def test_a_new_item_is_delivered_signed_with_the_secret(
    world: World, sim: RunningSimulator, client: httpx.Client, callback: Callback
) -> None:
    world.add_item("met", "rss", T0, {"guid": "g1", "title": "Old"})
    topic = feed_url(sim.base_url, "rss", "met")
    subscribe(client, sim, callback, topic)
    until(lambda: active(world))
    assert callback.posts == []  # what was there before the subscription is not news
    world.add_item("met", "rss", T0, {"guid": "g2", "title": "Red warning"})
    headers, body = until(lambda: callback.posts)[0]
    assert b"Red warning" in body and headers["content-type"].startswith("application/rss")
    expected = hmac.new(SECRET.encode(), body, hashlib.sha256).hexdigest()
    assert headers["x-hub-signature"] == f"sha256={expected}"
    assert f'<{topic}>; rel="self"' in headers["link"]


@pytest.mark.parametrize("fault", ["bad_signature", "unsigned"])
def test_faults_sign_wrongly_or_not_at_all(
    world: World, sim: RunningSimulator, client: httpx.Client, callback: Callback, fault: str
) -> None:
    set_hub_faults(world, **{fault: True})
    subscribe(client, sim, callback, feed_url(sim.base_url, "rss", "met"))
    until(lambda: active(world))
    world.add_item("met", "rss", T0, {"guid": "g2", "title": "Red warning"})
    headers, body = until(lambda: callback.posts)[0]
    expected = "sha256=" + hmac.new(SECRET.encode(), body, hashlib.sha256).hexdigest()
    assert headers.get("x-hub-signature") != expected
    assert ("x-hub-signature" in headers) == (fault == "bad_signature")


def test_a_hub_that_stops_delivering_delivers_nothing(
    world: World, sim: RunningSimulator, client: httpx.Client, callback: Callback
) -> None:
    set_hub_faults(world, HubFaults(deliver=False))
    subscribe(client, sim, callback, feed_url(sim.base_url, "rss", "met"))
    until(lambda: active(world))
    world.add_item("met", "rss", T0, {"guid": "g2", "title": "Red warning"})
    time.sleep(0.3)  # several of the hub's looks at the feed
    assert callback.posts == []


def test_a_short_lease_is_granted_and_runs_out(
    world: World, sim: RunningSimulator, client: httpx.Client, callback: Callback
) -> None:
    set_hub_faults(world, lease_seconds=1)
    subscribe(client, sim, callback, feed_url(sim.base_url, "rss", "met"), lease=86_400)
    until(lambda: active(world))
    assert callback.gets[0]["hub.lease_seconds"] == "1"
    until(lambda: [e for e in hub_events(world) if e.what == "expired"])
    assert not active(world)
    world.add_item("met", "rss", T0, {"guid": "g2", "title": "Red warning"})
    time.sleep(0.2)
    assert callback.posts == []


def test_unsubscribe_is_verified_then_removes_the_subscription(
    world: World, sim: RunningSimulator, client: httpx.Client, callback: Callback
) -> None:
    topic = feed_url(sim.base_url, "cap", "ea")
    subscribe(client, sim, callback, topic)
    until(lambda: active(world))
    assert subscribe(client, sim, callback, topic, mode="unsubscribe").status_code == 202
    until(lambda: not hub_subscriptions(world))
    assert callback.gets[-1]["hub.mode"] == "unsubscribe"
    assert "hub.lease_seconds" not in callback.gets[-1]
