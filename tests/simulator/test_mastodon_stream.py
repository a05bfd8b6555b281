"""The simulated Mastodon streaming API: instance discovery, the SSE home timeline, faults."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from datetime import UTC, datetime

import httpx
import pytest

from crisiscomms.domain.clock import FixedClock
from crisiscomms.simulator import RunningSimulator, World, serve
from crisiscomms.simulator.routes_mastodon_stream import (
    drop_mastodon_streams,
    mastodon_streams,
    refuse_mastodon_streams,
    send_mastodon_stream_event,
    set_mastodon_heartbeat,
    set_mastodon_streaming_url,
)

T0 = datetime(2026, 1, 5, 10, 0, tzinfo=UTC)
STREAM = "/mastodon/api/v1/streaming/user"


def _events(lines: Iterator[str]) -> Iterator[tuple[str, str]]:
    """(event, data) per event; comments as ("comment", text)."""
    event, data = "", ""
    for line in lines:
        if line.startswith(":"):
            yield "comment", line[1:]
        elif line.startswith("event: "):
            event = line[7:]
        elif line.startswith("data: "):
            data = line[6:]
        elif line == "" and event:
            yield event, data
            event, data = "", ""


def test_instance_points_streaming_back_at_the_simulator(
    sim: RunningSimulator, client: httpx.Client
) -> None:
    body = client.get("/mastodon/api/v2/instance").json()
    assert body["configuration"]["urls"]["streaming"] == f"ws://127.0.0.1:{sim.port}/mastodon"
    assert body["domain"] == "mastodon.example"
    set_mastodon_streaming_url(sim.world, "wss://streaming.elsewhere.example")
    body = client.get("/mastodon/api/v2/instance").json()
    assert body["configuration"]["urls"]["streaming"] == "wss://streaming.elsewhere.example"


def test_stream_refuses_a_missing_or_invalid_token(world: World, client: httpx.Client) -> None:
    assert client.get(STREAM).status_code == 401
    world.set_valid_tokens("mastodon", ["good"])
    refused = client.get(STREAM, headers={"Authorization": "Bearer bad"})
    assert refused.status_code == 401
    assert refused.json() == {"error": "Invalid access token"}


def test_new_statuses_edits_and_deletes_are_streamed(
    world: World, clock: FixedClock, client: httpx.Client, auth: dict[str, str]
) -> None:
    world.add_item("essexfire", "mastodon", T0, {"id": "100", "text": "before"})
    with client.stream("GET", STREAM, headers=auth) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        events = _events(response.iter_lines())
        assert next(events) == ("comment", ")")
        world.add_item("essexfire", "mastodon", T0, {"id": "101", "text": "Road closed"})
        event, data = next(events)
        assert event == "update"
        status = json.loads(data)
        assert status["id"] == "101"  # not "100": it was there before the stream opened
        assert status["account"]["acct"] == "essexfire"
        assert status["account"]["url"] == "https://mastodon.example/@essexfire"
        world.edit_item("essexfire", "mastodon", "101", {"text": "Road open"})
        event, data = next(events)
        assert event == "status.update"
        assert json.loads(data)["content"] == "<p>Road open</p>"
        world.remove_item("essexfire", "mastodon", "101")
        assert next(events) == ("delete", "101")
        assert mastodon_streams(world) == (1, 1)


def test_future_statuses_stream_when_the_clock_reaches_them(
    world: World, clock: FixedClock, client: httpx.Client, auth: dict[str, str]
) -> None:
    from datetime import timedelta

    world.add_item("lfb@fire.example", "mastodon", T0 + timedelta(minutes=5), {"id": "7"})
    with client.stream("GET", STREAM, headers=auth) as response:
        events = _events(response.iter_lines())
        assert next(events) == ("comment", ")")
        clock.advance(timedelta(minutes=5))
        event, data = next(events)
        assert (event, json.loads(data)["account"]["acct"]) == ("update", "lfb@fire.example")


def test_heartbeats_raw_events_and_drop(
    world: World, client: httpx.Client, auth: dict[str, str]
) -> None:
    set_mastodon_heartbeat(world, 0.05)
    with client.stream("GET", STREAM, headers=auth) as response:
        lines = response.iter_lines()
        assert next(lines) == ":)"
        assert next(lines) == ":thump"
        set_mastodon_heartbeat(world, enabled=False)
        send_mastodon_stream_event(world, "", "", raw="data: not json\n\n")
        rest = []
        for line in lines:
            rest.append(line)
            if line == "data: not json":
                drop_mastodon_streams(world)
        assert "data: not json" in rest  # and the stream ended after the drop
    assert mastodon_streams(world) == (1, 0)


def test_abrupt_drop_resets_the_connection(
    world: World, client: httpx.Client, auth: dict[str, str]
) -> None:
    with client.stream("GET", STREAM, headers=auth) as response, pytest.raises(
            httpx.RemoteProtocolError):
        for line in response.iter_lines():
            if line == ":)":
                drop_mastodon_streams(world, abrupt=True)


@pytest.mark.parametrize("status", [401, 503])
def test_refused_streams(world: World, client: httpx.Client, auth: dict[str, str],
                         status: int) -> None:
    refuse_mastodon_streams(world, status)
    assert client.get(STREAM, headers=auth).status_code == status
    refuse_mastodon_streams(world, None)
    with client.stream("GET", STREAM, headers=auth) as response:
        assert response.status_code == 200


def test_streams_end_when_the_simulator_stops() -> None:
    world = World(FixedClock(T0))
    set_mastodon_heartbeat(world, enabled=False)
    sim = serve(world)
    try:
        with httpx.Client(base_url=sim.base_url, timeout=5.0) as client, client.stream(
                "GET", STREAM, headers={"Authorization": "Bearer t"}) as response:
            lines = response.iter_lines()
            assert next(lines) == ":)"
            stopper = threading.Thread(target=sim.stop)
            stopper.start()
            assert list(lines) == []  # ended, not a read timeout
            stopper.join()
    finally:
        sim.stop()
