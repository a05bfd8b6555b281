"""Connections pinned to checked addresses, on asyncio's own sockets.

``HttpFetcher`` resolves a host and refuses it if any address is not global; then it opens
the request inside ``pinned(Pin(...))``. When httpcore needs a new connection for that
request, ``PinnedBackend.connect_tcp`` connects to those very addresses: the name is not
resolved a second time between the check and the connect, so a DNS answer that changes in
between (rebinding) cannot slip a private address in. A connection opened without a pin
(someone else using the client) resolves and checks the addresses itself and refuses a
non-global one: no path of this backend connects to an unchecked private address unless a
pin says the source allows it.

The streams are asyncio protocols rather than anyio's: httpcore's default backend wraps every
read and write in anyio cancel scopes and asks ``select`` whether an idle socket is readable
before each reuse; here a read is a buffer and a future, and "readable" is "the buffer holds
data or the peer closed", which the protocol already knows. On a loopback 304 this is about
a third of httpcore's CPU per request (``make bench``'s idle-GET row).

``LeanTransport`` is ``httpx.AsyncHTTPTransport`` with this backend in its httpcore pool, and
the fetcher's own GET path (``wire``) on the same backend.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import socket
import ssl
from collections.abc import Awaitable, Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from types import TracebackType
from typing import Any

import httpcore
import httpx

from crisiscomms.adapters.sources.wire import MAX_ORIGINS, WirePool
from crisiscomms.domain.errors import PermanentSourceError

Resolver = Callable[[str, int], Awaitable[Sequence[str]]]

_HIGH_WATER = 1 << 20  # pause reading past 1 MiB buffered: httpcore reads 64 KiB at a time
_LOW_WATER = 1 << 18


@dataclass(frozen=True, slots=True)
class Pin:
    """Where a request for ``host:port`` may connect.

    ``addresses``: the checked addresses (connect to these only). ``None``: the source allows
    private addresses, so ``resolve`` is asked and nothing is refused.
    """

    host: str
    port: int
    addresses: tuple[str, ...] | None
    resolve: Resolver
    source_id: str = ""


_PIN: ContextVar[Pin | None] = ContextVar("crisiscomms_pin", default=None)


@contextmanager
def pinned(pin: Pin) -> Iterator[None]:
    """Connections opened by this task inside the block follow ``pin``."""
    token = _PIN.set(pin)
    try:
        yield
    finally:
        _PIN.reset(token)


def is_public(addr: str) -> bool:
    """Whether ``addr`` is a global unicast address (an IPv4-mapped IPv6 address is judged
    by its IPv4 address)."""
    try:
        ip = ipaddress.ip_address(addr.split("%", 1)[0])
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return ip.is_global and not ip.is_multicast


def is_ip_literal(host: str) -> bool:
    """Whether ``host`` is an IP address (brackets and a zone allowed) rather than a name."""
    try:
        ipaddress.ip_address(host.strip("[]").split("%", 1)[0])
    except ValueError:
        return False
    return True


def private_address_error(host: str, source_id: str) -> PermanentSourceError:
    """The one refusal of a non-global address (fetcher and backend say the same)."""
    return PermanentSourceError(
        f"{source_id}: {host} resolves to a private/loopback/link-local address",
        source_id=source_id, error_class="private_address",
    )


def _ipv4_first(addresses: Iterable[str]) -> list[str]:
    # Without happy eyeballs, v4 first: a host without IPv6 routes fails v6 slowly.
    items = list(addresses)
    return [a for a in items if ":" not in a] + [a for a in items if ":" in a]


class _Protocol(asyncio.Protocol):
    """Buffers what arrives; wakes the one reader or writer waiting."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.buffer = bytearray()
        self.eof = False
        self.error: BaseException | None = None
        self.read_waiter: asyncio.Future[None] | None = None
        self.drain_waiter: asyncio.Future[None] | None = None
        self.write_paused = False
        self.read_paused = False
        self.closed: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        if len(self.buffer) > _HIGH_WATER and self.transport is not None:
            self.read_paused = True
            self.transport.pause_reading()
        self._wake_reader()

    def eof_received(self) -> bool:
        self.eof = True
        self._wake_reader()
        return False  # close our side too

    def connection_lost(self, exc: Exception | None) -> None:
        self.eof = True
        self.error = exc
        self._wake_reader()
        self.write_paused = False
        self._wake(self.drain_waiter)
        self._wake(self.closed)

    def pause_writing(self) -> None:
        self.write_paused = True

    def resume_writing(self) -> None:
        self.write_paused = False
        self._wake(self.drain_waiter)

    def _wake_reader(self) -> None:
        self._wake(self.read_waiter)

    @staticmethod
    def _wake(waiter: asyncio.Future[None] | None) -> None:
        if waiter is not None and not waiter.done():
            waiter.set_result(None)


class PinnedStream(httpcore.AsyncNetworkStream):
    """httpcore's view of one connection (plain or TLS: ``start_tls`` keeps the protocol)."""

    def __init__(self, transport: asyncio.Transport, protocol: _Protocol) -> None:
        self._transport = transport
        self._protocol = protocol

    async def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        proto = self._protocol
        if not proto.buffer:
            if proto.eof:
                return b""
            waiter = proto.read_waiter = asyncio.get_running_loop().create_future()
            try:
                async with asyncio.timeout(timeout):
                    await waiter
            except TimeoutError as exc:
                raise httpcore.ReadTimeout("read timed out") from exc
            finally:
                proto.read_waiter = None
            if not proto.buffer:
                return b""  # the peer closed (an error too is an end here; h11 says which)
        buf = proto.buffer
        if len(buf) <= max_bytes:
            data = bytes(buf)
            buf.clear()
        else:
            data = bytes(buf[:max_bytes])
            del buf[:max_bytes]
        if proto.read_paused and len(buf) < _LOW_WATER:
            proto.read_paused = False
            self._transport.resume_reading()
        return data

    async def write(self, buffer: bytes, timeout: float | None = None) -> None:
        if not buffer:
            return
        proto = self._protocol
        if proto.error is not None or self._transport.is_closing():
            raise httpcore.WriteError("connection closed") from proto.error
        self._transport.write(buffer)
        if proto.write_paused:
            waiter = proto.drain_waiter = asyncio.get_running_loop().create_future()
            try:
                async with asyncio.timeout(timeout):
                    await waiter
            except TimeoutError as exc:
                raise httpcore.WriteTimeout("write timed out") from exc
            finally:
                proto.drain_waiter = None
            if proto.error is not None:
                raise httpcore.WriteError("connection lost") from proto.error

    async def aclose(self) -> None:
        transport = self._transport
        if transport.get_extra_info("ssl_object") is not None:
            transport.abort()  # no waiting for the server's close_notify (as httpcore's anyio)
        else:
            transport.close()
        # The socket is closed on the loop's next turn: wait for it, so a loop that ends
        # right after ``client.aclose()`` leaves no socket open.
        closed = self._protocol.closed
        if not closed.done():
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(1.0):
                    await asyncio.shield(closed)

    def close_now(self) -> None:
        """Close without waiting (an idle connection the pool lets go)."""
        if self._transport.get_extra_info("ssl_object") is not None:
            self._transport.abort()
        else:
            self._transport.close()

    async def start_tls(
        self,
        ssl_context: ssl.SSLContext,
        server_hostname: str | None = None,
        timeout: float | None = None,
    ) -> httpcore.AsyncNetworkStream:
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(timeout):
                tls = await loop.start_tls(self._transport, self._protocol, ssl_context,
                                           server_hostname=server_hostname)
        except TimeoutError as exc:
            self._transport.close()
            raise httpcore.ConnectTimeout("TLS handshake timed out") from exc
        except (OSError, ssl.SSLError, ConnectionError) as exc:
            self._transport.close()
            raise httpcore.ConnectError(f"TLS handshake failed: {exc}") from exc
        if tls is None:  # pragma: no cover - only for a protocol that asked not to
            raise httpcore.ConnectError("TLS handshake failed")
        assert isinstance(tls, asyncio.Transport)
        self._protocol.transport = tls
        return PinnedStream(tls, self._protocol)

    def get_extra_info(self, info: str) -> Any:
        if info == "is_readable":
            # Data or a close on an idle connection means it cannot be reused.
            proto = self._protocol
            return bool(proto.buffer) or proto.eof
        if info == "ssl_object":
            return self._transport.get_extra_info("ssl_object")
        if info == "client_addr":
            return self._transport.get_extra_info("sockname")
        if info == "server_addr":
            return self._transport.get_extra_info("peername")
        if info == "socket":
            return self._transport.get_extra_info("socket")
        return None


class PinnedBackend(httpcore.AsyncNetworkBackend):
    """Connects only to addresses that were checked (see the module docstring)."""

    def __init__(self, resolve: Resolver | None = None) -> None:
        self._resolve = resolve
        self.connections = 0
        """TCP connections opened so far (benchmarks and tests count them)."""

    async def addresses(self, host: str, port: int) -> list[str]:
        """Where a new connection to ``host:port`` may go, checked; raises
        ``PermanentSourceError(private_address)`` for a refused one."""
        pin = _PIN.get()
        if pin is not None and pin.host == host and pin.port == port:
            if pin.addresses is not None:
                return list(pin.addresses)  # checked by the fetcher for this request
            if is_ip_literal(host):
                return [host.strip("[]")]
            return list(await pin.resolve(host, port))  # the source allows private ones
        if is_ip_literal(host):
            found = [host.strip("[]")]
        else:
            resolve = self._resolve if self._resolve is not None else (
                pin.resolve if pin is not None else None)
            if resolve is None:
                from crisiscomms.adapters.sources.dns import DnsCache

                resolve = self._resolve = DnsCache()
            found = list(await resolve(host, port))
        if not found or not all(is_public(a) for a in found):
            raise private_address_error(host, pin.source_id if pin is not None else "")
        return found

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        try:
            found = await self.addresses(host, port)
        except OSError as exc:
            raise httpcore.ConnectError(f"cannot resolve {host}: {exc}") from exc
        loop = asyncio.get_running_loop()
        local = (local_address, 0) if local_address else None
        last: OSError | None = None
        try:
            async with asyncio.timeout(timeout):
                for addr in _ipv4_first(found):
                    try:
                        transport, protocol = await loop.create_connection(
                            _Protocol, addr, port, local_addr=local)
                    except OSError as exc:
                        last = exc
                        continue
                    break
                else:
                    raise httpcore.ConnectError(
                        f"cannot connect to {host}:{port}: {last}") from last
        except TimeoutError as exc:
            raise httpcore.ConnectTimeout(f"connecting to {host}:{port} timed out") from exc
        self.connections += 1
        sock = transport.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            for option in socket_options or ():
                sock.setsockopt(*option)
        assert isinstance(transport, asyncio.Transport)
        return PinnedStream(transport, protocol)

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)


class LeanTransport(httpx.AsyncHTTPTransport):
    """``httpx.AsyncHTTPTransport`` whose httpcore pool uses ``PinnedBackend``, plus the
    fetcher's own GET path on the same backend (``wire.WirePool``).

    httpx itself (``client.get``) goes through ``pool``; ``HttpFetcher`` sends through
    ``wire``, which keeps idle connections per origin and policy (a connection opened for a
    source allowed private addresses is never reused for one that is not).
    """

    def __init__(self, *, verify: bool | ssl.SSLContext, limits: httpx.Limits,
                 trust_env: bool = False, max_origins: int = MAX_ORIGINS) -> None:
        super().__init__(verify=verify, limits=limits, trust_env=trust_env)
        ctx = (verify if isinstance(verify, ssl.SSLContext)
               else httpx.create_ssl_context(verify=verify, trust_env=trust_env))
        self.backend = PinnedBackend()
        self.pool = httpcore.AsyncConnectionPool(
            ssl_context=ctx,
            max_connections=limits.max_connections,
            max_keepalive_connections=limits.max_keepalive_connections,
            keepalive_expiry=limits.keepalive_expiry,
            http1=True, http2=False,
            network_backend=self.backend,
        )
        self._pool = self.pool  # what httpx's handle_async_request and aclose use
        self.wire = WirePool(self.backend, ctx, keepalive_expiry=limits.keepalive_expiry,
                             max_origins=max_origins)

    async def aclose(self) -> None:
        await super().aclose()
        await self.wire.aclose()

    async def __aexit__(self, exc_type: type[BaseException] | None = None,
                        exc_value: BaseException | None = None,
                        traceback: TracebackType | None = None) -> None:
        # ``async with client`` ends here, not in ``aclose``: httpx's own ``__aexit__`` only
        # closes the pool it knows about.
        await super().__aexit__(exc_type, exc_value, traceback)
        await self.wire.aclose()
