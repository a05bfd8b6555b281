"""RSS 0.9x/1.0/2.0 and Atom feeds, through ``HttpFetcher`` and ``FeedParserPool``.

Conditional GET with the ETag / Last-Modified the watcher kept; a 304 comes back as
``PollResult(not_modified=True)`` with the old validators. Every entry currently in the
feed is returned (the watcher dedupes). A feed moved for good (a 301/308 within its
registrable domain) is still read, and its new URL is kept in ``extra["moved_to"]``
(``http.record_move``) so ``status`` can show it. An HTML page, JSON, or noise where a feed was
expected is ``PermanentSourceError(error_class="not_a_feed")``; a malformed (bozo) feed
with entries is accepted only when the source has ``trust_bozo``.

Met Office warning feeds carry no CAP fields; titles such as "Yellow warning of rain
affecting East of England" are mapped to a ``CapInfo`` (Red -> Extreme, Amber -> Severe,
Yellow -> Moderate; urgency and certainty Unknown) so severity filters work on them.
"""

from __future__ import annotations

import re
from datetime import datetime

import structlog

from crisiscomms.adapters.sources.base import looks_like_json, source_boundary
from crisiscomms.adapters.sources.http import (
    DEFAULT_MAX_BYTES,
    FetchResponse,
    HttpFetcher,
    record_move,
)
from crisiscomms.adapters.sources.parsing import FeedEntry, FeedParserPool, ParsedFeed
from crisiscomms.adapters.sources.text import title_from_text
from crisiscomms.domain.config import SourceConfig
from crisiscomms.domain.errors import PermanentSourceError
from crisiscomms.domain.models import (
    CapInfo,
    PollHints,
    PollResult,
    SourceKind,
    SourceState,
    Update,
)

log = structlog.get_logger(__name__)

FEED_ACCEPT = (
    "application/rss+xml, application/atom+xml, application/rdf+xml, "
    "application/xml;q=0.9, text/xml;q=0.9, */*;q=0.1"
)
_MET_OFFICE_TITLE = re.compile(
    r"^\s*(red|amber|yellow)\s+warning\s+of\s+(.{1,200}?)\s+affecting\s+(.{1,300}?)\s*$",
    re.IGNORECASE,
)
_COLOUR_SEVERITY = {"red": "Extreme", "amber": "Severe", "yellow": "Moderate"}


async def fetch_body(
    fetcher: HttpFetcher,
    config: SourceConfig,
    state: SourceState,
    now: datetime,
    *,
    max_bytes: int = DEFAULT_MAX_BYTES,
    accept: str = FEED_ACCEPT,
) -> FetchResponse:
    """Conditionally GET ``config.url``; a 304 comes back with ``not_modified``."""
    return await fetcher.fetch(
        config.url or "", source_id=config.id, etag=state.etag,
        last_modified=state.last_modified, max_bytes=max_bytes,
        allow_private=config.allow_private_network, accept=accept, now=now,
    )


async def parse_feed(
    parser: FeedParserPool, config: SourceConfig, response: FetchResponse
) -> ParsedFeed:
    """Parse a fetched body as a feed (bounded) and judge it.

    Raises ``PermanentSourceError`` with error_class ``empty``, ``not_a_feed`` or ``bozo``
    (malformed, and the source does not trust bozo feeds), besides the parser's own.
    """
    sid = config.id
    if not response.body.strip():
        raise PermanentSourceError(f"{sid}: empty body", source_id=sid, error_class="empty")
    if looks_like_json(response.body):
        raise PermanentSourceError(
            f"{sid}: JSON where a feed was expected", source_id=sid, error_class="not_a_feed"
        )
    parsed = await parser.parse(response.body, response.headers, source_id=sid)
    if not parsed.is_feed:
        raise PermanentSourceError(
            f"{sid}: not a feed ({response.content_type or 'no content type'})",
            source_id=sid, error_class="not_a_feed",
        )
    if parsed.bozo:
        if not parsed.entries or not config.trust_bozo:
            raise PermanentSourceError(
                f"{sid}: malformed feed ({parsed.bozo_reason or 'bozo'})",
                source_id=sid, error_class="bozo",
            )
        log.info("source.bozo_accepted", source_id=sid, reason=parsed.bozo_reason,
                 entries=len(parsed.entries))
    return parsed


def not_modified_result(state: SourceState,
                        response: FetchResponse | None = None) -> PollResult:
    """The result for a 304: nothing new, validators and memory unchanged (but a permanent
    redirect on the way to the 304 is recorded, see ``http.record_move``)."""
    extra = record_move(state.extra, response) if response is not None else dict(state.extra)
    return PollResult(
        not_modified=True, etag=state.etag, last_modified=state.last_modified,
        cursor=state.cursor, extra=extra,
        hints=response.hints if response is not None else PollHints(),
    )


def http_url(*candidates: str | None) -> str:
    """The first candidate that is an absolute http(s) URL, else ``""``."""
    for value in candidates:
        if value and value.strip().lower().startswith(("https://", "http://")):
            return value.strip()
    return ""


def met_office_cap(title: str, *, identifier: str, sender: str,
                   sent: datetime | None) -> CapInfo | None:
    """A ``CapInfo`` for a Met Office style "Colour warning of X affecting Y" title."""
    match = _MET_OFFICE_TITLE.match(title)
    if not match:
        return None
    colour, hazard, area = match.groups()
    return CapInfo(
        identifier=identifier, sender=sender, sent=sent,
        event=f"{colour.capitalize()} warning of {hazard}",
        severity=_COLOUR_SEVERITY[colour.lower()], area=area,
    )


def entry_update(
    entry: FeedEntry, config: SourceConfig, now: datetime, *, kind: SourceKind = SourceKind.RSS
) -> Update:
    """Normalise one feed entry (flattened ``cap_*`` fields become ``CapInfo``)."""
    text = entry.text or entry.title
    title = entry.title or title_from_text(text) or "(untitled)"
    published = entry.published or entry.updated or now
    if entry.cap:
        # CAP's XML reader (defusedxml) only for feeds that carry CAP fields: a cycle of 304s,
        # or of plain RSS, never loads it.
        from crisiscomms.adapters.sources.capxml import cap_from_flat

        cap: CapInfo | None = cap_from_flat(
            entry.cap, identifier=entry.external_id, sent=entry.published
        )
    else:
        cap = met_office_cap(
            title, identifier=entry.external_id, sender=config.agency, sent=entry.published
        )
    link = http_url(entry.link, *(lk.href for lk in entry.links if lk.rel in ("", "alternate")))
    return Update(
        source_id=config.id, agency=config.agency, kind=kind,
        external_id=entry.external_id, url=link or http_url(config.url),
        title=title, text=text, published_at=published, fetched_at=now, cap=cap,
    ).with_hash()


class RssSource:
    """One RSS/Atom feed (``SourceKind.RSS``)."""

    def __init__(
        self,
        config: SourceConfig,
        fetcher: HttpFetcher,
        parser: FeedParserPool,
        *,
        max_bytes: int = DEFAULT_MAX_BYTES,
    ) -> None:
        self.config = config
        self.key = config.id
        self.source_ids: tuple[str, ...] = (config.id,)
        self._fetcher = fetcher
        self._parser = parser
        self._max_bytes = max_bytes

    async def poll(self, state: SourceState, now: datetime) -> PollResult:
        """Fetch and parse the feed; return every entry, or ``not_modified`` on 304."""
        with source_boundary(self.key):
            response = await fetch_body(
                self._fetcher, self.config, state, now, max_bytes=self._max_bytes
            )
            if response.not_modified:
                return not_modified_result(state, response)
            parsed = await parse_feed(self._parser, self.config, response)
            seen: set[str] = set()
            updates = []
            for entry in parsed.entries:
                if entry.external_id in seen:  # a feed repeating a guid: keep the first
                    continue
                seen.add(entry.external_id)
                updates.append(entry_update(entry, self.config, now))
            return PollResult(
                updates=tuple(updates),
                etag=response.headers.get("etag"),
                last_modified=response.headers.get("last-modified"),
                cursor=state.cursor,
                extra=record_move(state.extra, response),
                hints=response.hints,
            )

    async def aclose(self) -> None:
        """Nothing to release: the HTTP client and parser pool belong to the caller."""
