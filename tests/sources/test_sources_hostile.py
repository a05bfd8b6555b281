"""Hostile input: the corpus through every adapter, arbitrary bytes, a real loopback server."""

from __future__ import annotations

import asyncio
import time
import zlib
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import httpx
import pytest
import respx
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from crisiscomms.adapters.sources.bluesky import BlueskySource
from crisiscomms.adapters.sources.cap import CapSource
from crisiscomms.adapters.sources.ea_floods import EaFloodsSource
from crisiscomms.adapters.sources.http import FetchResponse, HttpFetcher, make_async_client
from crisiscomms.adapters.sources.mastodon import MastodonSource
from crisiscomms.adapters.sources.parsing import FeedParserPool, ParsedFeed
from crisiscomms.adapters.sources.rss import RssSource
from crisiscomms.domain.errors import FeedTooLargeError, SourceError
from crisiscomms.domain.models import PollResult, SourceKind

from .sources_helpers import CORPUS, FIXTURES, NOW, make_config, state_for

CORPUS_FILES = sorted(p for p in CORPUS.iterdir() if p.is_file())
KINDS = [SourceKind.RSS, SourceKind.CAP, SourceKind.EA_FLOODS, SourceKind.MASTODON,
         SourceKind.BLUESKY]
CONTENT_TYPES = {".json": "application/json", ".html": "text/html", ".txt": "text/plain",
                 ".png": "image/png"}


def build(kind: SourceKind, fetcher: Any, pool: FeedParserPool) -> Any:
    config = make_config(kind)
    if kind is SourceKind.RSS:
        return RssSource(config, fetcher, pool)
    if kind is SourceKind.CAP:
        return CapSource(config, fetcher, pool)
    if kind is SourceKind.EA_FLOODS:
        return EaFloodsSource(config, fetcher)
    if kind is SourceKind.MASTODON:
        return MastodonSource(config, fetcher)
    return BlueskySource(config, fetcher)


def test_corpus_is_big_enough() -> None:
    assert len(CORPUS_FILES) >= 40


@pytest.mark.anyio
@pytest.mark.parametrize("path", CORPUS_FILES, ids=[p.name for p in CORPUS_FILES])
async def test_corpus_file_through_every_adapter(
    path: Any, fetcher: HttpFetcher, pool: FeedParserPool, mock: respx.MockRouter
) -> None:
    body = path.read_bytes()
    content_type = CONTENT_TYPES.get(path.suffix, "application/xml")
    mock.route().mock(
        return_value=httpx.Response(200, content=body, headers={"Content-Type": content_type}))
    for kind in KINDS:
        src = build(kind, fetcher, pool)
        started = time.monotonic()
        try:
            result = await src.poll(state_for(src.key), NOW)
        except SourceError as exc:
            assert exc.source_id == src.key and exc.error_class
        else:
            assert isinstance(result, PollResult)
            for update in result.updates:
                assert update.content_hash and update.published_at.tzinfo is not None
                assert len(update.text) <= 20_000 and len(update.title) <= 2_000
                assert not update.url or update.url.startswith(("https://", "http://"))
                assert "root:x:0" not in update.title + update.text  # no XXE file read
        assert time.monotonic() - started < pool.timeout + 3, kind


class BytesFetcher:
    """Stands in for HttpFetcher: every URL answers 200 with the same body."""

    def __init__(self, body: bytes) -> None:
        self.body = body

    async def fetch(self, url: str, **_: Any) -> FetchResponse:
        return FetchResponse(200, self.body, {"content-type": "application/xml"}, url=url)


SEEDS = [p.read_bytes()[:3000] for p in sorted(FIXTURES.iterdir())]


@settings(max_examples=60, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(
    data=st.one_of(
        st.binary(max_size=3000),
        st.text(max_size=2000).map(lambda s: s.encode("utf-8", "surrogatepass")),
        st.tuples(st.sampled_from(SEEDS), st.integers(0, 3000), st.binary(max_size=50)).map(
            lambda t: t[0][: t[1]] + t[2] + t[0][t[1]:]),
    )
)
def test_arbitrary_bytes_only_raise_source_errors(pool: FeedParserPool, data: bytes) -> None:
    async def run() -> None:
        try:
            parsed = await pool.parse(data, source_id="fuzz")
        except SourceError:
            pass
        else:
            assert isinstance(parsed, ParsedFeed)
        for kind in KINDS:
            src = build(kind, BytesFetcher(data), pool)
            try:
                result = await src.poll(state_for(src.key), NOW)
            except SourceError:
                continue
            assert isinstance(result, PollResult)

    asyncio.run(run())


# ------------------------------------------------------------------ real loopback server

Handler = Callable[[str], Awaitable[bytes]]


async def _serve(handler: Handler) -> tuple[asyncio.base_events.Server, int]:
    async def on_client(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            path = head.split(b" ", 2)[1].decode()
            writer.write(await handler(path))
            await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(on_client, "127.0.0.1", 0)
    return server, server.sockets[0].getsockname()[1]


def _chunked(headers: str, chunks: list[bytes]) -> bytes:
    out = [f"HTTP/1.1 200 OK\r\n{headers}Transfer-Encoding: chunked\r\n"
           "Connection: close\r\n\r\n".encode()]
    for chunk in chunks:
        out.append(f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n")
    out.append(b"0\r\n\r\n")
    return b"".join(out)


@pytest.fixture
async def real_client() -> AsyncIterator[httpx.AsyncClient]:
    client = make_async_client(timeout=5.0)
    try:
        yield client
    finally:
        await client.aclose()


@pytest.mark.anyio
async def test_real_server_feed_and_gzip_bomb(
    real_client: httpx.AsyncClient, pool: FeedParserPool
) -> None:
    compressor = zlib.compressobj(9, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
    bomb = [compressor.compress(bytes(1 << 20)) for _ in range(64)] + [compressor.flush()]
    feed = (FIXTURES / "rss20.xml").read_bytes()

    async def handler(path: str) -> bytes:
        if path == "/bomb":
            return _chunked("Content-Encoding: gzip\r\n", [c for c in bomb if c])
        return _chunked("Content-Type: application/rss+xml\r\n", [feed[:500], feed[500:]])

    server, port = await _serve(handler)
    try:
        fetcher = HttpFetcher(real_client)
        with pytest.raises(SourceError) as info:
            await fetcher.fetch(f"http://127.0.0.1:{port}/feed", source_id="loop")
        assert info.value.error_class == "private_address"  # loopback needs allow_private

        with pytest.raises(FeedTooLargeError):
            await fetcher.fetch(f"http://127.0.0.1:{port}/bomb", source_id="loop",
                                allow_private=True, max_bytes=2_000_000)

        config = make_config(SourceKind.RSS, url=f"http://127.0.0.1:{port}/feed",
                             allow_private_network=True)
        result = await RssSource(config, fetcher, pool).poll(state_for(config.id), NOW)
        assert len(result.updates) == 3
    finally:
        server.close()
        await server.wait_closed()
