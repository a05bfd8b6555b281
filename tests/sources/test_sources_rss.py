"""RssSource and the bounded parser: fixtures, conditional GET, hostile bodies."""

from __future__ import annotations

import time
from datetime import UTC, datetime

import httpx
import pytest
import respx

from crisiscomms.adapters.sources.http import HttpFetcher
from crisiscomms.adapters.sources.parsing import FeedParserPool
from crisiscomms.adapters.sources.rss import RssSource
from crisiscomms.domain.errors import PermanentSourceError, SourceError
from crisiscomms.domain.models import SourceKind
from crisiscomms.ports import Source

from .sources_helpers import FEED_URL, NOW, fixture_bytes, make_config, state_for

pytestmark = pytest.mark.anyio
XML = {"Content-Type": "application/rss+xml; charset=utf-8"}


def source(fetcher: HttpFetcher, pool: FeedParserPool, **kw: object) -> RssSource:
    return RssSource(make_config(SourceKind.RSS, **kw), fetcher, pool)


async def test_rss20_fixture_then_304(
    fetcher: HttpFetcher, pool: FeedParserPool, mock: respx.MockRouter
) -> None:
    route = mock.get(FEED_URL).mock(
        side_effect=[
            httpx.Response(200, content=fixture_bytes("rss20.xml"),
                           headers={**XML, "ETag": '"abc"', "Last-Modified": "Tue, 10 Feb"}),
            httpx.Response(304, headers={"ETag": '"abc"'}),
        ]
    )
    src = source(fetcher, pool)
    assert isinstance(src, Source)
    result = await src.poll(state_for(src.key), NOW)
    assert result.etag == '"abc"' and result.last_modified == "Tue, 10 Feb"
    assert not result.not_modified
    first, second, third = result.updates
    assert first.external_id == "lfb-2026-0001"
    assert first.title == "Crews tackle fire at tower block in Poplar"
    assert "alert(1)" not in first.text and "<" not in first.text
    assert "Eight fire engines & around 60 firefighters" in first.text
    assert first.published_at == datetime(2026, 2, 10, 14, 5, tzinfo=UTC)
    assert first.fetched_at == NOW and first.content_hash
    assert first.url == "https://www.london-fire.gov.uk/incidents/2026/poplar-fire/"
    assert second.published_at == datetime(2026, 2, 10, 8, 30, tzinfo=UTC)
    assert third.external_id.startswith("sha256:")
    assert all(u.kind is SourceKind.RSS and u.source_id == src.key for u in result.updates)

    again = await src.poll(state_for(src.key, etag='"abc"', last_modified="Tue, 10 Feb",
                                     extra={"k": 1}), NOW)
    assert again.not_modified and again.updates == ()
    assert again.etag == '"abc"' and again.extra == {"k": 1}
    assert route.calls[1].request.headers["if-none-match"] == '"abc"'


async def test_atom_and_rss10_fixtures(
    fetcher: HttpFetcher, pool: FeedParserPool, mock: respx.MockRouter
) -> None:
    src = source(fetcher, pool)
    mock.get(FEED_URL).mock(return_value=httpx.Response(200, content=fixture_bytes("atom.xml")))
    atom = (await src.poll(state_for(src.key), NOW)).updates
    assert [u.external_id for u in atom] == [
        "tag:essex.police.uk,2026:news/101", "tag:essex.police.uk,2026:news/102"]
    assert atom[0].title == "Appeal after collision on the A127"
    assert atom[0].text == "We are appealing for witnesses.\nCall 101."
    assert atom[0].published_at == datetime(2026, 2, 10, 13, 0, tzinfo=UTC)
    assert atom[1].published_at == datetime(2026, 2, 10, 15, 0, tzinfo=UTC)

    mock.get(FEED_URL).mock(return_value=httpx.Response(200, content=fixture_bytes("rss10.xml")))
    rdf = (await src.poll(state_for(src.key), NOW)).updates
    assert [u.url for u in rdf] == ["https://example.nhs.uk/news/1", "https://example.nhs.uk/news/2"]
    assert rdf[0].published_at == datetime(2026, 2, 10, 8, 0, tzinfo=UTC)


async def test_met_office_titles_get_severity(
    fetcher: HttpFetcher, pool: FeedParserPool, mock: respx.MockRouter
) -> None:
    mock.get(FEED_URL).mock(
        return_value=httpx.Response(200, content=fixture_bytes("metoffice.xml"))
    )
    src = source(fetcher, pool, agency="Met Office")
    yellow, amber = (await src.poll(state_for(src.key), NOW)).updates
    assert yellow.cap is not None and amber.cap is not None
    assert (yellow.cap.severity, amber.cap.severity) == ("Moderate", "Severe")
    assert yellow.cap.area == "East of England" and yellow.cap.event == "Yellow warning of rain"
    assert yellow.cap.amplifiable and yellow.severity_rank == 2


MET_WWW = "https://www.metoffice.gov.uk/public/data/PWSCache/WarningsRSS/Region/ee"
MET_WEATHER = "https://weather.metoffice.gov.uk/public/data/PWSCache/WarningsRSS/Region/ee"


def test_bundled_met_office_source_uses_the_weather_host() -> None:
    """platform-facts.md, UK official sources: code written since 2025 uses
    weather.metoffice.gov.uk/public/data/PWSCache/WarningsRSS/Region/<code>."""
    from pathlib import Path

    from crisiscomms.adapters.playbooks import load_catalog

    catalog = load_catalog(Path(__file__).resolve().parents[2] / "playbooks")
    assert catalog.sources["met-office-ee"].url == MET_WEATHER


async def test_met_office_feed_moved_between_its_hosts_is_still_read(
    fetcher: HttpFetcher, pool: FeedParserPool, mock: respx.MockRouter
) -> None:
    mock.get(MET_WWW).mock(return_value=httpx.Response(301, headers={"Location": MET_WEATHER}))
    mock.get(MET_WEATHER).mock(return_value=httpx.Response(
        200, content=fixture_bytes("metoffice.xml"), headers=XML))
    src = source(fetcher, pool, agency="Met Office", url=MET_WWW)
    result = await src.poll(state_for(src.key), NOW)
    assert len(result.updates) == 2
    assert result.extra["moved_to"] == MET_WEATHER  # for `status`: update sources.yaml
    mock.get(MET_WWW).mock(return_value=httpx.Response(
        200, content=fixture_bytes("metoffice.xml"), headers=XML))
    back = await src.poll(state_for(src.key, extra=result.extra), NOW)
    assert back.extra["moved_to"] is None  # served at its old URL again: no stale advice


async def test_cap_index_moved_for_good_is_recorded(
    fetcher: HttpFetcher, pool: FeedParserPool, mock: respx.MockRouter
) -> None:
    from crisiscomms.adapters.sources.cap import CapSource

    moved = "https://feeds.example.gov.uk/cap/index.atom"
    mock.get(FEED_URL).mock(return_value=httpx.Response(301, headers={"Location": moved}))
    mock.get(moved).mock(return_value=httpx.Response(
        200, content=fixture_bytes("cap_index.atom"),
        headers={"Content-Type": "application/atom+xml"}))
    mock.route(method="GET").mock(return_value=httpx.Response(404))
    src = CapSource(make_config(SourceKind.CAP), fetcher, pool)
    result = await src.poll(state_for(src.key), NOW)
    assert result.extra["moved_to"] == moved


@pytest.mark.parametrize(
    ("body", "error_class"),
    [
        (b"<!DOCTYPE html><html><body><p>Hello</p></body></html>", "not_a_feed"),
        (b'{"items": []}', "not_a_feed"),
        (b"[1,2]", "not_a_feed"),
        (b"", "empty"),
        (b"  \n ", "empty"),
        (b"just some text", "not_a_feed"),
    ],
)
async def test_wrong_content(
    fetcher: HttpFetcher, pool: FeedParserPool, mock: respx.MockRouter, body: bytes,
    error_class: str,
) -> None:
    mock.get(FEED_URL).mock(return_value=httpx.Response(200, content=body))
    src = source(fetcher, pool)
    with pytest.raises(PermanentSourceError) as info:
        await src.poll(state_for(src.key), NOW)
    assert info.value.error_class == error_class and src.key in str(info.value)


async def test_bozo_with_entries_depends_on_trust(
    fetcher: HttpFetcher, pool: FeedParserPool, mock: respx.MockRouter
) -> None:
    broken = (b'<rss version="2.0"><channel><item><title>a</title><guid>1</guid></item>'
              b"<item><title>b &nbsp; unclosed")
    mock.get(FEED_URL).mock(return_value=httpx.Response(200, content=broken))
    trusting = source(fetcher, pool)
    result = await trusting.poll(state_for(trusting.key), NOW)
    assert [u.external_id for u in result.updates][:1] == ["1"]
    strict = source(fetcher, pool, trust_bozo=False)
    with pytest.raises(PermanentSourceError) as info:
        await strict.poll(state_for(strict.key), NOW)
    assert info.value.error_class == "bozo"


async def test_invalid_utf8_and_invalid_dates(
    fetcher: HttpFetcher, pool: FeedParserPool, mock: respx.MockRouter
) -> None:
    body = (b'<?xml version="1.0" encoding="utf-8"?><rss version="2.0"><channel>'
            b"<item><title>caf\xff\xfe</title><guid>u1</guid><pubDate>yesterday-ish</pubDate></item>"
            b"<item><title>b</title><guid>u2</guid><pubDate>Mon, 30 Feb 2026 25:61:00 GMT</pubDate>"
            b"</item></channel></rss>")
    mock.get(FEED_URL).mock(return_value=httpx.Response(200, content=body))
    src = source(fetcher, pool)
    try:
        result = await src.poll(state_for(src.key), NOW)
    except SourceError:
        return  # refusing a mis-encoded feed is fine; anything else is not
    for update in result.updates:
        assert update.published_at.tzinfo is not None
        assert update.published_at == NOW  # invalid dates fall back to the fetch time


ENTITY_BOMB_ONE_LINE = (
    '<?xml version="1.0"?><!DOCTYPE r [<!ENTITY a "aaaaaaaaaa">'
    + "".join(f'<!ENTITY {chr(98 + i)} "{("&" + chr(97 + i) + ";") * 10}">' for i in range(8))
    + ']><rss version="2.0"><channel><item><title>&i;</title><guid>b</guid></item></channel></rss>'
).encode()
ENTITY_BOMB_MULTI_LINE = ENTITY_BOMB_ONE_LINE.replace(b"<!ENTITY", b"\n<!ENTITY")


@pytest.mark.parametrize("body", [ENTITY_BOMB_ONE_LINE, ENTITY_BOMB_MULTI_LINE],
                         ids=["one-line", "multi-line"])
async def test_entity_bombs_are_bounded(
    fetcher: HttpFetcher, pool: FeedParserPool, mock: respx.MockRouter, body: bytes
) -> None:
    mock.get(FEED_URL).mock(return_value=httpx.Response(200, content=body))
    src = source(fetcher, pool)
    started = time.monotonic()
    try:
        result = await src.poll(state_for(src.key), NOW)
    except SourceError:
        pass
    else:
        assert all(len(u.title) < 10_000 and len(u.text) < 100_000 for u in result.updates)
    assert time.monotonic() - started < pool.timeout + 2


async def test_author_email_redos_is_cut_off_by_the_time_bound(
    fetcher: HttpFetcher, mock: respx.MockRouter
) -> None:
    # kurtmckee/feedparser#562: quadratic backtracking, ~4.5 s for 16k labels on one core.
    author = "a@" + "a." * 16_000 + "!"
    body = (f'<rss version="2.0"><channel><item><title>x</title><guid>r</guid>'
            f"<author>{author}</author></item></channel></rss>").encode()
    mock.get(FEED_URL).mock(return_value=httpx.Response(200, content=body))
    quick = FeedParserPool(workers=1, timeout=0.5)
    try:
        src = RssSource(make_config(SourceKind.RSS), fetcher, quick)
        started = time.monotonic()
        with pytest.raises(PermanentSourceError) as info:
            await src.poll(state_for(src.key), NOW)
        assert info.value.error_class == "parse_timeout"
        assert time.monotonic() - started < 3.0
        # the killed worker is replaced: the next parse works
        ok = await quick.parse(fixture_bytes("rss20.xml"), source_id="after")
        assert len(ok.entries) == 3
    finally:
        quick.close()


async def test_parser_memory_bound() -> None:
    tight = FeedParserPool(workers=1, timeout=5.0, memory_bytes=8 * 1024 * 1024)
    try:
        items = "".join(
            f"<item><title>{i}</title><guid>{i}</guid><description>{'x' * 3000}</description>"
            "</item>"
            for i in range(1500)
        )
        body = f'<rss version="2.0"><channel>{items}</channel></rss>'.encode()
        with pytest.raises(PermanentSourceError) as info:
            await tight.parse(body, source_id="mem")
        assert info.value.error_class in {"parse_memory", "parse_crash", "parse"}
        ok = await tight.parse(b'<rss version="2.0"><channel></channel></rss>')
        assert ok.version == "rss20"
    finally:
        tight.close()


async def test_closed_pool_refuses() -> None:
    closed = FeedParserPool(workers=1)
    closed.close()
    with pytest.raises(SourceError) as info:
        await closed.parse(b"<rss/>", source_id="c")
    assert info.value.error_class == "parser_closed"
