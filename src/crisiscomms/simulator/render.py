"""Render scripted items as RSS 2.0, Atom and CAP 1.2 XML. Pure functions, no I/O."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import datetime
from email.utils import format_datetime
from typing import Any
from urllib.parse import quote
from xml.sax.saxutils import escape, quoteattr

from crisiscomms.domain.clock import parse_instant, utc
from crisiscomms.simulator.world import VisibleItem

CAP_NS = "urn:oasis:names:tc:emergency:cap:1.2"
ATOM_NS = "http://www.w3.org/2005/Atom"
_DECL = '<?xml version="1.0" encoding="UTF-8"?>\n'


def _when(value: Any, default: datetime) -> datetime:
    if isinstance(value, datetime):
        return utc(value)
    if isinstance(value, str) and value:
        return parse_instant(value)
    return default


def rfc822(dt: datetime) -> str:
    """RSS ``pubDate`` format."""
    return format_datetime(utc(dt).replace(microsecond=0), usegmt=True)


def rfc3339(dt: datetime) -> str:
    """Atom date format."""
    return utc(dt).replace(microsecond=0).isoformat().replace("+00:00", "Z")


def cap_time(dt: datetime) -> str:
    """CAP 1.2 dateTime: an explicit offset, with UTC written ``-00:00`` (no ``Z``)."""
    return utc(dt).replace(microsecond=0).strftime("%Y-%m-%dT%H:%M:%S") + "-00:00"


def _el(tag: str, text: Any, **attrs: str) -> str:
    attr = "".join(f" {k}={quoteattr(v)}" for k, v in attrs.items())
    return f"<{tag}{attr}>{escape(str(text))}</{tag}>"


def hub_links(hub: str | None, self_url: str, tag: str = "link") -> str:
    """WebSub discovery in a feed: ``rel="hub"`` and ``rel="self"`` links (nothing when the
    feed advertises no hub). ``tag`` is ``atom:link`` inside RSS."""
    if hub is None:
        return ""
    return (f'<{tag} rel="hub" href={quoteattr(hub)}/>'
            f'<{tag} rel="self" href={quoteattr(self_url)}/>')


def rss_document(
    source_id: str, link: str, items: Sequence[VisibleItem], built: datetime | None,
    *, hub: str | None = None,
) -> bytes:
    """RSS 2.0 with guid, link, title, description, pubDate; items in the given order.
    ``hub``: advertise this WebSub hub (``atom:link rel="hub"``, and ``rel="self"`` = ``link``)."""
    parts = [
        _DECL,
        f'<rss version="2.0" xmlns:atom="{ATOM_NS}"><channel>' if hub is not None
        else '<rss version="2.0"><channel>',
        _el("title", f"Simulated feed {source_id}"),
        _el("link", link),
        _el("description", f"crisiscomms simulator source {source_id}"),
        hub_links(hub, link, "atom:link"),
    ]
    if built is not None:
        parts.append(_el("lastBuildDate", rfc822(built)))
    for vis in items:
        it = vis.item
        guid = str(it.get("guid") or it.get("link") or vis.key)
        permalink = "true" if guid.startswith(("http://", "https://")) else "false"
        parts.append("<item>")
        parts.append(_el("title", it.get("title", "")))
        if it.get("link"):
            parts.append(_el("link", it["link"]))
        parts.append(_el("guid", guid, isPermaLink=permalink))
        parts.append(_el("description", it.get("description", "")))
        parts.append(_el("pubDate", rfc822(_when(it.get("pubDate"), vis.first_at))))
        parts.append("</item>")
    parts.append("</channel></rss>\n")
    return "".join(parts).encode()


def atom_document(
    source_id: str, self_url: str, items: Sequence[VisibleItem], updated: datetime | None,
    *, hub: str | None = None,
) -> bytes:
    """The same items as an Atom 1.0 feed (``updated`` is when the entry last changed);
    ``hub``: advertise this WebSub hub."""
    parts = [
        _DECL,
        f'<feed xmlns="{ATOM_NS}">',
        _el("id", self_url),
        _el("title", f"Simulated feed {source_id}"),
        _el("updated", rfc3339(updated) if updated else "1970-01-01T00:00:00Z"),
        f'<link rel="self" href={quoteattr(self_url)}/>' if hub is None
        else hub_links(hub, self_url),
    ]
    for vis in items:
        it = vis.item
        published = _when(it.get("pubDate"), vis.first_at)
        parts.append("<entry>")
        parts.append(_el("id", it.get("guid") or it.get("link") or vis.key))
        parts.append(_el("title", it.get("title", "")))
        if it.get("link"):
            parts.append(f'<link rel="alternate" href={quoteattr(str(it["link"]))}/>')
        parts.append(_el("summary", it.get("description", "")))
        parts.append(_el("published", rfc3339(published)))
        parts.append(_el("updated", rfc3339(max(published, vis.changed_at))))
        parts.append("</entry>")
    parts.append("</feed>\n")
    return "".join(parts).encode()


def cap_doc_path(identifier: str) -> str:
    """The path segment of an alert's CAP document."""
    return quote(identifier, safe="") + ".xml"


def _references(value: Any) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, Iterable):
        return " ".join(str(v) for v in value)
    return ""


def cap_index(
    source_id: str,
    self_url: str,
    doc_base: str,
    items: Sequence[VisibleItem],
    updated: datetime | None,
    *,
    hub: str | None = None,
) -> bytes:
    """An Atom index whose entries carry flattened ``cap:`` fields and link to CAP XML;
    ``hub``: advertise this WebSub hub."""
    parts = [
        _DECL,
        f'<feed xmlns="{ATOM_NS}" xmlns:cap="{CAP_NS}">',
        _el("id", self_url),
        _el("title", f"Simulated CAP alerts {source_id}"),
        _el("updated", rfc3339(updated) if updated else "1970-01-01T00:00:00Z"),
        f'<link rel="self" href={quoteattr(self_url)}/>' if hub is None
        else hub_links(hub, self_url),
    ]
    for vis in items:
        it = vis.item
        sent = _when(it.get("sent"), vis.first_at)
        href = f"{doc_base}/{cap_doc_path(str(it['identifier']))}"
        parts.append("<entry>")
        parts.append(_el("id", it["identifier"]))
        parts.append(_el("title", it.get("headline", it.get("event", ""))))
        parts.append(f'<link rel="alternate" type="application/cap+xml" href={quoteattr(href)}/>')
        parts.append(_el("summary", it.get("description", "")))
        parts.append(_el("published", rfc3339(sent)))
        parts.append(_el("updated", rfc3339(max(sent, vis.changed_at))))
        for tag, name in (
            ("cap:event", "event"),
            ("cap:status", "status"),
            ("cap:msgType", "msg_type"),
            ("cap:urgency", "urgency"),
            ("cap:severity", "severity"),
            ("cap:certainty", "certainty"),
            ("cap:areaDesc", "area"),
        ):
            parts.append(_el(tag, cap_field(it, name)))
        if it.get("expires"):
            parts.append(_el("cap:expires", cap_time(_when(it["expires"], sent))))
        parts.append("</entry>")
    parts.append("</feed>\n")
    return "".join(parts).encode()


_CAP_DEFAULTS = {
    "status": "Actual",
    "msg_type": "Alert",
    "scope": "Public",
    "severity": "Unknown",
    "urgency": "Unknown",
    "certainty": "Unknown",
}


def cap_field(item: dict[str, Any], name: str) -> str:
    """A CAP field from the item dict (``msg_type`` also accepted as ``msgType``)."""
    value = item.get(name)
    if value is None and name == "msg_type":
        value = item.get("msgType")
    if value is None and name == "area":
        value = item.get("areaDesc")
    return str(value if value is not None else _CAP_DEFAULTS.get(name, ""))


def cap_document(vis: VisibleItem) -> bytes:
    """One CAP 1.2 alert document."""
    it = vis.item
    sent = _when(it.get("sent"), vis.first_at)
    parts = [
        _DECL,
        f'<alert xmlns="{CAP_NS}">',
        _el("identifier", it["identifier"]),
        _el("sender", it.get("sender", "simulator@example.invalid")),
        _el("sent", cap_time(sent)),
        _el("status", cap_field(it, "status")),
        _el("msgType", cap_field(it, "msg_type")),
        _el("scope", cap_field(it, "scope")),
    ]
    refs = _references(it.get("references"))
    if refs:
        parts.append(_el("references", refs))
    parts.append("<info>")
    parts.append(_el("language", it.get("language", "en-GB")))
    parts.append(_el("category", it.get("category", "Met")))
    parts.append(_el("event", it.get("event", "")))
    for name in ("urgency", "severity", "certainty"):
        parts.append(_el(name, cap_field(it, name)))
    if it.get("expires"):
        parts.append(_el("expires", cap_time(_when(it["expires"], sent))))
    if it.get("sender_name"):
        parts.append(_el("senderName", it["sender_name"]))
    parts.append(_el("headline", it.get("headline", "")))
    parts.append(_el("description", it.get("description", "")))
    if it.get("instruction"):
        parts.append(_el("instruction", it["instruction"]))
    if it.get("web"):
        parts.append(_el("web", it["web"]))
    parts.append("<area>" + _el("areaDesc", cap_field(it, "area")) + "</area>")
    parts.append("</info></alert>\n")
    return "".join(parts).encode()
