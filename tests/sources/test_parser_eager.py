"""The feed parser workers start at start-up, not on the first parse (issue 14): the first
update after start is parsed as fast as the others."""

from __future__ import annotations

import httpx
import pytest

from crisiscomms.adapters.sources import FeedParserPool, build_sources
from crisiscomms.domain.config import SourceConfig
from crisiscomms.domain.models import SourceKind

pytestmark = pytest.mark.anyio


def rss_config(i: int) -> SourceConfig:
    return SourceConfig(id=f"feed-{i}", agency="Agency", kind=SourceKind.RSS,
                        url=f"https://feeds.example.gov.uk/{i}.xml", watch="always")


async def test_build_sources_starts_every_parser_worker_before_the_first_poll() -> None:
    pool = FeedParserPool(workers=2)
    client = httpx.AsyncClient()
    try:
        assert pool.worker_pids() == []  # nothing started by the constructor
        build_sources([rss_config(1), rss_config(2)], client=client, parser=pool)
        # No poll, no parse yet: both workers are booting (in the pool's threads).
        assert pool.wait_started(timeout=60)
        assert len(pool.worker_pids()) == 2
        feed = await pool.parse(b"<rss version='2.0'><channel><title>t</title></channel></rss>")
        assert feed.version == "rss20"
        assert len(pool.worker_pids()) == 2  # the parse used a running worker
    finally:
        pool.close()
        await client.aclose()


async def test_start_twice_keeps_the_workers_and_close_stops_them() -> None:
    pool = FeedParserPool(workers=2)
    try:
        pool.start()
        assert pool.wait_started(timeout=60)
        first = pool.worker_pids()
        pool.start()
        assert pool.wait_started(timeout=60)
        assert pool.worker_pids() == first and len(first) == 2
    finally:
        pool.close()
    assert pool.worker_pids() == []
    assert pool.start() == []  # a closed pool starts nothing


def test_no_feed_sources_start_no_workers() -> None:
    pool = FeedParserPool(workers=2)
    client = httpx.AsyncClient()
    try:
        build_sources([SourceConfig(id="ea", agency="EA", kind=SourceKind.EA_FLOODS,
                                    url="https://environment.data.gov.uk/flood-monitoring/"
                                        "id/floods", county="Essex")],
                      client=client, parser=pool)
        assert pool.wait_started(timeout=1)
        assert pool.worker_pids() == []
    finally:
        pool.close()
