"""Conformance of our Bluesky adapters and the simulator to the recorded AT Protocol lexicons.

For every XRPC call the adapters make, one test per lexicon in
``shared/recorded/bluesky/lexicons/`` (named in the test): the adapter is fed a response built
to the lexicon's output schema, first with the required fields only and then with every
optional field the lexicons define, and must read each field it relies on; and the simulator's
answer to the same call must satisfy the lexicon (required fields present, types, nesting).
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
import respx
from pydantic import SecretStr
from structlog.testing import capture_logs

from crisiscomms.adapters.publishers.bluesky import BlueskyPublisher, record_key, web_url
from crisiscomms.adapters.sources.bluesky import BlueskySource
from crisiscomms.adapters.sources.http import FetchLimits, HttpFetcher, make_async_client
from crisiscomms.domain.clock import FixedClock
from crisiscomms.domain.config import SourceConfig
from crisiscomms.domain.models import (
    ActionKind,
    ItemState,
    NativeRef,
    OutboxItem,
    Platform,
    SourceKind,
    SourceState,
)
from crisiscomms.simulator import RunningSimulator, World, serve
from crisiscomms.simulator.ids import did_for

from .test_bluesky_lexicons import example, merged, output, post_record, problems, record

NOW = datetime(2026, 12, 1, 10, 0, tzinfo=UTC)
PDS = "https://pds.test/xrpc/"
ME = "did:plc:nhscomms0000000000000000"
OFFICIAL = "did:plc:essexpolice00000000000000"
OFFICIAL_POST = f"at://{OFFICIAL}/app.bsky.feed.post/3l3qo2vutsw2b"
MODES = pytest.mark.parametrize("full", [False, True], ids=["required-only", "with-optional"])

CREATE_SESSION = "com.atproto.server.createSession"
REFRESH_SESSION = "com.atproto.server.refreshSession"
CREATE_RECORD = "com.atproto.repo.createRecord"
GET_RECORD = "com.atproto.repo.getRecord"
LIST_RECORDS = "com.atproto.repo.listRecords"
GET_AUTHOR_FEED = "app.bsky.feed.getAuthorFeed"


def built(nsid: str, full: bool, changes: dict[str, Any] | None = None) -> dict[str, Any]:
    """An output of ``nsid`` built to its lexicon, with ``changes``; still conformant."""
    body = merged(example(output(nsid), nsid, full=full), changes or {})
    assert problems(body, output(nsid), nsid) == [], f"test data breaks {nsid}"
    return body  # type: ignore[no-any-return]


def session(full: bool, n: int = 1) -> dict[str, Any]:
    return built(CREATE_SESSION, full, {"did": ME, "handle": "nhscomms.bsky.social",
                                        "accessJwt": f"access-{n}", "refreshJwt": f"refresh-{n}"})


def repost_record(subject_uri: str, full: bool = False) -> dict[str, Any]:
    value = example(record("app.bsky.feed.repost"), "app.bsky.feed.repost", full=full)
    return merged({"$type": "app.bsky.feed.repost", **value}, {"subject": {"uri": subject_uri}})


def item(action: ActionKind = ActionKind.POST, native: NativeRef | None = None) -> OutboxItem:
    return OutboxItem(id=1, dedupe_key=f"u1:bluesky:{action}", channel_id="bluesky",
                      action=action, text="Road closed https://example.org/a #A12",
                      state=ItemState.SENDING, created_at=NOW, native=native)


@pytest.fixture
def pub() -> Iterator[BlueskyPublisher]:
    publisher = BlueskyPublisher("bluesky", identifier="nhscomms.bsky.social",
                                 credentials={"app_password": SecretStr("app-pass-1234")},
                                 clock=FixedClock(NOW), base_url="https://pds.test")
    yield publisher
    publisher.close()


def not_found(rkey: str = "x") -> httpx.Response:
    return httpx.Response(400, json={"error": "RecordNotFound",
                                     "message": f"Could not locate record: {rkey}"})


# -- the adapters read what the lexicons define --------------------------------------------------


@MODES
def test_create_session(pub: BlueskyPublisher, full: bool) -> None:
    """lexicons/com/atproto/server/createSession.json: ``did`` names the repo written to and
    ``accessJwt`` authenticates the calls."""
    with respx.mock() as router:
        router.post(PDS + CREATE_SESSION).respond(200, json=session(full))
        create = router.post(PDS + CREATE_RECORD).respond(
            200, json=built(CREATE_RECORD, False, {"uri": f"at://{ME}/app.bsky.feed.post/x"}))
        pub.publish(item(), None)
    sent = create.calls.last.request
    assert sent.headers["Authorization"] == "Bearer access-1"
    assert httpx.Response(200, content=sent.content).json()["repo"] == ME


@MODES
def test_refresh_session(pub: BlueskyPublisher, full: bool) -> None:
    """lexicons/com/atproto/server/refreshSession.json: after ``ExpiredToken`` the refreshed
    ``accessJwt`` is used, sent as the refresh token's bearer."""
    expired = httpx.Response(400, json={"error": "ExpiredToken", "message": "Token has expired"})
    with respx.mock() as router:
        router.post(PDS + CREATE_SESSION).respond(200, json=session(False))
        refresh = router.post(PDS + REFRESH_SESSION).respond(200, json=session(full, n=2))
        create = router.post(PDS + CREATE_RECORD).mock(side_effect=[
            expired, httpx.Response(200, json=built(CREATE_RECORD, False))])
        pub.publish(item(), None)
    assert refresh.calls.last.request.headers["Authorization"] == "Bearer refresh-1"
    assert create.calls.last.request.headers["Authorization"] == "Bearer access-2"


@MODES
def test_create_record(pub: BlueskyPublisher, full: bool) -> None:
    """lexicons/com/atproto/repo/createRecord.json: ``uri`` is the post's id (``cid`` and the
    optional ``commit``/``validationStatus`` are not needed)."""
    uri = f"at://{ME}/app.bsky.feed.post/{record_key(item())}"
    with respx.mock() as router:
        router.post(PDS + CREATE_SESSION).respond(200, json=session(False))
        router.post(PDS + CREATE_RECORD).respond(200, json=built(CREATE_RECORD, full,
                                                                 {"uri": uri}))
        result = pub.publish(item(), None)
    assert result.post_id == uri and result.url == web_url(uri)


@MODES
def test_get_record_of_our_post(pub: BlueskyPublisher, full: bool) -> None:
    """lexicons/com/atproto/repo/getRecord.json: ``uri`` identifies the post found again."""
    uri = f"at://{ME}/app.bsky.feed.post/{record_key(item())}"
    with respx.mock() as router:
        router.post(PDS + CREATE_SESSION).respond(200, json=session(False))
        router.get(PDS + GET_RECORD).respond(200, json=built(GET_RECORD, full, {"uri": uri}))
        found = pub.find_existing(item(), None)
    assert found is not None and found.post_id == uri


@MODES
def test_get_record_of_the_post_to_repost(pub: BlueskyPublisher, full: bool) -> None:
    """lexicons/com/atproto/repo/getRecord.json: ``cid`` is optional there, and a repost's
    subject needs it (lexicons/app/bsky/feed/repost.json, a strongRef): without it the
    publisher posts instead of failing on the missing field."""
    native = NativeRef(Platform.BLUESKY, uri=OFFICIAL_POST)
    answer = built(GET_RECORD, full, {"uri": OFFICIAL_POST})
    with respx.mock() as router, capture_logs() as logs:
        router.post(PDS + CREATE_SESSION).respond(200, json=session(False))
        router.get(PDS + GET_RECORD).respond(200, json=answer)
        create = router.post(PDS + CREATE_RECORD).respond(200, json=built(CREATE_RECORD, False))
        pub.publish(item(ActionKind.REPOST, native), None)
    sent = httpx.Response(200, content=create.calls.last.request.content).json()
    if full:
        assert sent["collection"] == "app.bsky.feed.repost"
        assert sent["record"]["subject"] == {"uri": OFFICIAL_POST, "cid": answer["cid"]}
        assert problems(sent["record"], record("app.bsky.feed.repost"),
                        "app.bsky.feed.repost") == []
    else:
        assert sent["collection"] == "app.bsky.feed.post"
        assert [e for e in logs if e["event"] == "publisher.fallback"]
        assert problems(sent["record"], record("app.bsky.feed.post"), "app.bsky.feed.post") == []


@MODES
def test_get_record_of_our_repost(pub: BlueskyPublisher, full: bool) -> None:
    """lexicons/com/atproto/repo/getRecord.json with a repost ``value``
    (lexicons/app/bsky/feed/repost.json): ``value.subject.uri`` gives the web address."""
    native = NativeRef(Platform.BLUESKY, uri=OFFICIAL_POST, cid="bafyreiofficial")
    uri = f"at://{ME}/app.bsky.feed.repost/{record_key(item(ActionKind.REPOST, native))}"
    answer = built(GET_RECORD, full, {"uri": uri, "value": repost_record(OFFICIAL_POST, full)})
    with respx.mock() as router:
        router.post(PDS + CREATE_SESSION).respond(200, json=session(False))
        router.get(PDS + GET_RECORD).respond(200, json=answer)
        found = pub.find_existing(item(ActionKind.REPOST, native), None)
    assert found is not None and found.post_id == uri and found.url == web_url(OFFICIAL_POST)


@MODES
def test_list_records(pub: BlueskyPublisher, full: bool) -> None:
    """lexicons/com/atproto/repo/listRecords.json: a repost replaced by a later repost of the
    same subject is found by ``records[].value.subject.uri``; ``records[].uri`` is its id."""
    native = NativeRef(Platform.BLUESKY, uri=OFFICIAL_POST, cid="bafyreiofficial")
    theirs = f"at://{ME}/app.bsky.feed.repost/3l3qo2vutsw2c"
    other = example(output(LIST_RECORDS), LIST_RECORDS, full=full)["records"][0]
    answer = built(LIST_RECORDS, full, {"records": [
        merged(other, {"value": repost_record("at://did:plc:other/app.bsky.feed.post/3k")}),
        merged(other, {"uri": theirs, "value": repost_record(OFFICIAL_POST, full)}),
    ]})
    with respx.mock() as router:
        router.post(PDS + CREATE_SESSION).respond(200, json=session(False))
        router.get(PDS + GET_RECORD).mock(side_effect=lambda r: not_found())
        listed = router.get(PDS + LIST_RECORDS).respond(200, json=answer)
        found = pub.find_existing(item(ActionKind.REPOST, native), None)
    assert found is not None and found.post_id == theirs
    params = listed.calls.last.request.url.params
    assert params["repo"] == ME and params["collection"] == "app.bsky.feed.repost"
    assert 1 <= int(params["limit"]) <= 100  # the lexicon's bounds


async def _poll(body: dict[str, Any]) -> Any:
    config = SourceConfig(id="essex-police-bsky", agency="Essex Police", kind=SourceKind.BLUESKY,
                          account="https://bsky.app/profile/essexpolice.bsky.social")

    async def resolve(host: str, port: int) -> list[str]:
        return ["93.184.216.34"]

    client = make_async_client(timeout=5.0, wire=False)
    try:
        with respx.mock() as router:
            route = router.get("https://public.api.bsky.app/xrpc/" + GET_AUTHOR_FEED).respond(
                200, json=body)
            src = BlueskySource(config, HttpFetcher(client, FetchLimits(), resolver=resolve))
            result = await src.poll(SourceState(source_id=config.id), NOW)
    finally:
        await client.aclose()
    return result, route.calls.last.request


@pytest.mark.anyio
@MODES
async def test_get_author_feed(full: bool) -> None:
    """lexicons/app/bsky/feed/getAuthorFeed.json (feedViewPost, postView in defs.json; the
    record in post.json): the source reads ``post.uri``, ``cid``, ``author.did``/``handle``,
    ``record.text``/``createdAt``/``reply``, ``indexedAt`` and ``reason``."""
    author = {"did": OFFICIAL, "handle": "essexpolice.bsky.social"}
    base = example(output(GET_AUTHOR_FEED), GET_AUTHOR_FEED, full=full)["feed"][0]
    text = {"text": "The A12 is closed northbound.", "createdAt": "2026-12-01T09:10:00.000Z"}
    plain = merged(base, {"reason": None, "reply": None, "post": {
        "uri": OFFICIAL_POST, "cid": "bafyreiplain0", "author": author,
        "record": merged(post_record(full), {"reply": None, **text})}})
    reposted = merged(base, {"reason": {"$type": "app.bsky.feed.defs#reasonRepost",
                                        "by": author, "indexedAt": "2026-12-01T09:20:00Z"},
                             "post": {"author": {"handle": "other.bsky.social"}}})
    reply = merged(plain, {"post": {"uri": OFFICIAL_POST[:-1] + "c", "record": {"reply": {
        "root": {"uri": OFFICIAL_POST, "cid": "bafyreiplain0"},
        "parent": {"uri": "at://did:plc:other/app.bsky.feed.post/3k", "cid": "bafyreiother"},
    }}}})
    body = built(GET_AUTHOR_FEED, full, {"feed": [reposted, plain, reply]})
    result, request = await _poll(body)
    assert request.url.params["actor"] == "essexpolice.bsky.social"
    assert 1 <= int(request.url.params["limit"]) <= 100
    [update] = result.updates  # the repost (reason) and the reply to someone else are left out
    assert update.external_id == OFFICIAL_POST
    assert update.native is not None and update.native.cid == "bafyreiplain0"
    assert update.text == text["text"]
    assert update.published_at == datetime(2026, 12, 1, 9, 10, tzinfo=UTC)
    assert result.extra["bluesky_did"] == OFFICIAL


# -- the simulator answers in the lexicons' shapes ---------------------------------------------


@pytest.fixture(scope="module")
def sim() -> Iterator[RunningSimulator]:
    world = World(FixedClock(NOW))
    world.add_item("essexpolice.bsky.social", "bluesky", NOW - timedelta(minutes=5),
                   {"rkey": "3l3qo2vutsw2b", "text": "The A12 is closed"})
    world.add_item("essexpolice.bsky.social", "bluesky", NOW - timedelta(minutes=4),
                   {"rkey": "3l3qo2vutsw2c", "text": "Diversion via the B1137"})
    with serve(world) as running:
        yield running


@pytest.fixture(scope="module")
def sim_calls(sim: RunningSimulator) -> dict[str, list[dict[str, Any]]]:
    """One session's worth of calls to the simulator, by NSID, as our adapters make them."""
    answers: dict[str, list[dict[str, Any]]] = {}
    x = sim.url_for("bluesky") + "/xrpc/"

    def keep(nsid: str, response: httpx.Response) -> dict[str, Any]:
        assert response.status_code == 200, (nsid, response.text)
        body: dict[str, Any] = response.json()
        answers.setdefault(nsid, []).append(body)
        return body

    with httpx.Client(timeout=5.0) as c:
        login = keep(CREATE_SESSION, c.post(x + CREATE_SESSION, json={
            "identifier": "nhscomms.bsky.social", "password": "app-pass"}))
        refreshed = keep(REFRESH_SESSION, c.post(x + REFRESH_SESSION, headers={
            "Authorization": f"Bearer {login['refreshJwt']}"}))
        auth = {"Authorization": f"Bearer {refreshed['accessJwt']}"}
        feed = keep(GET_AUTHOR_FEED, c.get(x + GET_AUTHOR_FEED, params={
            "actor": "essexpolice.bsky.social", "filter": "posts_no_replies", "limit": "50"}))
        subject = {"uri": feed["feed"][0]["post"]["uri"], "cid": feed["feed"][0]["post"]["cid"]}
        post = {"$type": "app.bsky.feed.post", "text": "Road closed", "langs": ["en"],
                "createdAt": "2026-12-01T10:00:00.000000Z"}
        repost = {"$type": "app.bsky.feed.repost", "subject": subject,
                  "createdAt": "2026-12-01T10:00:00.000000Z"}
        for collection, rkey, value in [("app.bsky.feed.post", "3l3qo2vuzzz2b", post),
                                        ("app.bsky.feed.repost", "3l3qo2vuzzz2c", repost)]:
            keep(CREATE_RECORD, c.post(x + CREATE_RECORD, headers=auth, json={
                "repo": login["did"], "collection": collection, "rkey": rkey,
                "record": value}))
            keep(GET_RECORD, c.get(x + GET_RECORD, params={
                "repo": login["did"], "collection": collection, "rkey": rkey}))
            keep(LIST_RECORDS, c.get(x + LIST_RECORDS, params={
                "repo": login["did"], "collection": collection, "limit": "100"}))
        keep(GET_RECORD, c.get(x + GET_RECORD, params={
            "repo": did_for("essexpolice.bsky.social"), "collection": "app.bsky.feed.post",
            "rkey": "3l3qo2vutsw2b"}))
        keep(GET_AUTHOR_FEED, c.get(x + GET_AUTHOR_FEED, params={"actor": login["handle"]}))
    return answers


@pytest.mark.parametrize("nsid", [CREATE_SESSION, REFRESH_SESSION, CREATE_RECORD, GET_RECORD,
                                  LIST_RECORDS, GET_AUTHOR_FEED])
def test_simulator_answers_satisfy_the_lexicon(
    sim_calls: dict[str, list[dict[str, Any]]], nsid: str
) -> None:
    """The simulator's answer to each call our adapters make satisfies the call's output
    schema in shared/recorded/bluesky/lexicons/ (records inside checked against post.json and
    repost.json)."""
    answers = sim_calls[nsid]
    assert answers
    for body in answers:
        assert problems(body, output(nsid), nsid) == []


def test_simulator_errors_are_xrpc_errors(sim: RunningSimulator) -> None:
    """XRPC errors are ``{"error": name, "message": text}``: getRecord's named error is
    ``RecordNotFound`` (getRecord.json ``errors``); a repeated record key is the PDS's bare
    500 with no name of its own."""
    x = sim.url_for("bluesky") + "/xrpc/"
    with httpx.Client(timeout=5.0) as c:
        login = c.post(x + CREATE_SESSION, json={"identifier": "nhscomms.bsky.social",
                                                 "password": "app-pass"}).json()
        missing = c.get(x + GET_RECORD, params={"repo": login["did"], "rkey": "3l3qo2vuaaa2b",
                                                "collection": "app.bsky.feed.post"})
        body = {"repo": login["did"], "collection": "app.bsky.feed.post", "rkey": "3l3qo2vuaaa2c",
                "record": {"$type": "app.bsky.feed.post", "text": "x",
                           "createdAt": "2026-12-01T10:00:00Z"}}
        auth = {"Authorization": f"Bearer {login['accessJwt']}"}
        assert c.post(x + CREATE_RECORD, json=body, headers=auth).status_code == 200
        repeated = c.post(x + CREATE_RECORD, json=body, headers=auth)
    assert missing.status_code == 400
    assert missing.json()["error"] in {e["name"] for e in
                                       _lexicon_errors(GET_RECORD)}
    assert repeated.status_code == 500
    assert set(repeated.json()) == {"error", "message"}
    assert repeated.json()["error"] not in {e["name"] for e in _lexicon_errors(CREATE_RECORD)}


def _lexicon_errors(nsid: str) -> list[dict[str, str]]:
    from .cassettes import lexicon

    errors: list[dict[str, str]] = lexicon(nsid)["defs"]["main"].get("errors", [])
    return errors
