"""CAP 1.2 (OASIS) alert documents and flattened CAP fields -> ``CapInfo``.

Documents are parsed with defusedxml with DTDs, entities and external references all
forbidden, so no entity bomb or XXE reaches expat's expansion code. Bodies are already
size-capped by the fetcher, and ElementTree parsing without entities is linear, so this
runs in-process. Both CAP 1.1 and 1.2 namespaces (or none) are accepted; fields are
matched by local name.
"""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET  # types only; parsing goes through defusedxml
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime

import defusedxml
from defusedxml import ElementTree as SafeET

from crisiscomms.adapters.sources.base import looks_like_json, parse_time
from crisiscomms.adapters.sources.text import html_to_text, tidy
from crisiscomms.domain.errors import PermanentSourceError
from crisiscomms.domain.models import CapInfo

CAP_MEDIA_TYPES = ("application/cap+xml",)
_FIELD_LIMIT = 500
_CAP_ROOT_HINT = re.compile(rb"<(?:[A-Za-z0-9_]+:)?alert[\s>]")


@dataclass(frozen=True, slots=True)
class CapDocument:
    """The parts of one CAP alert we turn into an ``Update``."""

    cap: CapInfo
    headline: str
    description: str
    instruction: str
    web: str
    sender_name: str


def _local(tag: object) -> str:
    return tag.rsplit("}", 1)[-1] if isinstance(tag, str) else ""


def _children(el: ET.Element, name: str) -> list[ET.Element]:
    return [c for c in el if _local(c.tag) == name]


def _text(el: ET.Element, name: str, limit: int = _FIELD_LIMIT) -> str:
    for child in el:
        if _local(child.tag) == name:
            return tidy(child.text or "", limit)
    return ""


def looks_like_cap(body: bytes) -> bool:
    """True when the body's root element seems to be a CAP ``<alert>``."""
    head = body[:2048]
    return bool(_CAP_ROOT_HINT.search(head)) and b"emergency:cap" in head


def parse_cap_document(body: bytes, *, source_id: str) -> CapDocument:
    """Parse one CAP alert document or raise ``PermanentSourceError``.

    error_class: ``empty``, ``not_xml`` (JSON or HTML), ``xml_forbidden`` (DTD/entities),
    ``parse`` (malformed XML), ``not_cap`` (well-formed but not an alert).
    """
    if not body.strip():
        raise PermanentSourceError(
            f"{source_id}: empty CAP document", source_id=source_id, error_class="empty"
        )
    if looks_like_json(body):
        raise PermanentSourceError(
            f"{source_id}: JSON where a CAP document was expected",
            source_id=source_id, error_class="not_xml",
        )
    try:
        root = SafeET.fromstring(
            body, forbid_dtd=True, forbid_entities=True, forbid_external=True
        )
    except defusedxml.DefusedXmlException as exc:
        raise PermanentSourceError(
            f"{source_id}: CAP document declares a DTD or entities ({type(exc).__name__})",
            source_id=source_id, error_class="xml_forbidden",
        ) from exc
    except (ET.ParseError, ValueError, RecursionError) as exc:
        raise PermanentSourceError(
            f"{source_id}: malformed CAP document ({type(exc).__name__})",
            source_id=source_id, error_class="parse",
        ) from exc
    if _local(root.tag) != "alert":
        cls = "not_xml" if _local(root.tag).lower() == "html" else "not_cap"
        raise PermanentSourceError(
            f"{source_id}: root element is <{_local(root.tag)[:40]}>, not a CAP <alert>",
            source_id=source_id, error_class=cls,
        )
    return _document(root, source_id)


def _pick_info(root: ET.Element) -> ET.Element | None:
    infos = _children(root, "info")
    for info in infos:
        lang = _text(info, "language").lower()
        if not lang or lang.startswith("en"):
            return info
    return infos[0] if infos else None


def _document(root: ET.Element, source_id: str) -> CapDocument:
    identifier = _text(root, "identifier")
    if not identifier:
        raise PermanentSourceError(
            f"{source_id}: CAP alert without an identifier", source_id=source_id,
            error_class="not_cap",
        )
    info = _pick_info(root)
    areas: list[str] = []
    if info is not None:
        for area in _children(info, "area"):
            desc = _text(area, "areaDesc")
            if desc and desc not in areas:
                areas.append(desc)

    def field(name: str, limit: int = _FIELD_LIMIT) -> str:
        return _text(info, name, limit) if info is not None else ""

    cap = CapInfo(
        identifier=identifier,
        sender=_text(root, "sender"),
        sent=parse_time(_text(root, "sent")),
        status=_text(root, "status"),  # unknown stays unknown: never relayed
        msg_type=_text(root, "msgType") or "Alert",
        scope=_text(root, "scope"),
        references=tuple(_text(root, "references", 20_000).split()),
        event=field("event"),
        severity=field("severity") or "Unknown",
        urgency=field("urgency") or "Unknown",
        certainty=field("certainty") or "Unknown",
        area="; ".join(areas)[:2000],
        expires=parse_time(field("expires")),
    )
    return CapDocument(
        cap=cap,
        # CAP's texts are plain text, but a hostile or careless sender may put markup in them:
        # only their visible words are relayed (a post is never a carrier for a script).
        headline=html_to_text(field("headline")),
        description=html_to_text(field("description", 10_000), limit=10_000),
        instruction=html_to_text(field("instruction", 10_000), limit=10_000),
        web=field("web", 2000),
        sender_name=field("senderName"),
    )


def cap_from_flat(
    flat: Mapping[str, str], *, identifier: str, sent: datetime | None = None
) -> CapInfo:
    """``CapInfo`` from feedparser's flattened ``cap_*`` entry fields (CAP-in-Atom indexes)."""

    def get(name: str, default: str = "") -> str:
        return (flat.get(f"cap_{name}") or default).strip()[:_FIELD_LIMIT]

    return CapInfo(
        identifier=get("identifier") or identifier,
        sender=get("sender"),
        sent=parse_time(get("sent")) or sent,
        status=get("status"),  # unknown stays unknown: never relayed
        msg_type=get("msgtype", "Alert"),
        scope=get("scope"),
        references=tuple(get("references").split()),
        event=get("event"),
        severity=get("severity", "Unknown"),
        urgency=get("urgency", "Unknown"),
        certainty=get("certainty", "Unknown"),
        area=get("areadesc"),
        expires=parse_time(get("expires")),
    )
