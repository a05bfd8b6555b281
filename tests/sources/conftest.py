"""Shared fixtures for the source adapter tests: respx-mocked httpx, fake DNS, a parser pool."""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator, Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
import respx

from crisiscomms.models import SourceKind, SourceState
from crisiscomms.playbooks import SourceConfig
from crisiscomms.sources.http import FetchLimits, HttpFetcher, make_async_client
from crisiscomms.sources.parsing import FeedParserPool

HERE = Path(__file__).parent
FIXTURES = HERE / "fixtures"
CORPUS = HERE / "corpus"
NOW = datetime(2026, 2, 10, 15, 0, tzinfo=UTC)
PUBLIC_IP = "93.184.216.34"


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def fixture_bytes(name: str) -> bytes:
    return (FIXTURES / name).read_bytes()


class FakeResolver:
    """DNS for tests: every name is public unless listed in ``answers``."""

    def __init__(self) -> None:
        self.answers: dict[str, list[str] | Exception] = {}
        self.calls: list[str] = []

    async def __call__(self, host: str, port: int) -> list[str]:
        self.calls.append(host)
        answer = self.answers.get(host, [PUBLIC_IP])
        if isinstance(answer, Exception):
            raise answer
        return list(answer)


@pytest.fixture
def resolver() -> FakeResolver:
    return FakeResolver()


@pytest.fixture
async def client() -> AsyncIterator[httpx.AsyncClient]:
    c = make_async_client(timeout=5.0)
    try:
        yield c
    finally:
        await c.aclose()


@pytest.fixture
def mock() -> Iterator[respx.MockRouter]:
    with respx.mock(assert_all_called=False, assert_all_mocked=True) as router:
        yield router


@pytest.fixture
def fetcher(client: httpx.AsyncClient, resolver: FakeResolver, mock: respx.MockRouter) -> HttpFetcher:
    return HttpFetcher(client, FetchLimits(), resolver=resolver)


@pytest.fixture(scope="session")
def pool() -> Iterator[FeedParserPool]:
    p = FeedParserPool(workers=2, timeout=2.0)
    try:
        yield p
    finally:
        p.close()


@pytest.fixture
def make_config() -> Callable[..., SourceConfig]:
    def make(kind: SourceKind = SourceKind.RSS, **kw: Any) -> SourceConfig:
        defaults: dict[str, Any] = {
            "id": f"test-{kind.value}", "agency": "Test Agency", "kind": kind,
        }
        if kind in (SourceKind.RSS, SourceKind.CAP):
            defaults["url"] = "https://feeds.example.gov.uk/feed.xml"
        elif kind is SourceKind.EA_FLOODS:
            defaults["url"] = "https://environment.data.gov.uk/flood-monitoring/id/floods"
            defaults["county"] = "Essex"
        elif kind is SourceKind.MASTODON:
            defaults["account"] = "https://mastodon.example/@EssexFire"
        elif kind is SourceKind.BLUESKY:
            defaults["account"] = "https://bsky.app/profile/essexpolice.bsky.social"
        elif kind is SourceKind.X:
            defaults["handle"] = "EssexPoliceUK"
            defaults["x_user_id"] = "1000"
        defaults.update(kw)
        return SourceConfig(**defaults)

    return make


def state_for(source_id: str, **kw: Any) -> SourceState:
    return SourceState(source_id=source_id, **kw)


def gaierror() -> socket.gaierror:
    return socket.gaierror(socket.EAI_NONAME, "Name or service not known")
