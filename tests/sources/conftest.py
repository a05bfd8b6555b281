"""Fixtures for the source adapter tests: respx-mocked httpx, fake DNS, one parser pool."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import httpx
import pytest
import respx

from crisiscomms.adapters.sources.http import FetchLimits, HttpFetcher, make_async_client
from crisiscomms.adapters.sources.parsing import FeedParserPool

from .sources_helpers import FakeResolver


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
def resolver() -> FakeResolver:
    return FakeResolver()


@pytest.fixture
async def client() -> AsyncIterator[httpx.AsyncClient]:
    c = make_async_client(timeout=5.0, wire=False)  # respx mocks httpcore, not the wire path
    try:
        yield c
    finally:
        await c.aclose()


@pytest.fixture
def mock() -> Iterator[respx.MockRouter]:
    with respx.mock(assert_all_called=False, assert_all_mocked=True) as router:
        yield router


@pytest.fixture
def fetcher(
    client: httpx.AsyncClient, resolver: FakeResolver, mock: respx.MockRouter
) -> HttpFetcher:
    return HttpFetcher(client, FetchLimits(), resolver=resolver)


@pytest.fixture(scope="session")
def pool() -> Iterator[FeedParserPool]:
    p = FeedParserPool(workers=2, timeout=2.0)
    try:
        yield p
    finally:
        p.close()
