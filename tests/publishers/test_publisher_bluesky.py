from __future__ import annotations

import json
import re
from collections.abc import Iterator
from datetime import timedelta

import httpx
import pytest
import respx

from crisiscomms.adapters.publishers.bluesky import (
    LINK_FEATURE,
    TAG_FEATURE,
    BlueskyPublisher,
    facets,
    record_key,
    web_url,
)
from crisiscomms.domain.clock import FixedClock
from crisiscomms.domain.errors import (
    OutcomeUnknownError,
    PermanentPublishError,
    TransientPublishError,
)
from crisiscomms.domain.models import ActionKind, NativeRef, Platform

from .publisher_fakes import Failure, FakeBluesky, httpx_failure
from .publisher_support import BLUESKY_CREDENTIALS, CHANNEL, NOW, make_item

Fixture = tuple[FakeBluesky, BlueskyPublisher]
TID_RE = re.compile(r"^[234567abcdefghij][234567abcdefghijklmnopqrstuvwxyz]{12}$")


def created_records(fake: FakeBluesky) -> list[dict]:
    return [
        json.loads(r.content)
        for r in fake.requests
        if r.url.path.endswith("createRecord") and r.content
    ]


def test_facets_use_utf8_byte_offsets() -> None:
    text = "Crue 🌊 à Ürümqi: https://a.test/ß?x=1 #Flood #Ünïcode #123 end"
    raw = text.encode("utf-8")
    found = facets(text)
    spans = [
        (raw[f["index"]["byteStart"] : f["index"]["byteEnd"]].decode(), f["features"][0])
        for f in found
    ]
    assert spans == [
        ("https://a.test/ß?x=1", {"$type": LINK_FEATURE, "uri": "https://a.test/ß?x=1"}),
        ("#Flood", {"$type": TAG_FEATURE, "tag": "Flood"}),
        ("#Ünïcode", {"$type": TAG_FEATURE, "tag": "Ünïcode"}),
    ]
    # Character and byte offsets differ here, which is the point of the test.
    assert found[0]["index"]["byteStart"] != text.index("https")


def test_facets_trailing_punctuation_and_fragment() -> None:
    text = "See https://a.test/page#frag. #StaySafe!"
    raw = text.encode()
    found = facets(text)
    assert [raw[f["index"]["byteStart"] : f["index"]["byteEnd"]].decode() for f in found] == [
        "https://a.test/page#frag",
        "#StaySafe",
    ]


def test_record_key_is_a_deterministic_tid() -> None:
    item = make_item(1)
    key = record_key(item)
    assert TID_RE.match(key)
    assert record_key(make_item(1)) == key
    assert record_key(make_item(2)) != key
    # Items queued in the same second still get different keys.
    keys = {record_key(make_item(i)) for i in range(500)}
    assert len(keys) == 500
    # Sub-second precision lost in a store round-trip does not change it.
    assert record_key(make_item(1, created_at=NOW + timedelta(microseconds=123))) == key


def test_post_record_shape(bluesky_fake: Fixture) -> None:
    fake, pub = bluesky_fake
    item = make_item()
    result = pub.publish(item, None)
    [sent] = created_records(fake)
    assert sent["repo"] == fake.did
    assert sent["collection"] == "app.bsky.feed.post"
    assert sent["rkey"] == record_key(item)
    record = sent["record"]
    assert record["$type"] == "app.bsky.feed.post"
    assert record["text"] == item.body
    assert record["createdAt"].startswith("2026-03-01T12:00:00")
    assert {f["features"][0]["$type"] for f in record["facets"]} == {LINK_FEATURE, TAG_FEATURE}
    assert result.post_id == f"at://{fake.did}/app.bsky.feed.post/{record_key(item)}"
    assert result.url == f"https://bsky.app/profile/{fake.did}/post/{record_key(item)}"


@pytest.mark.parametrize("duplicate_answer", [500, 409, 400])
def test_resending_an_item_returns_the_existing_record(
    bluesky_fake: Fixture, duplicate_answer: int
) -> None:
    fake, pub = bluesky_fake
    fake.duplicate_answer = duplicate_answer
    item = make_item()
    first = pub.publish(item, None)
    again = pub.publish(item, None)
    assert again == first
    assert len(fake.records) == 1


def test_500_without_a_record_is_transient(bluesky_fake: Fixture) -> None:
    fake, pub = bluesky_fake
    fake.faults.add("write", Failure(500, {"error": "InternalServerError", "message": "oops"}))
    with pytest.raises(TransientPublishError):
        pub.publish(make_item(), None)
    assert pub.publish(make_item(), None).post_id  # and the retry then works


BARE_500 = {"error": "InternalServerError", "message": "Internal Server Error"}


@pytest.mark.parametrize(
    "lookup",
    [
        Failure(503, {"error": "InternalServerError", "message": "Service Unavailable"}),
        Failure(400, {"error": "InvalidRequest", "message": "Could not find repo"}),
        Failure(exc=httpx.ReadTimeout("timed out")),
    ],
    ids=["503", "400-other", "timeout"],
)
def test_bare_500_and_an_unanswered_lookup_is_outcome_unknown(
    bluesky_fake: Fixture, lookup: Failure
) -> None:
    """Defect 11: the real PDS answers a repeated record key on a post with a bare 500. The
    key is deterministic, so the 500 may mean "already there": it must lead to a getRecord
    lookup, and if that cannot answer, to "outcome unknown" (the dispatcher asks again
    before any resend), never to a retryable error that resends blindly."""
    fake, pub = bluesky_fake
    item = make_item()
    first = pub.publish(item, None)
    fake.faults.add("write", Failure(500, BARE_500))
    fake.faults.add("read", lookup)
    with pytest.raises(OutcomeUnknownError, match="createRecord answered 500"):
        pub.publish(item, None)
    lookups = [r for r in fake.requests if r.url.path.endswith("getRecord")]
    assert lookups[-1].url.params["rkey"] == record_key(item)
    assert pub.publish(item, None) == first  # once the PDS answers again: the same record
    assert len(fake.records) == 1


def test_session_is_reused(bluesky_fake: Fixture) -> None:
    fake, pub = bluesky_fake
    pub.publish(make_item(1), None)
    pub.publish(make_item(2, body="another"), None)
    pub.find_existing(make_item(3), None)
    assert fake.sessions == 1


def test_expired_token_is_refreshed_once(bluesky_fake: Fixture) -> None:
    fake, pub = bluesky_fake
    pub.publish(make_item(1), None)
    fake.expired.add(fake.access)
    pub.publish(make_item(2, body="another"), None)
    assert fake.refreshes == 1
    assert fake.sessions == 1
    assert len(fake.records) == 2


def test_spent_refresh_token_means_a_new_session(bluesky_fake: Fixture) -> None:
    fake, pub = bluesky_fake
    pub.publish(make_item(1), None)
    fake.expired.add(fake.access)
    fake.refresh = "revoked"
    pub.publish(make_item(2, body="another"), None)
    assert fake.sessions == 2


def test_bad_app_password_is_permanent_and_not_echoed(bluesky_fake: Fixture) -> None:
    fake, pub = bluesky_fake
    message = "Invalid identifier or password abcd-SECRET-efgh-ijkl"
    fake.faults.add("login", Failure(401, {"error": "AuthenticationRequired", "message": message}))
    with pytest.raises(PermanentPublishError) as caught:
        pub.publish(make_item(), None)
    assert "Invalid identifier or password" in str(caught.value)
    assert "abcd-SECRET-efgh-ijkl" not in str(caught.value)


def test_repost_uses_a_deterministic_repost_record(
    pds: tuple[ReplacingPds, BlueskyPublisher],
) -> None:
    fake, pub = pds
    uri, cid = fake.add_official_post()
    item = make_item(action=ActionKind.REPOST, native=NativeRef(Platform.BLUESKY, uri=uri, cid=cid))
    assert pub.find_existing(item, None) is None
    result = pub.publish(item, None)
    [sent] = created_records(fake)
    assert sent["collection"] == "app.bsky.feed.repost"
    assert sent["rkey"] == record_key(item)
    assert sent["record"]["subject"] == {"uri": uri, "cid": cid}
    assert result.url == web_url(uri)
    assert pub.publish(item, None) == result  # resend: same record
    found = pub.find_existing(item, None)
    assert found == result


def test_repost_without_cid_looks_it_up(bluesky_fake: Fixture) -> None:
    fake, pub = bluesky_fake
    uri, cid = fake.add_official_post()
    pub.publish(
        make_item(action=ActionKind.REPOST, native=NativeRef(Platform.BLUESKY, uri=uri)), None
    )
    [sent] = created_records(fake)
    assert sent["record"]["subject"] == {"uri": uri, "cid": cid}


def test_repost_of_a_missing_post_falls_back_to_a_post(bluesky_fake: Fixture) -> None:
    fake, pub = bluesky_fake
    gone = "at://did:plc:police/app.bsky.feed.post/3kgone2222222"
    item = make_item(action=ActionKind.REPOST, native=NativeRef(Platform.BLUESKY, uri=gone))
    result = pub.publish(item, None)
    [sent] = created_records(fake)
    assert sent["collection"] == "app.bsky.feed.post"
    assert pub.find_existing(item, None) == result


def test_quote_embeds_the_record(bluesky_fake: Fixture) -> None:
    fake, pub = bluesky_fake
    uri, cid = fake.add_official_post()
    item = make_item(
        action=ActionKind.QUOTE,
        body="Please share #Flood",
        native=NativeRef(Platform.BLUESKY, uri=uri, cid=cid),
    )
    pub.publish(item, None)
    [sent] = created_records(fake)
    assert sent["record"]["embed"] == {
        "$type": "app.bsky.embed.record",
        "record": {"uri": uri, "cid": cid},
    }


def test_web_url() -> None:
    assert (
        web_url("at://did:plc:a/app.bsky.feed.post/3k")
        == "https://bsky.app/profile/did:plc:a/post/3k"
    )
    assert web_url("at://did:plc:a/app.bsky.feed.repost/3k") == ""


class ReplacingPds(FakeBluesky):
    """FakeBluesky plus what the real PDS does with reposts: a repost of a subject already
    reposted replaces the old record (200), and ``listRecords`` lists the repo's records
    (newest first, lexicon ``com.atproto.repo.listRecords``)."""

    def __init__(self, router: respx.MockRouter) -> None:
        super().__init__(router)
        x = f"{self.base}/xrpc/"
        router.get(x + "com.atproto.repo.listRecords").mock(side_effect=self._list)
        self.replacing = True

    def _create(self, request: httpx.Request) -> httpx.Response:
        body = json.loads(request.content or b"{}")
        subject = (body.get("record") or {}).get("subject") or {}
        if self.replacing and body.get("collection") == "app.bsky.feed.repost":
            for key, rec in list(self.records.items()):
                same = key[:2] == (body["repo"], "app.bsky.feed.repost")
                if same and key[2] != body["rkey"] and rec["value"]["subject"] == subject:
                    del self.records[key]
        return super()._create(request)

    def _list(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        failure = self.faults.take("read")
        if failure:
            return httpx_failure(failure)
        p = request.url.params
        records = [r for k, r in self.records.items() if k[:2] == (p["repo"], p["collection"])]
        return httpx.Response(200, json={"records": list(reversed(records))})


@pytest.fixture
def pds(clock: FixedClock) -> Iterator[tuple[ReplacingPds, BlueskyPublisher]]:
    with respx.mock(assert_all_called=False) as router:
        fake = ReplacingPds(router)
        publisher = BlueskyPublisher(CHANNEL, identifier="nhs.test",
                                     credentials=BLUESKY_CREDENTIALS, clock=clock,
                                     base_url=fake.base)
        yield fake, publisher
        publisher.close()


def test_a_repost_replaced_by_a_later_repost_of_the_subject_is_still_done(
    pds: tuple[ReplacingPds, BlueskyPublisher],
) -> None:
    """The PDS keeps one repost per subject: when another item's repost replaced ours, the
    subject is still reposted by us, so the item is done (found through listRecords), not
    resent."""
    fake, pub = pds
    uri, cid = fake.add_official_post()
    native = NativeRef(Platform.BLUESKY, uri=uri, cid=cid)
    a = make_item(1, action=ActionKind.REPOST, native=native)
    b = make_item(2, action=ActionKind.REPOST, native=native)
    pub.publish(a, None)
    replaced_by = pub.publish(b, None)  # 200: replaces a's repost
    assert len([k for k in fake.records if k[1] == "app.bsky.feed.repost"]) == 1
    found = pub.find_existing(a, None)
    assert found == replaced_by
    other = make_item(3, action=ActionKind.REPOST,
                      native=NativeRef(Platform.BLUESKY, uri=uri.replace("official", "other"),
                                       cid="bafyother"))
    assert pub.find_existing(other, None) is None
