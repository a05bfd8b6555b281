"""Fixtures: one loopback simulator per session, a fresh World (and clock) per test."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime

import httpx
import pytest

from crisiscomms.domain.clock import FixedClock
from crisiscomms.simulator import RunningSimulator, World, serve

T0 = datetime(2026, 1, 5, 10, 0, tzinfo=UTC)


@pytest.fixture(scope="session")
def sim_server() -> Iterator[RunningSimulator]:
    with serve(World(FixedClock(T0))) as sim:
        yield sim


@pytest.fixture
def clock() -> FixedClock:
    return FixedClock(T0)


@pytest.fixture
def world(clock: FixedClock, sim_server: RunningSimulator) -> World:
    w = World(clock)
    sim_server.replace_world(w)
    return w


@pytest.fixture
def sim(world: World, sim_server: RunningSimulator) -> RunningSimulator:
    return sim_server


@pytest.fixture
def client(sim: RunningSimulator) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=sim.base_url, timeout=5.0) as c:
        yield c


@pytest.fixture
def auth() -> dict[str, str]:
    return {"Authorization": "Bearer test-token"}
