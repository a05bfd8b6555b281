"""Serving: loopback only, start/stop, URLs, fault injection and the request log."""

from __future__ import annotations

from datetime import UTC, datetime

import httpx
import pytest

from crisiscomms.domain.clock import FixedClock
from crisiscomms.domain.errors import ConfigError
from crisiscomms.simulator import Faults, RunningSimulator, World, run_forever, serve

T0 = datetime(2026, 1, 5, 10, 0, tzinfo=UTC)
FLOODS = "/ea/flood-monitoring/id/floods"


@pytest.mark.parametrize("host", ["0.0.0.0", "192.168.1.10", "::1", "example.com", ""])
def test_refuses_non_loopback_hosts(host: str) -> None:
    with pytest.raises(ConfigError, match=r"only 127\.0\.0\.1"):
        serve(World(FixedClock(T0)), host=host)


def test_serve_on_free_port_and_stop() -> None:
    world = World(FixedClock(T0))
    with serve(world, host="localhost") as sim:
        assert sim.base_url.startswith("http://127.0.0.1:") and sim.port > 0
        with httpx.Client() as client:
            assert client.get(f"{sim.base_url}{FLOODS}").json()["items"] == []
    with httpx.Client() as client, pytest.raises(httpx.ConnectError):
        client.get(f"{sim.base_url}{FLOODS}")


def test_url_for(sim: RunningSimulator) -> None:
    base = sim.base_url
    assert sim.url_for("rss", "met-se") == f"{base}/sources/rss/met-se"
    assert sim.url_for("cap", "mo") == f"{base}/sources/cap/mo"
    assert sim.url_for("ea-floods", "West Sussex") == f"{base}{FLOODS}?county=West%20Sussex"
    assert sim.url_for("x") == f"{base}/x"
    assert sim.url_for("bluesky") == f"{base}/bluesky"
    with pytest.raises(ValueError):
        sim.url_for("myspace")


def _statuses(world: World, client: httpx.Client, n: int) -> list[int]:
    out = []
    for _ in range(n):
        out.append(client.get(FLOODS).status_code)
    return out


def test_5xx_rate_is_roughly_honoured_and_seeded(world: World, client: httpx.Client) -> None:
    world.set_faults(Faults(error_rate_5xx=0.3, seed=7))
    first = _statuses(world, client, 120)
    assert 20 <= first.count(503) <= 55
    assert set(first) == {200, 503}
    world.set_faults(Faults(error_rate_5xx=0.3, seed=7))
    assert _statuses(world, client, 120) == first  # same seed, same faults
    assert [r.note for r in world.request_log].count("5xx") == 2 * first.count(503)


def test_faults_limited_to_paths(world: World, client: httpx.Client) -> None:
    world.set_faults(Faults(error_rate_5xx=1.0, paths=("/x",)))
    assert client.get(FLOODS).status_code == 200
    assert client.get("/x/2/users/me").status_code == 503


def test_drop_closes_without_response(world: World, client: httpx.Client) -> None:
    world.set_faults(Faults(drop_rate=1.0))
    with pytest.raises(httpx.RemoteProtocolError):
        client.get(FLOODS)
    world.set_faults(None)
    assert client.get(FLOODS).status_code == 200  # the server carries on
    assert [(r.status, r.note) for r in world.request_log] == [(0, "drop"), (200, "")]


def test_accept_then_timeout_records_the_post(
    world: World, sim: RunningSimulator, auth: dict[str, str]
) -> None:
    world.set_faults(Faults(accept_then_timeout_rate=1.0, hang_seconds=1.0, paths=("/x",)))
    with httpx.Client(base_url=sim.base_url, timeout=0.2) as client:
        assert client.get(FLOODS).status_code == 200  # GETs and other paths unaffected
        with pytest.raises(httpx.ReadTimeout):
            client.post("/x/2/tweets", json={"text": "Did it post?"}, headers=auth)
    assert [p.text for p in world.posts] == ["Did it post?"]
    last = world.request_log[-1]
    assert (last.status, last.note) == (0, "accept_then_timeout:201")


def test_slow_responses(world: World, sim: RunningSimulator) -> None:
    world.set_faults(Faults(slow_seconds=0.3))
    with (
        httpx.Client(base_url=sim.base_url, timeout=0.05) as client,
        pytest.raises(httpx.ReadTimeout),
    ):
        client.get(FLOODS)


def test_request_log_uses_simulated_time(
    world: World, clock: FixedClock, client: httpx.Client
) -> None:
    client.get(FLOODS)
    clock.set(datetime(2026, 1, 6, tzinfo=UTC))
    client.get("/nowhere")
    log = world.request_log
    assert [(r.at, r.method, r.path, r.status) for r in log] == [
        (T0, "GET", FLOODS, 200),
        (datetime(2026, 1, 6, tzinfo=UTC), "GET", "/nowhere", 404),
    ]
    assert log[0].platform == "sources"


def test_run_forever_stops_on_keyboard_interrupt() -> None:
    seen: list[str] = []

    def ready(sim: RunningSimulator) -> None:
        with httpx.Client() as client:
            seen.append(str(client.get(sim.url_for("ea-floods")).json()["items"]))
        raise KeyboardInterrupt

    run_forever(World(FixedClock(T0)), on_ready=ready)
    assert seen == ["[]"]
