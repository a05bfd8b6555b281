"""The simulated Jetstream (``routes_jetstream``): the protocol of bluesky-social/jetstream's
README (query filters, cursor replay, requireHello + options_update, commit/identity events),
its fault knobs, and the AppView's resolveHandle."""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.sync.client import ClientConnection, connect

from crisiscomms.domain.clock import FixedClock
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

T0 = datetime(2026, 1, 5, 10, 0, tzinfo=UTC)
ALICE, BOB = "alice.bsky.social", "bob.bsky.social"
POST = "app.bsky.feed.post"


@contextlib.contextmanager
def ws_simulator(world: World) -> Iterator[RunningSimulator]:
    """``serve(world)``: the simulator speaks WebSocket (uvicorn ``websockets-sansio``)."""
    with serve(world) as sim:
        yield sim


@pytest.fixture(scope="module")
def js_server() -> Iterator[RunningSimulator]:
    with ws_simulator(World(FixedClock(T0))) as sim:
        yield sim


@pytest.fixture
def clock() -> FixedClock:
    return FixedClock(T0)


@pytest.fixture
def world(clock: FixedClock, js_server: RunningSimulator) -> World:
    w = World(clock)
    w.add_item(ALICE, "bluesky", T0 - timedelta(hours=1), {"rkey": "old1", "text": "old"})
    w.add_item(BOB, "bluesky", T0 - timedelta(hours=1), {"rkey": "bobold", "text": "old"})
    js_server.replace_world(w)
    return w


def ws_url(sim: RunningSimulator, **query: Any) -> str:
    q = httpx.QueryParams(query)
    return f"ws://127.0.0.1:{sim.port}/jetstream/subscribe" + (f"?{q}" if q else "")


def recv_json(ws: ClientConnection, timeout: float = 3.0) -> dict[str, Any]:
    data = ws.recv(timeout=timeout)
    assert isinstance(data, str)
    event = json.loads(data)
    assert isinstance(event, dict)
    return event


def assert_quiet(ws: ClientConnection, seconds: float = 0.3) -> None:
    with pytest.raises(TimeoutError):
        ws.recv(timeout=seconds)


def wait_open(world: World, n: int = 1) -> None:
    deadline = time.monotonic() + 3
    while jetstream_open(world) < n:
        assert time.monotonic() < deadline, "the connection never registered"
        time.sleep(0.01)


def test_new_post_after_connecting_is_a_commit_create(
    js_server: RunningSimulator, world: World, clock: FixedClock
) -> None:
    url = ws_url(js_server, wantedCollections=POST, wantedDids=did_for(ALICE))
    with connect(url, open_timeout=3) as ws:
        wait_open(world)
        assert_quiet(ws)  # what was there before the connection is not replayed
        clock.advance(timedelta(seconds=5))
        world.add_item(ALICE, "bluesky", clock.now(), {"rkey": "3new", "text": "Road closed"})
        event = recv_json(ws)
    assert event["kind"] == "commit"
    assert event["did"] == did_for(ALICE)
    assert event["time_us"] == int((T0 + timedelta(seconds=5)).timestamp() * 1_000_000)
    commit = event["commit"]
    assert commit["operation"] == "create"
    assert commit["collection"] == POST
    assert commit["rkey"] == "3new"
    assert commit["record"]["text"] == "Road closed"
    assert commit["cid"].startswith("bafyrei")
    # The URI the AppView gives the same post (what the poll's external_id is).
    feed = httpx.get(f"{js_server.base_url}/bluesky/xrpc/app.bsky.feed.getAuthorFeed",
                     params={"actor": ALICE}).json()["feed"]
    assert feed[0]["post"]["uri"] == f"at://{event['did']}/{POST}/3new"
    assert feed[0]["post"]["cid"] == commit["cid"]


def test_wanted_dids_filter_out_other_accounts(
    js_server: RunningSimulator, world: World, clock: FixedClock
) -> None:
    with connect(ws_url(js_server, wantedDids=did_for(ALICE)), open_timeout=3) as ws:
        wait_open(world)
        world.add_item(BOB, "bluesky", clock.now(), {"rkey": "bob2", "text": "not wanted"})
        assert_quiet(ws)
        world.add_item(ALICE, "bluesky", clock.now(), {"rkey": "al2", "text": "wanted"})
        assert recv_json(ws)["commit"]["rkey"] == "al2"
    assert jetstream_log(world)[0]["dids"] == [did_for(ALICE)]


def test_wanted_collections_filter(js_server: RunningSimulator, world: World,
                                   clock: FixedClock) -> None:
    url = ws_url(js_server, wantedCollections="app.bsky.feed.like")
    with connect(url, open_timeout=3) as ws:
        wait_open(world)
        world.add_item(ALICE, "bluesky", clock.now(), {"rkey": "al3", "text": "a post"})
        assert_quiet(ws)
    with connect(ws_url(js_server, wantedCollections="app.bsky.*"), open_timeout=3) as ws:
        wait_open(world)
        world.add_item(ALICE, "bluesky", clock.now(), {"rkey": "al4", "text": "a post"})
        assert recv_json(ws)["commit"]["rkey"] == "al4"


def test_edit_and_removal_are_update_and_delete(
    js_server: RunningSimulator, world: World, clock: FixedClock
) -> None:
    with connect(ws_url(js_server, wantedDids=did_for(ALICE)), open_timeout=3) as ws:
        wait_open(world)
        key = world.add_item(ALICE, "bluesky", clock.now(), {"rkey": "e1", "text": "v1"})
        assert recv_json(ws)["commit"]["operation"] == "create"
        clock.advance(timedelta(seconds=1))
        world.edit_item(ALICE, "bluesky", key, {"text": "v2"})
        update = recv_json(ws)["commit"]
        assert (update["operation"], update["record"]["text"]) == ("update", "v2")
        clock.advance(timedelta(seconds=1))
        world.remove_item(ALICE, "bluesky", key)
        delete = recv_json(ws)["commit"]
        assert (delete["operation"], delete["rkey"], delete["collection"]) == ("delete", "e1",
                                                                               POST)
        assert "record" not in delete


def test_cursor_replays_from_that_instant(js_server: RunningSimulator, world: World,
                                          clock: FixedClock) -> None:
    world.add_item(ALICE, "bluesky", T0 - timedelta(minutes=10), {"rkey": "m10", "text": "x"})
    world.add_item(ALICE, "bluesky", T0 - timedelta(minutes=1), {"rkey": "m1", "text": "y"})
    cursor = int((T0 - timedelta(minutes=5)).timestamp() * 1_000_000)
    url = ws_url(js_server, wantedDids=did_for(ALICE), cursor=str(cursor))
    with connect(url, open_timeout=3) as ws:
        event = recv_json(ws)
        assert event["commit"]["rkey"] == "m1"
        assert event["time_us"] >= cursor
        assert_quiet(ws)
    assert jetstream_log(world)[-1]["cursor"] == cursor
    future = int((T0 + timedelta(days=1)).timestamp() * 1_000_000)
    with connect(ws_url(js_server, cursor=str(future)), open_timeout=3) as ws:
        assert_quiet(ws)  # a cursor from the future is a live tail


def test_require_hello_waits_for_options_update(js_server: RunningSimulator, world: World,
                                                clock: FixedClock) -> None:
    with connect(ws_url(js_server, requireHello="true"), open_timeout=3) as ws:
        wait_open(world)
        world.add_item(BOB, "bluesky", clock.now(), {"rkey": "b9", "text": "before hello"})
        assert_quiet(ws)
        ws.send(json.dumps({"type": "options_update", "payload": {
            "wantedCollections": [POST], "wantedDids": [did_for(ALICE)],
            "maxMessageSizeBytes": 1_048_576}}))
        time.sleep(0.1)
        world.add_item(BOB, "bluesky", clock.now(), {"rkey": "b10", "text": "not wanted"})
        world.add_item(ALICE, "bluesky", clock.now(), {"rkey": "a10", "text": "wanted"})
        assert recv_json(ws)["commit"]["rkey"] == "a10"
        assert_quiet(ws)
    entry = jetstream_log(world)[-1]
    assert entry["hello"] and entry["dids"] == [did_for(ALICE)]


def test_invalid_options_update_disconnects(js_server: RunningSimulator, world: World) -> None:
    with connect(ws_url(js_server, requireHello="true"), open_timeout=3) as ws:
        ws.send("not json")
        with pytest.raises(ConnectionClosed):
            ws.recv(timeout=3)


def test_more_than_10000_dids_refused(js_server: RunningSimulator, world: World) -> None:
    query = "&".join(f"wantedDids=did:plc:{i:024d}" for i in range(10_001))
    url = f"ws://127.0.0.1:{js_server.port}/jetstream/subscribe?{query}"
    with pytest.raises(InvalidStatus) as caught:
        connect(url, open_timeout=5, max_size=2**20)
    assert caught.value.response.status_code == 400


def test_identity_and_raw_frames(js_server: RunningSimulator, world: World) -> None:
    with connect(ws_url(js_server, wantedDids=did_for(ALICE)), open_timeout=3) as ws:
        wait_open(world)
        assert jetstream_identity(world, BOB) == 0  # not wanted by this connection
        assert jetstream_identity(world, ALICE, "alice2.bsky.social") == 1
        event = recv_json(ws)
        assert event["kind"] == "identity"
        assert event["identity"] == {**event["identity"], "did": did_for(ALICE),
                                     "handle": "alice2.bsky.social"}
        jetstream_send_raw(world, b"\x00\x01binary")
        assert ws.recv(timeout=3) == b"\x00\x01binary"
        jetstream_send_raw(world, "{not json")
        assert ws.recv(timeout=3) == "{not json"


def test_refuse_answers_503_then_accepts_again(js_server: RunningSimulator,
                                                world: World) -> None:
    refuse_jetstream(world)
    with pytest.raises(InvalidStatus) as caught:
        connect(ws_url(js_server), open_timeout=3)
    assert caught.value.response.status_code == 503
    assert jetstream_log(world)[-1]["refused"] is True
    refuse_jetstream(world, False)
    with connect(ws_url(js_server), open_timeout=3):
        wait_open(world)


def test_drop_ends_open_connections_without_a_close_frame(js_server: RunningSimulator,
                                                           world: World) -> None:
    with connect(ws_url(js_server), open_timeout=3) as ws:
        wait_open(world)
        assert drop_jetstream(world) == 1
        with pytest.raises(ConnectionClosed) as caught:
            ws.recv(timeout=3)
        assert caught.value.rcvd is None  # no close frame: the TCP connection was cut
    deadline = time.monotonic() + 3
    while jetstream_open(world):
        assert time.monotonic() < deadline
        time.sleep(0.01)


def test_silent_sends_nothing_and_leaves_pings_unanswered(
    js_server: RunningSimulator, world: World, clock: FixedClock
) -> None:
    with connect(ws_url(js_server), open_timeout=3) as ws:
        wait_open(world)
        silence_jetstream(world)
        time.sleep(0.1)
        world.add_item(ALICE, "bluesky", clock.now(), {"rkey": "s1", "text": "unsent"})
        assert_quiet(ws)
        pong = ws.ping()
        assert not pong.wait(0.5)  # half-open: the server reads nothing
        silence_jetstream(world, False)
        assert pong.wait(3)
        assert recv_json(ws)["commit"]["rkey"] == "s1"


def test_stopping_the_simulator_closes_its_connections() -> None:
    world = World(FixedClock(T0))
    with contextlib.ExitStack() as stack:
        sim = stack.enter_context(ws_simulator(world))
        ws = stack.enter_context(connect(ws_url(sim), open_timeout=3))
        wait_open(world)
        started = time.monotonic()
        sim.stop()
        with pytest.raises(ConnectionClosed) as caught:
            ws.recv(timeout=5)
        assert time.monotonic() - started < 5
        assert caught.value.rcvd is not None  # a close frame, not a reset


def test_resolve_handle(js_server: RunningSimulator, world: World) -> None:
    url = f"{js_server.base_url}/bluesky/xrpc/com.atproto.identity.resolveHandle"
    ok = httpx.get(url, params={"handle": ALICE.upper()})
    assert ok.status_code == 200 and ok.json() == {"did": did_for(ALICE)}
    missing = httpx.get(url, params={"handle": "nobody.bsky.social"})
    assert missing.status_code == 400
    assert missing.json() == {"error": "InvalidRequest", "message": "Unable to resolve handle"}
    set_handle(world, ALICE, None)
    assert httpx.get(url, params={"handle": ALICE}).status_code == 400
    set_handle(world, "nobody.bsky.social", "did:plc:moved")
    assert httpx.get(url, params={"handle": "nobody.bsky.social"}).json() == {
        "did": "did:plc:moved"}


def test_serve_speaks_websocket_unpatched() -> None:
    with serve(World(FixedClock(T0))) as sim, connect(ws_url(sim), open_timeout=3):
        pass
    with serve(World(FixedClock(T0))) as sim, connect(sim.url_for("jetstream"), open_timeout=3):
        pass
