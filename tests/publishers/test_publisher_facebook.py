"""Facebook Page publisher over a Graph API fake that follows Meta's documentation.

``GraphPage`` answers as the Graph API reference documents it (no recordings exist for
Facebook; see ``../shared/reference/platform-facts.md``):

- ``POST /{version}/{page-id}/feed`` with ``message``/``link`` answers ``{"id": "{page}_{post}"}``
  (Pages API, "Publish posts": developers.facebook.com/documentation/pages-api/posts).
- ``GET /{version}/{page-id}/published_posts`` lists only the Page's own posts, newest first,
  with the fields asked for, ``since``/``limit``, and cursor paging whose ``paging.next`` URL
  carries the access token in its query string (Graph API "Paginated Results":
  developers.facebook.com/docs/graph-api/results; Page Published Posts reference).
- The fields ``caption, description, link, name, object_id, source, type`` of page posts were
  deprecated in v3.3: asking for one answers 400 with Graph error code 12, "(#12) link field is
  deprecated for versions v3.3 and higher", in the documented error object
  (developers.facebook.com/docs/graph-api/guides/error-handling).
"""

from __future__ import annotations

import base64
import itertools
import json
import re
from collections.abc import Iterator
from dataclasses import replace
from datetime import datetime, timedelta
from typing import Any

import httpx
import pytest
import respx
from pydantic import SecretStr, ValidationError
from structlog.testing import capture_logs

from crisiscomms.adapters.publishers import build_publisher
from crisiscomms.adapters.publishers import facebook as fb
from crisiscomms.adapters.publishers.facebook import FacebookPublisher, regain_access_at
from crisiscomms.domain.clock import FixedClock
from crisiscomms.domain.config import ChannelConfig
from crisiscomms.domain.errors import (
    ConfigError,
    OutcomeUnknownError,
    PermanentPublishError,
    RateLimitedError,
    TransientPublishError,
)
from crisiscomms.domain.models import Platform
from crisiscomms.settings import Settings

from .publisher_fakes import Failure, Faults, httpx_failure
from .publisher_support import BODY, CHANNEL, FB_CREDENTIALS, LINK, NOW, make_item

TOKEN = "EAAB-SECRET-page-token"
DEPRECATED_FIELDS = ("caption", "description", "link", "name", "object_id", "source", "type")
READABLE_FIELDS = ("id", "message", "created_time", "permalink_url")


class GraphPage:
    """One Facebook Page behind respx, answering as the Graph API documentation says."""

    base = "https://graph.test"
    page = "1234"

    def __init__(self, router: respx.MockRouter) -> None:
        self.faults = Faults()
        self.posts: list[dict[str, Any]] = []  # oldest first
        self.requests: list[httpx.Request] = []
        self.ids = itertools.count(1)
        self.created_at = NOW
        b, page = re.escape(self.base), re.escape(self.page)
        router.post(url__regex=rf"^{b}/v\d+\.\d+/{page}/feed$").mock(side_effect=self._create)
        router.get(url__regex=rf"^{b}/v\d+\.\d+/{page}/feed(\?.*)?$").mock(
            side_effect=self._feed)
        router.get(url__regex=rf"^{b}/v\d+\.\d+/{page}/published_posts(\?.*)?$").mock(
            side_effect=self._published)

    def add_post(self, message: str, at: datetime | None = None) -> str:
        n = next(self.ids)
        post = {"id": f"{self.page}_{n}", "message": message, "at": at or self.created_at,
                "permalink_url": f"https://www.facebook.com/{self.page}/posts/{n}"}
        self.posts.append(post)
        return str(post["id"])

    def _create(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        failure = self.faults.take("write")
        if failure:
            return httpx_failure(failure)
        form = dict(httpx.QueryParams(request.content.decode()))
        return httpx.Response(200, json={"id": self.add_post(form["message"])})

    @staticmethod
    def _deprecated(request: httpx.Request) -> httpx.Response | None:
        asked = [f.strip() for f in request.url.params.get("fields", "").split(",")]
        for name in asked:
            if name in DEPRECATED_FIELDS:
                return httpx.Response(400, json={"error": {
                    "message": f"(#12) {name} field is deprecated for versions v3.3 and higher",
                    "type": "OAuthException", "code": 12, "fbtrace_id": "AbCdEf012345"}})
        return None

    def _feed(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        refused = self._deprecated(request)
        if refused is not None:
            return refused
        return self._page_of(request)

    def _published(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        failure = self.faults.take("read")
        if failure:
            return httpx_failure(failure)
        refused = self._deprecated(request)
        return refused if refused is not None else self._page_of(request)

    def _page_of(self, request: httpx.Request) -> httpx.Response:
        q = request.url.params
        fields = q.get("fields", "id,message,created_time").split(",")
        limit = min(int(q.get("limit", "25")), 100)
        since = int(q["since"]) if q.get("since") else None
        newest_first = [p for p in reversed(self.posts)
                        if since is None or p["at"].timestamp() >= since]
        start = int(base64.b64decode(q["after"]).decode()) if q.get("after") else 0
        chunk = newest_first[start:start + limit]
        data = []
        for p in chunk:
            shown = {"id": p["id"], "message": p["message"], "permalink_url": p["permalink_url"],
                     "created_time": p["at"].strftime("%Y-%m-%dT%H:%M:%S+0000")}
            data.append({k: v for k, v in shown.items() if k in fields})
        body: dict[str, Any] = {"data": data}
        if chunk:
            def cursor(i: int) -> str:
                return base64.b64encode(str(i).encode()).decode()

            body["paging"] = {"cursors": {"before": cursor(start),
                                          "after": cursor(start + len(chunk))}}
            if start + len(chunk) < len(newest_first):
                # As Graph does: the next link repeats the query, access token included.
                nxt = dict(q) | {"access_token": TOKEN, "after": cursor(start + len(chunk))}
                body["paging"]["next"] = str(request.url.copy_with(params=nxt))
        return httpx.Response(200, json=body)


Fixture = tuple[GraphPage, FacebookPublisher]


@pytest.fixture
def facebook_fake(clock: FixedClock) -> Iterator[Fixture]:
    """This module's Facebook fake is ``GraphPage`` (the documented Graph behaviour)."""
    with respx.mock(assert_all_called=False) as router:
        fake = GraphPage(router)
        publisher = FacebookPublisher(
            CHANNEL, page_id=fake.page, credentials=FB_CREDENTIALS, clock=clock, base_url=fake.base
        )
        yield fake, publisher
        publisher.close()


def fb_error(
    code: int, message: str = "Application request limit reached", **extra: object
) -> dict:
    return {"error": {"message": message, "type": "OAuthException", "code": code, **extra}}


def test_token_travels_in_the_body_never_the_url(facebook_fake: Fixture) -> None:
    fake, pub = facebook_fake
    result = pub.publish(make_item(), None)
    [request] = fake.requests
    assert TOKEN not in str(request.url)
    form = dict(httpx.QueryParams(request.content.decode()))
    assert form == {"message": BODY, "link": LINK, "access_token": TOKEN}
    assert result.url == f"https://www.facebook.com/{result.post_id}"


def test_find_existing_sends_the_token_in_a_header(facebook_fake: Fixture) -> None:
    fake, pub = facebook_fake
    pub.find_existing(make_item(), None)
    [request] = fake.requests
    assert TOKEN not in str(request.url)
    assert request.headers["Authorization"] == f"Bearer {TOKEN}"


def test_find_existing_reads_the_pages_own_published_posts(facebook_fake: Fixture) -> None:
    """Defect 8: recovery asked ``/feed?fields=id,message,link``; ``link`` errors (code 12)
    since v3.3, so every lookup ended in needs_review. Only fields that exist, on the Page's
    own posts (``/feed`` also holds visitors' posts and posts the Page is tagged in)."""
    fake, pub = facebook_fake
    item = make_item()
    published = pub.publish(item, None)
    found = pub.find_existing(item, None)
    assert found is not None and found.post_id == published.post_id
    assert found.url == f"https://www.facebook.com/{fake.page}/posts/1"  # the permalink_url
    lookup = fake.requests[-1]
    assert lookup.url.path == f"/{fb.DEFAULT_GRAPH_VERSION}/{fake.page}/published_posts"
    assert lookup.url.params["fields"].split(",") == list(READABLE_FIELDS)


def test_find_existing_pages_without_putting_the_token_in_a_url_or_a_log(
    facebook_fake: Fixture,
) -> None:
    """``paging.next`` carries the access token in its query: it is never requested as such,
    never logged, and its host is never trusted with the token."""
    fake, pub = facebook_fake
    item = make_item()
    ours = fake.add_post(item.body)
    for n in range(150):
        fake.add_post(f"Later post {n}")
    with capture_logs() as logs:
        found = pub.find_existing(item, None)
    assert found is not None and found.post_id == ours
    lookups = [r for r in fake.requests if r.url.path.endswith("/published_posts")]
    assert len(lookups) == 2
    for request in lookups:
        assert TOKEN not in str(request.url)
        assert request.url.host == "graph.test"
    assert lookups[1].url.params["after"]
    assert TOKEN not in repr(logs)


def test_find_existing_only_looks_back_to_shortly_before_the_first_send(
    facebook_fake: Fixture,
) -> None:
    fake, pub = facebook_fake
    item = make_item()
    fake.add_post(item.body, at=NOW - timedelta(days=2))  # an older, identical post
    sent = replace(make_item(), sent_at=NOW)
    assert pub.find_existing(sent, None) is None
    assert int(fake.requests[-1].url.params["since"]) == int(
        (NOW - timedelta(minutes=10)).timestamp())


def test_find_existing_requires_the_same_link(facebook_fake: Fixture) -> None:
    """The link attachment cannot be read back (``link`` is deprecated), so the URLs in the
    message tell our posts apart: the same words with another URL are another post."""
    _fake, pub = facebook_fake
    pub.publish(make_item(), None)
    other_url = "https://elsewhere.test/2"
    other = make_item(body=BODY.replace(LINK, other_url), url=other_url)
    assert pub.find_existing(other, None) is None
    assert pub.find_existing(make_item(), None) is not None


def test_find_existing_recognises_a_message_facebook_stripped_of_its_url(
    facebook_fake: Fixture,
) -> None:
    """Unverified whether Facebook keeps a trailing URL that is also the link attachment in
    ``message``: the same words without any URL still count as ours."""
    fake, pub = facebook_fake
    item = make_item()
    ours = fake.add_post(BODY.replace(LINK, "").strip())
    found = pub.find_existing(item, None)
    assert found is not None and found.post_id == ours


def test_find_existing_with_a_deprecated_field_refusal_is_outcome_unknown(
    facebook_fake: Fixture,
) -> None:
    """If Graph refuses the lookup (here: the code 12 error object), the answer is unknown."""
    fake, pub = facebook_fake
    fake.faults.add("read", Failure(400, {"error": {
        "message": "(#12) link field is deprecated for versions v3.3 and higher",
        "type": "OAuthException", "code": 12, "fbtrace_id": "AbCdEf012345"}}))
    with pytest.raises(OutcomeUnknownError, match="code 12"):
        pub.find_existing(make_item(), None)


# -- Graph version and page id (defect 9) ------------------------------------------------------


def test_graph_version_is_current_by_default_and_a_setting(
    facebook_fake: Fixture, clock: FixedClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Defect 9: v19.0 expired on 2026-05-21 and expired versions' calls silently go to the
    next oldest one. The default is the newest version Meta lists (v27.0, introduced
    2026-11-04), and ``CRISISCOMMS_FACEBOOK_GRAPH_VERSION`` changes it without a release."""
    fake, pub = facebook_fake
    pub.publish(make_item(), None)
    assert fake.requests[-1].url.path == f"/v27.0/{fake.page}/feed"
    assert fb.DEFAULT_GRAPH_VERSION == "v27.0"
    assert Settings().facebook_graph_version == fb.DEFAULT_GRAPH_VERSION
    monkeypatch.setenv("CRISISCOMMS_FACEBOOK_GRAPH_VERSION", "v25.0")
    version = Settings().facebook_graph_version
    assert version == "v25.0"
    channel = ChannelConfig(id="fb", platform=Platform.FACEBOOK, account=fake.page,
                            base_url=fake.base)
    older = build_publisher(channel, dict(FB_CREDENTIALS), clock=clock,
                            facebook_graph_version=version)
    older.publish(make_item(2, body="another"), None)
    older.close()
    assert fake.requests[-1].url.path == f"/v25.0/{fake.page}/feed"


@pytest.mark.parametrize("bad", ["19.0", "v19", "v19.0/", "latest", "v19.0?x=1", ""])
def test_graph_version_setting_is_validated(
    bad: str, clock: FixedClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CRISISCOMMS_FACEBOOK_GRAPH_VERSION", bad)
    with pytest.raises(ValidationError, match=r"like v27\.0"):
        Settings()
    with pytest.raises(ConfigError, match=rf"channel {CHANNEL}: .*like v27\.0"):
        FacebookPublisher(CHANNEL, page_id="1234", credentials=FB_CREDENTIALS, clock=clock,
                          graph_version=bad)


def test_a_page_name_instead_of_a_numeric_page_id_is_flagged(clock: FixedClock) -> None:
    """Only a numeric Page id is documented for ``/{page-id}/feed``; a vanity name is logged
    once, naming the channel, when the publisher is built."""
    with capture_logs() as logs:
        FacebookPublisher(CHANNEL, page_id="MidEssexCCG",
                          credentials={"page_token": SecretStr(TOKEN)}, clock=clock).close()
        FacebookPublisher(CHANNEL, page_id="100064123456789",
                          credentials={"page_token": SecretStr(TOKEN)}, clock=clock).close()
    [event] = [e for e in logs if e["event"] == "publisher.page_id_not_numeric"]
    assert event["channel"] == CHANNEL and event["page_id"] == "MidEssexCCG"


@pytest.mark.parametrize("code", [4, 17, 32, 613])
def test_throttle_codes_are_rate_limits(facebook_fake: Fixture, code: int) -> None:
    fake, pub = facebook_fake
    fake.faults.add("write", Failure(400, fb_error(code)))
    with pytest.raises(RateLimitedError) as caught:
        pub.publish(make_item(), None)
    assert caught.value.reset_at == NOW + timedelta(minutes=5)
    assert f"(code {code})" in str(caught.value)


def test_business_use_case_header_gives_the_reset(facebook_fake: Fixture) -> None:
    fake, pub = facebook_fake
    usage = {"1234": [{"type": "pages", "call_count": 100, "estimated_time_to_regain_access": 7}]}
    fake.faults.add(
        "write",
        Failure(400, fb_error(32), headers={"X-Business-Use-Case-Usage": json.dumps(usage)}),
    )
    with pytest.raises(RateLimitedError) as caught:
        pub.publish(make_item(), None)
    assert caught.value.reset_at == NOW + timedelta(minutes=7)


@pytest.mark.parametrize(
    "error",
    [fb_error(2, "Service temporarily unavailable"), fb_error(100, "Try again", is_transient=True)],
)
def test_transient_facebook_errors(facebook_fake: Fixture, error: dict) -> None:
    fake, pub = facebook_fake
    fake.faults.add("write", Failure(400, error))
    with pytest.raises(TransientPublishError) as caught:
        pub.publish(make_item(), None)
    assert not isinstance(caught.value, RateLimitedError)


def test_duplicate_status_is_permanent(facebook_fake: Fixture) -> None:
    fake, pub = facebook_fake
    fake.faults.add("write", Failure(400, fb_error(506, "Duplicate status message")))
    with pytest.raises(PermanentPublishError, match="Duplicate status message"):
        pub.publish(make_item(), None)


def test_unreadable_success_is_outcome_unknown(facebook_fake: Fixture) -> None:
    fake, pub = facebook_fake
    fake.faults.add("write", Failure(exc=None, status=200, body=["not", "an", "object"]))
    with pytest.raises(OutcomeUnknownError):
        pub.publish(make_item(), None)


@pytest.mark.parametrize(
    ("header", "minutes"),
    [
        (None, None),
        ("not json", None),
        (json.dumps({"1": [{"estimated_time_to_regain_access": 0}]}), None),
        (
            json.dumps(
                {
                    "1": [{"estimated_time_to_regain_access": 3}],
                    "2": [{"estimated_time_to_regain_access": 11}],
                }
            ),
            11,
        ),
    ],
)
def test_regain_access_at(header: str | None, minutes: int | None) -> None:
    headers = {"x-business-use-case-usage": header} if header else {}
    expected = NOW + timedelta(minutes=minutes) if minutes else None
    assert regain_access_at(headers, NOW) == expected
