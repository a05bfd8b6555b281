"""CAP 1.2 sources: an Atom/RSS index of alerts, plus the CAP documents it links to.

An index entry either carries flattened ``cap_*`` fields (used directly) or links a CAP
document (``type="application/cap+xml"`` or an ``.xml`` href), which is fetched through
the same ``HttpFetcher`` rules and parsed with defusedxml. The source URL may also be a
single CAP document. External id = the CAP ``identifier``.

Updates are returned whatever their ``status``/``scope`` (Exercise, Test, Restricted...):
the watcher records them and ``CapInfo.amplifiable`` tells the policy they must never be
relayed.

Linked documents are fetched once per (entry id, entry updated): ``extra["cap_seen"]``
maps entry id -> updated for the entries currently in the index (at most ``MAX_SEEN``),
and those entries are *not* returned again (the watcher saw them on the poll that fetched
them). A document that cannot be fetched for good (404, malformed) is replaced by an
update built from the index entry; one that fails transiently is retried on the next poll,
and the index validators are then not advanced so that poll is not answered by a 304.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import replace
from datetime import datetime
from urllib.parse import urlsplit

import structlog

from crisiscomms.adapters.sources.base import source_boundary
from crisiscomms.adapters.sources.capxml import (
    CAP_MEDIA_TYPES,
    CapDocument,
    looks_like_cap,
    parse_cap_document,
)
from crisiscomms.adapters.sources.http import DEFAULT_MAX_BYTES, HttpFetcher, record_move
from crisiscomms.adapters.sources.parsing import FeedEntry, FeedParserPool
from crisiscomms.adapters.sources.rss import (
    FEED_ACCEPT,
    entry_update,
    fetch_body,
    http_url,
    not_modified_result,
    parse_feed,
)
from crisiscomms.adapters.sources.text import tidy
from crisiscomms.domain.config import SourceConfig
from crisiscomms.domain.errors import SourceError, TransientSourceError
from crisiscomms.domain.models import PollResult, SourceKind, SourceState, Update

log = structlog.get_logger(__name__)

MAX_SEEN = 1_000
MAX_DOCS_PER_POLL = 50  # the rest wait for the next poll: one huge index cannot flood a host
DOC_MAX_BYTES = 1_000_000
CAP_ACCEPT = "application/cap+xml, application/xml;q=0.9, text/xml;q=0.9"
SEEN_KEY = "cap_seen"


def cap_link(entry: FeedEntry) -> str:
    """The CAP document an index entry points to, or ``""``."""
    for link in entry.links:
        if link.type.lower().split(";", 1)[0].strip() in CAP_MEDIA_TYPES:
            return http_url(link.href)
    candidates = [lk.href for lk in entry.links] + [entry.link, entry.external_id]
    for href in candidates:
        url = http_url(href)
        if url and urlsplit(url).path.lower().endswith(".xml"):
            return url
    return ""


def document_update(
    doc: CapDocument, config: SourceConfig, now: datetime, *, doc_url: str,
    published: datetime | None = None,
) -> Update:
    """Normalise one CAP document."""
    cap = doc.cap
    text = "\n\n".join(p for p in (doc.description, doc.instruction) if p)
    title = doc.headline or cap.event or cap.identifier
    return Update(
        source_id=config.id, agency=config.agency, kind=SourceKind.CAP,
        external_id=cap.identifier, url=http_url(doc.web, doc_url, config.url),
        title=tidy(title, 500), text=text or title,
        published_at=cap.sent or published or now, fetched_at=now, cap=cap,
    ).with_hash()


class CapSource:
    """A CAP alert index (``SourceKind.CAP``)."""

    def __init__(
        self,
        config: SourceConfig,
        fetcher: HttpFetcher,
        parser: FeedParserPool,
        *,
        max_bytes: int = DEFAULT_MAX_BYTES,
        doc_max_bytes: int = DOC_MAX_BYTES,
    ) -> None:
        self.config = config
        self.key = config.id
        self.source_ids: tuple[str, ...] = (config.id,)
        self._fetcher = fetcher
        self._parser = parser
        self._max_bytes = max_bytes
        self._doc_max_bytes = doc_max_bytes

    async def poll(self, state: SourceState, now: datetime) -> PollResult:
        """Fetch the index and the CAP documents of new or changed entries."""
        with source_boundary(self.key):
            sid = self.key
            response = await fetch_body(
                self._fetcher, self.config, state, now, max_bytes=self._max_bytes,
                accept=f"{CAP_ACCEPT}, {FEED_ACCEPT}",
            )
            if response.not_modified:
                return not_modified_result(state, response)
            validators = (response.headers.get("etag"), response.headers.get("last-modified"))
            if looks_like_cap(response.body):
                # The URL is a single CAP document, not an index.
                doc = parse_cap_document(response.body, source_id=sid)
                update = document_update(doc, self.config, now, doc_url=response.url)
                return PollResult(updates=(update,), cursor=state.cursor,
                                  extra=record_move(state.extra, response),
                                  etag=validators[0], last_modified=validators[1],
                                  hints=response.hints)
            parsed = await parse_feed(self._parser, self.config, response)
            result = await self._index(parsed.entries, state, now, validators, response.url)
            return replace(result, extra=record_move(result.extra, response),
                           hints=response.hints)

    async def _index(
        self, entries: Sequence[FeedEntry], state: SourceState, now: datetime,
        validators: tuple[str | None, str | None], index_url: str,
    ) -> PollResult:
        old_seen = state.extra.get(SEEN_KEY)
        old_seen = old_seen if isinstance(old_seen, dict) else {}
        seen: dict[str, str] = {}
        updates: dict[str, Update] = {}
        wanted: list[tuple[FeedEntry, str, str]] = []
        for entry in entries[:MAX_SEEN]:
            key = entry.external_id
            marker = entry.updated_raw or (entry.published.isoformat() if entry.published else "")
            link = cap_link(entry)
            if not link:
                update = entry_update(entry, self.config, now, kind=SourceKind.CAP)
                updates.setdefault(update.external_id, update)
            elif old_seen.get(key) == marker:
                seen[key] = marker
            elif len(wanted) < MAX_DOCS_PER_POLL:
                wanted.append((entry, link, marker))
        results = await asyncio.gather(
            *(self._document(entry, link, now, index_url) for entry, link, _ in wanted),
            return_exceptions=True,
        )
        transient: list[TransientSourceError] = []
        for (entry, _link, marker), result in zip(wanted, results, strict=True):
            if isinstance(result, TransientSourceError):
                transient.append(result)
                continue
            if isinstance(result, BaseException) and not isinstance(result, SourceError):
                raise result
            if isinstance(result, SourceError):
                log.warning("source.cap_document_failed", source_id=self.key,
                            error_class=result.error_class, entry=entry.external_id[:200])
                result = entry_update(entry, self.config, now, kind=SourceKind.CAP)
            seen[entry.external_id] = marker
            updates.setdefault(result.external_id, result)
        if transient and not updates and len(transient) == len(wanted):
            raise transient[0]
        if transient:
            log.warning("source.cap_documents_deferred", source_id=self.key,
                        count=len(transient), error_class=transient[0].error_class)
            # Keep the old validators so the next poll is not a 304 and retries them.
            validators = (state.etag, state.last_modified)
        extra = dict(state.extra)
        extra[SEEN_KEY] = seen
        return PollResult(
            updates=tuple(updates.values()), cursor=state.cursor, extra=extra,
            etag=validators[0], last_modified=validators[1],
        )

    async def _document(
        self, entry: FeedEntry, link: str, now: datetime, index_url: str
    ) -> Update:
        sid = self.key
        index_https = urlsplit(index_url or (self.config.url or "")).scheme == "https"
        response = await self._fetcher.fetch(
            link, source_id=sid, max_bytes=self._doc_max_bytes,
            allow_private=self.config.allow_private_network,
            require_https=index_https, accept=CAP_ACCEPT, now=now,
        )
        doc = parse_cap_document(response.body, source_id=sid)
        return document_update(
            doc, self.config, now, doc_url=link, published=entry.published or entry.updated
        )

    async def aclose(self) -> None:
        """Nothing to release: the HTTP client and parser pool belong to the caller."""
