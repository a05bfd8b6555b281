"""EA flood warnings, Mastodon and Bluesky adapters (JSON over httpx)."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import httpx
import pytest
import respx

from crisiscomms.adapters.sources.bluesky import DID_KEY, BlueskySource, parse_actor
from crisiscomms.adapters.sources.ea_floods import EaFloodsSource, ea_time_to_utc
from crisiscomms.adapters.sources.http import HttpFetcher
from crisiscomms.adapters.sources.mastodon import ACCOUNT_ID_KEY, MastodonSource, parse_account_url
from crisiscomms.domain.errors import ConfigError, PermanentSourceError
from crisiscomms.domain.models import Platform, SourceKind

from .sources_helpers import NOW, fixture_bytes, make_config, state_for

pytestmark = pytest.mark.anyio
EA_URL = "https://environment.data.gov.uk/flood-monitoring/id/floods"
M_LOOKUP = "https://mastodon.example/api/v1/accounts/lookup"
M_STATUSES = "https://mastodon.example/api/v1/accounts/109876543210/statuses"
BSKY = "https://public.api.bsky.app/xrpc/app.bsky.feed.getAuthorFeed"


# ------------------------------------------------------------------ Environment Agency


async def test_ea_query_in_url_is_kept(fetcher: HttpFetcher, mock: respx.MockRouter) -> None:
    route = mock.get(EA_URL).mock(return_value=httpx.Response(200, json={"items": []}))
    config = make_config(SourceKind.EA_FLOODS, url=EA_URL + "?min-severity=3")
    result = await EaFloodsSource(config, fetcher).poll(state_for(config.id), NOW)
    assert result.updates == ()
    params = route.calls[0].request.url.params
    assert (params["min-severity"], params["county"]) == ("3", "Essex")


async def test_ea_floods_fixture(fetcher: HttpFetcher, mock: respx.MockRouter) -> None:
    route = mock.get(EA_URL).mock(
        return_value=httpx.Response(200, content=fixture_bytes("ea_floods_essex.json"),
                                    headers={"Content-Type": "application/json"}))
    src = EaFloodsSource(make_config(SourceKind.EA_FLOODS), fetcher)
    result = await src.poll(state_for(src.key), NOW)
    assert route.calls[0].request.url.params["county"] == "Essex"
    by_id = {u.external_id: u for u in result.updates}
    assert set(by_id) == {
        "062FWF46Chelmsfd:2:2026-02-10T10:32:00", "062WAF28Colne:3:2026-07-01T10:00:00",
        "062FWT23Canvey:1:2026-10-25T01:30:00", "062FWF11Maldon:4:2026-02-10T08:00:00",
    }
    warning = by_id["062FWF46Chelmsfd:2:2026-02-10T10:32:00"]
    assert warning.title == "Flood warning: River Chelmer at Chelmsford"
    assert warning.published_at == datetime(2026, 2, 10, 10, 32, tzinfo=UTC)  # GMT
    assert warning.cap is not None and warning.cap.severity == "Severe"
    assert warning.kind is SourceKind.EA_FLOODS and "Act now." in warning.text
    alert = by_id["062WAF28Colne:3:2026-07-01T10:00:00"]
    assert alert.published_at == datetime(2026, 7, 1, 10, 0, tzinfo=UTC)  # UTC, also in summer
    assert alert.cap is not None and alert.cap.severity == "Moderate"
    assert alert.text == alert.title  # empty message falls back to the title
    severe = by_id["062FWT23Canvey:1:2026-10-25T01:30:00"]
    assert severe.cap is not None and severe.cap.severity == "Extreme"
    assert severe.cap.urgency == "Immediate"
    # UTC has no clock change: the autumn change day's 01:30 is one instant
    assert severe.published_at == datetime(2026, 10, 25, 1, 30, tzinfo=UTC)
    ended = by_id["062FWF11Maldon:4:2026-02-10T08:00:00"]
    assert ended.cap is not None and (ended.cap.msg_type, ended.cap.severity) == ("Cancel", "Minor")


def test_ea_time_conversion() -> None:
    # the UK spring-forward gap is an ordinary UTC time
    assert ea_time_to_utc("2026-03-29T01:30:00") == datetime(2026, 3, 29, 1, 30, tzinfo=UTC)
    assert ea_time_to_utc("2026-06-01T12:00:00Z") == datetime(2026, 6, 1, 12, tzinfo=UTC)
    assert ea_time_to_utc("2026-06-01T12:00:00+02:00") == datetime(2026, 6, 1, 10, tzinfo=UTC)
    for bad in ("", "garbage", None, 5, "2026-02-30T10:00:00"):
        assert ea_time_to_utc(bad) is None


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        # EA flood-monitoring API documentation: "all times given by the API are in GMT (also
        # known as UTC)". A summer time is not shifted by British Summer Time.
        ("2026-07-15T10:00:00", datetime(2026, 7, 15, 10, 0, tzinfo=UTC)),
        ("2026-01-15T10:00:00", datetime(2026, 1, 15, 10, 0, tzinfo=UTC)),
    ],
)
async def test_ea_times_without_offset_are_utc_in_summer_and_winter(
    fetcher: HttpFetcher, mock: respx.MockRouter, raw: str, expected: datetime
) -> None:
    item = {"floodAreaID": "062FWF46Chelmsfd", "severityLevel": 2, "severity": "Flood warning",
            "description": "River Chelmer at Chelmsford", "message": "Act now.",
            "timeRaised": raw, "timeMessageChanged": raw, "timeSeverityChanged": raw}
    mock.get(EA_URL).mock(return_value=httpx.Response(200, json={"items": [item]}))
    src = EaFloodsSource(make_config(SourceKind.EA_FLOODS), fetcher)
    (update,) = (await src.poll(state_for(src.key), NOW)).updates
    assert update.published_at == expected
    assert update.cap is not None and update.cap.sent == expected
    assert update.external_id == f"062FWF46Chelmsfd:2:{raw}"  # the id keeps the raw text


async def test_ea_permanent_redirect_is_recorded_in_the_source_state(
    fetcher: HttpFetcher, mock: respx.MockRouter
) -> None:
    from crisiscomms.adapters.sources.http import MOVED_TO

    moved = "https://environment.data.gov.uk/flood-monitoring/v2/id/floods"
    mock.get(EA_URL).mock(return_value=httpx.Response(
        308, headers={"Location": moved + "?county=Essex"}))
    mock.get(moved).mock(return_value=httpx.Response(200, json={"items": []}))
    src = EaFloodsSource(make_config(SourceKind.EA_FLOODS), fetcher)
    result = await src.poll(state_for(src.key), NOW)
    assert result.extra[MOVED_TO] == moved
    # Once the old URL answers again, the stale value is overwritten (the watcher merges).
    mock.get(EA_URL).mock(return_value=httpx.Response(200, json={"items": []}))
    again = await src.poll(state_for(src.key, extra=result.extra), NOW)
    assert again.extra[MOVED_TO] is None


@pytest.mark.parametrize(
    ("body", "error_class"),
    [
        (b'<?xml version="1.0"?><rss version="2.0"/>', "not_json"),
        (b"<html><body>maintenance</body></html>", "not_json"),
        (b"", "empty"),
        (b'{"items": {"not": "a list"}}', "parse"),
        (b'{"items": [', "parse"),
        (b'{"items": ["\xff"]}', "parse"),
        (b"[" * 100_000 + b"]" * 100_000, "parse"),
    ],
)
async def test_ea_wrong_content(
    fetcher: HttpFetcher, mock: respx.MockRouter, body: bytes, error_class: str
) -> None:
    mock.get(EA_URL).mock(return_value=httpx.Response(200, content=body))
    src = EaFloodsSource(make_config(SourceKind.EA_FLOODS), fetcher)
    with pytest.raises(PermanentSourceError) as info:
        await src.poll(state_for(src.key), NOW)
    assert info.value.error_class == error_class


# ---------------------------------------------------------------------------- Mastodon


async def test_mastodon_lookup_then_statuses(fetcher: HttpFetcher, mock: respx.MockRouter) -> None:
    lookup = mock.get(M_LOOKUP).mock(
        return_value=httpx.Response(200, content=fixture_bytes("mastodon_account.json")))
    statuses = mock.get(M_STATUSES).mock(
        return_value=httpx.Response(200, content=fixture_bytes("mastodon_statuses.json")))
    src = MastodonSource(make_config(SourceKind.MASTODON), fetcher)
    result = await src.poll(state_for(src.key), NOW)
    assert lookup.calls[0].request.url.params["acct"] == "EssexFire"
    params = statuses.calls[0].request.url.params
    assert params["exclude_replies"] == "true" and params["exclude_reblogs"] == "true"
    assert "since_id" not in params and "min_id" not in params
    (update,) = result.updates  # reply, boost, other account and direct post dropped
    assert update.external_id == "111000000000000003"
    assert update.text.startswith("Crews are at a barn fire near Braintree. Please avoid")
    assert "&amp;" not in update.text and "<" not in update.text
    assert update.native is not None and update.native.platform is Platform.MASTODON
    assert update.native.url == "https://mastodon.example/@EssexFire/111000000000000003"
    assert update.published_at == datetime(2026, 2, 10, 14, 0, tzinfo=UTC)
    assert result.cursor == "111000000000000003"
    assert result.extra[ACCOUNT_ID_KEY] == "109876543210"

    mock.get(M_STATUSES).mock(return_value=httpx.Response(
        200, json=[], headers={"X-RateLimit-Remaining": "0",
                               "X-RateLimit-Reset": "2026-02-10T15:05:00.000Z"}))
    again = await src.poll(state_for(src.key, cursor=result.cursor, extra=result.extra), NOW)
    assert again.updates == () and again.cursor == "111000000000000003"
    assert again.rate_limited_until == datetime(2026, 2, 10, 15, 5, tzinfo=UTC)
    assert lookup.call_count == 1  # the account id was remembered
    assert mock.routes[-1].calls[-1].request.url.params["min_id"] == "111000000000000003"


async def test_mastodon_stale_account_id_is_looked_up_again(
    fetcher: HttpFetcher, mock: respx.MockRouter
) -> None:
    mock.get("https://mastodon.example/api/v1/accounts/1/statuses").mock(
        return_value=httpx.Response(404))
    mock.get(M_LOOKUP).mock(
        return_value=httpx.Response(200, content=fixture_bytes("mastodon_account.json")))
    mock.get(M_STATUSES).mock(return_value=httpx.Response(200, json=[]))
    src = MastodonSource(make_config(SourceKind.MASTODON), fetcher)
    extra = {ACCOUNT_ID_KEY: "1", "mastodon_account": src.account_url}
    result = await src.poll(state_for(src.key, extra=extra), NOW)
    assert result.extra[ACCOUNT_ID_KEY] == "109876543210"


async def test_mastodon_errors(fetcher: HttpFetcher, mock: respx.MockRouter) -> None:
    mock.get(M_LOOKUP).mock(return_value=httpx.Response(200, json={"error": "x"}))
    src = MastodonSource(make_config(SourceKind.MASTODON), fetcher)
    with pytest.raises(PermanentSourceError) as info:
        await src.poll(state_for(src.key), NOW)
    assert info.value.error_class == "parse"
    mock.get(M_LOOKUP).mock(
        return_value=httpx.Response(200, content=fixture_bytes("mastodon_account.json")))
    mock.get(M_STATUSES).mock(return_value=httpx.Response(200, json={"statuses": []}))
    with pytest.raises(PermanentSourceError):
        await src.poll(state_for(src.key), NOW)


ACCOUNT_ID = "109876543210"


def _status(status_id: int, **kw: object) -> dict[str, object]:
    return {"id": str(status_id), "created_at": "2026-02-10T14:00:00.000Z",
            "in_reply_to_id": None, "in_reply_to_account_id": None, "visibility": "public",
            "spoiler_text": "", "content": f"<p>Update {status_id}</p>", "reblog": None,
            "url": f"https://mastodon.example/@EssexFire/{status_id}",
            "account": {"id": ACCOUNT_ID, "acct": "EssexFire"}, **kw}


class FakeInstance:
    """GET /api/v1/accounts/:id/statuses as Mastodon pages it: newest first, at most ``limit``
    (40 at most); ``since_id`` gives the newest after it, ``min_id`` the ones just after it."""

    def __init__(self, statuses: list[dict[str, object]], *, token: str | None = None) -> None:
        self.statuses = statuses
        self.token = token
        self.requests: list[httpx.Request] = []
        self.headers: dict[str, str] = {}

    def refused(self, request: httpx.Request) -> httpx.Response | None:
        if self.token and request.headers.get("authorization") != f"Bearer {self.token}":
            return httpx.Response(401, json={"error": "This API requires an authenticated user"})
        return None

    def lookup(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        return self.refused(request) or httpx.Response(
            200, content=fixture_bytes("mastodon_account.json"))

    def page(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        if (denied := self.refused(request)) is not None:
            return denied
        q = request.url.params
        limit = min(int(q.get("limit", "20")), 40)
        newest_first = sorted(self.statuses, key=lambda st: int(str(st["id"])), reverse=True)
        if "max_id" in q:
            newest_first = [st for st in newest_first if int(str(st["id"])) < int(q["max_id"])]
        if "min_id" in q:
            after = [st for st in newest_first if int(str(st["id"])) > int(q["min_id"])]
            got = sorted(after, key=lambda st: int(str(st["id"])))[:limit][::-1]
        else:
            if "since_id" in q:
                newest_first = [st for st in newest_first
                                if int(str(st["id"])) > int(q["since_id"])]
            got = newest_first[:limit]
        return httpx.Response(200, json=got, headers=self.headers)


def _instance(mock: respx.MockRouter, statuses: list[dict[str, object]],
              **kw: object) -> FakeInstance:
    fake = FakeInstance(statuses, **kw)  # type: ignore[arg-type]
    mock.get(M_LOOKUP).mock(side_effect=fake.lookup)
    mock.get(M_STATUSES).mock(side_effect=fake.page)
    return fake


def _known(src: MastodonSource, **kw: object) -> object:
    extra = {ACCOUNT_ID_KEY: ACCOUNT_ID, "mastodon_account": src.account_url}
    return state_for(src.key, extra=extra, **kw)


async def test_mastodon_more_than_a_page_of_new_statuses_leaves_no_gap(
    fetcher: HttpFetcher, mock: respx.MockRouter
) -> None:
    fake = _instance(mock, [_status(i) for i in range(1000, 1051)])  # 50 new after 1000
    src = MastodonSource(make_config(SourceKind.MASTODON), fetcher)
    result = await src.poll(_known(src, cursor="1000"), NOW)  # type: ignore[arg-type]
    got = sorted(int(u.external_id) for u in result.updates)
    assert got == list(range(1001, 1051))
    assert result.cursor == "1050"
    sent = [r.url.params for r in fake.requests]
    assert all("since_id" not in p for p in sent)
    assert [p["min_id"] for p in sent] == ["1000", "1040"]  # paged forward, then a short page


async def test_mastodon_first_poll_reads_only_the_newest_page(
    fetcher: HttpFetcher, mock: respx.MockRouter
) -> None:
    fake = _instance(mock, [_status(i) for i in range(1000, 1100)])
    src = MastodonSource(make_config(SourceKind.MASTODON), fetcher)
    result = await src.poll(_known(src), NOW)  # type: ignore[arg-type]
    assert len(result.updates) == 40 and result.cursor == "1099"
    (only,) = fake.requests
    assert "min_id" not in only.url.params and "since_id" not in only.url.params


async def test_mastodon_cursor_passes_statuses_that_are_dropped(
    fetcher: HttpFetcher, mock: respx.MockRouter
) -> None:
    page = [_status(1001 + i, visibility="direct") for i in range(40)] + [_status(1041)]
    _instance(mock, page)
    src = MastodonSource(make_config(SourceKind.MASTODON), fetcher)
    result = await src.poll(_known(src, cursor="1000"), NOW)  # type: ignore[arg-type]
    assert [u.external_id for u in result.updates] == ["1041"]
    assert result.cursor == "1041"


async def test_mastodon_server_that_ignores_min_id_is_not_paged_in_circles(
    fetcher: HttpFetcher, mock: respx.MockRouter
) -> None:
    same = [_status(1001 + i) for i in range(40)]
    route = mock.get(M_STATUSES).mock(return_value=httpx.Response(200, json=same))
    src = MastodonSource(make_config(SourceKind.MASTODON), fetcher)
    result = await src.poll(_known(src, cursor="1000"), NOW)  # type: ignore[arg-type]
    assert route.call_count == 2  # the second page brought nothing new: stop
    assert len({u.external_id for u in result.updates}) == 40 and result.cursor == "1040"


async def test_mastodon_own_thread_is_kept_and_replies_to_others_dropped(
    fetcher: HttpFetcher, mock: respx.MockRouter
) -> None:
    # exclude_replies drops only replies to other accounts: an agency's own "1/3, 2/3"
    # thread comes back and must be relayed.
    _instance(mock, [
        _status(1001, content="<p>1/2 Fire in Braintree</p>"),
        _status(1002, content="<p>2/2 Roads closed</p>", in_reply_to_id="1001",
                in_reply_to_account_id=ACCOUNT_ID),
        _status(1003, content="<p>@someone thanks</p>", in_reply_to_id="77",
                in_reply_to_account_id="666"),
    ])
    src = MastodonSource(make_config(SourceKind.MASTODON), fetcher)
    result = await src.poll(_known(src, cursor="1000"), NOW)  # type: ignore[arg-type]
    assert sorted(u.external_id for u in result.updates) == ["1001", "1002"]
    assert result.cursor == "1003"


async def test_mastodon_paging_stops_when_the_budget_is_spent(
    fetcher: HttpFetcher, mock: respx.MockRouter
) -> None:
    fake = _instance(mock, [_status(i) for i in range(1000, 1101)])
    fake.headers = {"X-RateLimit-Limit": "300", "X-RateLimit-Remaining": "0",
                    "X-RateLimit-Reset": "2026-02-10T15:05:00.123456Z"}
    src = MastodonSource(make_config(SourceKind.MASTODON), fetcher)
    result = await src.poll(_known(src, cursor="1000"), NOW)  # type: ignore[arg-type]
    assert len(fake.requests) == 1 and len(result.updates) == 40
    assert result.cursor == "1040"  # the next poll goes on from here: no gap
    assert result.rate_limited_until == datetime(2026, 2, 10, 15, 5, 0, 123456, tzinfo=UTC)


async def test_mastodon_429_after_the_first_page_keeps_what_was_read(
    fetcher: HttpFetcher, mock: respx.MockRouter
) -> None:
    fake = _instance(mock, [_status(i) for i in range(1000, 1101)])
    pages = iter([None, httpx.Response(429, headers={
        "X-RateLimit-Remaining": "0", "X-RateLimit-Reset": "2026-02-10T15:05:00Z"})])

    def answer(request: httpx.Request) -> httpx.Response:
        refusal = next(pages)
        return refusal or fake.page(request)

    mock.get(M_STATUSES).mock(side_effect=answer)
    src = MastodonSource(make_config(SourceKind.MASTODON), fetcher)
    result = await src.poll(_known(src, cursor="1000"), NOW)  # type: ignore[arg-type]
    assert len(result.updates) == 40 and result.cursor == "1040"
    assert result.rate_limited_until == datetime(2026, 2, 10, 15, 5, tzinfo=UTC)


TOKEN = "masto-source-SECRET-1234"


def test_mastodon_token_option_names_an_env_var() -> None:
    config = make_config(SourceKind.MASTODON, token_env="ESSEX_FIRE_MASTODON_TOKEN")
    assert config.token_env == "ESSEX_FIRE_MASTODON_TOKEN"
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="name of an environment variable"):
        make_config(SourceKind.MASTODON, token_env=TOKEN)  # a secret pasted in: refused
    with pytest.raises(ValidationError, match="only for mastodon"):
        make_config(SourceKind.RSS, token_env="FEED_TOKEN")


async def test_mastodon_instance_that_refuses_unauthenticated_reads_gets_the_token(
    fetcher: HttpFetcher, mock: respx.MockRouter
) -> None:
    from pydantic import SecretStr

    fake = _instance(mock, [_status(1001)], token=TOKEN)
    config = make_config(SourceKind.MASTODON, token_env="ESSEX_FIRE_MASTODON_TOKEN")
    src = MastodonSource(config, fetcher, token=SecretStr(TOKEN))
    result = await src.poll(state_for(src.key), NOW)
    assert [u.external_id for u in result.updates] == ["1001"]
    assert all(r.headers["authorization"] == f"Bearer {TOKEN}" for r in fake.requests)
    assert TOKEN not in repr(src.__dict__)  # kept as a SecretStr


async def test_mastodon_401_says_what_to_configure_and_never_shows_the_token(
    fetcher: HttpFetcher, mock: respx.MockRouter
) -> None:
    from pydantic import SecretStr

    _instance(mock, [_status(1001)], token=TOKEN)
    src = MastodonSource(make_config(SourceKind.MASTODON), fetcher)
    with pytest.raises(PermanentSourceError) as info:
        await src.poll(state_for(src.key), NOW)
    assert info.value.error_class == "http_401"
    assert "token_env" in str(info.value) and "mastodon.example" in str(info.value)
    wrong = make_config(SourceKind.MASTODON, token_env="ESSEX_FIRE_MASTODON_TOKEN")
    src = MastodonSource(wrong, fetcher, token=SecretStr("wrong-token-9876"))
    with pytest.raises(PermanentSourceError) as info:
        await src.poll(state_for(src.key), NOW)
    assert "ESSEX_FIRE_MASTODON_TOKEN" in str(info.value)
    assert "wrong-token-9876" not in str(info.value)


async def test_mastodon_token_env_that_is_not_set_fails_clearly(
    fetcher: HttpFetcher, mock: respx.MockRouter
) -> None:
    route = mock.get(M_LOOKUP).mock(return_value=httpx.Response(200, json={}))
    config = make_config(SourceKind.MASTODON, token_env="ESSEX_FIRE_MASTODON_TOKEN")
    src = MastodonSource(config, fetcher, token=None)
    with pytest.raises(PermanentSourceError) as info:
        await src.poll(state_for(src.key), NOW)
    assert info.value.error_class == "no_credentials"
    assert "ESSEX_FIRE_MASTODON_TOKEN is not set" in str(info.value)
    assert route.call_count == 0


async def test_build_sources_reads_the_token_like_channel_credentials(
    client: httpx.AsyncClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    from pydantic import SecretStr

    from crisiscomms.adapters.sources import build_sources
    from crisiscomms.logs import redact_text

    monkeypatch.setenv("ESSEX_FIRE_MASTODON_TOKEN", TOKEN)
    config = make_config(SourceKind.MASTODON, token_env="ESSEX_FIRE_MASTODON_TOKEN")
    (src,) = build_sources([config], client=client)
    assert isinstance(src, MastodonSource) and src.token is not None
    assert src.token.get_secret_value() == TOKEN
    assert TOKEN not in redact_text(f"polling with {TOKEN}")  # registered with the logs

    class Given:  # a drill's own credentials (ports.Credentials)
        def get(self, env_name: str) -> SecretStr | None:
            return SecretStr("drill-token-5555") if env_name == config.token_env else None

    (src,) = build_sources([config], client=client, credentials=Given())
    assert isinstance(src, MastodonSource) and src.token is not None
    assert src.token.get_secret_value() == "drill-token-5555"


def test_mastodon_account_locators() -> None:
    assert parse_account_url("https://m.example/@Name") == ("https://m.example", "Name")
    assert parse_account_url("@Name@m.example") == ("https://m.example", "Name")
    for bad in ("m.example/@x", "https://m.example/users/x", "ftp://m.example/@x"):
        with pytest.raises(ConfigError):
            parse_account_url(bad)


# ----------------------------------------------------------------------------- Bluesky


async def test_bluesky_author_feed(fetcher: HttpFetcher, mock: respx.MockRouter) -> None:
    route = mock.get(BSKY).mock(
        return_value=httpx.Response(200, content=fixture_bytes("bluesky_feed.json")))
    src = BlueskySource(make_config(SourceKind.BLUESKY), fetcher)
    result = await src.poll(state_for(src.key), NOW)
    params = route.calls[0].request.url.params
    assert params["actor"] == "essexpolice.bsky.social"
    assert params["filter"] == "posts_and_author_threads"
    newest, older = result.updates  # pinned, repost and other authors skipped
    assert newest.external_id == "at://did:plc:essexpolice/app.bsky.feed.post/3kabc0000002"
    assert newest.title.startswith("The A12 is closed northbound")
    assert newest.native is not None and newest.native.cid == "bafyreiabc2"
    assert newest.native.uri == newest.external_id
    assert newest.url == "https://bsky.app/profile/essexpolice.bsky.social/post/3kabc0000002"
    assert newest.published_at == datetime(2026, 2, 10, 14, 10, tzinfo=UTC)
    assert older.published_at == datetime(2026, 2, 10, 12, 0, 1, tzinfo=UTC)  # indexedAt
    assert result.extra[DID_KEY] == "did:plc:essexpolice"


async def test_bluesky_account_pinned_by_did_reads_its_posts(
        fetcher: HttpFetcher, mock: respx.MockRouter) -> None:
    """``https://bsky.app/profile/did:plc:...`` (the account pinned by its DID, which no
    handle change can move): its posts are matched by the author's DID, not its handle."""
    route = mock.get(BSKY).mock(
        return_value=httpx.Response(200, content=fixture_bytes("bluesky_feed.json")))
    config = make_config(SourceKind.BLUESKY,
                         account="https://bsky.app/profile/did:plc:essexpolice")
    src = BlueskySource(config, fetcher)
    result = await src.poll(state_for(src.key), NOW)
    assert route.calls[0].request.url.params["actor"] == "did:plc:essexpolice"
    assert [u.external_id for u in result.updates] == [
        "at://did:plc:essexpolice/app.bsky.feed.post/3kabc0000002",
        "at://did:plc:essexpolice/app.bsky.feed.post/3kabc0000001"]


async def test_bluesky_identity_change_is_refused(
    fetcher: HttpFetcher, mock: respx.MockRouter
) -> None:
    mock.get(BSKY).mock(
        return_value=httpx.Response(200, content=fixture_bytes("bluesky_feed.json")))
    src = BlueskySource(make_config(SourceKind.BLUESKY), fetcher)
    extra = {DID_KEY: "did:plc:previousowner", "bluesky_handle": src.actor}
    with pytest.raises(PermanentSourceError) as info:
        await src.poll(state_for(src.key, extra=extra), NOW)
    assert info.value.error_class == "identity_changed"


async def test_bluesky_base_url_override_and_bad_json(
    fetcher: HttpFetcher, mock: respx.MockRouter
) -> None:
    mock.get("http://127.0.0.1:8999/bsky/xrpc/app.bsky.feed.getAuthorFeed").mock(
        return_value=httpx.Response(200, content=json.dumps({"nofeed": 1}).encode()))
    config = make_config(SourceKind.BLUESKY, allow_private_network=True)
    src = BlueskySource(config, fetcher, base_url="http://127.0.0.1:8999/bsky/")
    with pytest.raises(PermanentSourceError) as info:
        await src.poll(state_for(src.key), NOW)
    assert info.value.error_class == "parse"


def test_bluesky_actor_locators() -> None:
    assert parse_actor("https://bsky.app/profile/Foo.bsky.social") == "foo.bsky.social"
    assert parse_actor("@foo.bsky.social") == "foo.bsky.social"
    for bad in ("https://bsky.app/", "", "a b"):
        with pytest.raises(ConfigError):
            parse_actor(bad)


async def test_bluesky_keeps_the_agencys_own_thread_and_drops_replies_to_others(
        fetcher: HttpFetcher, mock: respx.MockRouter) -> None:
    """Issue 11: an agency's thread ("1/4 ... 2/4") is replies to itself; ask for
    ``posts_and_author_threads`` and keep a reply whose ``reply.parent`` is the same DID."""
    me = "did:plc:essexpolice"

    def post(rkey: str, text: str, parent: str | None = None) -> dict:
        record: dict = {"$type": "app.bsky.feed.post", "text": text,
                        "createdAt": "2026-02-10T14:00:00.000Z"}
        if parent:
            ref = {"uri": parent, "cid": "bafyparent"}
            record["reply"] = {"root": ref, "parent": ref}
        return {"post": {"uri": f"at://{me}/app.bsky.feed.post/{rkey}", "cid": f"bafy{rkey}",
                         "author": {"did": me, "handle": "essexpolice.bsky.social"},
                         "record": record, "indexedAt": "2026-02-10T14:00:01.000Z"}}

    first = f"at://{me}/app.bsky.feed.post/3kthread0001"
    feed = {"feed": [post("3kthread0001", "1/2 Flooding on the A12"),
                     post("3kthread0002", "2/2 Use the A120 instead", parent=first),
                     post("3kreply00003", "@someone thanks",
                          parent="at://did:plc:someone/app.bsky.feed.post/3kq")]}
    route = mock.get(BSKY).mock(return_value=httpx.Response(200, json=feed))
    src = BlueskySource(make_config(SourceKind.BLUESKY), fetcher)
    result = await src.poll(state_for(src.key), NOW)
    assert route.calls[0].request.url.params["filter"] == "posts_and_author_threads"
    assert sorted(u.external_id.rsplit("/", 1)[-1] for u in result.updates) == [
        "3kthread0001", "3kthread0002"]
