"""Conformance of our Facebook publisher and the simulator to the Graph API documentation.

There are no recordings of Facebook in ``shared/recorded`` (see its README): each test names
the documented behaviour it follows, as summarised in ``shared/reference/platform-facts.md``:

- Pages API, "Publish posts" (developers.facebook.com/documentation/pages-api/posts):
  ``POST /{page-id}/feed`` with ``message``, ``link`` and a Page access token answers
  ``{"id": "{page-id}_{post-id}"}``.
- Graph API reference, Page Published Posts
  (developers.facebook.com/docs/graph-api/reference/page/published_posts) and "Paginated
  Results" (developers.facebook.com/docs/graph-api/results): ``{"data": [...], "paging":
  {"cursors": {"before", "after"}, "next"}}``; stop when there is no ``next``.
- "Handling Errors" (developers.facebook.com/docs/graph-api/guides/error-handling): the error
  object ``{"error": {"message", "type", "code", "error_subcode", "error_user_title",
  "error_user_msg", "fbtrace_id"}}``.
- "Rate Limits" (developers.facebook.com/docs/graph-api/overview/rate-limiting): Page-token
  calls are Business Use Case limited; throttling answers codes 4, 17, 32 or 613 and the
  ``X-Business-Use-Case-Usage`` header ``{"<business-object-id>": [{"type", "call_count",
  "total_cputime", "total_time", "estimated_time_to_regain_access"}]}`` (minutes).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
import respx
from pydantic import SecretStr

from crisiscomms.adapters.publishers.facebook import (
    DEFAULT_GRAPH_VERSION,
    POST_FIELDS,
    FacebookPublisher,
)
from crisiscomms.domain.clock import FixedClock
from crisiscomms.domain.errors import PermanentPublishError, RateLimitedError
from crisiscomms.domain.models import ActionKind, ItemState, OutboxItem
from crisiscomms.simulator import Faults, RunningSimulator, World, serve

NOW = datetime(2026, 12, 1, 10, 0, tzinfo=UTC)
PAGE = "100064123456789"
TOKEN = "EAAG-conformance-page-token"
GRAPH = f"https://graph.facebook.com/{DEFAULT_GRAPH_VERSION}/{PAGE}"
CREATED_TIME = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\+0000")

# The documented example error object ("Handling Errors").
DOCUMENTED_ERROR = {"error": {
    "message": "Message describing the error", "type": "OAuthException", "code": 190,
    "error_subcode": 460, "error_user_title": "A title", "error_user_msg": "A message",
    "fbtrace_id": "EJplcsCHuLu"}}
ERROR_FIELDS: dict[str, type | tuple[type, ...]] = {
    "message": str, "type": str, "code": int, "error_subcode": int, "error_user_title": str,
    "error_user_msg": str, "fbtrace_id": str, "is_transient": bool}


def error_problems(body: Any) -> list[str]:
    """How ``body`` departs from the documented Graph error object."""
    if not isinstance(body, dict) or set(body) != {"error"} or not isinstance(body["error"],
                                                                              dict):
        return ["not {'error': {...}}"]
    error = body["error"]
    out = [f"{name} missing" for name in ("message", "type", "code", "fbtrace_id")
           if name not in error]
    for name, value in error.items():
        want = ERROR_FIELDS.get(name)
        if want is None:
            out.append(f"{name} is not a documented field")
        elif not isinstance(value, want) or (want is int and isinstance(value, bool)):
            out.append(f"{name} should be {want}")
    return out


def item(n: int = 1, text: str = "Flood warning https://example.org/w/1") -> OutboxItem:
    return OutboxItem(id=n, dedupe_key=f"u{n}:facebook:post", channel_id="facebook",
                      action=ActionKind.POST, text=text, state=ItemState.SENDING,
                      created_at=NOW, url="https://example.org/w/1", sent_at=NOW)


@pytest.fixture
def pub() -> Iterator[FacebookPublisher]:
    publisher = FacebookPublisher("facebook", page_id=PAGE, clock=FixedClock(NOW),
                                  credentials={"page_token": SecretStr(TOKEN)})
    yield publisher
    publisher.close()


@pytest.fixture(scope="module")
def server() -> Iterator[RunningSimulator]:
    with serve(World(FixedClock(NOW))) as running:
        yield running


@pytest.fixture
def sim(server: RunningSimulator) -> tuple[RunningSimulator, World]:
    world = World(FixedClock(NOW))
    server.replace_world(world)
    return server, world


def sim_publisher(sim: RunningSimulator) -> FacebookPublisher:
    return FacebookPublisher("facebook", page_id=PAGE, clock=FixedClock(NOW),
                             credentials={"page_token": SecretStr(TOKEN)},
                             base_url=sim.url_for("facebook"))


# -- POST /{page-id}/feed ------------------------------------------------------------------------


def test_post_page_feed(pub: FacebookPublisher, sim: tuple[RunningSimulator, World]) -> None:
    """Pages API "Publish posts": form fields ``message``, ``link``, ``access_token``; the
    answer's ``id`` (``{page-id}_{post-id}``) is the post id; the simulator answers the same."""
    with respx.mock() as router:
        route = router.post(f"{GRAPH}/feed").respond(200, json={"id": f"{PAGE}_987654321"})
        result = pub.publish(item(), None)
    form = dict(httpx.QueryParams(route.calls.last.request.content.decode()))
    assert form == {"message": item().body, "link": "https://example.org/w/1",
                    "access_token": TOKEN}
    assert result.post_id == f"{PAGE}_987654321"
    server, _world = sim
    with httpx.Client(timeout=5.0) as c:
        answer = c.post(f"{server.url_for('facebook')}/{DEFAULT_GRAPH_VERSION}/{PAGE}/feed",
                        data=form)
    assert answer.status_code == 200
    assert set(answer.json()) == {"id"}
    assert re.fullmatch(rf"{PAGE}_\d+", answer.json()["id"])


# -- GET /{page-id}/published_posts ----------------------------------------------------------


def published_page(data: list[dict[str, Any]], after: str | None = None) -> dict[str, Any]:
    body: dict[str, Any] = {"data": data}
    if data:
        body["paging"] = {"cursors": {"before": "QVFIUmJ", "after": after or "QVFIUzZA"}}
        if after:
            body["paging"]["next"] = (f"{GRAPH}/published_posts?access_token={TOKEN}"
                                      f"&fields={POST_FIELDS}&limit=100&after={after}")
    return body


def test_get_published_posts(pub: FacebookPublisher, sim: tuple[RunningSimulator, World]) -> None:
    """Page Published Posts with "Paginated Results": the publisher asks only for fields that
    exist, reads ``data[].id``/``message``/``created_time``/``permalink_url`` and follows
    ``paging`` until there is no ``next``; the simulator's answer has the same shape."""
    ours = {"id": f"{PAGE}_2", "message": item().body, "created_time": "2026-12-01T10:00:05+0000",
            "permalink_url": f"https://www.facebook.com/{PAGE}/posts/2"}
    someone = {"id": f"{PAGE}_3", "message": "Another update",
               "created_time": "2026-12-01T10:01:00+0000",
               "permalink_url": f"https://www.facebook.com/{PAGE}/posts/3"}
    with respx.mock() as router:
        route = router.get(f"{GRAPH}/published_posts").mock(side_effect=[
            httpx.Response(200, json=published_page([someone], after="QVFIUzZA")),
            httpx.Response(200, json=published_page([ours])),
        ])
        found = pub.find_existing(item(), None)
    assert found is not None and found.post_id == ours["id"]
    assert found.url == ours["permalink_url"]
    first, second = (c.request for c in route.calls)
    assert first.url.params["fields"] == "id,message,created_time,permalink_url"
    assert second.url.params["after"] == "QVFIUzZA"
    assert TOKEN not in str(first.url) + str(second.url)

    server, _world = sim
    base = f"{server.url_for('facebook')}/{DEFAULT_GRAPH_VERSION}/{PAGE}"
    with httpx.Client(timeout=5.0) as c:
        for n in range(3):
            c.post(f"{base}/feed", data={"message": f"post {n}", "access_token": TOKEN})
        answer = c.get(f"{base}/published_posts", params={"fields": POST_FIELDS, "limit": "2"},
                       headers={"Authorization": f"Bearer {TOKEN}"}).json()
    assert set(answer) == {"data", "paging"}
    for post in answer["data"]:
        assert set(post) == {"id", "message", "created_time", "permalink_url"}
        assert re.fullmatch(rf"{PAGE}_\d+", post["id"]) and isinstance(post["message"], str)
        assert CREATED_TIME.fullmatch(post["created_time"])
        assert post["permalink_url"].startswith("https://www.facebook.com/")
    assert set(answer["paging"]) == {"cursors", "next"}
    assert all(isinstance(answer["paging"]["cursors"][k], str) for k in ("before", "after"))
    nxt = httpx.URL(answer["paging"]["next"])
    assert nxt.path.endswith(f"/{PAGE}/published_posts") and nxt.params["access_token"] == TOKEN


# -- the error object -----------------------------------------------------------------------------


def test_error_object(pub: FacebookPublisher, sim: tuple[RunningSimulator, World]) -> None:
    """"Handling Errors": the publisher reads ``message`` and ``code`` from the documented
    example; every error the simulator gives has that object's fields and types."""
    with respx.mock() as router:
        router.post(f"{GRAPH}/feed").respond(400, json=DOCUMENTED_ERROR)
        with pytest.raises(PermanentPublishError) as caught:
            pub.publish(item(), None)
    assert "Message describing the error (code 190)" in str(caught.value)

    server, world = sim
    base = f"{server.url_for('facebook')}/{DEFAULT_GRAPH_VERSION}"
    with httpx.Client(timeout=5.0) as c:
        form = {"message": "m", "access_token": TOKEN}
        c.post(f"{base}/{PAGE}/feed", data=form).raise_for_status()
        errors = {
            190: c.post(f"{base}/{PAGE}/feed", data={"message": "m"}),
            506: c.post(f"{base}/{PAGE}/feed", data=form),
            12: c.get(f"{base}/{PAGE}/published_posts",
                      params={"fields": "id,link", "access_token": TOKEN}),
            100: c.get(f"{base}/{PAGE}_404", params={"access_token": TOKEN}),
        }
        world.set_faults(Faults(burst_429=[("facebook", NOW, NOW + timedelta(minutes=3))]))
        errors[32] = c.post(f"{base}/{PAGE}/feed", data=form)
    for code, answer in errors.items():
        assert answer.status_code in (400, 401)
        assert error_problems(answer.json()) == [], code
        assert answer.json()["error"]["code"] == code
    assert error_problems(DOCUMENTED_ERROR) == []
    assert error_problems({"error": {"message": "m", "code": "12"}}) == [
        "type missing", "fbtrace_id missing", "code should be <class 'int'>"]


# -- throttling ---------------------------------------------------------------------------------


@pytest.mark.parametrize("code", [4, 17, 32, 613])
def test_throttling_headers(
    pub: FacebookPublisher, sim: tuple[RunningSimulator, World], code: int
) -> None:
    """"Rate Limits": a throttled call answers one of the codes 4, 17, 32, 613; the pause lasts
    ``estimated_time_to_regain_access`` minutes from ``X-Business-Use-Case-Usage``. The
    simulator's throttle answer carries that header in the documented shape."""
    usage = {PAGE: [{"type": "pages", "call_count": 100, "total_cputime": 25, "total_time": 25,
                     "estimated_time_to_regain_access": 19}]}
    app_usage = {"call_count": 28, "total_time": 25, "total_cputime": 25}
    throttled = {"error": {"message": "(#32) Page request limit reached", "type": "OAuthException",
                           "code": code, "fbtrace_id": "AbCdEf012345"}}
    with respx.mock() as router:
        router.post(f"{GRAPH}/feed").respond(400, json=throttled, headers={
            "X-Business-Use-Case-Usage": json.dumps(usage), "X-App-Usage": json.dumps(app_usage)})
        with pytest.raises(RateLimitedError) as caught:
            pub.publish(item(), None)
    assert caught.value.reset_at == NOW + timedelta(minutes=19)

    server, world = sim
    world.set_faults(Faults(burst_429=[("facebook", NOW, NOW + timedelta(minutes=3))]))
    publisher = sim_publisher(server)
    try:
        with pytest.raises(RateLimitedError) as from_sim:
            publisher.publish(item(), None)
    finally:
        publisher.close()
    assert from_sim.value.reset_at == NOW + timedelta(minutes=3)
    with httpx.Client(timeout=5.0) as c:
        answer = c.post(f"{server.url_for('facebook')}/{DEFAULT_GRAPH_VERSION}/{PAGE}/feed",
                        data={"message": "m", "access_token": TOKEN})
    assert answer.status_code == 400 and answer.json()["error"]["code"] in (4, 17, 32, 613)
    buc = json.loads(answer.headers["x-business-use-case-usage"])
    [(business_id, entries)] = buc.items()
    assert isinstance(business_id, str) and isinstance(entries, list)
    for entry in entries:
        assert set(entry) == {"type", "call_count", "total_cputime", "total_time",
                              "estimated_time_to_regain_access"}
        assert entry["type"] == "pages"
        assert all(isinstance(entry[k], int) for k in entry if k != "type")
