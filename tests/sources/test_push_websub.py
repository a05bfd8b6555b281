"""WebSub push against the real simulator's hub on loopback: discovery, subscription and its
verification, signed deliveries ringing the source, renewals, unsubscribing on the way out,
and the secret kept out of every log and of ``status()``."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import io
import logging
import signal
import socket
import time
from collections.abc import AsyncIterator, Callable, Iterator
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest

from crisiscomms import logs
from crisiscomms.adapters.sources.push import websub
from crisiscomms.adapters.sources.push.base import PushContext
from crisiscomms.adapters.sources.push.websub import WebSubConnection, signature_ok
from crisiscomms.adapters.sources.push.websub_discovery import advertised, usable_url
from crisiscomms.domain.clock import FixedClock
from crisiscomms.domain.config import SourceConfig
from crisiscomms.domain.models import Doorbell, SourceKind
from crisiscomms.settings import PushSettings
from crisiscomms.simulator import RunningSimulator, World, serve
from crisiscomms.simulator.routes_websub import (
    feed_url,
    hub_events,
    hub_subscriptions,
    set_hub_faults,
)

pytestmark = pytest.mark.anyio

T0 = datetime(2026, 1, 5, 10, 0, tzinfo=UTC)
WAIT = 5.0  # how long a condition may take before the test gives up (not a speed check)


@pytest.fixture(scope="module")
def sim_server() -> Iterator[RunningSimulator]:
    with serve(World(FixedClock(T0))) as sim:
        yield sim


@pytest.fixture
def world(sim_server: RunningSimulator) -> World:
    w = World(FixedClock(T0))
    sim_server.replace_world(w)
    return w


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def feed(source_id: str, url: str, kind: SourceKind = SourceKind.RSS) -> SourceConfig:
    return SourceConfig(id=source_id, agency="Test", kind=kind, url=url)


def push_settings(port: int, **kw: Any) -> PushSettings:
    return PushSettings(websub_callback_url=f"http://127.0.0.1:{port}/websub",
                        websub_listen=f"127.0.0.1:{port}", websub_lease_seconds=600, **kw)


def connection(feeds: list[SourceConfig]) -> WebSubConnection:
    (conn,) = websub.build(feeds, PushContext(push_settings(free_port()), allow_private=True))
    assert isinstance(conn, WebSubConnection)
    conn.unsubscribe_timeout_seconds = 2.0
    return conn


@contextlib.asynccontextmanager
async def running(conn: WebSubConnection) -> AsyncIterator[list[Doorbell]]:
    bells: list[Doorbell] = []
    task = asyncio.create_task(conn.run(bells.append))
    try:
        yield bells
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def until(what: Callable[[], Any], timeout: float = WAIT) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = what()
        if got:
            return got
        await asyncio.sleep(0.02)
    raise AssertionError("condition not met in time")


def pushed(bells: list[Doorbell], source_id: str) -> list[Doorbell]:
    return [b for b in bells if b.reason == "pushed" and source_id in b.source_ids]


def connected(conn: WebSubConnection, world: World | None = None) -> Callable[[], bool]:
    """Connected, and (with ``world``) the hub has recorded every verification it made (it
    does so once our answer reached it, just after we counted the subscription active)."""
    def done() -> bool:
        if world is not None:
            asked = [e for e in hub_events(world) if e.what == "requested"]
            answered = [e for e in hub_events(world) if e.what in ("verified", "refused")]
            if len(answered) < len(asked):
                return False
        return conn.status().connected
    return done


# -- build ------------------------------------------------------------------------------------

def test_built_only_with_a_usable_callback_url() -> None:
    feeds = [feed("met", "https://example.gov.uk/feed"),
             feed("ea", "https://example.gov.uk/cap", SourceKind.CAP),
             SourceConfig(id="x1", agency="T", kind=SourceKind.X, handle="a", x_user_id="1")]
    assert websub.build(feeds, PushContext(PushSettings())) == []
    public_http = PushSettings(websub_callback_url="http://hooks.example.org/websub")
    assert websub.build(feeds, PushContext(public_http, allow_private=True)) == []
    loopback = PushSettings(websub_callback_url="http://127.0.0.1:8780/websub")
    assert websub.build(feeds, PushContext(loopback)) == []
    assert len(websub.build(feeds, PushContext(loopback, allow_private=True))) == 1
    (conn,) = websub.build(feeds, PushContext(PushSettings(
        websub_callback_url="https://hooks.example.org/websub")))
    assert conn.source_ids == ("met", "ea") and conn.kind == "websub"
    assert websub.KINDS == (SourceKind.RSS, SourceKind.CAP)


def test_discovery_prefers_link_headers_and_reads_atom_links() -> None:
    body = (b'<?xml version="1.0"?><rss version="2.0" xmlns:atom="http://www.w3.org/2005/Atom">'
            b'<channel><atom:link rel="hub" href="https://body.example/hub"/>'
            b'<atom:link rel="self" href="/feed.xml"/><item><atom:link rel="hub" '
            b'href="https://item.example/hub"/></item></channel></rss>')
    found = advertised({}, body, "https://pub.example/x")
    assert (found.hub, found.topic) == ("https://body.example/hub", "https://pub.example/feed.xml")
    headers = {"link": '<https://hdr.example/hub>; rel="hub", <https://pub.example/t,1>; rel=self'}
    found = advertised(headers, body, "https://pub.example/x")
    assert (found.hub, found.topic) == ("https://hdr.example/hub", "https://pub.example/t,1")
    assert advertised({}, b"<rss><channel/></rss>", "https://p.example/f").hub is None
    assert advertised({}, b"not xml", "https://p.example/f").topic == "https://p.example/f"
    assert usable_url("https://hub.example/", False)
    assert not usable_url("http://hub.example/", True)
    assert usable_url("http://127.0.0.1:9/hub", True) and not usable_url("http://127.0.0.1/", False)


@pytest.mark.parametrize("method", ["sha1", "sha256", "sha384", "sha512"])
def test_signatures_of_every_method_the_spec_allows(method: str) -> None:
    body = b"<feed/>"
    digest = hmac.new(b"k3y", body, getattr(hashlib, method)).hexdigest()
    assert signature_ok("k3y", f"{method}={digest}", body)
    assert signature_ok("k3y", f"{method.upper()}={digest.upper()}", body)
    assert not signature_ok("k3y", f"{method}={digest}", body + b" ")
    assert not signature_ok("other", f"{method}={digest}", body)
    assert not signature_ok("k3y", digest, body)
    assert not signature_ok("k3y", f"md5={hashlib.md5(body).hexdigest()}", body)
    assert not signature_ok("k3y", f"{method}=\u00e9", body)
    assert not signature_ok("k3y", None, body)


# -- against the simulator's hub ---------------------------------------------------------------

async def test_subscription_is_verified_and_connected_rings_the_catch_up(
    world: World, sim_server: RunningSimulator
) -> None:
    topic = feed_url(sim_server.base_url, "rss", "met")
    conn = connection([feed("met", topic)])
    handlers = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    async with running(conn) as bells:
        await until(connected(conn, world))
        # uvicorn runs inside the watcher's loop: the watcher's signal handlers stay its own
        assert {sig: signal.getsignal(sig) for sig in handlers} == handlers
        (sub,) = hub_subscriptions(world)
        assert sub.active and sub.topic == topic and sub.verified == 1
        assert sub.lease_seconds == 600
        assert sub.callback.startswith(conn._callback + "/")
        assert bells[0] == Doorbell(("met",), reason="connected", via="websub")
        assert conn.status().source_ids == ("met",)


async def test_a_new_item_rings_that_source(world: World, sim_server: RunningSimulator) -> None:
    conn = connection([feed("met", feed_url(sim_server.base_url, "rss", "met")),
                       feed("ea", feed_url(sim_server.base_url, "cap", "ea"), SourceKind.CAP)])
    async with running(conn) as bells:
        await until(connected(conn, world))
        published = time.monotonic()
        world.add_item("ea", "cap", T0, {"identifier": "A1", "headline": "Flood warning"})
        (bell,) = await until(lambda: pushed(bells, "ea"))
        latency = time.monotonic() - published
        assert bell.source_ids == ("ea",) and bell.via == "websub"
        assert not pushed(bells, "met")
        assert conn.status().events == 1
    print(f"websub: published -> rung in {latency:.3f} s")


@pytest.mark.parametrize("fault", ["bad_signature", "unsigned"])
async def test_a_badly_signed_or_unsigned_delivery_rings_nothing_but_gets_2xx(
    world: World, sim_server: RunningSimulator, fault: str
) -> None:
    set_hub_faults(world, **{fault: True})
    conn = connection([feed("met", feed_url(sim_server.base_url, "rss", "met"))])
    async with running(conn) as bells:
        await until(connected(conn, world))
        world.add_item("met", "rss", T0, {"guid": "g1", "title": "Red warning"})
        (event,) = await until(lambda: [e for e in hub_events(world) if e.what == "delivered"])
        assert 200 <= event.status < 300
        await asyncio.sleep(0.05)
        assert pushed(bells, "met") == []


async def test_verification_gets_for_unknown_topics_tokens_or_modes_get_404(
    world: World, sim_server: RunningSimulator
) -> None:
    topic = feed_url(sim_server.base_url, "rss", "met")
    conn = connection([feed("met", topic)])
    async with running(conn):
        await until(connected(conn, world))
        (sub,) = hub_subscriptions(world)
        base = sub.callback.rsplit("/", 1)[0]
        async with httpx.AsyncClient(timeout=5.0) as client:
            async def ask(url: str, **q: str) -> httpx.Response:
                return await client.get(url, params={"hub.challenge": "c1", **q})

            other = await ask(sub.callback, **{"hub.mode": "subscribe",
                                               "hub.topic": topic + "-other"})
            token = await ask(base + "/not-a-token", **{"hub.mode": "subscribe",
                                                        "hub.topic": topic})
            mode = await ask(sub.callback, **{"hub.mode": "unsubscribe", "hub.topic": topic})
            good = await ask(sub.callback, **{"hub.mode": "subscribe", "hub.topic": topic,
                                              "hub.lease_seconds": "600"})
            forged = await client.post(base + "/not-a-token", content=b"x")
            denied = await client.get(sub.callback, params={
                "hub.mode": "denied", "hub.topic": topic, "hub.reason": "no"})
        assert (other.status_code, token.status_code, mode.status_code) == (404, 404, 404)
        assert denied.status_code == 200 and "denied" in conn.status().note
        assert other.text == token.text == mode.text == ""
        assert (good.status_code, good.text) == (200, "c1")
        assert forged.status_code == 404


async def test_deliveries_are_capped_and_checked_with_each_allowed_method(
    world: World, sim_server: RunningSimulator
) -> None:
    conn = connection([feed("met", feed_url(sim_server.base_url, "rss", "met"))])
    async with running(conn) as bells:
        await until(connected(conn, world))
        (sub,) = hub_subscriptions(world)
        secret = conn._subs["met"].secret
        async with httpx.AsyncClient(timeout=5.0) as client:
            big = b"x" * ((1 << 20) + 1)
            sign = "sha512=" + hmac.new(secret.encode(), big, hashlib.sha512).hexdigest()
            too_big = await client.post(sub.callback, content=big,
                                        headers={"X-Hub-Signature": sign})
            assert too_big.status_code == 413 and pushed(bells, "met") == []
            body = b"<rss/>"
            sign = "sha1=" + hmac.new(secret.encode(), body, hashlib.sha1).hexdigest()
            ok = await client.post(sub.callback, content=body, headers={"X-Hub-Signature": sign})
        assert ok.status_code == 202
        await until(lambda: pushed(bells, "met"))


async def test_a_short_lease_is_renewed(world: World, sim_server: RunningSimulator) -> None:
    # Granted 3 s (asked 600): renewed at 2.4 s, well before the hub lets it lapse.
    set_hub_faults(world, lease_seconds=3)
    conn = connection([feed("met", feed_url(sim_server.base_url, "rss", "met"))])
    conn.min_renew_seconds = 0.1
    async with running(conn) as bells:
        await until(connected(conn, world))
        await until(lambda: hub_subscriptions(world)[0].verified >= 2, timeout=WAIT + 3)
        assert not [e for e in hub_events(world) if e.what == "expired"]
        world.add_item("met", "rss", T0, {"guid": "g1", "title": "Red warning"})
        await until(lambda: pushed(bells, "met"))
        requests = [e for e in hub_events(world) if e.what == "requested"]
        assert [e.mode for e in requests] == ["subscribe", "subscribe"]
        assert requests[1].at - requests[0].at > 2.0  # at 80% of the lease, not sooner


async def test_a_feed_without_a_hub_is_left_out_and_polled(
    world: World, sim_server: RunningSimulator
) -> None:
    conn = connection([feed("plain", sim_server.url_for("rss", "plain")),
                       feed("met", feed_url(sim_server.base_url, "rss", "met"))])
    async with running(conn) as bells:
        await until(connected(conn, world))
        assert conn.source_ids == ("met",)
        status = conn.status()
        assert status.source_ids == ("met",)
        assert "plain" in status.note and "no hub" in status.note
        assert bells[0].source_ids == ("met",)
        assert [s.topic for s in hub_subscriptions(world)] == [
            feed_url(sim_server.base_url, "rss", "met")]


async def test_cancel_unsubscribes_and_stops_the_server(
    world: World, sim_server: RunningSimulator
) -> None:
    conn = connection([feed("met", feed_url(sim_server.base_url, "rss", "met"))])
    async with running(conn):
        await until(connected(conn, world))
        assert hub_subscriptions(world)
        address = conn.listening
    assert address is not None and conn.listening is None
    assert hub_subscriptions(world) == []
    assert [e.mode for e in hub_events(world) if e.what == "verified"] == [
        "subscribe", "unsubscribe"]
    with pytest.raises(OSError), socket.create_connection(address, timeout=1.0):
        pass


async def test_a_hub_that_refuses_is_retried_and_said_in_the_status(
    world: World, sim_server: RunningSimulator
) -> None:
    base = sim_server.base_url
    # A topic the simulated hub does not serve: the hub answers 400.
    conn = connection([feed("met", feed_url(base, "rss", "met"))])
    conn.retry_base_seconds = 60.0
    original = websub.discover

    async def wrong_topic(*a: Any, **kw: Any) -> Any:
        found = await original(*a, **kw)
        return type(found)(found.hub, "http://elsewhere.example/feed")

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(websub, "discover", wrong_topic)
        async with running(conn) as bells:
            await until(connected(conn, world))
            status = conn.status()
            assert status.connected and "HTTP 400" in status.note
            assert "polled meanwhile" in status.note
            assert bells[0].source_ids == ("met",)


async def test_the_secret_never_reaches_a_log_or_the_status(
    world: World, sim_server: RunningSimulator, caplog: pytest.LogCaptureFixture
) -> None:
    stream = io.StringIO()
    logs.configure("debug", "json", stream)
    for name in ("", "httpx", "httpcore", "uvicorn", "uvicorn.error", "crisiscomms"):
        caplog.set_level(logging.DEBUG, logger=name or None)
    set_hub_faults(world, lease_seconds=1)
    conn = connection([feed("met", feed_url(sim_server.base_url, "rss", "met")),
                       feed("plain", sim_server.url_for("rss", "plain"))])
    conn.min_renew_seconds = 0.1
    async with running(conn) as bells:
        await until(connected(conn, world))
        secret, token = conn._subs["met"].secret, conn._subs["met"].token
        world.add_item("met", "rss", T0, {"guid": "g1", "title": "Red warning"})
        await until(lambda: pushed(bells, "met"))
        set_hub_faults(world, lease_seconds=1, bad_signature=True)
        world.add_item("met", "rss", T0, {"guid": "g2", "title": "Amber warning"})
        await until(lambda: len([e for e in hub_events(world) if e.what == "delivered"]) >= 2)
        await until(lambda: hub_subscriptions(world)[0].verified >= 2)
        shown = repr(conn.status()) + repr(conn._subs)
    text = stream.getvalue() + caplog.text + "".join(repr(r.__dict__) for r in caplog.records)
    assert "push.websub_subscribed" in text  # the capture did see our events
    assert secret not in text
    assert secret not in shown and token not in shown
    # The callback token is in the URL the simulated hub (an httpx client in this process)
    # logs as it calls back; nothing of ours logs it.
    ours = [line for line in stream.getvalue().splitlines() if "HTTP Request:" not in line]
    ours += [r.getMessage() for r in caplog.records if not r.name.startswith("httpx")]
    assert not [line for line in ours if token in line]


async def test_a_slow_feed_delays_connected_no_longer_than_the_wait_and_rings_later(
    world: World, sim_server: RunningSimulator
) -> None:
    from crisiscomms.simulator import Faults

    world.set_faults(Faults(slow_seconds=1.5, paths=("/websub/feeds/rss/slow",)))
    conn = connection([feed("met", feed_url(sim_server.base_url, "rss", "met")),
                       feed("slow", feed_url(sim_server.base_url, "rss", "slow"))])
    conn.verify_wait_seconds = 0.3
    async with running(conn) as bells:
        await until(connected(conn))
        assert conn._subs["slow"].state == "new"  # still discovering when connected() rang
        first = bells[0]
        assert first.reason == "connected" and "met" in first.source_ids
        later = await until(lambda: [b for b in bells[1:] if b.source_ids == ("slow",)])
        assert later[0].reason == "connected"  # its own catch-up, once push works for it
        assert conn._subs["slow"].state == "active"


async def test_a_cancel_that_arrives_with_a_wake_up_still_ends_the_connection(
    world: World, sim_server: RunningSimulator
) -> None:
    """Python 3.11's ``asyncio.wait_for`` returns the awaited result and drops the cancel when
    both land in one turn of the loop (gh-86296): the watcher's stop then waited for ever on
    a connection that had gone back to sleep (seen once as a hung test teardown)."""
    conn = connection([feed("met", feed_url(sim_server.base_url, "rss", "met"))])
    task = asyncio.create_task(conn.run(lambda bell: None))
    try:
        await until(connected(conn, world))
        await asyncio.sleep(0.05)  # back in its loop, waiting for the next renewal or wake-up
        conn._wake.set()  # a delivery or a verification in the same turn as the stop
        task.cancel()
        done, _ = await asyncio.wait({task}, timeout=WAIT)
        assert task in done, "the cancel was lost: the connection is still running"
        assert task.cancelled()
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.wait({task}, timeout=WAIT)
