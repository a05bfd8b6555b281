"""The shared HTTP fetcher every feed/JSON source goes through.

It owns the rules an untrusted URL must obey, so each adapter does not have to:

* redirects are followed here (at most ``MAX_REDIRECTS``), only within the registrable
  domain of the source's host (``www.metoffice.gov.uk`` -> ``weather.metoffice.gov.uk``,
  ``example.gov.uk`` -> ``www.example.gov.uk``) and never from https down to http
  (``redirect_refused``, one line naming the source and both hosts). The registrable
  domain (eTLD+1) comes from the Public Suffix List snapshot bundled with ``tldextract``
  and is never fetched at run time: ``gov.uk`` and ``police.uk`` are public suffixes, so
  ``a.gov.uk`` -> ``b.gov.uk`` is refused, and the list's private section is used too
  (``a.github.io`` -> ``b.github.io`` is refused);
* a permanent redirect (301/308) at the start of the chain is reported as
  ``FetchResponse.moved_to`` (scheme, host and path: a query string may carry a key), which
  adapters copy into the source state (``MOVED_TO``) so ``status`` can say where the
  source now lives;
* every hop's host is resolved and refused if any address is private, loopback, link-local
  or otherwise non-global, unless the source allows it (``private_address``); a new
  connection goes to one of exactly the addresses that were checked (``pinning``: no second
  resolution between the check and the connect, so DNS rebinding cannot slip in); answers
  are cached for their TTL (``dns.DnsCache``), the check runs on every request regardless;
* a bearer token (``bearer=``) goes to the origin of the configured URL only, never to a
  host a redirect leads to;
* the body is streamed and decoded by us, so both the bytes on the wire and the decoded
  bytes stop at ``max_bytes`` (a gzip bomb ends at the cap, not in memory);
* politeness: at most ``FetchLimits.per_host`` requests per host and ``total`` overall;
* every httpx/OS exception becomes a ``SourceError`` in ``translate_httpx_errors``.

The ``httpx.AsyncClient`` is injected: the composition root builds it with
``make_async_client`` and closes it. With that client the fetcher sends through its httpcore
pools directly (``pinning.LeanTransport``): httpx's client layer (request building, header
and cookie merging, auth and redirect machinery, the response wrapper) costs more CPU per
idle conditional GET than everything else here together, and the fetcher does its own
redirects, decoding and caps anyway. No cookie jar is kept (a feed poll needs none). Any
other client (a test's ``MockTransport``) is used through ``client.stream``, unpinned.
"""

from __future__ import annotations

import asyncio
import socket
import ssl
import zlib
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping, Sequence
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass, field, replace
from datetime import datetime
from functools import cache, lru_cache
from typing import TYPE_CHECKING, Any

import httpcore
import httpx
import structlog
from pydantic import SecretStr

from crisiscomms.adapters.sources.base import SourceRateLimitedError
from crisiscomms.adapters.sources.bodies import BodyDecoder as _BodyDecoder
from crisiscomms.adapters.sources.dns import DnsCache
from crisiscomms.adapters.sources.hints import (  # re-exported: adapters import them here
    freshness,
    poll_hints,
    rate_limit_reset,
    read_budgets,
)
from crisiscomms.adapters.sources.hints import retry_at as _retry_at
from crisiscomms.adapters.sources.pinning import (
    LeanTransport,
    Pin,
    is_ip_literal,
    is_public,
    pinned,
    private_address_error,
)
from crisiscomms.adapters.sources.wire import MAX_ORIGINS
from crisiscomms.domain.errors import FeedTooLargeError, PermanentSourceError, TransientSourceError
from crisiscomms.domain.models import PollHints

if TYPE_CHECKING:
    import tldextract

log = structlog.get_logger(__name__)

__all__ = [
    "DEFAULT_MAX_BYTES",
    "MAX_REDIRECTS",
    "MOVED_TO",
    "USER_AGENT",
    "FetchClient",
    "FetchLimits",
    "FetchResponse",
    "HttpFetcher",
    "Resolver",
    "freshness",
    "make_async_client",
    "poll_hints",
    "rate_limit_reset",
    "read_budgets",
    "record_move",
    "registrable_domain",
    "same_site",
    "system_resolver",
    "translate_httpx_errors",
]

DEFAULT_MAX_BYTES = 5_000_000
MAX_REDIRECTS = 5
USER_AGENT = "crisiscomms/0.1 (NHS comms relay of official crisis updates)"
_REDIRECT_CODES = frozenset({301, 302, 303, 307, 308})
_PERMANENT_CODES = frozenset({301, 308})
MOVED_TO = "moved_to"
"""``SourceState.extra`` key: where a permanent redirect now sends the source (or ``None``)."""
_TRANSIENT_4XX = frozenset({408, 425, 429})

Resolver = Callable[[str, int], Awaitable[Sequence[str]]]
"""``(host, port) -> addresses``; injectable so tests need no DNS."""


async def system_resolver(host: str, port: int) -> list[str]:
    """Resolve ``host`` with the event loop's ``getaddrinfo`` (runs in a thread), uncached."""
    infos = await asyncio.get_running_loop().getaddrinfo(
        host, port, type=socket.SOCK_STREAM
    )
    return [str(info[4][0]) for info in infos]


class FetchClient(httpx.AsyncClient):
    """The client ``make_async_client`` builds: ``lean`` is its pinned transport (``None``
    when a transport was injected)."""

    lean: LeanTransport | None = None


def make_async_client(
    *,
    timeout: float = 15.0,
    connect_timeout: float = 5.0,
    max_connections: int = 40,
    max_keepalive_connections: int = 20,
    keepalive_expiry: float = 120.0,
    user_agent: str = USER_AGENT,
    verify: bool | ssl.SSLContext = True,
    trust_env: bool = False,
    transport: httpx.AsyncBaseTransport | None = None,
    max_origins: int = MAX_ORIGINS,
    wire: bool = True,
) -> httpx.AsyncClient:
    """Build the ``httpx.AsyncClient`` the composition root owns (and must ``aclose``).

    Redirects are off because ``HttpFetcher`` follows them itself with its checks.
    ``trust_env`` is off by default: a proxy from the environment would bypass the
    private-address check. An idle connection is kept ``keepalive_expiry`` seconds (httpx's
    default is 5 s), longer than the polling interval, so the next cycle's poll of the same
    host reuses it; a server that closed it meanwhile is noticed and connected again.
    Without ``transport`` the client's transport is a ``LeanTransport`` (connections pinned
    to checked addresses, asyncio sockets), and ``HttpFetcher`` sends its GETs through the
    transport's ``wire`` path (idle connections per origin, at most ``max_origins`` kept).
    ``wire=False`` makes the fetcher send through httpx's client and httpcore on the same
    pinned transport instead: that is what respx mocks, and the adapters' tests use it.
    """
    limits = httpx.Limits(
        max_connections=max_connections,
        max_keepalive_connections=max_keepalive_connections,
        keepalive_expiry=keepalive_expiry,
    )
    lean = None
    if transport is None:
        transport = lean = LeanTransport(verify=verify, limits=limits, trust_env=trust_env,
                                         max_origins=max_origins)
    client = FetchClient(
        timeout=httpx.Timeout(timeout, connect=connect_timeout),
        limits=limits,
        headers={"User-Agent": user_agent, "Accept-Encoding": "gzip, deflate"},
        follow_redirects=False,
        verify=verify,
        trust_env=trust_env,
        transport=transport,
    )
    client.lean = lean if wire else None
    return client


class FetchLimits:
    """Concurrency bounds shared by every source: per host and overall."""

    def __init__(self, *, per_host: int = 2, total: int = 20) -> None:
        self.per_host = per_host
        self.total = total
        self._global = asyncio.Semaphore(total)
        self._hosts: dict[str, asyncio.Semaphore] = {}

    @asynccontextmanager
    async def slot(self, host: str) -> AsyncIterator[None]:
        """Hold one request slot for ``host``; the host slot is taken first so a busy host
        does not sit on a global slot while it waits."""
        sem = self._hosts.get(host)
        if sem is None:
            sem = self._hosts[host] = asyncio.Semaphore(self.per_host)
        async with sem, self._global:
            yield


@dataclass(frozen=True, slots=True)
class FetchResponse:
    """A fetched body. ``headers`` keys are lower-case."""

    status: int
    body: bytes
    headers: Mapping[str, str] = field(default_factory=dict)
    not_modified: bool = False
    url: str = ""
    # Where a permanent redirect (301/308) at the start of the chain sent the request:
    # scheme, host and path only. ``None`` when the configured URL was not moved for good.
    moved_to: str | None = None
    # When to ask again, as the answer said (cache lifetime, Retry-After, read budget).
    hints: PollHints = field(default_factory=PollHints)

    @property
    def content_type(self) -> str:
        """The media type without parameters, lower-case (``""`` if absent)."""
        return self.headers.get("content-type", "").split(";", 1)[0].strip().lower()


def _where(url: httpx.URL) -> str:
    # Host and path only: a query string might carry a key, so it never reaches a message.
    return f"{url.host}{url.path}"


def record_move(extra: dict[str, Any], response: FetchResponse) -> dict[str, Any]:
    """``extra`` with ``MOVED_TO`` set from ``response``: the new URL after a permanent
    redirect, or ``None`` once a source that had moved answers without one (the watcher
    merges ``PollResult.extra`` into the stored state, so a stale value must be overwritten,
    not dropped)."""
    out = dict(extra)
    if response.moved_to or out.get(MOVED_TO):
        out[MOVED_TO] = response.moved_to
    return out


@cache
def _suffix_list() -> tldextract.TLDExtract:
    # The snapshot bundled with the package only: no download at run time, nothing on disk.
    # Imported here, when a redirect is first checked: it brings requests and filelock, about
    # a tenth of a `watch --once` over unchanged feeds, which never redirect.
    import tldextract

    return tldextract.TLDExtract(
        suffix_list_urls=(), cache_dir=None, include_psl_private_domains=True
    )


def registrable_domain(host: str) -> str | None:
    """The registrable domain (eTLD+1) of ``host``: ``metoffice.gov.uk`` for
    ``weather.metoffice.gov.uk``; ``None`` for an address, a single label or a public
    suffix itself (``gov.uk``)."""
    name = host.strip().rstrip(".").lower()
    if not name or _is_ip_literal(name):
        return None
    return _suffix_list()(name).top_domain_under_public_suffix.lower() or None


def same_site(host: str, other: str) -> bool:
    """Whether a redirect from ``host`` to ``other`` stays with the same owner: the same host,
    or two names under one registrable domain."""
    a, b = host.rstrip(".").lower(), other.rstrip(".").lower()
    if a == b:
        return True
    domain = registrable_domain(a)
    return domain is not None and domain == registrable_domain(b)


def _moved_url(url: httpx.URL) -> str:
    return str(url.copy_with(query=None, fragment=None))


_CORE_ERRORS = (httpcore.NetworkError, httpcore.ProtocolError, httpcore.ProxyError,
                httpcore.ConnectionNotAvailable)


@contextmanager
def translate_httpx_errors(source_id: str, url: str = "") -> Iterator[None]:
    """Turn httpx / socket / TLS exceptions into the project's ``SourceError`` tree."""
    where = f" ({url})" if url else ""
    try:
        yield
    except (httpx.TimeoutException, httpcore.TimeoutException) as exc:
        raise TransientSourceError(
            f"{source_id}: timed out{where}", source_id=source_id, error_class="timeout"
        ) from exc
    except (httpx.UnsupportedProtocol, httpx.InvalidURL, httpcore.UnsupportedProtocol) as exc:
        raise PermanentSourceError(
            f"{source_id}: bad URL{where}", source_id=source_id, error_class="bad_url"
        ) from exc
    except httpx.DecodingError as exc:
        raise PermanentSourceError(
            f"{source_id}: undecodable body{where}", source_id=source_id, error_class="decode"
        ) from exc
    except (httpx.TransportError, *_CORE_ERRORS, OSError) as exc:
        cls = _network_error_class(exc)
        raise TransientSourceError(
            f"{source_id}: {cls} error{where}: {type(exc).__name__}",
            source_id=source_id, error_class=cls,
        ) from exc
    except httpx.HTTPError as exc:
        raise TransientSourceError(
            f"{source_id}: HTTP error{where}: {type(exc).__name__}",
            source_id=source_id, error_class="network",
        ) from exc


def _network_error_class(exc: BaseException) -> str:
    """Walk the cause chain to tell DNS and TLS failures from other network errors."""
    seen: BaseException | None = exc
    for _ in range(10):
        if seen is None:
            break
        if isinstance(seen, socket.gaierror):
            return "dns"
        if isinstance(seen, ssl.SSLError | ssl.CertificateError):
            return "tls"
        text = str(seen).lower()
        if "name or service not known" in text or "nodename nor servname" in text:
            return "dns"
        if "certificate" in text or "ssl" in text or "tls" in text:
            return "tls"
        seen = seen.__cause__ or seen.__context__
    return "connect" if isinstance(exc, httpx.ConnectError | httpcore.ConnectError) else "network"


_is_public = is_public
_is_ip_literal = is_ip_literal
_READ_ERRORS = (httpx.HTTPError, *_CORE_ERRORS, httpcore.TimeoutException)


class _Answer:
    """A response head and its raw (undecoded) body chunks, from httpx or httpcore."""

    __slots__ = ("chunks", "headers", "status", "url")

    def __init__(self, status: int, headers: dict[str, str], url: httpx.URL,
                 chunks: Callable[[], AsyncIterator[bytes]]) -> None:
        self.status = status
        self.headers = headers  # lower-case names; repeated fields joined with ", "
        self.url = url
        self.chunks = chunks


def _header_dict(raw: Sequence[tuple[bytes, bytes]]) -> dict[str, str]:
    out: dict[str, str] = {}
    for key, value in raw:
        name = key.decode("latin-1").lower()
        text = value.decode("latin-1")
        out[name] = f"{out[name]}, {text}" if name in out else text
    return out


def _encode(value: str) -> bytes:
    try:
        return value.encode("ascii")
    except UnicodeEncodeError:
        return value.encode("utf-8")


class HttpFetcher:
    """GETs untrusted URLs safely. One instance is shared by all httpx-based sources."""

    def __init__(
        self,
        client: httpx.AsyncClient,
        limits: FetchLimits | None = None,
        *,
        resolver: Resolver | None = None,
    ) -> None:
        self.client = client
        self.limits = limits or FetchLimits()
        self._resolve: Resolver = resolver if resolver is not None else DnsCache()
        self._lean = client.lean if isinstance(client, FetchClient) else None
        # The client's own headers (User-Agent, Accept, ...), for requests sent past httpx.
        self._base_headers = {k.lower(): (k.encode("ascii"), _encode(v))
                              for k, v in client.headers.items()}
        self._timeouts = client.timeout.as_dict()

    async def fetch(
        self,
        url: str,
        *,
        source_id: str = "",
        etag: str | None = None,
        last_modified: str | None = None,
        max_bytes: int = DEFAULT_MAX_BYTES,
        allow_private: bool = False,
        require_https: bool | None = None,
        allowed_host: str | None = None,
        params: Mapping[str, str] | None = None,
        accept: str | None = None,
        now: datetime | None = None,
        bearer: SecretStr | None = None,
    ) -> FetchResponse:
        """GET ``url`` and return its (capped) body, or raise a ``SourceError``.

        ``require_https`` defaults to "the URL is https"; ``allowed_host`` (default: the
        URL's host) anchors the registrable domain redirects must stay in.
        ``etag``/``last_modified`` make the request conditional; a 304 comes back as
        ``FetchResponse(status=304, not_modified=True)``. ``now`` lets a ``Retry-After`` in
        seconds become ``SourceRateLimitedError.retry_at``. ``bearer`` is sent as
        ``Authorization: Bearer ...`` to the configured URL's origin only.
        """
        with translate_httpx_errors(source_id):
            current = _parse_url(url)
            if params:  # merged, so a query already in the configured URL is kept
                current = current.copy_merge_params(dict(params))
        if require_https is None:
            require_https = current.scheme == "https"
        host = (allowed_host or current.host).lower()
        headers = {"Accept-Encoding": "gzip, deflate"}
        if accept:
            headers["Accept"] = accept
        if etag:
            headers["If-None-Match"] = etag
        if last_modified:
            headers["If-Modified-Since"] = last_modified
        origin = _origin(current)
        previous = current
        moved_to: str | None = None
        permanent = True  # every hop so far was 301/308
        for hop in range(MAX_REDIRECTS + 1):
            self._check_url(current, source_id, host, require_https, previous=previous,
                            redirected=hop > 0)
            name, port = current.raw_host.decode("ascii"), _port(current)
            checked = None if allow_private else tuple(
                await self._check_address(name, port, source_id))
            sent = headers
            if bearer is not None and _origin(current) == origin:
                sent = {**headers, "Authorization": f"Bearer {bearer.get_secret_value()}"}
            with translate_httpx_errors(source_id, _where(current)), pinned(
                    Pin(name, port, checked, self._resolve, source_id)):
                async with self.limits.slot(current.host), self._open(
                        current, sent, allow_private) as resp:
                    location = resp.headers.get("location")
                    if resp.status in _REDIRECT_CODES and location:
                        await self._drain(resp)  # the connection goes back to the pool
                        previous, current = current, current.join(location)
                        permanent = permanent and resp.status in _PERMANENT_CODES
                        if permanent:
                            moved_to = _moved_url(current)
                        continue
                    got = await self._finish(resp, source_id, max_bytes, now)
                    return replace(got, moved_to=moved_to) if moved_to else got
        raise PermanentSourceError(
            f"{source_id}: more than {MAX_REDIRECTS} redirects ({_where(current)})",
            source_id=source_id, error_class="too_many_redirects",
        )

    @asynccontextmanager
    async def _open(self, url: httpx.URL, headers: dict[str, str],
                    allow_private: bool) -> AsyncIterator[_Answer]:
        """Send one GET (no redirects followed) and yield its head; the body is closed (and
        the connection released) when the block ends."""
        if self._lean is None:
            async with self.client.stream("GET", url, headers=headers,
                                          follow_redirects=False) as r:
                yield _Answer(r.status_code, {k.lower(): v for k, v in r.headers.items()},
                              url, r.aiter_raw)
            return
        base = self._base_headers
        sent = [(b"Host", url.netloc)]
        sent += [kv for k, kv in base.items() if k not in _lower_keys(headers)]
        sent += [(k.encode("ascii"), _encode(v)) for k, v in headers.items()]
        key = (allow_private, url.raw_scheme, url.raw_host, _port(url))
        response = await self._lean.wire.get(key, url.raw_path, sent, self._timeouts)
        try:
            yield _Answer(response.status, _header_dict(response.headers), url,
                          response.aiter_stream)
        finally:
            await response.aclose()

    @staticmethod
    def _check_url(
        url: httpx.URL, source_id: str, host: str, require_https: bool, *,
        previous: httpx.URL, redirected: bool,
    ) -> None:
        if url.scheme not in ("http", "https") or not url.host:
            raise PermanentSourceError(
                f"{source_id}: refusing URL with scheme {url.scheme!r}",
                source_id=source_id, error_class="redirect_refused" if redirected else "bad_url",
            )
        if require_https and url.scheme != "https":
            raise PermanentSourceError(
                f"{source_id}: refusing https->http downgrade ({_where(url)})",
                source_id=source_id, error_class="redirect_refused",
            )
        if not same_site(host, url.host):
            what = "redirect" if redirected else "URL"
            raise PermanentSourceError(
                f"{source_id}: refusing {what} from {previous.host} to {url.host}: another "
                f"domain than {registrable_domain(host) or host}",
                source_id=source_id, error_class="redirect_refused",
            )

    async def _check_address(self, host: str, port: int, source_id: str) -> list[str]:
        """``host``'s addresses, all global, or a ``SourceError``: what a new connection for
        this request may connect to (the check runs on every request, cached answer or not)."""
        try:
            addresses = [host] if is_ip_literal(host) else list(await self._resolve(host, port))
        except socket.gaierror as exc:
            raise TransientSourceError(
                f"{source_id}: cannot resolve {host}", source_id=source_id, error_class="dns"
            ) from exc
        except OSError as exc:
            raise TransientSourceError(
                f"{source_id}: cannot resolve {host}: {type(exc).__name__}",
                source_id=source_id, error_class="dns",
            ) from exc
        if not addresses:
            raise TransientSourceError(
                f"{source_id}: {host} has no addresses", source_id=source_id, error_class="dns"
            )
        # Refuse if *any* address is non-global: a mixed answer is how rebinding starts.
        if not all(is_public(a) for a in addresses):
            raise private_address_error(host, source_id)
        return addresses

    async def _finish(
        self, resp: _Answer, source_id: str, max_bytes: int, now: datetime | None
    ) -> FetchResponse:
        status = resp.status
        headers = resp.headers
        if not 200 <= status < 300:
            # Every answer whose body we do not read (a 304, an error, a redirect without a
            # Location) is drained so its connection goes back to the pool: a response closed
            # unread closes its connection, and every idle conditional GET would then cost a
            # new TCP (and TLS) handshake. A 2xx body is read to its end below.
            await self._drain(resp)
        if status == 304:
            return FetchResponse(304, b"", headers, not_modified=True, url=str(resp.url),
                                 hints=poll_hints(headers, now))
        where = _where(resp.url)
        if status == 429 or (status == 503 and "retry-after" in headers):
            raise SourceRateLimitedError(
                f"{source_id}: HTTP {status} from {where}",
                retry_at=_retry_at(headers, now), source_id=source_id,
                error_class=f"http_{status}",
            )
        if status >= 500 or status in _TRANSIENT_4XX:
            raise TransientSourceError(
                f"{source_id}: HTTP {status} from {where}",
                source_id=source_id, error_class=f"http_{status}",
            )
        if not 200 <= status < 300:
            raise PermanentSourceError(
                f"{source_id}: HTTP {status} from {where}",
                source_id=source_id, error_class=f"http_{status}",
            )
        body = await self._read_capped(resp, source_id, max_bytes)
        return FetchResponse(status, body, headers, url=str(resp.url),
                             hints=poll_hints(headers, now))

    @staticmethod
    async def _drain(resp: _Answer, limit: int = 64 * 1024) -> None:
        """Read a body we do not need, so the connection can be used again: only when it
        is known to be short (none by protocol, as a 304's, or a declared length up to
        ``limit``). Anything else, or a read that breaks, is left to close the connection:
        an unknown or large body is not worth waiting for (a hostile server would trickle
        it)."""
        declared = resp.headers.get("content-length", "").strip()
        no_body = resp.status in (204, 304) or resp.status < 200
        if not no_body and not (declared.isdigit() and int(declared) <= limit):
            return
        read = 0
        try:
            async for chunk in resp.chunks():
                read += len(chunk)
                if read > limit:
                    return
        except _READ_ERRORS:
            return

    @staticmethod
    async def _read_capped(resp: _Answer, source_id: str, max_bytes: int) -> bytes:
        def too_large(what: str) -> FeedTooLargeError:
            return FeedTooLargeError(
                f"{source_id}: body over {max_bytes} bytes ({what}) from {_where(resp.url)}",
                source_id=source_id, error_class="too_large",
            )

        declared = resp.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > max_bytes:
            raise too_large("declared")
        try:
            decoder = _BodyDecoder(resp.headers.get("content-encoding", ""))
        except ValueError as exc:
            raise PermanentSourceError(
                f"{source_id}: unsupported content-encoding from {_where(resp.url)}",
                source_id=source_id, error_class="decode",
            ) from exc
        wire = 0
        out = bytearray()
        async for chunk in resp.chunks():
            wire += len(chunk)
            if wire > max_bytes:
                raise too_large("compressed")
            try:
                out += decoder.decode(chunk, max_bytes - len(out))
            except zlib.error as exc:
                raise PermanentSourceError(
                    f"{source_id}: corrupt compressed body from {_where(resp.url)}",
                    source_id=source_id, error_class="decode",
                ) from exc
            if len(out) > max_bytes:
                raise too_large("decoded")
        return bytes(out)


@lru_cache(maxsize=4096)
def _parse_url(url: str) -> httpx.URL:
    # Every source asks for the same URL each cycle; an ``httpx.URL`` is immutable.
    return httpx.URL(url)


@lru_cache(maxsize=64)
def _lower_keys_of(keys: tuple[str, ...]) -> frozenset[str]:
    return frozenset(k.lower() for k in keys)


def _lower_keys(headers: Mapping[str, str]) -> frozenset[str]:
    return _lower_keys_of(tuple(headers))


def _origin(url: httpx.URL) -> tuple[str, str, int]:
    return url.scheme, url.host.lower(), _port(url)


def _port(url: httpx.URL) -> int:
    return url.port or (443 if url.scheme == "https" else 80)
