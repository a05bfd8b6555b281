"""Official-source endpoints: RSS/Atom conditional GETs, gzip, timing, CAP, EA floods."""

from __future__ import annotations

import gzip
import io
from datetime import UTC, datetime, timedelta

import defusedxml.ElementTree as DET
import feedparser
import httpx

from crisiscomms.domain.clock import FixedClock, parse_instant
from crisiscomms.simulator import RunningSimulator, World

T0 = datetime(2026, 1, 5, 10, 0, tzinfo=UTC)  # the conftest clock's start


def _rss(world: World) -> None:
    world.add_item(
        "met-se",
        "rss",
        T0 - timedelta(hours=1),
        {
            "guid": "w1",
            "title": "Yellow warning of rain",
            "link": "https://m.example/w1",
            "description": "Rain affecting the South East",
        },
    )
    world.add_item(
        "met-se",
        "rss",
        T0 + timedelta(minutes=30),
        {"guid": "w2", "title": "Amber warning of wind", "description": "Wind"},
    )


def test_rss_items_appear_only_after_their_time(
    world: World, clock: FixedClock, client: httpx.Client
) -> None:
    _rss(world)
    first = feedparser.parse(io.BytesIO(client.get("/sources/rss/met-se").content))
    assert [e.id for e in first.entries] == ["w1"]
    assert first.entries[0].title == "Yellow warning of rain"
    clock.advance(timedelta(minutes=30))
    later = feedparser.parse(io.BytesIO(client.get("/sources/rss/met-se").content))
    assert [e.id for e in later.entries] == ["w2", "w1"]  # newest first
    assert later.bozo == 0


def test_rss_etag_304_and_change(world: World, clock: FixedClock, client: httpx.Client) -> None:
    _rss(world)
    resp = client.get("/sources/rss/met-se")
    etag = resp.headers["etag"]
    assert etag.startswith('"') and not etag.startswith("W/")
    assert "last-modified" in resp.headers
    again = client.get("/sources/rss/met-se", headers={"If-None-Match": etag})
    assert again.status_code == 304 and again.content == b""
    ims = client.get(
        "/sources/rss/met-se", headers={"If-Modified-Since": resp.headers["last-modified"]}
    )
    assert ims.status_code == 304
    clock.advance(timedelta(hours=1))
    changed = client.get("/sources/rss/met-se", headers={"If-None-Match": etag})
    assert changed.status_code == 200 and changed.headers["etag"] != etag


def test_rss_gzip_when_asked(world: World, client: httpx.Client, sim: RunningSimulator) -> None:
    _rss(world)
    with (
        httpx.Client() as raw,
        raw.stream(
            "GET", sim.url_for("rss", "met-se"), headers={"Accept-Encoding": "gzip"}
        ) as resp,
    ):
        assert resp.headers["content-encoding"] == "gzip"
        compressed = b"".join(resp.iter_raw())
    plain = client.get("/sources/rss/met-se", headers={"Accept-Encoding": "identity"})
    assert "content-encoding" not in plain.headers
    assert gzip.decompress(compressed) == plain.content
    assert plain.content.startswith(b"<?xml")


def test_edit_remove_and_readd(world: World, clock: FixedClock, client: httpx.Client) -> None:
    _rss(world)
    world.edit_item(
        "met-se",
        "rss",
        "w1",
        {"title": "Yellow warning of rain (updated)"},
        at=T0 + timedelta(minutes=5),
    )
    world.remove_item("met-se", "rss", "w1", at=T0 + timedelta(minutes=10))
    world.add_item("met-se", "rss", T0 + timedelta(minutes=15), {"guid": "w1", "title": "Back"})

    def titles() -> list[str]:
        feed = feedparser.parse(io.BytesIO(client.get("/sources/rss/met-se").content))
        return [e.title for e in feed.entries]

    assert titles() == ["Yellow warning of rain"]
    clock.advance(timedelta(minutes=5))
    assert titles() == ["Yellow warning of rain (updated)"]
    clock.advance(timedelta(minutes=5))
    assert titles() == []
    clock.advance(timedelta(minutes=5))
    assert titles() == ["Back"]


def test_atom_variant(world: World, client: httpx.Client) -> None:
    _rss(world)
    resp = client.get("/sources/atom/met-se")
    assert resp.headers["content-type"].startswith("application/atom+xml")
    feed = feedparser.parse(io.BytesIO(resp.content))
    assert feed.version == "atom10"
    assert [e.id for e in feed.entries] == ["w1"]


def test_cap_index_and_document(world: World, client: httpx.Client) -> None:
    world.add_item(
        "metoffice-cap",
        "cap",
        T0 - timedelta(minutes=1),
        {
            "identifier": "urn:oid:2.49.0.1.826.0:2026-01-05:1",
            "sender": "metoffice@example",
            "msg_type": "Update",
            "status": "Actual",
            "scope": "Public",
            "references": ["metoffice@example,urn:oid:0,2026-01-04T10:00:00-00:00"],
            "event": "Rain",
            "severity": "Moderate",
            "urgency": "Expected",
            "certainty": "Likely",
            "area": "South East England",
            "headline": "Yellow warning of rain",
            "description": "Heavy rain",
            "expires": T0 + timedelta(hours=12),
        },
    )
    index = client.get("/sources/cap/metoffice-cap")
    feed = feedparser.parse(io.BytesIO(index.content))
    entry = feed.entries[0]
    assert entry.cap_severity == "Moderate" and entry.cap_msgtype == "Update"
    link = next(li.href for li in entry.links if li.type == "application/cap+xml")
    doc = client.get(link)
    assert doc.status_code == 200
    ns = {"c": "urn:oasis:names:tc:emergency:cap:1.2"}
    root = DET.fromstring(doc.content)
    assert root.findtext("c:identifier", namespaces=ns) == "urn:oid:2.49.0.1.826.0:2026-01-05:1"
    assert root.findtext("c:msgType", namespaces=ns) == "Update"
    assert root.findtext("c:references", namespaces=ns).startswith("metoffice@example,")
    assert root.findtext("c:info/c:area/c:areaDesc", namespaces=ns) == "South East England"
    assert parse_instant(root.findtext("c:sent", namespaces=ns)) == T0 - timedelta(minutes=1)
    assert root.findtext("c:info/c:expires", namespaces=ns).endswith("-00:00")
    assert client.get("/sources/cap/metoffice-cap/nope.xml").status_code == 404


def test_ea_floods_county_filter(world: World, client: httpx.Client, sim: RunningSimulator) -> None:
    base = {
        "description": "River Thames",
        "eaAreaName": "Thames",
        "message": "Flooding",
        "severity": "Flood warning",
        "severityLevel": 2,
        "timeRaised": "2026-01-05T09:12:00",
        "timeMessageChanged": "2026-01-05T09:12:00",
        "timeSeverityChanged": "2026-01-05T09:12:00",
    }
    world.add_item(
        "ea", "ea-floods", T0, {**base, "floodAreaID": "061FWF23Oxford", "county": "Oxfordshire"}
    )
    world.add_item(
        "ea",
        "ea-floods",
        T0,
        {**base, "floodAreaID": "062FAG01", "severityLevel": 3, "county": "Berkshire, Oxfordshire"},
    )
    world.add_item("ea", "ea-floods", T0, {**base, "floodAreaID": "063FWF", "county": "Kent"})
    data = client.get(sim.url_for("ea-floods", "Oxfordshire")).json()
    assert sorted(i["floodAreaID"] for i in data["items"]) == ["061FWF23Oxford", "062FAG01"]
    assert data["items"][0]["@id"].startswith(sim.base_url)
    severe = client.get(
        "/ea/flood-monitoring/id/floods", params={"county": "Oxfordshire", "min-severity": "2"}
    ).json()
    assert [i["floodAreaID"] for i in severe["items"]] == ["061FWF23Oxford"]
    assert severe["items"][0]["timeRaised"] == "2026-01-05T09:12:00"


def test_a_feed_can_be_moved_with_a_redirect(
    world: World, client: httpx.Client, sim: RunningSimulator
) -> None:
    from crisiscomms.simulator.routes_sources import redirect_source

    _rss(world)
    redirect_source(world, "/sources/rss/met-old", "/sources/rss/met-se", status=301)
    moved = client.get("/sources/rss/met-old")
    assert moved.status_code == 301 and moved.headers["location"] == "/sources/rss/met-se"
    followed = client.get("/sources/rss/met-old", follow_redirects=True)
    assert followed.status_code == 200 and b"Yellow warning of rain" in followed.content
    redirect_source(world, "/ea/flood-monitoring/id/floods", "/sources/rss/met-se", status=302)
    assert client.get("/ea/flood-monitoring/id/floods").status_code == 302
    redirect_source(world, "/ea/flood-monitoring/id/floods", None)
    assert client.get("/ea/flood-monitoring/id/floods").status_code == 200


def test_fetcher_follows_a_moved_feed_on_loopback_and_refuses_another_host(
    world: World, sim: RunningSimulator
) -> None:
    """A permanent move on the same host is followed and reported; the same feed offered
    on another host name (localhost vs 127.0.0.1: no registrable domain) is refused."""
    import asyncio

    from crisiscomms.adapters.sources.http import HttpFetcher, make_async_client
    from crisiscomms.domain.errors import PermanentSourceError
    from crisiscomms.simulator.routes_sources import redirect_source

    _rss(world)
    base = sim.base_url
    redirect_source(world, "/sources/rss/met-old", "/sources/rss/met-se", status=308)
    other_host = base.replace("127.0.0.1", "localhost") + "/sources/rss/met-se"
    redirect_source(world, "/sources/rss/met-away", other_host, status=301)

    async def run() -> tuple[str | None, PermanentSourceError]:
        async with make_async_client(timeout=5) as client:
            fetcher = HttpFetcher(client)
            got = await fetcher.fetch(f"{base}/sources/rss/met-old", source_id="met-se",
                                      allow_private=True)
            try:
                await fetcher.fetch(f"{base}/sources/rss/met-away", source_id="met-se",
                                    allow_private=True)
            except PermanentSourceError as exc:
                return got.moved_to, exc
        raise AssertionError("the redirect to another host was followed")

    moved_to, refused = asyncio.run(run())
    assert moved_to == f"{base}/sources/rss/met-se"
    assert refused.error_class == "redirect_refused"
    assert "127.0.0.1" in str(refused) and "localhost" in str(refused)
