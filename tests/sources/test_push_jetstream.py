"""Bluesky Jetstream push (``push/jetstream.py``) against the real simulator.

The connection only rings: these tests check which sources it rings, with which expected
post URI, how it resolves handles, what it ignores, and how it reconnects (backoff, cursor,
the catch-up ring) and reports its status.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from structlog.testing import capture_logs

from crisiscomms.adapters.sources import push
from crisiscomms.adapters.sources.push import jetstream as js
from crisiscomms.adapters.sources.push.base import PushContext
from crisiscomms.domain.clock import FixedClock
from crisiscomms.domain.config import SourceConfig
from crisiscomms.domain.models import Doorbell, SourceKind
from crisiscomms.settings import PushSettings
from crisiscomms.simulator import RunningSimulator, World, serve
from crisiscomms.simulator.ids import did_for
from crisiscomms.simulator.routes_jetstream import (
    drop_jetstream,
    jetstream_identity,
    jetstream_log,
    jetstream_open,
    jetstream_send_raw,
    refuse_jetstream,
    set_handle,
    silence_jetstream,
)

pytestmark = pytest.mark.anyio

T0 = datetime(2026, 1, 5, 10, 0, tzinfo=UTC)
WAIT = 1.0  # a pushed post must ring within a second
POST = "app.bsky.feed.post"
ALICE, BOB, CAROL = "essexpolice.bsky.social", "essexfire.bsky.social", "other.bsky.social"


def source(sid: str, actor: str) -> SourceConfig:
    return SourceConfig(id=sid, agency=sid, kind=SourceKind.BLUESKY,
                        account=f"https://bsky.app/profile/{actor}")


POLICE = source("essex-police", ALICE)
FIRE = source("essex-fire", BOB)


@contextlib.contextmanager
def ws_simulator(world: World) -> Iterator[RunningSimulator]:
    """``serve(world)``: the simulator speaks WebSocket (uvicorn ``websockets-sansio``)."""
    with serve(world) as sim:
        yield sim


@pytest.fixture(scope="module")
def sim_server() -> Iterator[RunningSimulator]:
    with ws_simulator(World(FixedClock(T0))) as sim:
        yield sim


@pytest.fixture
def clock() -> FixedClock:
    return FixedClock(T0)


@pytest.fixture
def world(clock: FixedClock, sim_server: RunningSimulator) -> World:
    w = World(clock)
    for handle in (ALICE, BOB, CAROL):  # accounts the AppView knows
        w.add_item(handle, "bluesky", T0 - timedelta(hours=2), {"rkey": f"old{len(handle)}",
                                                                  "text": "old"})
    sim_server.replace_world(w)
    return w


def settings(**kw: Any) -> PushSettings:
    values: dict[str, Any] = {"reconnect_base_seconds": 0.05, "reconnect_cap_seconds": 0.2,
                              "stable_seconds": 30.0, "idle_timeout_seconds": 2.0, **kw}
    return PushSettings(**values)


def context(sim: RunningSimulator, **kw: Any) -> PushContext:
    return PushContext(settings(**kw), allow_private=True, base_urls={
        "jetstream": f"ws://127.0.0.1:{sim.port}/jetstream/subscribe",
        "bluesky": sim.url_for("bluesky")})


def listener(sim: RunningSimulator, sources: tuple[SourceConfig, ...] = (POLICE, FIRE),
             **kw: Any) -> js.JetstreamConnection:
    built = js.build(sources, context(sim, **kw))
    assert len(built) == 1
    conn = built[0]
    assert isinstance(conn, js.JetstreamConnection)
    conn.rng = random.Random(1)
    return conn


class Bells:
    """The doorbells rung, as they come."""

    def __init__(self) -> None:
        self.queue: asyncio.Queue[Doorbell] = asyncio.Queue()
        self.all: list[Doorbell] = []

    def __call__(self, bell: Doorbell) -> None:
        self.all.append(bell)
        self.queue.put_nowait(bell)

    async def next(self, timeout: float = WAIT) -> Doorbell:
        return await asyncio.wait_for(self.queue.get(), timeout)

    async def none(self, seconds: float = 0.3) -> None:
        with contextlib.suppress(TimeoutError):
            bell = await asyncio.wait_for(self.queue.get(), seconds)
            raise AssertionError(f"rang {bell}")


@contextlib.asynccontextmanager
async def running(conn: js.JetstreamConnection) -> AsyncIterator[Bells]:
    bells = Bells()
    task = asyncio.create_task(conn.run(bells))
    try:
        yield bells
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def until(check: Any, timeout: float = 3.0) -> None:
    """Wait (without sleeping on a fixed delay) until ``check()`` is true."""
    async def poll() -> None:
        while not check():
            await asyncio.sleep(0.01)
    await asyncio.wait_for(poll(), timeout)


def uri(handle: str, rkey: str) -> str:
    return f"at://{did_for(handle)}/{POST}/{rkey}"


# -- build ---------------------------------------------------------------------------------

def test_one_connection_for_every_bluesky_source(sim_server: RunningSimulator) -> None:
    other = SourceConfig(id="feed", agency="x", kind=SourceKind.RSS, url="https://a.example/f")
    twin = source("essex-police-2", ALICE.upper())
    built = js.build((POLICE, other, FIRE, twin), context(sim_server))
    assert [c.kind for c in built] == ["jetstream"]
    assert built[0].source_ids == ("essex-police", "essex-police-2", "essex-fire")
    assert js.KINDS == (SourceKind.BLUESKY,)
    assert SourceKind.BLUESKY in push.PUSH_KINDS
    assert push.build_push_listeners((POLICE,), context(sim_server))[0].kind == "jetstream"
    assert js.build((other,), context(sim_server)) == []


def test_default_is_the_public_instance() -> None:
    conn = js.build((POLICE,), PushContext(PushSettings()))[0]
    assert isinstance(conn, js.JetstreamConnection)
    assert conn.url == "wss://jetstream2.us-east.bsky.network/subscribe"
    assert conn.appview == "https://public.api.bsky.app"


@pytest.mark.parametrize("value", ["", None])
def test_turned_off_polls_only_and_says_so(value: str | None) -> None:
    with capture_logs() as logs:
        assert js.build((POLICE, FIRE), PushContext(PushSettings(jetstream_url=value))) == []
    lines = [e for e in logs if e["event"] == "push.jetstream.off"]
    assert len(lines) == 1 and "polled only" in lines[0]["note"]


def test_a_simulated_appview_never_listens_on_the_public_jetstream(
    sim_server: RunningSimulator,
) -> None:
    ctx = PushContext(PushSettings(), allow_private=True,
                      base_urls={"bluesky": sim_server.url_for("bluesky")})
    with capture_logs() as logs:
        assert js.build((POLICE,), ctx) == []
    (line,) = [e for e in logs if e["event"] == "push.jetstream.off"]
    assert "simulator" in line["note"]
    staging = PushContext(PushSettings(), base_urls={"bluesky": "https://appview.example"})
    assert js.build((POLICE,), staging)[0].url == PushSettings().jetstream_url


@pytest.mark.parametrize(("url", "allow_private", "ok"), [
    ("wss://jetstream.example/subscribe", False, True),
    ("ws://127.0.0.1:9/jetstream/subscribe", True, True),
    ("ws://localhost:9/subscribe", True, True),
    ("ws://127.0.0.1:9/jetstream/subscribe", False, False),
    ("ws://jetstream.example/subscribe", True, False),
    ("ws://10.0.0.5/subscribe", True, False),
    ("https://jetstream.example/subscribe", False, False),
    ("wss:///subscribe", False, False),
])
def test_only_wss_or_the_local_simulator(url: str, allow_private: bool, ok: bool) -> None:
    ctx = PushContext(PushSettings(jetstream_url=url), allow_private=allow_private)
    with capture_logs() as logs:
        built = js.build((POLICE,), ctx)
    assert bool(built) is ok
    if not ok:
        assert [e["event"] for e in logs] == ["push.jetstream.refused"]


def test_more_than_10000_accounts_refused_with_a_clear_error() -> None:
    many = [source(f"s{i}", f"did:plc:{i:024d}".replace("0", "a").replace("1", "b")
                   .replace("2", "c").replace("3", "d").replace("4", "e").replace("5", "f")
                   .replace("6", "g").replace("7", "h").replace("8", "i").replace("9", "j"))
            for i in range(js.MAX_DIDS + 1)]
    with capture_logs() as logs:
        assert js.build(many, PushContext(PushSettings())) == []
    (line,) = [e for e in logs if e["event"] == "push.jetstream.refused"]
    assert "10000" in line["error"] and "polled only" in line["note"]
    assert len(js.build(many[:-1], PushContext(PushSettings()))[0].source_ids) == js.MAX_DIDS


def test_bad_accounts_are_skipped_not_fatal() -> None:
    bad = SourceConfig(id="bad", agency="x", kind=SourceKind.BLUESKY,
                       account="https://bsky.app/profile/did:key:z6Mk")
    worse = SourceConfig(id="worse", agency="x", kind=SourceKind.BLUESKY,
                         account="https://example.com/nothing")
    with capture_logs() as logs:
        (conn,) = js.build((bad, worse, POLICE), PushContext(PushSettings()))
    assert conn.source_ids == ("essex-police",)
    assert [e["source"] for e in logs if e["event"] == "push.jetstream.source_skipped"] == [
        "bad", "worse"]


def test_subscribe_url() -> None:
    dids = [did_for(ALICE), did_for(BOB)]
    url, hello = js.subscribe_url("wss://j.example/subscribe", dids, None)
    assert not hello
    assert url == ("wss://j.example/subscribe?wantedCollections=app.bsky.feed.post"
                   f"&wantedDids={dids[0]}&wantedDids={dids[1]}&maxMessageSizeBytes=1048576")
    many = [f"did:web:h{i}.example" for i in range(js.QUERY_DIDS + 1)]
    url, hello = js.subscribe_url("wss://j.example/subscribe?x=1", many, 1725911162329308)
    assert hello and "wantedDids" not in url
    assert url == ("wss://j.example/subscribe?x=1&wantedCollections=app.bsky.feed.post"
                   "&requireHello=true&maxMessageSizeBytes=1048576&cursor=1725911162329308")
    payload = json.loads(js.options_update(many))["payload"]
    assert payload["wantedDids"] == many and payload["wantedCollections"] == [POST]


@pytest.mark.parametrize(("value", "ok"), [
    ("did:plc:ewvi7nxzyoun6zhxrhs64oiz", True),
    ("did:web:essex.police.uk", True),
    ("did:web:localhost%3A8080", True),
    ("did:plc:short", False),
    ("did:plc:EWVI7NXZYOUN6ZHXRHS64OIZ", False),
    ("did:key:z6MkhaXgBZDvotDkL5257faiztiGiC2QtKLGpbnnEGta2doK", False),
    ("did:web:evil.example/path", False),
    ("did:plc:ewvi7nxzyoun6zhxrhs64oiz&wantedDids=", False),
])
def test_only_plc_and_web_dids(value: str, ok: bool) -> None:
    assert js.is_did(value) is ok


# -- against the simulator -----------------------------------------------------------------

async def test_new_post_rings_its_source_with_the_post_uri(
    sim_server: RunningSimulator, world: World, clock: FixedClock
) -> None:
    conn = listener(sim_server)
    async with running(conn) as bells:
        first = await bells.next(3.0)
        assert (first.reason, first.source_ids, first.via) == (
            "connected", ("essex-police", "essex-fire"), "jetstream")
        clock.advance(timedelta(seconds=3))
        world.add_item(ALICE, "bluesky", clock.now(), {"rkey": "3lnew", "text": "A12 closed"})
        bell = await bells.next(WAIT)
        assert bell == Doorbell(("essex-police",), reason="pushed",
                                expect_id=uri(ALICE, "3lnew"), via="jetstream")
        world.add_item(BOB, "bluesky", clock.now(), {"rkey": "3lfire", "text": "Fire"})
        assert (await bells.next(WAIT)).source_ids == ("essex-fire",)
        status = conn.status()
        assert status.connected and status.events == 2 and status.last_error == ""
    (entry,) = jetstream_log(world)
    assert sorted(entry["dids"]) == sorted([did_for(ALICE), did_for(BOB)])
    assert entry["collections"] == [POST] and entry["cursor"] is None
    assert conn.last_time_us == int(clock.now().timestamp() * 1_000_000)
    assert not conn.status().connected  # cancelled


async def test_the_expect_id_is_what_the_poll_calls_the_update(
    sim_server: RunningSimulator, world: World, clock: FixedClock
) -> None:
    from crisiscomms.adapters.sources.bluesky import BlueskySource
    from crisiscomms.adapters.sources.http import HttpFetcher, make_async_client
    from crisiscomms.domain.models import SourceState

    async with running(listener(sim_server, (POLICE,))) as bells:
        await bells.next(3.0)
        world.add_item(ALICE, "bluesky", clock.now(), {"rkey": "3lsame", "text": "Update"})
        bell = await bells.next(WAIT)
    client = make_async_client()
    try:
        config = POLICE.model_copy(update={"allow_private_network": True})
        poller = BlueskySource(config, HttpFetcher(client), base_url=sim_server.url_for("bluesky"))
        polled = await poller.poll(SourceState(source_id=POLICE.id), clock.now())
    finally:
        await client.aclose()
    assert bell.expect_id in {u.external_id for u in polled.updates}


async def test_a_post_by_another_did_rings_nothing(
    sim_server: RunningSimulator, world: World, clock: FixedClock
) -> None:
    conn = listener(sim_server, (POLICE,))
    async with running(conn) as bells:
        await bells.next(3.0)
        world.add_item(CAROL, "bluesky", clock.now(), {"rkey": "3lcarol", "text": "not ours"})
        await bells.none()
        # Even if the server sent it (a filter ignored), another DID's event is not ours.
        jetstream_send_raw(world, json.dumps({
            "did": did_for(CAROL), "time_us": 1, "kind": "commit", "commit": {
                "operation": "create", "collection": POST, "rkey": "3lx"}}))
        await bells.none()
    assert conn.status().events == 0


async def test_dropped_connection_reconnects_with_backoff_and_cursor(
    sim_server: RunningSimulator, world: World, clock: FixedClock
) -> None:
    conn = listener(sim_server)
    async with running(conn) as bells:
        assert (await bells.next(3.0)).reason == "connected"
        world.add_item(ALICE, "bluesky", clock.now(), {"rkey": "3la", "text": "one"})
        assert (await bells.next()).reason == "pushed"
        last = conn.last_time_us
        assert last is not None
        assert drop_jetstream(world) == 1
        again = await bells.next(3.0)
        assert (again.reason, again.source_ids) == ("connected", conn.source_ids)
        status = conn.status()
        assert status.connected and status.failures == 1
        # Jetstream replays from the cursor: the post comes again (harmless: push only rings).
        replay = await bells.next()
        assert replay.expect_id == uri(ALICE, "3la")
    first, second = jetstream_log(world)
    assert first["cursor"] is None
    assert second["cursor"] == last - js.CURSOR_REWIND_US


async def test_refused_connection_is_down_with_the_reason_then_recovers(
    sim_server: RunningSimulator, world: World
) -> None:
    refuse_jetstream(world)
    conn = listener(sim_server)
    async with running(conn) as bells:
        await until(lambda: conn.status().failures >= 2)
        status = conn.status()
        assert not status.connected
        assert "503" in status.last_error
        assert bells.all == []  # nothing rung while down: polling carries on meanwhile
        refuse_jetstream(world, False)
        assert (await bells.next(3.0)).reason == "connected"
        assert conn.status().connected and conn.status().last_error == ""
    assert [e["refused"] for e in jetstream_log(world)][-1] is False


async def test_an_unresolved_handle_is_left_out_and_the_others_ring(
    sim_server: RunningSimulator, world: World, clock: FixedClock
) -> None:
    ghost = source("ghost", "nobody.bsky.social")
    conn = listener(sim_server, (POLICE, ghost, FIRE))
    async with running(conn) as bells:
        first = await bells.next(3.0)
        assert first.reason == "connected"
        status = conn.status()
        assert status.connected and "@nobody.bsky.social" in status.last_error
        assert conn.unresolved == ("nobody.bsky.social",)
        world.add_item(BOB, "bluesky", clock.now(), {"rkey": "3lb", "text": "fire"})
        assert (await bells.next()).source_ids == ("essex-fire",)
    (entry,) = jetstream_log(world)
    assert sorted(entry["dids"]) == sorted([did_for(ALICE), did_for(BOB)])


async def test_no_did_at_all_never_opens_an_unfiltered_stream(
    sim_server: RunningSimulator, world: World
) -> None:
    set_handle(world, ALICE, "did:plc:notvalid")  # a DID of the wrong shape is no DID
    conn = listener(sim_server, (POLICE, source("ghost", "nobody.bsky.social")))
    async with running(conn) as bells:
        await until(lambda: conn.status().failures >= 2)
        assert "no Bluesky DID" in conn.status().last_error
        assert bells.all == []
    assert jetstream_log(world) == []


async def test_handles_are_resolved_again_on_reconnect(
    sim_server: RunningSimulator, world: World, clock: FixedClock
) -> None:
    conn = listener(sim_server, (POLICE,))
    moved = "did:plc:" + "m" * 24
    async with running(conn) as bells:
        await bells.next(3.0)
        set_handle(world, ALICE, moved)
        drop_jetstream(world)
        assert (await bells.next(3.0)).reason == "connected"
        jetstream_send_raw(world, json.dumps({"did": moved, "time_us": 5, "kind": "commit",
                                              "commit": {"operation": "create",
                                                         "collection": POST, "rkey": "3lm"}}))
        bell = await bells.next()
    assert bell.expect_id == f"at://{moved}/{POST}/3lm"
    assert [e["dids"] for e in jetstream_log(world)] == [[did_for(ALICE)], [moved]]


async def test_a_did_account_is_used_as_is(
    sim_server: RunningSimulator, world: World, clock: FixedClock
) -> None:
    by_did = source("essex-police", did_for(ALICE))
    async with running(listener(sim_server, (by_did,))) as bells:
        await bells.next(3.0)
        world.add_item(ALICE, "bluesky", clock.now(), {"rkey": "3ld", "text": "x"})
        assert (await bells.next()).expect_id == uri(ALICE, "3ld")
    assert not [r for r in world.request_log if "resolveHandle" in r.path]


async def test_many_dids_go_in_an_options_update(
    sim_server: RunningSimulator, world: World, clock: FixedClock
) -> None:
    extra = tuple(source(f"w{i}", f"did:web:h{i}.example") for i in range(js.QUERY_DIDS))
    async with running(listener(sim_server, (POLICE, *extra))) as bells:
        await bells.next(3.0)
        world.add_item(ALICE, "bluesky", clock.now(), {"rkey": "3lmany", "text": "x"})
        assert (await bells.next()).expect_id == uri(ALICE, "3lmany")
    (entry,) = jetstream_log(world)
    assert entry["hello"] and entry["options_updates"] == 1
    assert len(entry["dids"]) == js.QUERY_DIDS + 1 and did_for(ALICE) in entry["dids"]


async def test_identity_event_rings_without_expect_id(
    sim_server: RunningSimulator, world: World
) -> None:
    async with running(listener(sim_server)) as bells:
        await bells.next(3.0)
        jetstream_identity(world, BOB, "someone-else.bsky.social")
        assert await bells.next() == Doorbell(("essex-fire",), via="jetstream")


HOSTILE: list[str | bytes] = [
    b"\x28\xb5\x2f\xfd binary (zstd?)",
    "not json at all",
    "[1, 2, 3]",
    "null",
    "[" * 100_000,
    json.dumps({"did": 12, "kind": "commit"}),
    json.dumps({"kind": "commit", "commit": {"operation": "create"}}),
    json.dumps({"did": "{ALICE}", "kind": "commit", "commit": "create"}),
    json.dumps({"did": "{ALICE}", "kind": "commit", "commit": {
        "operation": "create", "collection": "app.bsky.feed.like", "rkey": "3l1"}}),
    json.dumps({"did": "{ALICE}", "kind": "commit", "commit": {
        "operation": "delete", "collection": POST, "rkey": "3l2"}}),
    json.dumps({"did": "{ALICE}", "kind": "commit", "commit": {
        "operation": "create", "collection": POST, "rkey": "../../evil"}}),
    json.dumps({"did": "{ALICE}", "kind": "commit", "commit": {
        "operation": "create", "collection": POST, "rkey": ["3l3"]}}),
    json.dumps({"did": "{ALICE}", "kind": "account", "account": {"active": False}}),
    json.dumps({"did": "{ALICE}", "kind": "commit", "time_us": "soon", "commit": {
        "operation": "sideways", "collection": POST, "rkey": "3l4"}}),
    json.dumps({"kind": "heartbeat", "payload": ""}),
]


async def test_hostile_frames_are_ignored_and_never_end_the_session(
    sim_server: RunningSimulator, world: World, clock: FixedClock
) -> None:
    conn = listener(sim_server)
    async with running(conn) as bells:
        await bells.next(3.0)
        for frame in HOSTILE:
            if isinstance(frame, str):
                frame = frame.replace("{ALICE}", did_for(ALICE))
            jetstream_send_raw(world, frame)
        await bells.none()
        world.add_item(ALICE, "bluesky", clock.now(), {"rkey": "3lok", "text": "real"})
        assert (await bells.next()).expect_id == uri(ALICE, "3lok")
    assert len(jetstream_log(world)) == 1  # one session throughout
    assert conn.status().failures == 0
    assert conn.ignored_frames >= 7


async def test_a_quiet_stream_is_not_taken_for_dead(
    sim_server: RunningSimulator, world: World
) -> None:
    conn = listener(sim_server, idle_timeout_seconds=0.2)
    async with running(conn) as bells:
        await bells.next(3.0)
        await bells.none(0.8)  # four idle timeouts without an event: pongs keep it alive
        assert conn.status().connected and conn.status().failures == 0
    assert len(jetstream_log(world)) == 1


async def test_a_half_open_connection_is_found_by_ping(
    sim_server: RunningSimulator, world: World
) -> None:
    conn = listener(sim_server, idle_timeout_seconds=0.4)
    async with running(conn) as bells:
        await bells.next(3.0)
        silence_jetstream(world)  # the server stops reading: pings go unanswered
        await until(lambda: not conn.status().connected)
        assert conn.status().last_error
        silence_jetstream(world, False)
        assert (await bells.next(5.0)).reason == "connected"
    assert len(jetstream_log(world)) >= 2


async def test_cancel_closes_the_connection(sim_server: RunningSimulator, world: World) -> None:
    conn = listener(sim_server)
    async with running(conn) as bells:
        await bells.next(3.0)
        assert jetstream_open(world) == 1
    await until(lambda: jetstream_open(world) == 0)
    assert not conn.status().connected


async def test_an_appview_outage_keeps_the_last_known_did(
    sim_server: RunningSimulator, world: World, clock: FixedClock
) -> None:
    from crisiscomms.simulator import Faults

    conn = listener(sim_server, (POLICE, FIRE, source("late", CAROL)))
    conn.actors = {ALICE: ("essex-police",), BOB: ("essex-fire",)}  # CAROL: never resolved
    async with running(conn) as bells:
        await bells.next(3.0)
        conn.actors[CAROL] = ("late",)
        world.set_faults(Faults(error_rate_5xx=1.0,
                                paths=("/bluesky/xrpc/com.atproto.identity.resolveHandle",)))
        drop_jetstream(world)
        assert (await bells.next(3.0)).reason == "connected"
        assert conn.unresolved == (CAROL,)  # nothing known for it: left out meanwhile
        world.add_item(ALICE, "bluesky", clock.now(), {"rkey": "3lout", "text": "x"})
        assert (await bells.next()).expect_id == uri(ALICE, "3lout")
    assert [sorted(e["dids"]) for e in jetstream_log(world)] == [
        sorted([did_for(ALICE), did_for(BOB)])] * 2
