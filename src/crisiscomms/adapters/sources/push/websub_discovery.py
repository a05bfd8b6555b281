"""WebSub discovery (W3C WebSub 2018, section 4): a feed's hub and its self (topic) URL.

The feed is fetched once through the polling path's ``HttpFetcher`` (its private-address,
redirect and size checks apply). ``Link:`` headers win (``<url>; rel="hub"``, ``rel="self"``);
otherwise the feed-level ``atom:link`` elements of the document (an Atom ``feed`` or an RSS
``channel``), read with defusedxml up to the first entry. A hub must be https, or loopback
when private hosts are allowed (the simulator); the hub host's addresses must be public
unless private hosts are allowed. A feed without ``rel="self"`` uses the URL it was
fetched from.
"""

from __future__ import annotations

import io
import ipaddress
import re
from collections.abc import Mapping
from dataclasses import dataclass
from xml.etree.ElementTree import ParseError

import httpx
from defusedxml import DefusedXmlException
from defusedxml.ElementTree import iterparse

from crisiscomms.adapters.sources.http import HttpFetcher, Resolver, system_resolver

ATOM = "{http://www.w3.org/2005/Atom}"
_LINK_RE = re.compile(r"<([^>]*)>((?:\s*;\s*[^;,]*)*)")
_PARAM_RE = re.compile(r';\s*([A-Za-z*-]+)\s*=\s*(?:"([^"]*)"|([^;,\s]*))')
_STOP = {f"{ATOM}entry", "item"}


class DiscoveryError(Exception):
    """The feed could not be read, or what it advertises cannot be used (the message names no
    query string or credential)."""


@dataclass(frozen=True, slots=True)
class Discovery:
    """What a feed advertises: ``hub`` is ``None`` for a feed without one."""

    hub: str | None
    topic: str


def link_header(value: str, base: str) -> list[tuple[str, frozenset[str]]]:
    """``(absolute url, rels)`` of each link in a (possibly comma-joined) ``Link`` header."""
    out: list[tuple[str, frozenset[str]]] = []
    for match in _LINK_RE.finditer(value):
        rels: set[str] = set()
        for name, quoted, bare in _PARAM_RE.findall(match.group(2)):
            if name.lower() == "rel":
                rels.update((quoted or bare).lower().split())
        out.append((str(httpx.URL(base).join(match.group(1).strip())), frozenset(rels)))
    return out


def document_links(body: bytes, base: str) -> list[tuple[str, frozenset[str]]]:
    """The feed-level ``atom:link`` elements (before the first entry/item) of a feed."""
    out: list[tuple[str, frozenset[str]]] = []
    try:
        for _, elem in iterparse(io.BytesIO(body), events=("start",)):
            if elem.tag in _STOP:
                break
            if elem.tag == f"{ATOM}link" and elem.get("href"):
                rels = frozenset((elem.get("rel") or "alternate").lower().split())
                out.append((str(httpx.URL(base).join(elem.get("href", "").strip())), rels))
    except (ParseError, DefusedXmlException, ValueError):
        pass  # a broken document advertises what it did before the break (maybe nothing)
    return out


def advertised(headers: Mapping[str, str], body: bytes, url: str) -> Discovery:
    """The hub and topic a fetched feed advertises (``headers``: lower-case keys); the
    ``Link`` headers win over the document, each for hub and self."""
    value = headers.get("link", "")
    in_headers = link_header(value, url) if value else []
    in_body = document_links(body, url)

    def first(rel: str) -> str | None:
        for links in (in_headers, in_body):
            for u, rels in links:
                if rel in rels:
                    return u
        return None

    return Discovery(first("hub"), first("self") or url)


def is_loopback(host: str) -> bool:
    """Whether ``host`` is ``localhost`` or a loopback address."""
    name = host.strip("[]").lower()
    if name == "localhost":
        return True
    try:
        return ipaddress.ip_address(name.split("%", 1)[0]).is_loopback
    except ValueError:
        return False


def usable_url(url: str, allow_private: bool) -> bool:
    """https, or http to a loopback host when private hosts are allowed."""
    try:
        parsed = httpx.URL(url)
    except (httpx.InvalidURL, TypeError):
        return False
    if not parsed.host:
        return False
    if parsed.scheme == "https":
        return True
    return parsed.scheme == "http" and allow_private and is_loopback(parsed.host)


async def check_hub(url: str, *, allow_private: bool,
                    resolver: Resolver | None = None) -> None:
    """Refuse a hub we must not POST to (``DiscoveryError``)."""
    if not usable_url(url, allow_private):
        raise DiscoveryError("the hub is not an https URL")
    if allow_private:
        return
    host = httpx.URL(url).host
    try:
        addresses = await (resolver or system_resolver)(host, httpx.URL(url).port or 443)
    except OSError as exc:
        raise DiscoveryError(f"cannot resolve the hub {host}") from exc
    for addr in addresses or ["unresolved"]:
        try:
            ip = ipaddress.ip_address(addr.split("%", 1)[0])
        except ValueError:
            raise DiscoveryError(f"the hub {host} has no usable address") from None
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped
        if not ip.is_global or ip.is_multicast:
            raise DiscoveryError(f"the hub {host} resolves to a private address")


async def discover(fetcher: HttpFetcher, url: str, *, source_id: str,
                   allow_private: bool) -> Discovery:
    """Fetch the feed once and read what it advertises (``DiscoveryError`` if unreadable)."""
    from crisiscomms.domain.errors import SourceError

    try:
        got = await fetcher.fetch(url, source_id=source_id, allow_private=allow_private)
    except SourceError as exc:
        raise DiscoveryError(str(exc)) from exc
    found = advertised(dict(got.headers), got.body, got.url or url)
    if found.hub is None:
        return found
    # The fetcher's own resolver: the one its address checks use (a fake one in tests).
    await check_hub(found.hub, allow_private=allow_private, resolver=fetcher._resolve)
    return found
