"""TLS through the pinned asyncio backend: the certificate is verified against the URL's host
name (not the pinned address), and a keep-alive TLS connection is reused across polls."""

from __future__ import annotations

import asyncio
import shutil
import ssl
import subprocess
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from pathlib import Path

import pytest

from crisiscomms.adapters.sources.http import HttpFetcher, make_async_client
from crisiscomms.domain.errors import SourceError

pytestmark = [pytest.mark.anyio,
              pytest.mark.skipif(shutil.which("openssl") is None, reason="needs openssl")]


@pytest.fixture(scope="module")
def cert(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    d = tmp_path_factory.mktemp("tls")
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
         "-keyout", str(d / "key.pem"), "-out", str(d / "cert.pem"), "-subj", "/CN=localhost",
         "-addext", "subjectAltName=DNS:localhost"],
        check=True, capture_output=True)
    return d / "cert.pem", d / "key.pem"


@pytest.fixture
async def server(cert: tuple[Path, Path]) -> AsyncIterator[tuple[int, list[int]]]:
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(*cert)
    accepted = [0]

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        accepted[0] += 1
        try:
            while True:
                await reader.readuntil(b"\r\n\r\n")
                writer.write(b'HTTP/1.1 304 Not Modified\r\nETag: "v1"\r\n\r\n')
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError, ssl.SSLError):
            pass
        finally:
            writer.close()

    srv = await asyncio.start_server(handle, "127.0.0.1", 0, ssl=ctx)
    try:
        yield srv.sockets[0].getsockname()[1], accepted
    finally:
        srv.close()


async def test_tls_is_verified_and_the_connection_is_reused(
    server: tuple[int, list[int]], cert: tuple[Path, Path]
) -> None:
    port, accepted = server
    client = make_async_client(timeout=5.0, verify=ssl.create_default_context(cafile=cert[0]))
    try:
        fetcher = HttpFetcher(client)
        for _ in range(5):
            got = await fetcher.fetch(f"https://localhost:{port}/feed", source_id="s",
                                      etag='"v1"', allow_private=True)
            assert got.not_modified
    finally:
        await client.aclose()
    assert accepted[0] == 1


async def test_an_untrusted_certificate_is_refused(server: tuple[int, list[int]]) -> None:
    port, _ = server
    client = make_async_client(timeout=5.0)
    try:
        with pytest.raises(SourceError) as info:
            await HttpFetcher(client).fetch(f"https://localhost:{port}/feed", source_id="s",
                                            allow_private=True)
    finally:
        await client.aclose()
    assert info.value.error_class == "tls"


@pytest.mark.parametrize("closing", ["async with", "aclose"])
async def test_closing_the_client_closes_every_pooled_connection(closing: str) -> None:
    # ``async with client`` ends in httpx's ``__aexit__``, which knew only the global pool: a
    # source allowed private addresses kept its socket open (a ResourceWarning).
    closed = asyncio.Event()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                await reader.readuntil(b"\r\n\r\n")
                writer.write(b"HTTP/1.1 304 Not Modified\r\n\r\n")
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            closed.set()
        finally:
            writer.close()

    srv = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = srv.sockets[0].getsockname()[1]
    try:
        client = make_async_client(timeout=5.0)
        async with AsyncExitStack() as stack:
            if closing == "async with":
                await stack.enter_async_context(client)
            else:
                stack.push_async_callback(client.aclose)
            await HttpFetcher(client).fetch(f"http://127.0.0.1:{port}/feed", source_id="s",
                                            allow_private=True)
        await asyncio.wait_for(closed.wait(), 5)
    finally:
        srv.close()
