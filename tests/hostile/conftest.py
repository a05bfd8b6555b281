"""Fixtures for the hostile-input tests: respx-mocked httpx, fake DNS, one bounded parser pool."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import httpx
import pytest
import respx

from crisiscomms.sources.http import FetchLimits, HttpFetcher, make_async_client
from crisiscomms.sources.parsing import FeedParserPool
from tests.sources.sources_helpers import FakeResolver

PARSE_TIMEOUT = 2.0
PARSE_MEMORY = 64 * 1024 * 1024


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


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
def fetcher(
    client: httpx.AsyncClient, resolver: FakeResolver, mock: respx.MockRouter
) -> HttpFetcher:
    return HttpFetcher(client, FetchLimits(), resolver=resolver)


@pytest.fixture(scope="session")
def hostile_pool() -> Iterator[FeedParserPool]:
    """The real pool with the production bounds: 2 s and 64 MiB per parse."""
    p = FeedParserPool(workers=2, timeout=PARSE_TIMEOUT, memory_bytes=PARSE_MEMORY)
    try:
        yield p
    finally:
        p.close()
