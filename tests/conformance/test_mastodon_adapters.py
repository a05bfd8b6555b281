"""Our Mastodon adapters fed the real responses recorded by Mastodon.py's test suite.

One test per recorded call that the source or the publisher makes (named in the test by
``Interaction.name``): the recorded body and headers are served (respx) at the recorded
address, and the adapter must read every field it relies on from them, rate-limit headers
included. ``GET /api/v1/accounts/:id/statuses`` is not recorded: the source is fed the
recorded Status entity (of ``GET /api/v1/statuses/:id``) as that list's one item. The relay
never unboosts, deletes or asks who boosted, so ``unreblog``, ``DELETE`` and
``reblogged_by`` have no test here.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from datetime import UTC, datetime

import httpx
import pytest
import respx
from pydantic import SecretStr

from crisiscomms.adapters.publishers.mastodon import MastodonPublisher
from crisiscomms.adapters.sources.http import FetchLimits, HttpFetcher, make_async_client
from crisiscomms.adapters.sources.mastodon import ACCOUNT_ID_KEY, MastodonSource
from crisiscomms.domain.clock import FixedClock, parse_instant
from crisiscomms.domain.config import SourceConfig
from crisiscomms.domain.errors import PermanentSourceError, RateLimitedError
from crisiscomms.domain.models import (
    ActionKind,
    ItemState,
    NativeRef,
    OutboxItem,
    Platform,
    PollResult,
    SourceKind,
    SourceState,
)
from tests.sources.sources_helpers import FakeResolver

from .cassettes import Interaction, interaction

LOOKUP = "mastodon/test_account_lookup.yaml"
STATUS = "mastodon/test_status.yaml"
POST = "mastodon/test_status_postNone-public.yaml"
REBLOG = "mastodon/test_status_reblog_unreblog.yaml"
INSTANCE = "http://localhost:3000"  # where Mastodon.py's suite recorded
# The recordings were made on 2026-08-01 around 13:53 UTC.
RECORDED_AT = datetime(2026, 8, 1, 13, 53, 56, tzinfo=UTC)


def served(rec: Interaction, **header_changes: str) -> httpx.Response:
    """The recorded response (decompressed body, recorded headers) for respx."""
    headers = {k: v for k, v in rec.headers.items()
               if k not in ("content-encoding", "content-length", "transfer-encoding")}
    headers.update(header_changes)
    return httpx.Response(rec.status, content=rec.body, headers=headers)


# ------------------------------------------------------------------------------ the source


def _poll(account: str, router: respx.MockRouter, state: SourceState | None = None
          ) -> PollResult:
    async def run() -> PollResult:
        async with make_async_client(timeout=5, wire=False) as client:
            fetcher = HttpFetcher(client, FetchLimits(), resolver=FakeResolver())
            config = SourceConfig(id="recorded-mastodon", agency="Recorded",
                                  kind=SourceKind.MASTODON, account=account)
            src = MastodonSource(config, fetcher)
            return await src.poll(state or SourceState(source_id=src.key), RECORDED_AT)

    return asyncio.run(run())


def test_source_account_lookup_reads_the_recorded_account_id() -> None:
    rec = interaction(LOOKUP, "GET", "/api/v1/accounts/lookup", index=1)
    assert rec.query["acct"] == ["mastodonpy_test"], rec.name
    status = interaction(STATUS, "GET", "/api/v1/statuses/")
    account_id = rec.json()["id"]
    with respx.mock(assert_all_mocked=True) as router:
        lookup = router.get(f"{INSTANCE}/api/v1/accounts/lookup").mock(return_value=served(rec))
        page = router.get(f"{INSTANCE}/api/v1/accounts/{account_id}/statuses").mock(
            return_value=httpx.Response(200, json=[status.json()],
                                        headers=dict(status.headers)))
        result = _poll(f"{INSTANCE}/@mastodonpy_test", router)
    assert lookup.calls[0].request.url.params["acct"] == "mastodonpy_test", rec.name
    assert page.call_count == 1, f"{rec.name}: the recorded id was not used"
    assert result.extra[ACCOUNT_ID_KEY] == account_id, rec.name


def test_source_account_lookup_of_an_unknown_account_is_a_clear_404() -> None:
    rec = interaction(LOOKUP, "GET", "/api/v1/accounts/lookup", index=0)
    assert rec.status == 404 and rec.json() == {"error": "Record not found"}, rec.name
    with respx.mock(assert_all_mocked=True) as router:
        router.get(f"{INSTANCE}/api/v1/accounts/lookup").mock(return_value=served(rec))
        with pytest.raises(PermanentSourceError) as info:
            _poll(f"{INSTANCE}/@{rec.query['acct'][0]}", router)
    assert info.value.error_class == "http_404", rec.name
    assert "localhost/api/v1/accounts/lookup" in str(info.value)


def test_source_reads_every_field_it_uses_from_the_recorded_status() -> None:
    rec = interaction(STATUS, "GET", "/api/v1/statuses/")
    status = rec.json()
    account_id = status["account"]["id"]
    state = SourceState(source_id="recorded-mastodon", cursor="117020583223442400",
                        extra={ACCOUNT_ID_KEY: account_id,
                               "mastodon_account": f"{INSTANCE}/@mastodonpy_test"})
    url = f"{INSTANCE}/api/v1/accounts/{account_id}/statuses"
    with respx.mock(assert_all_mocked=True) as router:
        router.get(url).mock(return_value=httpx.Response(
            200, json=[status], headers=dict(rec.headers)))
        result = _poll(f"{INSTANCE}/@mastodonpy_test", router, state)
    (update,) = result.updates
    assert update.external_id == status["id"], rec.name
    assert update.url == status["url"] and update.native is not None, rec.name
    assert update.native.uri == status["uri"] and update.native.id == status["id"], rec.name
    assert update.text == "Toot!", rec.name  # from the HTML content
    assert update.published_at == parse_instant(status["created_at"]), rec.name
    assert result.cursor == status["id"], rec.name
    # The recorded budget headers: 299 left, so no pause.
    assert rec.headers["x-ratelimit-remaining"] == "299" and result.rate_limited_until is None

    with respx.mock(assert_all_mocked=True) as router:
        router.get(url).mock(return_value=httpx.Response(
            200, json=[], headers={**rec.headers, "x-ratelimit-remaining": "0"}))
        spent = _poll(f"{INSTANCE}/@mastodonpy_test", router, state)
    # The recorded ISO reset (2026-08-01T13:55:00.479778Z), to the microsecond.
    assert spent.rate_limited_until == parse_instant(rec.headers["x-ratelimit-reset"])
    assert spent.rate_limited_until == datetime(2026, 8, 1, 13, 55, 0, 479778, tzinfo=UTC)


# --------------------------------------------------------------------------- the publisher


@pytest.fixture
def router() -> Iterator[respx.MockRouter]:
    with respx.mock(assert_all_mocked=True, assert_all_called=False) as r:
        yield r


@pytest.fixture
def publisher() -> Iterator[MastodonPublisher]:
    with httpx.Client(timeout=5) as client:
        yield MastodonPublisher(
            "nhs-mastodon", base_url=INSTANCE, client=client, clock=FixedClock(RECORDED_AT),
            credentials={"access_token": SecretStr("__MASTODON_PY_TEST_ACCESS_TOKEN")},
        )


def _item(action: ActionKind = ActionKind.POST, native: NativeRef | None = None,
          body: str = "Toot!") -> OutboxItem:
    return OutboxItem(id=1, dedupe_key=f"recorded:{action}", channel_id="nhs-mastodon",
                      action=action, text=body, state=ItemState.SENDING,
                      created_at=RECORDED_AT, native=native)


def test_publisher_post_reads_the_recorded_status_and_its_budget(
    router: respx.MockRouter, publisher: MastodonPublisher
) -> None:
    rec = interaction(POST, "POST", "/api/v1/statuses")
    assert "visibility=public" in (rec.request_body or ""), rec.name  # what we send too
    route = router.post(f"{INSTANCE}/api/v1/statuses").mock(return_value=served(rec))
    result = publisher.publish(_item(), None)
    assert result.post_id == rec.json()["id"], rec.name
    assert result.url == rec.json()["url"], rec.name
    sent = json.loads(route.calls[0].request.content)
    assert sent == {"status": "Toot!", "visibility": "public"}
    # Past the shared posting/boosting budget the same headers come with a 429: the channel
    # waits for the recorded ISO reset (about an hour after the post), not a default.
    router.post(f"{INSTANCE}/api/v1/statuses").mock(return_value=httpx.Response(
        429, json={"error": "Too many requests"},
        headers={**rec.headers, "x-ratelimit-remaining": "0"}))
    with pytest.raises(RateLimitedError) as info:
        publisher.publish(_item(body="Toot again"), None)
    assert info.value.reset_at == parse_instant(rec.headers["x-ratelimit-reset"]), rec.name
    assert info.value.reset_at == datetime(2026, 8, 1, 15, 0, 0, 627625, tzinfo=UTC)


def test_publisher_boost_reads_the_recorded_reblog(
    router: respx.MockRouter, publisher: MastodonPublisher
) -> None:
    rec = interaction(REBLOG, "POST", "/reblog")
    boost = rec.json()
    original = boost["reblog"]
    route = router.post(f"{INSTANCE}/api/v1/statuses/{original['id']}/reblog").mock(
        return_value=served(rec))
    native = NativeRef(Platform.MASTODON, id=original["id"], url=original["url"])
    result = publisher.publish(_item(ActionKind.BOOST, native), None)
    assert route.call_count == 1, rec.name  # a status of our instance: boosted by its id
    assert result.post_id == boost["id"], rec.name  # the boost's own id
    assert result.url == original["url"], rec.name  # the original's address


def test_publisher_status_lookup_reads_the_recorded_reblogged_flag(
    router: respx.MockRouter, publisher: MastodonPublisher
) -> None:
    rec = interaction(STATUS, "GET", "/api/v1/statuses/")
    status = rec.json()
    assert status["reblogged"] is False, rec.name
    route = router.get(f"{INSTANCE}/api/v1/statuses/{status['id']}").mock(
        return_value=served(rec))
    native = NativeRef(Platform.MASTODON, id=status["id"], url=status["url"])
    assert publisher.find_existing(_item(ActionKind.BOOST, native), None) is None, rec.name
    assert route.call_count == 1
    flipped = json.loads(rec.body)
    flipped["reblogged"] = True  # the same entity as seen after our boost
    route.mock(return_value=httpx.Response(200, json=flipped, headers=dict(rec.headers)))
    router.get(f"{INSTANCE}/api/v1/accounts/verify_credentials").mock(
        return_value=served(interaction(LOOKUP, "GET", "/verify_credentials")))
    router.get(url__regex=rf"{INSTANCE}/api/v1/accounts/\d+/statuses").mock(
        return_value=httpx.Response(200, json=[]))
    found = publisher.find_existing(_item(ActionKind.BOOST, native), None)
    assert found is not None and found.url == status["url"], rec.name


def test_publisher_verify_credentials_reads_the_recorded_account_id(
    router: respx.MockRouter, publisher: MastodonPublisher
) -> None:
    rec = interaction(LOOKUP, "GET", "/api/v1/accounts/verify_credentials")
    account_id = rec.json()["id"]
    ours = interaction(POST, "POST", "/api/v1/statuses").json()
    router.get(f"{INSTANCE}/api/v1/accounts/verify_credentials").mock(
        return_value=served(rec))
    mine = router.get(f"{INSTANCE}/api/v1/accounts/{account_id}/statuses").mock(
        return_value=httpx.Response(200, json=[ours]))
    found = publisher.find_existing(_item(body="Toot!"), None)
    assert mine.call_count == 1, f"{rec.name}: the recorded account id was not used"
    assert found is not None and found.post_id == ours["id"], rec.name
