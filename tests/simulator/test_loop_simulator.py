"""The simulator served on the caller's event loop (``LoopSimulator``, the lean HTTP/1.1
protocol of ``simulator.lean``): the same app and world as the threaded server, answered as
HTTP clients expect (lengths, keep-alive, 304s, bodies, faults, the request log)."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import httpx
import pytest

from crisiscomms.domain.clock import FixedClock
from crisiscomms.simulator import Faults, World, serve

T0 = datetime(2026, 1, 5, 10, 0, tzinfo=UTC)
FEED = {"guid": "g1", "title": "Amber warning", "description": "Rain", "link": "https://x.test/1"}


def _run(world: World, body) -> None:  # type: ignore[no-untyped-def]
    with serve(world) as sim:
        loop_sim = sim.on_caller_loop()

        async def main() -> None:
            async with loop_sim:
                await body(loop_sim)

        asyncio.run(main())


def test_feeds_answer_as_on_the_threaded_server_with_304s_and_keep_alive() -> None:
    clock = FixedClock(T0)
    world = World(clock)
    world.add_item("met", "rss", T0 - timedelta(minutes=5), FEED)

    async def body(loop_sim) -> None:  # type: ignore[no-untyped-def]
        url = loop_sim.url_for("rss", "met")
        assert url.startswith(loop_sim.base_url + "/sources/rss/")
        ports: set[int] = set()

        async def port(response: httpx.Response) -> None:
            ports.add(response.extensions["network_stream"].get_extra_info("socket")
                      .getsockname()[1])

        async with httpx.AsyncClient(event_hooks={"response": [port]},
                                     headers={"Accept-Encoding": "identity"}) as client:
            first = await client.get(url)
            assert first.status_code == 200 and b"Amber warning" in first.content
            assert first.headers["content-length"] == str(len(first.content))
            etag = first.headers["etag"]
            again = await client.get(url, headers={"If-None-Match": etag})
            assert again.status_code == 304 and again.content == b""
            head = await client.head(url)
            assert head.status_code == 200 and head.content == b""
            missing = await client.get(f"{loop_sim.base_url}/no/such/path")
            assert missing.status_code == 404
            clock.set(T0 + timedelta(minutes=1))
            world.add_item("met", "rss", T0 + timedelta(seconds=30), {**FEED, "guid": "g2"})
            changed = await client.get(url, headers={"If-None-Match": etag})
            assert changed.status_code == 200 and changed.headers["etag"] != etag
            assert len(ports) == 1  # one connection, kept alive
        paths = [r.path for r in world.request_log]
        assert paths.count("/sources/rss/met") == 4

    _run(world, body)


def test_a_body_is_read_and_the_answer_is_the_apps() -> None:
    world = World(FixedClock(T0))

    async def body(loop_sim) -> None:  # type: ignore[no-untyped-def]
        async with httpx.AsyncClient() as client:
            r = await client.post(f"{loop_sim.base_url}/mastodon/api/v1/statuses",
                                  json={"status": "Roads closed near Chelmsford"},
                                  headers={"Authorization": "Bearer t"})
            assert r.status_code == 200, r.text
            assert "Roads closed near Chelmsford" in r.json()["content"]
        assert [p.text for p in world.posts_on("mastodon")] == ["Roads closed near Chelmsford"]

    _run(world, body)


def test_a_dropped_connection_and_refused_requests() -> None:
    world = World(FixedClock(T0))

    async def body(loop_sim) -> None:  # type: ignore[no-untyped-def]
        async with httpx.AsyncClient() as client:
            async def chunks():  # type: ignore[no-untyped-def]
                yield b"status=hi"

            r = await client.post(f"{loop_sim.base_url}/mastodon/api/v1/statuses",
                                  content=chunks(), headers={"Authorization": "Bearer t"})
            assert r.status_code == 411  # chunked request bodies are not read
            world.set_faults(Faults(drop_rate=1.0))
            with pytest.raises(httpx.TransportError):
                await client.get(loop_sim.url_for("ea-floods"))
            world.set_faults(None)
            ok = await client.get(loop_sim.url_for("ea-floods"))
            assert ok.status_code == 200 and ok.json()["items"] == []
        assert [r.note for r in world.request_log][-2:] == ["drop", ""]

    _run(world, body)


def test_stopping_closes_open_connections_and_the_port() -> None:
    world = World(FixedClock(T0))
    seen: list[str] = []

    async def body(loop_sim) -> None:  # type: ignore[no-untyped-def]
        seen.append(loop_sim.base_url)
        async with httpx.AsyncClient() as client:
            assert (await client.get(loop_sim.url_for("ea-floods"))).status_code == 200

    _run(world, body)

    async def after() -> None:
        async with httpx.AsyncClient() as client:
            with pytest.raises(httpx.ConnectError):
                await client.get(seen[0] + "/ea/flood-monitoring/id/floods")

    asyncio.run(after())
