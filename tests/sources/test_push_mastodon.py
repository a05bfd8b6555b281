"""Mastodon streaming push (``push/mastodon.py``) against the real simulator.

The connection only rings: these tests check which sources it rings for, with which
expected status id, and how it reconnects, refuses and keeps its token to itself.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import AsyncIterator, Callable, Iterator
from datetime import UTC, datetime

import httpx
import pytest
import structlog
from pydantic import SecretStr
from structlog.testing import capture_logs

from crisiscomms.adapters.sources import push
from crisiscomms.adapters.sources.push import mastodon as mpush
from crisiscomms.adapters.sources.push.base import PushContext
from crisiscomms.domain.clock import FixedClock
from crisiscomms.domain.config import SourceConfig
from crisiscomms.domain.errors import PermanentSourceError
from crisiscomms.domain.models import Doorbell, SourceKind
from crisiscomms.settings import PushSettings
from crisiscomms.simulator import RunningSimulator, World, serve
from crisiscomms.simulator.routes_mastodon_stream import (
    drop_mastodon_streams,
    mastodon_streams,
    refuse_mastodon_streams,
    send_mastodon_stream_event,
    set_mastodon_heartbeat,
    set_mastodon_streaming_url,
)

pytestmark = pytest.mark.anyio

T0 = datetime(2026, 1, 5, 10, 0, tzinfo=UTC)
TOKEN = "reader-token-5f1c9e"
STREAM = "/mastodon/api/v1/streaming/user"
WAIT = 10.0  # seconds a test waits for something that should happen at once


def source(sid: str, account: str) -> SourceConfig:
    return SourceConfig(id=sid, agency=sid, kind=SourceKind.MASTODON, account=account)


ESSEX = source("essex-fire", "https://mastodon.example/@essexfire")  # local to the instance
LFB = source("lfb", "https://fire.example/@LFB")  # a remote account
SOURCES = (ESSEX, LFB)


@pytest.fixture(scope="module")
def sim_server() -> Iterator[RunningSimulator]:
    with serve(World(FixedClock(T0))) as sim:
        yield sim


@pytest.fixture
def clock() -> FixedClock:
    return FixedClock(T0)


@pytest.fixture
def world(clock: FixedClock, sim_server: RunningSimulator) -> World:
    w = World(clock)
    set_mastodon_heartbeat(w, 0.05)
    sim_server.replace_world(w)
    return w


def settings(sim: RunningSimulator, **kw: float) -> PushSettings:
    values: dict[str, float] = {"reconnect_base_seconds": 0.05, "reconnect_cap_seconds": 0.2,
                                "stable_seconds": 30.0, "idle_timeout_seconds": 2.0, **kw}
    return PushSettings(mastodon_stream_base=sim.url_for("mastodon"), **values)


def connection(sim: RunningSimulator, sources: tuple[SourceConfig, ...] = SOURCES, *,
               allow_private: bool = True, **kw: float) -> mpush.MastodonStream:
    ctx = PushContext(settings(sim, **kw), mastodon_token=SecretStr(TOKEN),
                      allow_private=allow_private)
    built = mpush.build(sources, ctx)
    assert len(built) == 1
    conn = built[0]
    assert isinstance(conn, mpush.MastodonStream)
    conn.rng = random.Random(1)
    return conn


class Bells:
    def __init__(self) -> None:
        self.got: list[Doorbell] = []

    def __call__(self, bell: Doorbell) -> None:
        self.got.append(bell)

    def pushed(self) -> list[tuple[tuple[str, ...], str | None]]:
        return [(b.source_ids, b.expect_id) for b in self.got if b.reason == "pushed"]

    def connects(self) -> int:
        return sum(1 for b in self.got if b.reason == "connected")


async def until(what: Callable[[], object], timeout: float = WAIT) -> None:
    """Wait (event-driven, bounded) until ``what()`` is true."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not what():
        if loop.time() > deadline:
            raise AssertionError("timed out waiting")
        await asyncio.sleep(0.01)


@pytest.fixture
async def running() -> AsyncIterator[Callable[[mpush.MastodonStream], Bells]]:
    tasks: list[asyncio.Task[None]] = []

    def start(conn: mpush.MastodonStream) -> Bells:
        bells = Bells()
        tasks.append(asyncio.create_task(conn.run(bells)))
        return bells

    yield start
    for task in tasks:
        task.cancel()
    for task in tasks:
        with pytest.raises(asyncio.CancelledError):
            await task


def add_status(world: World, acct: str, text: str = "Road closed") -> str:
    return world.add_item(acct, "mastodon", world.now(), {"text": text})


# -- rings ----------------------------------------------------------------------------------

async def test_a_new_status_rings_its_source_with_the_status_id(
    sim_server: RunningSimulator, world: World, running: Callable[..., Bells]
) -> None:
    conn = connection(sim_server)
    bells = running(conn)
    await until(lambda: bells.connects() == 1)
    assert bells.got[0] == Doorbell(("essex-fire", "lfb"), reason="connected",
                                    via=conn.key)
    started = asyncio.get_running_loop().time()
    local = add_status(world, "essexfire")
    await until(lambda: bells.pushed())
    latency = asyncio.get_running_loop().time() - started
    remote = add_status(world, "LFB@fire.example")
    await until(lambda: len(bells.pushed()) == 2)
    assert bells.pushed() == [(("essex-fire",), local), (("lfb",), remote)]
    status = conn.status()
    assert status.connected and status.events == 2 and status.kind == "mastodon"
    print(f"pushed ring {latency * 1000:.0f} ms after the status became visible")


async def test_statuses_by_other_accounts_ring_nothing(
    sim_server: RunningSimulator, world: World, running: Callable[..., Bells]
) -> None:
    bells = running(connection(sim_server))
    await until(lambda: bells.connects() == 1)
    add_status(world, "someone")  # followed by the reader account, but not a source
    add_status(world, "essexfire@elsewhere.example")  # the same name on another host
    marker = add_status(world, "essexfire")
    await until(lambda: bells.pushed())
    assert bells.pushed() == [(("essex-fire",), marker)]


async def test_a_boost_rings_nothing_for_the_boosted_source(
    sim_server: RunningSimulator, world: World, running: Callable[..., Bells]
) -> None:
    original = add_status(world, "essexfire", "before the stream opened")
    bells = running(connection(sim_server))
    await until(lambda: bells.connects() == 1)
    async with httpx.AsyncClient(base_url=sim_server.base_url) as client:
        boosted = await client.post(f"/mastodon/api/v1/statuses/{original}/reblog",
                                    headers={"Authorization": "Bearer ours"})
    assert boosted.json()["reblog"]["account"]["acct"] == "essexfire"
    marker = add_status(world, "LFB@fire.example")
    await until(lambda: bells.pushed())
    assert bells.pushed() == [(("lfb",), marker)]  # the boost (by nhscomms) rang nothing


async def test_a_boost_by_a_source_rings_the_booster(
    sim_server: RunningSimulator, world: World, running: Callable[..., Bells]
) -> None:
    original = add_status(world, "essexfire", "before the stream opened")
    booster = source("nhs", "https://mastodon.example/@nhscomms")  # our account, as a source
    bells = running(connection(sim_server, (ESSEX, booster)))
    await until(lambda: bells.connects() == 1)
    async with httpx.AsyncClient(base_url=sim_server.base_url) as client:
        boosted = await client.post(f"/mastodon/api/v1/statuses/{original}/reblog",
                                    headers={"Authorization": "Bearer ours"})
    await until(lambda: bells.pushed())
    # Rung, but with nothing to expect: the poll drops boosts, so waiting for this id
    # would only poll again in vain.
    assert boosted.json()["id"]
    assert bells.pushed() == [(("nhs",), None)]


async def test_a_reply_to_someone_else_rings_without_an_expected_id(
    sim_server: RunningSimulator, world: World, running: Callable[..., Bells]
) -> None:
    bells = running(connection(sim_server))
    await until(lambda: bells.connects() == 1)
    first = add_status(world, "essexfire", "own thread, 1/2")
    await until(lambda: len(bells.pushed()) == 1)
    world.add_item("essexfire", "mastodon", world.now(),
                   {"id": "900000000000000001", "text": "@someone thanks",
                    "in_reply_to_id": "5", "in_reply_to_account_id": "12345"})
    await until(lambda: len(bells.pushed()) == 2)
    own = world.add_item("essexfire", "mastodon", world.now(),
                         {"text": "own thread, 2/2", "in_reply_to_id": first})
    await until(lambda: len(bells.pushed()) == 3)
    assert bells.pushed() == [(("essex-fire",), first), (("essex-fire",), None),
                              (("essex-fire",), own)]


async def test_an_edit_rings_and_a_delete_does_not(
    sim_server: RunningSimulator, world: World, running: Callable[..., Bells]
) -> None:
    first = add_status(world, "essexfire", "before the stream opened")
    bells = running(connection(sim_server))
    await until(lambda: bells.connects() == 1)
    world.remove_item("essexfire", "mastodon", first)
    second = add_status(world, "LFB@fire.example")
    await until(lambda: bells.pushed())
    world.edit_item("LFB@fire.example", "mastodon", second, {"text": "Road open"})
    await until(lambda: len(bells.pushed()) == 2)
    assert bells.pushed() == [(("lfb",), second), (("lfb",), None)]


async def test_hostile_events_are_ignored_and_the_stream_goes_on(
    sim_server: RunningSimulator, world: World, running: Callable[..., Bells]
) -> None:
    conn = connection(sim_server)
    bells = running(conn)
    await until(lambda: bells.connects() == 1)
    essex_account = {"acct": "essexfire", "url": "https://mastodon.example/@essexfire"}
    import json

    for data in ["not json", "[1, 2]", '"a string"', "null", "{}",
                 json.dumps({"id": 5, "account": essex_account}),  # id not a string
                 json.dumps({"id": "1" * 500, "account": essex_account}),  # id too long
                 json.dumps({"id": "77", "account": "essexfire"}),
                 json.dumps({"id": "78", "account": {"acct": 5, "url": ["x"]}}),
                 "[" * 100_000 + "]" * 100_000]:
        send_mastodon_stream_event(world, "update", data)
    send_mastodon_stream_event(world, "", "", raw="event: update\ndata: " + "x" * 3_000_000
                               + "\n\n")
    send_mastodon_stream_event(world, "", "", raw="data: " + "y" * 100 + "\n" * 1)
    send_mastodon_stream_event(world, "", "", raw="\n\0\r\n:\xff\n\nevent: update\n\n")
    send_mastodon_stream_event(world, "", "", raw="event: update\ndata: {\"id\"\ndata: "
                               + "z" * 2_000_000 + "\n\n")
    marker = add_status(world, "essexfire")
    await until(lambda: bells.pushed())
    assert bells.pushed() == [(("essex-fire",), marker)]
    assert mastodon_streams(world) == (1, 1)  # never reconnected
    assert conn.status().connected


# -- reconnecting ---------------------------------------------------------------------------

@pytest.mark.parametrize("abrupt", [False, True])
async def test_a_dropped_stream_reconnects_and_catches_up(
    sim_server: RunningSimulator, world: World, running: Callable[..., Bells], abrupt: bool
) -> None:
    conn = connection(sim_server)
    bells = running(conn)
    await until(lambda: bells.connects() == 1)
    drop_mastodon_streams(world, abrupt=abrupt)
    await until(lambda: bells.connects() == 2)
    assert mastodon_streams(world)[0] == 2
    assert conn.status().connected and conn.status().failures == 1
    marker = add_status(world, "essexfire")  # and it streams again
    await until(lambda: bells.pushed())
    assert bells.pushed() == [(("essex-fire",), marker)]


async def test_a_silent_stream_is_reconnected_after_the_idle_timeout(
    sim_server: RunningSimulator, world: World, running: Callable[..., Bells]
) -> None:
    conn = connection(sim_server, idle_timeout_seconds=0.3)
    with capture_logs() as logs:
        bells = running(conn)
        await until(lambda: bells.connects() == 1)
        set_mastodon_heartbeat(world, enabled=False)  # the stream stays open, but silent
        await until(lambda: bells.connects() == 2)
    down = [e for e in logs if e["event"] == "push.disconnected"]
    assert len(down) == 1 and "timed out" in down[0]["error"]
    assert mastodon_streams(world)[0] == 2


async def test_a_refused_token_is_named_retried_and_never_logged(
    sim_server: RunningSimulator, world: World, running: Callable[..., Bells],
    caplog: pytest.LogCaptureFixture,
) -> None:
    world.set_valid_tokens("mastodon", ["some-other-token"])
    conn = connection(sim_server)
    caplog.set_level(logging.DEBUG)
    with capture_logs() as logs:
        bells = running(conn)
        await until(lambda: conn.status().failures >= 3)  # retried, with backoff
        structlog.get_logger("t").debug("probe")
    status = conn.status()
    assert not status.connected and bells.got == []
    assert "401" in status.last_error and "token" in status.last_error
    assert "read:statuses" in status.last_error
    assert TOKEN not in repr(status)
    assert any(e["event"] == "probe" for e in logs)  # DEBUG events were captured
    assert logs and all(TOKEN not in repr(e) for e in logs)
    assert all(TOKEN not in r.getMessage() and TOKEN not in repr(r.args)
               for r in caplog.records)
    requests = [r for r in world.request_log if r.path == STREAM]
    assert len(requests) >= 3 and {r.status for r in requests} == {401}
    world.set_valid_tokens("mastodon", [TOKEN])  # put right: it connects on its own
    await until(lambda: bells.connects() == 1)
    assert conn.status().connected and conn.status().last_error == ""


async def test_a_scope_refusal_says_which_scope(
    sim_server: RunningSimulator, world: World, running: Callable[..., Bells]
) -> None:
    refuse_mastodon_streams(world, 403, "Access token does not have the required scopes")
    conn = connection(sim_server)
    running(conn)
    await until(lambda: conn.status().failures >= 1)
    assert "403" in conn.status().last_error and "read:statuses" in conn.status().last_error


async def test_a_server_error_is_retried(
    sim_server: RunningSimulator, world: World, running: Callable[..., Bells]
) -> None:
    refuse_mastodon_streams(world, 503)
    conn = connection(sim_server)
    bells = running(conn)
    await until(lambda: conn.status().failures >= 2)
    assert "503" in conn.status().last_error
    refuse_mastodon_streams(world, None)
    await until(lambda: bells.connects() == 1)


# -- where the token goes -------------------------------------------------------------------

async def test_a_streaming_host_on_another_domain_never_gets_the_token(
    sim_server: RunningSimulator, world: World, running: Callable[..., Bells]
) -> None:
    # localhost is this same simulator: a request to it would show in its log.
    set_mastodon_streaming_url(world, f"ws://localhost:{sim_server.port}/mastodon")
    conn = connection(sim_server)
    bells = running(conn)
    await until(lambda: conn.status().failures >= 2)
    assert "localhost" in conn.status().last_error
    assert "another domain" in conn.status().last_error
    assert [r for r in world.request_log if r.path == STREAM] == []
    assert bells.got == []


async def test_private_addresses_are_refused_unless_allowed(
    sim_server: RunningSimulator, world: World, running: Callable[..., Bells]
) -> None:
    conn = connection(sim_server, allow_private=False)
    running(conn)
    await until(lambda: conn.status().failures >= 1)
    assert "private" in conn.status().last_error
    assert world.request_log == []


@pytest.mark.parametrize(("base", "streaming", "expected"), [
    ("https://mastodon.social", "wss://streaming.mastodon.social",
     "https://streaming.mastodon.social/api/v1/streaming/user"),
    ("https://mastodon.social", "wss://mastodon.social/",
     "https://mastodon.social/api/v1/streaming/user"),
    ("https://mastodon.social", None, "https://mastodon.social/api/v1/streaming/user"),
    ("https://mastodon.social", "", "https://mastodon.social/api/v1/streaming/user"),
    ("https://mastodon.social", 42, "https://mastodon.social/api/v1/streaming/user"),
    ("https://social.example.gov.uk/", "wss://stream.example.gov.uk",
     "https://stream.example.gov.uk/api/v1/streaming/user"),
    ("http://127.0.0.1:8000/mastodon", "ws://127.0.0.1:8000/mastodon",
     "http://127.0.0.1:8000/mastodon/api/v1/streaming/user"),
])
def test_streaming_url_from_the_instance(base: str, streaming: object, expected: str) -> None:
    instance = {"configuration": {"urls": {"streaming": streaming}}}
    assert mpush.streaming_url(base, instance) == expected


@pytest.mark.parametrize(("base", "streaming", "why"), [
    ("https://mastodon.social", "wss://streaming.evil.example", "another domain"),
    ("https://a.gov.uk", "wss://b.gov.uk", "another domain"),  # gov.uk is a public suffix
    ("https://mastodon.social", "ws://streaming.mastodon.social", "https"),
    ("https://mastodon.social", "ftp://mastodon.social", "scheme"),
])
def test_streaming_urls_that_would_leak_the_token_are_refused(
    base: str, streaming: str, why: str
) -> None:
    instance = {"configuration": {"urls": {"streaming": streaming}}}
    with pytest.raises(PermanentSourceError, match=why):
        mpush.streaming_url(base, instance)


# -- building ---------------------------------------------------------------------------------

@pytest.mark.parametrize(("base", "token", "sources", "why"), [
    (None, TOKEN, SOURCES, "CRISISCOMMS_PUSH__MASTODON_STREAM_BASE"),
    ("https://mastodon.example", None, SOURCES, "CRISISCOMMS_MASTODON_STREAM_TOKEN"),
    ("https://mastodon.example", "", SOURCES, "CRISISCOMMS_MASTODON_STREAM_TOKEN"),
])
def test_no_connection_without_base_or_token(
    base: str | None, token: str | None, sources: tuple[SourceConfig, ...], why: str
) -> None:
    ctx = PushContext(PushSettings(mastodon_stream_base=base),
                      mastodon_token=None if token is None else SecretStr(token))
    with capture_logs() as logs:
        assert mpush.build(sources, ctx) == []
    assert len(logs) == 1 and "polled only" in logs[0]["note"] and why in logs[0]["note"]


def test_no_connection_without_mastodon_sources() -> None:
    rss = SourceConfig(id="met", agency="Met Office", kind=SourceKind.RSS,
                       url="https://example.org/feed")
    ctx = PushContext(PushSettings(mastodon_stream_base="https://mastodon.example"),
                      mastodon_token=SecretStr(TOKEN))
    with capture_logs() as logs:
        assert mpush.build([rss], ctx) == []
    assert all(TOKEN not in repr(e) for e in logs)


def test_one_connection_for_every_mastodon_source() -> None:
    rss = SourceConfig(id="met", agency="Met Office", kind=SourceKind.RSS,
                       url="https://example.org/feed")
    ctx = PushContext(PushSettings(mastodon_stream_base="https://mastodon.example"),
                      mastodon_token=SecretStr(TOKEN),
                      base_urls={"mastodon_stream": "http://127.0.0.1:1/mastodon"})
    built = push.build_push_listeners([rss, *SOURCES], ctx)
    assert [(c.kind, c.source_ids) for c in built] == [("mastodon", ("essex-fire", "lfb"))]
    assert SourceKind.MASTODON in push.PUSH_KINDS
    assert TOKEN not in repr(built[0].status())


def test_the_event_reader_never_holds_more_than_its_cap() -> None:
    reader = mpush.BoundedEvents(limit=1_000)
    got = reader.feed(":)\nevent: update\ndata: ")
    for _ in range(50):  # one line of 50 kB without an end, arriving in pieces
        got += reader.feed("x" * 1_000)
        assert sum(len(p) for p in reader._lines.buffer) <= 1_000
    got += reader.feed("x\ndata: more\n\nevent: update\ndata: {}\n\n")
    many = "".join(f"data: {'y' * 90}\n" for _ in range(30))  # many lines, one event
    got += reader.feed(f"event: update\n{many}\nevent: delete\ndata: 9\n\n")
    assert [(e.event, e.data) for e in got] == [("update", "{}"), ("delete", "9")]
    assert reader.dropped == 2


def test_a_simulator_override_streams_beside_its_rest_api() -> None:
    bad = source("bad", "https://mastodon.example/not-an-account")
    ctx = PushContext(PushSettings(mastodon_stream_base="https://mastodon.social"),
                      mastodon_token=SecretStr(TOKEN),
                      base_urls={"mastodon": "http://127.0.0.1:1/mastodon"})
    built = mpush.build([bad, ESSEX], ctx)
    assert len(built) == 1 and isinstance(built[0], mpush.MastodonStream)
    assert built[0].base == "http://127.0.0.1:1/mastodon"
    assert built[0].source_ids == ("essex-fire",)  # the bad one is polled only
    ctx = PushContext(PushSettings(), mastodon_token=SecretStr(TOKEN),
                      base_urls={"mastodon": "http://127.0.0.1:1/mastodon"})
    assert mpush.build([ESSEX], ctx) == []  # the polling override alone turns nothing on


async def test_the_pushed_id_is_the_one_the_sources_poll_reads(
    sim_server: RunningSimulator, world: World, running: Callable[..., Bells]
) -> None:
    """The doorbell's contract with the watcher: polling the rung source through its
    ordinary adapter finds the expected status (push never carries the update itself)."""
    from crisiscomms.adapters.sources.http import HttpFetcher
    from crisiscomms.adapters.sources.mastodon import MastodonSource
    from crisiscomms.domain.models import SourceState

    config = LFB.model_copy(update={"allow_private_network": True})
    bells = running(connection(sim_server))
    await until(lambda: bells.connects() == 1)
    new = add_status(world, "LFB@fire.example")
    await until(lambda: bells.pushed())
    ((rung,), expect_id), = bells.pushed()
    # A plain client: make_async_client's pinned transport (039433e) leaves a socket open
    # on aclose (a ResourceWarning at the next garbage collection), reported to its owner.
    async with httpx.AsyncClient(timeout=5.0) as client:
        poll = MastodonSource(config, HttpFetcher(client),
                              api_base=sim_server.url_for("mastodon"))
        result = await poll.poll(SourceState(source_id=rung), world.now())
    assert rung == config.id and expect_id == new
    assert [u.external_id for u in result.updates] == [expect_id]
