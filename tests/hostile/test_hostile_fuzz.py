"""Hypothesis: structurally mutated feeds and CAP documents (tags dropped, duplicated,
renamed, unclosed; entities, CDATA, DOCTYPEs, encodings and junk inserted). The only allowed
outcomes are a ``PollResult`` or a ``SourceError`` naming the source."""

from __future__ import annotations

import asyncio
import re
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from crisiscomms.adapters.sources.http import FetchResponse
from crisiscomms.adapters.sources.parsing import FeedParserPool
from crisiscomms.domain.errors import SourceError
from crisiscomms.domain.models import PollResult, SourceKind
from tests.sources.sources_helpers import NOW, state_for

from .adapters import build, config_for
from .cases import fixture

SEEDS = {name: fixture(name) for name in ("rss20.xml", "rss10.xml", "atom.xml", "metoffice.xml",
                                          "cap_index.atom", "cap_flat_index.atom",
                                          "cap_alert.xml", "cap_update.xml")}
TAG = re.compile(rb"<(/?)([A-Za-z][\w:.-]*)([^<>]*)>")
INSERTS = [b"&amp;", b"&bogus;", b"&#0;", b"&#xD800;", b"<![CDATA[", b"]]>", b"<!--", b"-->",
           b"<?pi x?>", b"<!DOCTYPE x [<!ENTITY e 'boom'>]>", b"&e;", b"\x00", b"\xff\xfe",
           b"\xc3\x28", b"<", b">", b'"', b"<script>alert(1)</script>", b"\r\n", b"&lt;b&gt;",
           b'<?xml version="1.0" encoding="utf-16"?>', b"<rss>", b"</channel>", b"<entry>",
           b"<alert xmlns='urn:oasis:names:tc:emergency:cap:1.2'>", b"<identifier>",
           b"<status>Bogus</status>", b"<sent>99999-01-01T00:00:00Z</sent>",
           b"<pubDate>Mon, 99 Foo 99999 25:61:61 +9999</pubDate>"]


@st.composite
def mutated_xml(draw: Any) -> bytes:
    body = bytearray(SEEDS[draw(st.sampled_from(sorted(SEEDS)))])
    for _ in range(draw(st.integers(1, 4))):
        tags = list(TAG.finditer(bytes(body)))
        if not tags:
            break
        m = draw(st.sampled_from(tags))
        op = draw(st.sampled_from(["drop_tag", "dup_tag", "rename", "insert", "cut_after",
                                   "attr", "swap_case"]))
        if op == "drop_tag":
            body[m.start():m.end()] = b""
        elif op == "dup_tag":
            body[m.start():m.start()] = m.group(0) * draw(st.integers(1, 50))
        elif op == "rename":
            name = draw(st.sampled_from([b"item", b"entry", b"x", b"alert", b"info", b"guid",
                                         b"a:b:c", b"title"]))
            body[m.start():m.end()] = b"<" + m.group(1) + name + m.group(3) + b">"
        elif op == "insert":
            pos = draw(st.sampled_from([m.start(), m.end()]))
            body[pos:pos] = draw(st.sampled_from(INSERTS))
        elif op == "cut_after":
            del body[m.end():]
        elif op == "attr":
            body[m.end() - 1:m.end() - 1] = b' href="javascript:alert(1)" xmlns="urn:x"'
        else:
            body[m.start():m.end()] = m.group(0).upper()
    return bytes(body)


class BytesFetcher:
    def __init__(self, body: bytes) -> None:
        self.body = body

    async def fetch(self, url: str, **_: Any) -> FetchResponse:
        return FetchResponse(200, self.body, {"content-type": "application/xml"}, url=url)


@settings(max_examples=80, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(body=mutated_xml())
def test_mutated_feeds_only_raise_source_errors(hostile_pool: FeedParserPool,
                                                body: bytes) -> None:
    async def run() -> None:
        for kind in (SourceKind.RSS, SourceKind.CAP):
            sid = f"fuzz-{kind.value}"
            src = build(kind, config_for(kind, sid, "fuzz.example"), BytesFetcher(body),
                        hostile_pool, "fuzz.example")
            try:
                result = await src.poll(state_for(sid), NOW)
            except SourceError as exc:
                assert exc.source_id == sid and sid in str(exc)
                continue
            assert isinstance(result, PollResult)
            for update in result.updates:
                assert update.content_hash and update.published_at.tzinfo is not None
                if update.cap is not None and update.cap.status.lower() != "actual":
                    assert not update.cap.amplifiable

    asyncio.run(run())
