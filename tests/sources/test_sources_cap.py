"""CapSource and CAP document parsing."""

from __future__ import annotations

from datetime import UTC, datetime

import httpx
import pytest
import respx

from crisiscomms.adapters.sources.cap import SEEN_KEY, CapSource
from crisiscomms.adapters.sources.capxml import parse_cap_document
from crisiscomms.adapters.sources.http import HttpFetcher
from crisiscomms.adapters.sources.parsing import FeedParserPool
from crisiscomms.domain.errors import PermanentSourceError, TransientSourceError
from crisiscomms.domain.models import SourceKind

from .sources_helpers import FEED_URL, NOW, fixture_bytes, make_config, state_for

pytestmark = pytest.mark.anyio
BASE = "https://alerts.example.gov.uk/cap/"
DOCS = {"alert-0001.xml": "cap_alert.xml", "alert-0002.xml": "cap_update.xml",
        "alert-0003.xml": "cap_cancel.xml"}


def cap_source(fetcher: HttpFetcher, pool: FeedParserPool) -> CapSource:
    return CapSource(make_config(SourceKind.CAP), fetcher, pool)


def serve_index(mock: respx.MockRouter, name: str = "cap_index.atom") -> respx.Route:
    return mock.get(FEED_URL).mock(
        return_value=httpx.Response(200, content=fixture_bytes(name),
                                    headers={"ETag": '"idx1"'})
    )


def serve_docs(mock: respx.MockRouter) -> dict[str, respx.Route]:
    return {
        name: mock.get(BASE + name).mock(
            return_value=httpx.Response(200, content=fixture_bytes(fixture),
                                        headers={"Content-Type": "application/cap+xml"}))
        for name, fixture in DOCS.items()
    }


async def test_index_and_documents(
    fetcher: HttpFetcher, pool: FeedParserPool, mock: respx.MockRouter
) -> None:
    serve_index(mock)
    routes = serve_docs(mock)
    src = cap_source(fetcher, pool)
    result = await src.poll(state_for(src.key), NOW)
    by_id = {u.external_id: u for u in result.updates}
    assert set(by_id) == {"GB-EA-2026-0001", "GB-EA-2026-0002", "GB-EA-2026-0003"}
    alert = by_id["GB-EA-2026-0001"]
    assert alert.kind is SourceKind.CAP and alert.cap is not None
    cap = alert.cap
    assert (cap.msg_type, cap.status, cap.scope) == ("Alert", "Actual", "Public")
    assert (cap.severity, cap.urgency, cap.certainty) == ("Severe", "Expected", "Likely")
    assert cap.event == "Flood warning" and cap.sender == "floodline@environment-agency.gov.uk"
    assert cap.area == "River Chelmer at Chelmsford; Springfield"  # English info, both areas
    assert cap.sent == datetime(2026, 2, 10, 10, 0, tzinfo=UTC)
    assert cap.expires == datetime(2026, 2, 11, 10, 0, tzinfo=UTC)
    assert alert.title == "Flood warning: River Chelmer at Chelmsford"
    assert "flooding of properties is expected" in alert.text and "Floodline" in alert.text
    assert alert.url.startswith("https://check-for-flooding.service.gov.uk/")
    update = by_id["GB-EA-2026-0002"].cap
    assert update is not None and update.msg_type == "Update"
    assert update.references == (
        "floodline@environment-agency.gov.uk,GB-EA-2026-0001,2026-02-10T10:00:00+00:00",)
    cancel = by_id["GB-EA-2026-0003"].cap
    assert cancel is not None and cancel.msg_type == "Cancel" and len(cancel.references) == 2
    assert by_id["GB-EA-2026-0003"].url == BASE + "alert-0003.xml"  # no <web>: the doc URL
    assert result.etag == '"idx1"'
    assert set(result.extra[SEEN_KEY]) == {"urn:uuid:alert-0001", "urn:uuid:alert-0002",
                                           "urn:uuid:alert-0003"}

    # Second poll (server ignores validators): known entries are not refetched or returned.
    again = await src.poll(state_for(src.key, extra=result.extra), NOW)
    assert again.updates == ()
    assert all(r.call_count == 1 for r in routes.values())
    assert again.extra[SEEN_KEY] == result.extra[SEEN_KEY]


async def test_changed_entry_is_refetched(
    fetcher: HttpFetcher, pool: FeedParserPool, mock: respx.MockRouter
) -> None:
    serve_index(mock)
    routes = serve_docs(mock)
    src = cap_source(fetcher, pool)
    first = await src.poll(state_for(src.key), NOW)
    changed = fixture_bytes("cap_index.atom").replace(
        b"<updated>2026-02-10T11:00:00Z</updated>", b"<updated>2026-02-10T11:45:00Z</updated>")
    mock.get(FEED_URL).mock(return_value=httpx.Response(200, content=changed))
    second = await src.poll(state_for(src.key, extra=first.extra), NOW)
    assert [u.external_id for u in second.updates] == ["GB-EA-2026-0002"]
    assert routes["alert-0002.xml"].call_count == 2 and routes["alert-0001.xml"].call_count == 1


async def test_document_failures(
    fetcher: HttpFetcher, pool: FeedParserPool, mock: respx.MockRouter
) -> None:
    serve_index(mock)
    serve_docs(mock)
    mock.get(BASE + "alert-0001.xml").mock(return_value=httpx.Response(404))
    mock.get(BASE + "alert-0002.xml").mock(return_value=httpx.Response(503))
    src = cap_source(fetcher, pool)
    state = state_for(src.key, etag='"old"')
    result = await src.poll(state, NOW)
    ids = {u.external_id for u in result.updates}
    # 404: replaced by the index entry; 503: deferred to the next poll
    assert ids == {"urn:uuid:alert-0001", "GB-EA-2026-0003"}
    assert "urn:uuid:alert-0002" not in result.extra[SEEN_KEY]
    assert result.etag == '"old"'  # validators not advanced while a document is deferred


async def test_all_documents_transient_raises(
    fetcher: HttpFetcher, pool: FeedParserPool, mock: respx.MockRouter
) -> None:
    serve_index(mock)
    for name in DOCS:
        mock.get(BASE + name).mock(side_effect=httpx.ConnectTimeout("slow"))
    src = cap_source(fetcher, pool)
    with pytest.raises(TransientSourceError) as info:
        await src.poll(state_for(src.key), NOW)
    assert info.value.error_class == "timeout"


async def test_flattened_cap_fields_and_non_actual_status(
    fetcher: HttpFetcher, pool: FeedParserPool, mock: respx.MockRouter
) -> None:
    serve_index(mock, "cap_flat_index.atom")
    src = cap_source(fetcher, pool)
    (update,) = (await src.poll(state_for(src.key), NOW)).updates
    assert update.cap is not None
    assert update.cap.status == "Exercise" and not update.cap.amplifiable  # returned anyway
    assert (update.cap.event, update.cap.severity, update.cap.area) == (
        "Wind warning", "Severe", "Essex coast")
    assert update.cap.expires == datetime(2026, 2, 11, 12, 0, tzinfo=UTC)


async def test_single_cap_document_url(
    fetcher: HttpFetcher, pool: FeedParserPool, mock: respx.MockRouter
) -> None:
    body = fixture_bytes("cap_alert.xml")
    mock.get(FEED_URL).mock(return_value=httpx.Response(200, content=body))
    src = cap_source(fetcher, pool)
    (update,) = (await src.poll(state_for(src.key), NOW)).updates
    assert update.external_id == "GB-EA-2026-0001"


@pytest.mark.parametrize(
    ("body", "error_class"),
    [
        (b"", "empty"),
        (b'{"identifier": "x"}', "not_xml"),
        (b"<html><body>no</body></html>", "not_xml"),
        (b'<?xml version="1.0"?><!DOCTYPE alert [<!ENTITY x "y">]><alert>&x;</alert>',
         "xml_forbidden"),
        (b'<!DOCTYPE alert SYSTEM "http://127.0.0.1:9/x.dtd"><alert/>', "xml_forbidden"),
        (b"<alert><identifier>x</identifier>", "parse"),
        (b"<feed/>", "not_cap"),
        (b'<alert xmlns="urn:oasis:names:tc:emergency:cap:1.2"><sender>s</sender></alert>',
         "not_cap"),
        (b"\xff\xfe\x00<", "parse"),
    ],
)
def test_cap_document_errors(body: bytes, error_class: str) -> None:
    with pytest.raises(PermanentSourceError) as info:
        parse_cap_document(body, source_id="cap-src")
    assert info.value.error_class == error_class
    assert "cap-src" in str(info.value)


def test_cap_document_defaults_and_bad_dates() -> None:
    doc = parse_cap_document(
        b'<alert xmlns="urn:oasis:names:tc:emergency:cap:1.1"><identifier>I</identifier>'
        b"<sent>yesterday</sent><info><expires>2026-02-30T00:00:00Z</expires></info></alert>",
        source_id="s",
    )
    assert doc.cap.identifier == "I" and doc.cap.sent is None and doc.cap.expires is None
    # No status or scope is not "Actual/Public" (issue 12): unknown stays unknown, never relayed.
    assert (doc.cap.status, doc.cap.scope, doc.cap.msg_type, doc.cap.severity) == (
        "", "", "Alert", "Unknown")
    assert not doc.cap.amplifiable
