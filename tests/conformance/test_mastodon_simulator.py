"""The simulator's Mastodon answers against the real ones recorded by Mastodon.py's suite.

For each recorded call our adapters make (named in the test by ``Interaction.name``), the
simulator is asked the same thing, the same way (authenticated, as recorded), and its answer
must have the recorded shape: the same field names, types and nesting, and the recorded
rate-limit headers (``X-RateLimit-Limit/Remaining`` numbers, ``X-RateLimit-Reset`` an ISO
timestamp of the budget the call spends: the general 5-minute window for reads, the shared
3-hour posting/boosting window for posts and boosts, each aligned as recorded).

Shape rules: an object has exactly the recorded keys; a ``null`` on either side matches any
value (the field is nullable: ``language``, ``application``, ``last_status_at``); lists are
compared by their first elements when both have one.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest

from crisiscomms.domain.clock import FixedClock, parse_instant
from crisiscomms.simulator import RunningSimulator, World, serve

from .cassettes import Interaction, interaction

LOOKUP = "mastodon/test_account_lookup.yaml"
STATUS = "mastodon/test_status.yaml"
POST = "mastodon/test_status_postNone-public.yaml"
REBLOG = "mastodon/test_status_reblog_unreblog.yaml"
T0 = datetime(2026, 8, 1, 13, 53, 56, tzinfo=UTC)  # when the recordings were made
SOURCE = "lfb@mastodon.example"
AUTH = {"Authorization": "Bearer sim-token"}


def differences(recorded: Any, simulated: Any, path: str = "$") -> list[str]:
    """Where ``simulated`` does not have the shape of ``recorded`` (empty: it conforms)."""
    if recorded is None or simulated is None:
        return []
    if isinstance(recorded, dict):
        if not isinstance(simulated, dict):
            return [f"{path}: object expected, got {type(simulated).__name__}"]
        out = []
        missing = sorted(set(recorded) - set(simulated))
        extra = sorted(set(simulated) - set(recorded))
        if missing:
            out.append(f"{path}: missing {missing}")
        if extra:
            out.append(f"{path}: not in the recording {extra}")
        for key in sorted(set(recorded) & set(simulated)):
            out += differences(recorded[key], simulated[key], f"{path}.{key}")
        return out
    if isinstance(recorded, list):
        if not isinstance(simulated, list):
            return [f"{path}: array expected, got {type(simulated).__name__}"]
        if recorded and simulated:
            return differences(recorded[0], simulated[0], f"{path}[0]")
        return []
    if type(recorded) is not type(simulated):
        return [f"{path}: {type(recorded).__name__} expected, "
                f"got {type(simulated).__name__} ({simulated!r})"]
    return []


def window(reset: str, at: datetime) -> timedelta:
    """How far ahead a reset header points (parsed as the ISO timestamp it must be)."""
    assert reset.endswith("Z"), reset
    return parse_instant(reset) - at


def assert_budget_headers(rec: Interaction, got: httpx.Response, span: timedelta,
                          now: datetime) -> None:
    """The recorded rate-limit headers, and a reset within the same budget's window."""
    for name in ("x-ratelimit-limit", "x-ratelimit-remaining", "x-ratelimit-reset"):
        assert name in rec.headers, f"{rec.name}: {name} not recorded"
        assert name in got.headers, f"simulator lacks {name} ({rec.name})"
    assert got.headers["x-ratelimit-limit"] == rec.headers["x-ratelimit-limit"], rec.name
    assert got.headers["x-ratelimit-remaining"].isdigit(), rec.name
    ahead = window(got.headers["x-ratelimit-reset"], now)
    assert timedelta(0) < ahead <= span, (rec.name, got.headers["x-ratelimit-reset"])
    # The recording's own reset is aligned to the same window (13:53 -> 13:55 or 15:00).
    boundary = parse_instant(got.headers["x-ratelimit-reset"])
    assert boundary.timestamp() % span.total_seconds() < 1, rec.name
    recorded = parse_instant(rec.headers["x-ratelimit-reset"])
    assert recorded.timestamp() % span.total_seconds() < 1, rec.name
    media = got.headers["content-type"].split(";")[0]
    assert media == rec.headers["content-type"].split(";")[0], rec.name


def assert_shape(rec: Interaction, got: httpx.Response) -> None:
    assert got.status_code == rec.status, (rec.name, got.text[:300])
    problems = differences(rec.json(), got.json())
    assert problems == [], f"{rec.name}: simulator differs: {problems}"


@pytest.fixture(scope="module")
def sim() -> Iterator[RunningSimulator]:
    with serve(World(FixedClock(T0))) as running:
        yield running


@pytest.fixture
def world(sim: RunningSimulator) -> World:
    w = World(FixedClock(T0))
    w.add_item(SOURCE, "mastodon", T0 - timedelta(minutes=5), {"id": "501", "text": "Fire"})
    sim.replace_world(w)
    return w


@pytest.fixture
def client(sim: RunningSimulator, world: World) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=f"{sim.url_for('mastodon')}/api", timeout=5) as c:
        yield c


def test_account_lookup_has_the_recorded_shape(client: httpx.Client) -> None:
    rec = interaction(LOOKUP, "GET", "/api/v1/accounts/lookup", index=1)
    got = client.get("/v1/accounts/lookup", params={"acct": "lfb"}, headers=AUTH)
    assert_shape(rec, got)
    assert_budget_headers(rec, got, timedelta(minutes=5), T0)


def test_account_lookup_of_an_unknown_account_answers_as_recorded(client: httpx.Client) -> None:
    rec = interaction(LOOKUP, "GET", "/api/v1/accounts/lookup", index=0)
    got = client.get("/v1/accounts/lookup", params={"acct": rec.query["acct"][0]},
                     headers=AUTH)
    assert (got.status_code, got.json()) == (rec.status, rec.json()), rec.name
    assert_budget_headers(rec, got, timedelta(minutes=5), T0)


def test_verify_credentials_has_the_recorded_shape(client: httpx.Client) -> None:
    rec = interaction(LOOKUP, "GET", "/api/v1/accounts/verify_credentials")
    got = client.get("/v1/accounts/verify_credentials", headers=AUTH)
    assert_shape(rec, got)
    assert_budget_headers(rec, got, timedelta(minutes=5), T0)


def test_posting_a_status_has_the_recorded_shape_and_budget(client: httpx.Client) -> None:
    rec = interaction(POST, "POST", "/api/v1/statuses")
    got = client.post("/v1/statuses", data={"status": "Toot!", "visibility": "public"},
                      headers=AUTH)
    assert_shape(rec, got)
    # Posting spends the 300 / 3 h budget it shares with boosting: its headers, as recorded.
    assert_budget_headers(rec, got, timedelta(hours=3), T0)
    assert got.json()["content"] == "<p>Toot!</p>"


def test_getting_a_status_has_the_recorded_shape(client: httpx.Client) -> None:
    rec = interaction(STATUS, "GET", "/api/v1/statuses/")
    mine = client.post("/v1/statuses", data={"status": "Toot!"}, headers=AUTH).json()
    got = client.get(f"/v1/statuses/{mine['id']}", headers=AUTH)
    assert_shape(rec, got)
    assert_budget_headers(rec, got, timedelta(minutes=5), T0)
    assert got.json()["reblogged"] is False


def test_boosting_has_the_recorded_shape_and_budget(client: httpx.Client) -> None:
    rec = interaction(REBLOG, "POST", "/reblog")
    # Recorded: the suite boosted a status of its own; so does this test (the nested
    # original then carries the owner's fields: application, pinned).
    mine = client.post("/v1/statuses", data={"status": "Toot!"}, headers=AUTH).json()
    got = client.post(f"/v1/statuses/{mine['id']}/reblog", headers=AUTH)
    assert_shape(rec, got)
    assert_budget_headers(rec, got, timedelta(hours=3), T0)
    body = got.json()
    assert body["reblog"]["id"] == mine["id"] and body["reblogged"] is True
    assert body["uri"].endswith("/activity"), "a boost's uri ends in /activity as recorded"
    # A status of another account boosted the same way: the same outer shape.
    other = client.post("/v1/statuses/501/reblog", headers=AUTH)
    assert differences({k: v for k, v in rec.json().items() if k != "reblog"},
                       {k: v for k, v in other.json().items() if k != "reblog"}) == []
