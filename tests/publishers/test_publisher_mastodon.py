from __future__ import annotations

import json

import pytest
from pydantic import SecretStr

from crisiscomms.adapters.publishers.mastodon import (
    MastodonPublisher,
    idempotency_key,
    instance_url,
)
from crisiscomms.domain.models import ActionKind, NativeRef, Platform

from .publisher_fakes import FakeMastodon
from .publisher_support import BODY, make_item

Fixture = tuple[FakeMastodon, MastodonPublisher]


def test_post_has_a_stable_idempotency_key(mastodon_fake: Fixture) -> None:
    fake, pub = mastodon_fake
    item = make_item(1)
    first = pub.publish(item, None)
    again = pub.publish(item, None)  # a resend after a lost answer
    other = pub.publish(make_item(2, body="Stand down " + BODY), None)
    keys = [r.headers["Idempotency-Key"] for r in fake.requests]
    assert keys[0] == keys[1] == idempotency_key(item)
    assert keys[2] != keys[0]
    assert keys[0].startswith("crisiscomms-")
    assert item.dedupe_key not in keys[0]  # a hash, not the key itself
    assert again.post_id == first.post_id
    assert other.post_id != first.post_id
    assert len(fake.statuses) == 2
    sent = json.loads(fake.requests[0].content)
    assert sent == {"status": BODY, "visibility": "public"}
    assert fake.requests[0].headers["Authorization"] == "Bearer mastodon-SECRET-token"


def test_idempotency_key_depends_only_on_the_dedupe_key() -> None:
    a = make_item(1, dedupe_key="k")
    b = make_item(2, dedupe_key="k", body="other")
    assert idempotency_key(a) == idempotency_key(b)
    assert len(idempotency_key(a)) == len("crisiscomms-") + 32


def test_boost_of_a_local_status(mastodon_fake: Fixture) -> None:
    fake, pub = mastodon_fake
    native = NativeRef(Platform.MASTODON, id="555", url="https://m.test/@police/555")
    item = make_item(action=ActionKind.BOOST, native=native)
    assert pub.find_existing(item, None) is None
    result = pub.publish(item, None)
    assert result.post_id == "rb555"
    assert result.url == "https://m.test/@police/555"
    assert any(r.url.path == "/api/v1/statuses/555/reblog" for r in fake.requests)
    found = pub.find_existing(item, None)
    assert found == result  # the boost's own id, found among our statuses
    fake.statuses.clear()  # the boost scrolled out of our recent statuses
    older = pub.find_existing(item, None)
    assert older is not None and older.post_id == "reblog:555"


def test_boost_of_a_remote_status_resolves_it_first(mastodon_fake: Fixture) -> None:
    fake, pub = mastodon_fake
    remote = "https://police.social/@force/111"
    fake.remote[remote] = "777"
    native = NativeRef(Platform.MASTODON, id="111", url=remote)
    result = pub.publish(make_item(action=ActionKind.BOOST, native=native), None)
    assert result.post_id == "rb777"
    search = next(r for r in fake.requests if r.url.path == "/api/v2/search")
    assert search.url.params["q"] == remote
    assert search.url.params["resolve"] == "true"
    assert search.url.params["type"] == "statuses"


def test_unresolvable_remote_status_falls_back_to_a_post(mastodon_fake: Fixture) -> None:
    fake, pub = mastodon_fake
    native = NativeRef(Platform.MASTODON, id="111", url="https://gone.social/@x/111")
    result = pub.publish(make_item(action=ActionKind.BOOST, native=native), None)
    assert result.post_id == fake.statuses[0]["id"]


def test_boost_of_a_non_mastodon_update_is_a_post(mastodon_fake: Fixture) -> None:
    fake, pub = mastodon_fake
    native = NativeRef(Platform.X, id="1", url="https://x.com/police/status/1")
    pub.publish(make_item(action=ActionKind.BOOST, native=native), None)
    assert [r.url.path for r in fake.requests] == ["/api/v1/statuses"]


def test_find_existing_reads_html_content_and_caches_the_account(mastodon_fake: Fixture) -> None:
    fake, pub = mastodon_fake
    result = pub.publish(make_item(), None)
    assert "<span" in fake.statuses[0]["content"]
    assert pub.find_existing(make_item(), None) == result
    pub.find_existing(make_item(), None)
    paths = [r.url.path for r in fake.requests]
    assert paths.count("/api/v1/accounts/verify_credentials") == 1


@pytest.mark.parametrize(
    ("account", "expected"),
    [
        ("@nhs@mastodon.social", "https://mastodon.social"),
        ("nhs@m.test", "https://m.test"),
        ("@nhs", None),
        ("", None),
    ],
)
def test_instance_url(account: str, expected: str | None) -> None:
    assert instance_url(account) == expected


def test_posting_and_boosting_share_a_3_hour_budget_and_pause_until_its_reset() -> None:
    """platform-facts.md, Mastodon limits: posting and boosting share 300 per 3 hours per
    account (not the general 300 per 5 minutes). Against the simulator, which answers as
    recorded in shared/recorded/mastodon/ (X-RateLimit-Reset an ISO timestamp)."""
    from datetime import UTC, datetime, timedelta

    import httpx

    from crisiscomms.domain.clock import FixedClock
    from crisiscomms.domain.errors import RateLimitedError
    from crisiscomms.simulator import World, serve

    clock = FixedClock(datetime(2026, 1, 5, 10, 0, tzinfo=UTC))
    world = World(clock)
    world.add_item("lfb@mastodon.example", "mastodon", clock.now(), {"id": "501", "text": "Fire"})
    with serve(world) as sim, httpx.Client(timeout=5) as client:
        pub = MastodonPublisher("nhs-mastodon", base_url=sim.url_for("mastodon"), clock=clock,
                                credentials={"access_token": SecretStr("sim-token")},
                                client=client)
        native = NativeRef(Platform.MASTODON, id="501", url="")
        pub.publish(make_item(1, action=ActionKind.BOOST, native=native), None)
        for i in range(2, 301):  # 1 boost + 299 posts, 2 s apart (no general-budget trouble)
            clock.advance(timedelta(seconds=2))
            pub.publish(make_item(i, body=f"{BODY} {i}"), None)
        clock.advance(timedelta(seconds=2))
        with pytest.raises(RateLimitedError) as info:
            pub.publish(make_item(301, body=f"{BODY} 301"), None)
        # The shared bucket of 09:00-12:00 UTC: wait until noon, not five minutes.
        assert info.value.reset_at == datetime(2026, 1, 5, 12, 0, tzinfo=UTC)
        # Reads spend only the general budget: looking for an earlier post still works.
        assert pub.find_existing(make_item(300, body=f"{BODY} 300"), None) is not None
    assert not world.rate_limit_violations()


def test_remote_boost_without_a_search_scope_names_the_scope() -> None:
    """A token without read (or read:search) cannot resolve a remote status: Mastodon answers
    403 "This action is outside the authorized scopes"; say which scope is missing."""
    from datetime import UTC, datetime

    import httpx
    import respx

    from crisiscomms.domain.clock import FixedClock
    from crisiscomms.domain.errors import PermanentPublishError

    with respx.mock(assert_all_called=False) as router, httpx.Client() as client:
        router.get("https://m.test/api/v2/search").mock(return_value=httpx.Response(
            403, json={"error": "This action is outside the authorized scopes"}))
        pub = MastodonPublisher("nhs-mastodon", base_url="https://m.test", client=client,
                                clock=FixedClock(datetime(2026, 1, 5, tzinfo=UTC)),
                                credentials={"access_token": SecretStr("m-token-1234")})
        native = NativeRef(Platform.MASTODON, id="111", url="https://police.social/@force/111")
        with pytest.raises(PermanentPublishError) as info:
            pub.publish(make_item(action=ActionKind.BOOST, native=native), None)
    assert "read:search" in str(info.value) and "403" in str(info.value)


def test_a_cap_follow_up_is_a_reply_to_our_own_status() -> None:
    """A CAP Update/Cancel goes out in the thread of our own status of the alert (issue 12):
    ``in_reply_to_id`` is our earlier status, as the simulator (and Mastodon) record it."""
    from dataclasses import replace
    from datetime import UTC, datetime

    import httpx

    from crisiscomms.domain.clock import FixedClock
    from crisiscomms.simulator import World, serve

    clock = FixedClock(datetime(2026, 1, 5, 10, 0, tzinfo=UTC))
    world = World(clock)
    with serve(world) as sim, httpx.Client(timeout=5) as client:
        pub = MastodonPublisher("nhs-mastodon", base_url=sim.url_for("mastodon"), clock=clock,
                                credentials={"access_token": SecretStr("sim-token")},
                                client=client)
        first = pub.publish(make_item(1, body="Flood warning for the Chelmer"), None)
        reply = pub.publish(replace(make_item(2, body="Update: warning extended"),
                                    reply_to=first.post_id), None)
        got = client.get(f"{sim.url_for('mastodon')}/api/v1/statuses/{reply.post_id}",
                         headers={"Authorization": "Bearer sim-token"}).json()
    assert got["in_reply_to_id"] == first.post_id
