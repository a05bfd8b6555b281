"""Every hostile feed case through the real adapters it is aimed at (respx-served).

Allowed outcomes: a ``PollResult`` with sane updates, or a ``SourceError`` that names the
source id. Parsing is bounded by the pool (2 s, 64 MiB); the wall time per adapter is only
checked generously (< 10 s) because the machine is shared.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime

import httpx
import pytest
import respx

from crisiscomms.adapters.sources.http import HttpFetcher
from crisiscomms.adapters.sources.parsing import FeedParserPool
from crisiscomms.domain.errors import SourceError
from crisiscomms.domain.models import PollResult, SourceKind
from tests.sources.sources_helpers import NOW, state_for

from .adapters import build, config_for, serve_case
from .cases import CORPUS, Case, all_feed_cases, fixture, generated_cases, truncated_cases

CASES = all_feed_cases()
WALL_LIMIT = 10.0
HOST = "feeds.example.gov.uk"


def test_corpus_counts() -> None:
    """The brief asks for >= 200 hostile cases in all (config cases are counted separately)."""
    corpus = [p for p in CORPUS.iterdir() if p.is_file()]
    assert len(truncated_cases()) >= 100
    assert len(generated_cases()) >= 90
    assert len(corpus) + len(CASES) >= 200


def check_result(result: PollResult, case: Case) -> None:
    assert isinstance(result, PollResult)
    for update in result.updates:
        assert update.content_hash and update.external_id
        assert update.published_at.tzinfo is not None
        assert update.published_at.year < 9999
        assert len(update.title) <= 2_000 and len(update.text) <= 20_000
        assert not update.url or update.url.startswith(("https://", "http://"))
        assert "root:x:0" not in update.title + update.text
        assert "lollollol" not in update.text  # no entity expansion reached the text
        if update.cap is not None:
            cap = update.cap
            assert cap.identifier.strip()
            assert len(cap.area) <= 2_000
            if cap.status.lower() != "actual" or cap.scope.lower() != "public":
                assert not cap.amplifiable, case.id
            if cap.sent is not None:
                assert cap.sent.tzinfo is not None


@pytest.mark.anyio
@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
async def test_hostile_case_through_its_adapters(
    case: Case, fetcher: HttpFetcher, hostile_pool: FeedParserPool, mock: respx.MockRouter
) -> None:
    serve_case(mock, case)
    for kind in case.kinds:
        source_id = f"hostile-{kind.value}"
        src = build(kind, config_for(kind, source_id, HOST), fetcher, hostile_pool, HOST)
        started = time.monotonic()
        try:
            result = await src.poll(state_for(src.key), NOW)
        except SourceError as exc:
            assert exc.source_id == source_id, (case.id, kind)
            assert source_id in str(exc), (case.id, kind, str(exc))
            assert exc.error_class
            assert "\n" not in str(exc)
        else:
            check_result(result, case)
        assert time.monotonic() - started < WALL_LIMIT, (case.id, kind)


@pytest.mark.anyio
async def test_cap_absurd_fields_are_kept_but_never_amplifiable(
    fetcher: HttpFetcher, hostile_pool: FeedParserPool, mock: respx.MockRouter
) -> None:
    """A CAP 'Bogus' status is recorded as such and can never be relayed; an absurd severity
    is not promoted to a known one; a year-99999 date does not become a date."""
    from .cases import cap_doc

    cases = {
        "bogus": cap_doc(status="Bogus"),
        "apocalyptic": cap_doc(severity="Apocalyptic"),
        "far_future": cap_doc(sent="99999-01-01T00:00:00+00:00",
                              expires="99999-12-31T23:59:59+14:00"),
    }
    seen = {}
    for name, make in cases.items():
        mock.routes.clear()
        mock.route().mock(return_value=httpx.Response(
            200, content=make(), headers={"content-type": "application/cap+xml"}))
        src = build(SourceKind.CAP, config_for(SourceKind.CAP, f"cap-{name}", HOST), fetcher,
                    hostile_pool, HOST)
        (update,) = (await src.poll(state_for(src.key), NOW)).updates
        seen[name] = update.cap
    assert seen["bogus"].status == "Bogus" and not seen["bogus"].amplifiable
    assert seen["apocalyptic"].severity == "Apocalyptic"
    assert seen["far_future"].sent is None and seen["far_future"].expires is None


@pytest.mark.anyio
async def test_pool_still_parses_after_timeouts_and_bombs(
    fetcher: HttpFetcher, hostile_pool: FeedParserPool, mock: respx.MockRouter
) -> None:
    """After the ReDoS (worker killed at the time bound) a good feed parses again."""
    from .cases import redos_author

    mock.route(path="/bad").mock(return_value=httpx.Response(200, content=redos_author()))
    mock.route(path="/good").mock(return_value=httpx.Response(200, content=fixture("rss20.xml")))
    bad = build(SourceKind.RSS, config_for(SourceKind.RSS, "bad", HOST, url=f"https://{HOST}/bad"),
                fetcher, hostile_pool, HOST)
    good = build(SourceKind.RSS, config_for(SourceKind.RSS, "good", HOST,
                                            url=f"https://{HOST}/good"), fetcher, hostile_pool,
                 HOST)
    with pytest.raises(SourceError) as info:
        await bad.poll(state_for("bad"), NOW)
    assert info.value.error_class == "parse_timeout"
    result = await good.poll(state_for("good"), datetime(2026, 2, 10, 15, 1, tzinfo=UTC))
    assert len(result.updates) == 3
