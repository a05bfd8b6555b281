"""``build_sources(start_parsers=False)`` (``watch --once``): no parser worker until a body must
be parsed; and the package's names are imported from their modules on first use."""

from __future__ import annotations

import subprocess
import sys

import httpx
import pytest

import crisiscomms.adapters.sources as sources
from crisiscomms.adapters.sources import FeedParserPool, build_sources

from .test_parser_eager import rss_config as _rss

pytestmark = pytest.mark.anyio


async def test_without_start_parsers_a_worker_starts_at_the_first_parse() -> None:
    pool = FeedParserPool(workers=2)
    client = httpx.AsyncClient()
    try:
        build_sources([_rss(1), _rss(2)], client=client, parser=pool, start_parsers=False)
        assert pool.wait_started(timeout=1)  # nothing was begun
        assert pool.worker_pids() == []
        feed = await pool.parse(b"<rss version='2.0'><channel><title>t</title></channel></rss>")
        assert feed.version == "rss20"
        assert len(pool.worker_pids()) == 1  # the one that parsed; the other never started
    finally:
        pool.close()
        await client.aclose()


def test_package_names_resolve_lazily_and_unknown_ones_fail() -> None:
    for name in sources.__all__:
        assert getattr(sources, name) is not None
    assert sources.XSource.__module__ == "crisiscomms.adapters.sources.x"
    with pytest.raises(AttributeError, match="no attribute 'Nope'"):
        sources.Nope
    assert set(sources.__all__) <= set(dir(sources))


def test_building_rss_sources_imports_no_other_adapter() -> None:
    code = ("import sys, httpx\n"
            "from crisiscomms.adapters.sources import build_sources\n"
            "from crisiscomms.domain.config import SourceConfig\n"
            "from crisiscomms.domain.models import SourceKind\n"
            "c = SourceConfig(id='f', agency='A', kind=SourceKind.RSS,\n"
            "                 url='https://feeds.example.gov.uk/f.xml', watch='always')\n"
            "build_sources([c], client=httpx.AsyncClient(), start_parsers=False)\n"
            "print(' '.join(sorted(sys.modules)))\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=60, check=True)
    loaded = set(proc.stdout.split())
    assert "crisiscomms.adapters.sources.rss" in loaded
    for other in ("x", "bluesky", "mastodon", "cap", "ea_floods", "push"):
        assert f"crisiscomms.adapters.sources.{other}" not in loaded
    assert not {"tweepy", "feedparser"} & loaded
