"""Fixtures for the hostile-input tests: respx-mocked httpx, fake DNS, one bounded parser pool."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from crisiscomms.adapters.sources.parsing import FeedParserPool

# The same respx, fake-DNS and fetcher fixtures as the adapter tests.
from tests.sources.conftest import (  # noqa: F401
    anyio_backend,
    client,
    fetcher,
    mock,
    resolver,
)

PARSE_TIMEOUT = 2.0
PARSE_MEMORY = 64 * 1024 * 1024


@pytest.fixture(scope="session")
def hostile_pool() -> Iterator[FeedParserPool]:
    """The real pool with the production bounds: 2 s and 64 MiB per parse."""
    p = FeedParserPool(workers=2, timeout=PARSE_TIMEOUT, memory_bytes=PARSE_MEMORY)
    try:
        yield p
    finally:
        p.close()
