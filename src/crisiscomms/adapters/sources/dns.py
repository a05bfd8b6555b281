"""DNS for the fetcher: answers cached for their TTL, lookups of one name shared.

``DnsCache`` is a ``Resolver`` (``(host, port) -> addresses``). It keeps each answer for
its TTL, clamped to ``[min_ttl, max_ttl]``, holds at most ``max_entries`` names (the oldest
go first) and remembers a name that does not exist for ``negative_ttl`` seconds. Callers
asking for a name that is being looked up wait for that lookup instead of sending their own
(a cycle of 1,000 sources on 50 hosts asks the network 50 times, not 1,000).

The cache decides nothing about safety: the fetcher checks the addresses it is given on
every request and every new connection, so an answer that turned private is refused the
same whether it came from the cache or the network.

The default lookup (``system_lookup``) asks the configured name servers with dnspython's
asyncio resolver (no thread per lookup, and the TTL comes with the answer) and falls back to
``getaddrinfo`` for what DNS cannot answer: ``localhost``, single-label names, names only
in ``/etc/hosts``, or a machine without ``/etc/resolv.conf``. A ``getaddrinfo`` answer has no
TTL and is kept ``HOSTS_TTL`` seconds.
"""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

HOSTS_TTL = 60.0
"""How long a ``getaddrinfo`` answer (no TTL of its own) is kept, before clamping."""
LOOKUP_LIFETIME = 5.0
"""Seconds dnspython may spend on one name (all servers and retries)."""


@dataclass(frozen=True, slots=True)
class DnsAnswer:
    """The addresses of a name and how many seconds they may be kept."""

    addresses: tuple[str, ...]
    ttl: float


Lookup = Callable[[str], Awaitable[DnsAnswer]]
"""``host -> DnsAnswer``; raises ``socket.gaierror`` (``EAI_NONAME`` for a name that does not
exist, which is cached as a negative answer; anything else is not cached)."""

_NEGATIVE = frozenset({socket.EAI_NONAME, getattr(socket, "EAI_NODATA", socket.EAI_NONAME)})


@dataclass(slots=True)
class _Entry:
    expires: float
    addresses: tuple[str, ...] = ()
    error: socket.gaierror | None = None


class DnsCache:
    """A bounded TTL cache in front of a ``Lookup``; call it as a ``Resolver``."""

    def __init__(
        self,
        lookup: Lookup | None = None,
        *,
        min_ttl: float = 5.0,
        max_ttl: float = 300.0,
        negative_ttl: float = 10.0,
        max_entries: int = 4096,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._lookup: Lookup = lookup or system_lookup
        self.min_ttl = min_ttl
        self.max_ttl = max_ttl
        self.negative_ttl = negative_ttl
        self.max_entries = max_entries
        self._clock = clock
        self._entries: dict[str, _Entry] = {}
        self._pending: dict[str, asyncio.Future[_Entry]] = {}
        self.lookups = 0
        """Lookups sent to ``lookup`` so far (the cache's misses)."""

    def __len__(self) -> int:
        return len(self._entries)

    async def __call__(self, host: str, port: int) -> list[str]:
        """The addresses of ``host`` (``port`` is not part of a DNS question)."""
        name = host.rstrip(".").lower()
        entry = self._entries.get(name)
        if entry is None or entry.expires <= self._clock():
            entry = await self._refresh(name)
        if entry.error is not None:
            raise entry.error
        return list(entry.addresses)

    async def _refresh(self, name: str) -> _Entry:
        pending = self._pending.get(name)
        if pending is not None:
            try:
                return await asyncio.shield(pending)
            except asyncio.CancelledError:
                task = asyncio.current_task()
                if not pending.cancelled() or (task is not None and task.cancelling()):
                    raise
                # the caller who was asking was cancelled, not us: ask ourselves
                return await self._refresh(name)
        future: asyncio.Future[_Entry] = asyncio.get_running_loop().create_future()
        self._pending[name] = future
        try:
            entry = await self._ask(name)
        except asyncio.CancelledError:
            future.cancel()
            raise
        except BaseException as exc:
            future.set_exception(exc)
            future.exception()  # retrieved here, so nobody waiting is not a warning
            raise
        else:
            future.set_result(entry)
            return entry
        finally:
            del self._pending[name]

    async def _ask(self, name: str) -> _Entry:
        self.lookups += 1
        try:
            answer = await self._lookup(name)
        except socket.gaierror as exc:
            if exc.errno not in _NEGATIVE:
                raise  # a timeout or a broken server: ask again next time
            entry = _Entry(self._clock() + self.negative_ttl, error=exc)
        else:
            if not answer.addresses:
                entry = _Entry(self._clock() + self.negative_ttl, error=socket.gaierror(
                    socket.EAI_NONAME, f"{name} has no addresses"))
            else:
                ttl = min(max(answer.ttl, self.min_ttl), self.max_ttl)
                entry = _Entry(self._clock() + ttl, tuple(answer.addresses))
        self._store(name, entry)
        return entry

    def _store(self, name: str, entry: _Entry) -> None:
        self._entries.pop(name, None)  # re-inserted last: the dict's order is the age
        if len(self._entries) >= self.max_entries:
            now = self._clock()
            for key in [k for k, e in self._entries.items() if e.expires <= now]:
                del self._entries[key]
            while len(self._entries) >= self.max_entries:
                del self._entries[next(iter(self._entries))]
        self._entries[name] = entry


_resolver: Any = None


def _dns_resolver() -> Any:
    """dnspython's asyncio resolver, built on first use (it reads ``/etc/resolv.conf``)."""
    global _resolver
    if _resolver is None:
        import dns.asyncresolver

        _resolver = dns.asyncresolver.Resolver()
    return _resolver


def _hosts_style(name: str) -> bool:
    return "." not in name or name == "localhost" or name.endswith(".localhost")


async def system_lookup(host: str) -> DnsAnswer:
    """``host``'s A and AAAA records with their TTL (dnspython), else ``getaddrinfo``."""
    if not _hosts_style(host):
        import dns.exception
        import dns.resolver

        try:
            answers = await _dns_lookup(host)
        except dns.exception.Timeout as exc:
            raise socket.gaierror(socket.EAI_AGAIN, f"{host}: DNS timed out") from exc
        except (dns.resolver.NXDOMAIN, dns.resolver.NoAnswer, dns.resolver.NoNameservers,
                dns.resolver.NoResolverConfiguration, dns.resolver.YXDOMAIN):
            answers = None  # perhaps in /etc/hosts: ask the system below
        except dns.exception.DNSException as exc:
            raise socket.gaierror(socket.EAI_FAIL, f"{host}: {type(exc).__name__}") from exc
        if answers is not None:
            addresses = tuple(dict.fromkeys(answers.addresses()))
            ttls = [a.rrset.ttl for a in answers.values() if a.rrset is not None]
            if addresses:
                return DnsAnswer(addresses, float(min(ttls)) if ttls else HOSTS_TTL)
    return await getaddrinfo_lookup(host)


async def _dns_lookup(host: str) -> Any:
    resolver = _dns_resolver()
    return await resolver.resolve_name(host, lifetime=LOOKUP_LIFETIME)


async def getaddrinfo_lookup(host: str) -> DnsAnswer:
    """The system's answer (``/etc/hosts``, NSS), kept ``HOSTS_TTL`` seconds."""
    infos = await asyncio.get_running_loop().getaddrinfo(host, None, type=socket.SOCK_STREAM)
    return DnsAnswer(tuple(dict.fromkeys(str(info[4][0]) for info in infos)), HOSTS_TTL)
