"""The post-incident report: golden Markdown and JSON, HTML structure, known figures,
a tampered chain flagged at the top, CSV rows, the CLI."""

from __future__ import annotations

import csv
import io
import json
import os
import sqlite3
import sys
from datetime import timedelta
from html.parser import HTMLParser
from pathlib import Path

import pytest

from crisiscomms.domain.errors import PermanentPublishError, RateLimitedError
from crisiscomms.report import build_incident_report, build_period_report, render
from crisiscomms.services import incidents
from crisiscomms.services import queue as operations
from crisiscomms.services.reports import percentile
from tests.core.helpers import FRI_EVENING, make_world, update

GOLDEN = Path(__file__).parent / "golden"


def build_known_incident(tmp_path: Path, playbooks_dir: Path):
    """A hand-built incident whose answers are known.

    18:00 activate flooding (lead Essex Police). Three lead posts at 18:05, 18:15, 18:25
    (each picked up 30 s later, published at the next tick 60 s after publication);
    facebook refuses the second one for good; X is rate limited for 10 minutes at 18:15;
    one ambulance post needs no approval. Stand down at 19:00.
    """
    w = make_world(tmp_path, playbooks_dir)
    inc = incidents.activate(w.store, w.catalog, w.clock, playbook="flooding",
                             reason="River Chelmer over its banks", operator="alice")
    w.poll()
    posts: list = []
    for n, minute in enumerate((5, 15, 25)):
        w.clock.set(FRI_EVENING + timedelta(minutes=minute))
        posts.append(update("essex-police-x", f"p{n}", at=w.clock.now(),
                            title=f"Police update {n}"))
        w.sources["essex-police-x"].set_snapshot(list(posts))
        if n == 1:
            w.sources["eeast-x"].set_snapshot([update("eeast-x", "a1", at=w.clock.now(),
                                                      title="Ambulance advice")])
            w.publishers["facebook"].script.append(
                PermanentPublishError("(#368) blocked as abusive", channel_id="facebook"))
            w.publishers["x"].script.append(RateLimitedError(
                "429", reset_at=w.clock.now() + timedelta(minutes=10) + timedelta(seconds=60),
                channel_id="x"))
        w.clock.advance(timedelta(seconds=31))
        w.poll()
        w.clock.set(FRI_EVENING + timedelta(minutes=minute, seconds=60))
        w.dispatcher().tick(w.clock.now())
    for minute in range(26, 60):
        w.clock.set(FRI_EVENING + timedelta(minutes=minute, seconds=30))
        w.dispatcher().tick(w.clock.now())
    w.clock.set(FRI_EVENING + timedelta(hours=1))
    incidents.deactivate(w.store, w.catalog, w.clock, incident_id=inc.id,
                         reason="levels falling", operator="bob")
    w.dispatcher().tick(w.clock.now())
    return w, inc


@pytest.fixture
def known(tmp_path: Path, playbooks_dir: Path):
    w, inc = build_known_incident(tmp_path, playbooks_dir)
    report = build_incident_report(w.store, w.catalog, w.store.get_incident(inc.id),
                                   w.clock.now())
    return w, report


def test_figures_of_a_known_incident(known):
    _, r = known
    f = r["figures"]
    assert r["header"]["activated_by"] == "alice" and r["header"]["deactivated_by"] == "bob"
    assert r["header"]["duration_s"] == 3600
    assert f["updates_seen"] == 4
    tta = f["time_to_amplify"]["by_channel"]
    # Mastodon and Bluesky: every post 60 s after the source.
    assert tta["mastodon"] == {"count": 4, "p50_s": 60.0, "p95_s": 60.0, "max_s": 60.0}
    # Facebook lost the second police post for good: 3 of 4.
    assert tta["facebook"]["count"] == 3
    # X: 429 at 18:16, reset 18:26 -> p1 and a1 (18:15) go at 18:26: 660 s.
    assert tta["x"]["count"] == 4 and tta["x"]["max_s"] == 660.0
    assert f["rate_limit_waits"] == 1 and f["rate_limit_wait_total_s"] == 600.0
    assert f["failures"] == 1
    # 4 activation + 4 stand-down + 4x4 updates - 1 failed = 23 published, all out of hours.
    assert f["posts_published"] == 23 and f["posts_out_of_staffed_hours"] == 23
    cov = f["lead_coverage"]
    assert cov["lead_updates"] == 3 and cov["amplified_on_every_channel"] == 2
    assert "facebook: failed" in cov["missed"][0]["reason"]
    ops = [e["action"] for e in r["operators"]]
    assert ops == ["incident.activated", "incident.deactivated"]
    assert r["integrity"]["audit_chain_ok"] is True


def test_percentile_is_nearest_rank():
    assert percentile([], 50) is None
    assert percentile([5.0], 95) == 5.0
    assert percentile([1, 2, 3, 4], 50) == 2
    assert percentile(list(range(1, 101)), 95) == 95


def _golden(name: str, text: str) -> None:
    """Compare with the golden file; only ``UPDATE_GOLDEN=1`` writes one. A missing golden file
    fails (otherwise deleting the goldens would make the test pass on any output)."""
    path = GOLDEN / name
    if os.environ.get("UPDATE_GOLDEN") == "1":
        path.write_text(text)
    assert path.exists(), f"golden file {path} is missing (UPDATE_GOLDEN=1 to write it)"
    assert text == path.read_text(), f"{name} differs (UPDATE_GOLDEN=1 to refresh)"


def test_a_missing_golden_file_fails(tmp_path, monkeypatch):
    monkeypatch.setattr(sys.modules[__name__], "GOLDEN", tmp_path)
    monkeypatch.delenv("UPDATE_GOLDEN", raising=False)
    with pytest.raises(AssertionError, match="is missing"):
        _golden("incident.md", "anything")
    assert not (tmp_path / "incident.md").exists()


def test_golden_markdown_and_json(known):
    _, r = known
    # The head hash covers the real wall-clock time each event was recorded at, so it differs
    # from run to run: the golden files hold a placeholder (the count stays exact).
    head = r["integrity"]["audit_head_hash"]
    _golden("incident.md", render(r, "md").replace(head, "<HEAD-HASH>"))
    _golden("incident.json", render(r, "json").replace(head, "<HEAD-HASH>"))


class _Sections(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.ids: set[str] = set()
        self.tags: list[str] = []
        self.external: list[str] = []

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        self.tags.append(tag)
        if "id" in a:
            self.ids.add(a["id"])
        for key in ("src", "href"):
            if a.get(key, "").startswith(("http", "//")) and tag in ("script", "link", "img"):
                self.external.append(a[key])


def test_html_is_self_contained_with_every_section_and_both_charts(known):
    _, r = known
    html = render(r, "html")
    p = _Sections()
    p.feed(html)
    assert {"header", "figures", "timeline", "operators", "integrity", "chart-timeline",
            "chart-tta"} <= p.ids
    assert p.tags.count("svg") >= 2
    assert p.external == [] and "<script" not in html
    assert "@page { size: A4" in html
    assert "integrity-warning" not in p.ids


def test_tampered_chain_is_flagged_at_the_top(known):
    w, _ = known
    db = sqlite3.connect(w.store.path)
    db.execute("UPDATE audit_events SET actor = 'mallory' WHERE seq = 1")
    db.commit()
    db.close()
    r = build_incident_report(w.store, w.catalog, w.store.get_incident(1), w.clock.now())
    assert r["integrity"]["audit_chain_ok"] is False
    md = render(r, "md")
    assert md.lstrip().startswith("> **WARNING: THE AUDIT CHAIN DID NOT VERIFY.**")
    html = render(r, "html")
    assert html.index("integrity-warning") < html.index("<h1>")


def test_an_intact_chain_not_fully_checked_is_verified_not_did_not_verify(known):
    """The shipped setup: only the service holds CRISISCOMMS_AUDIT_KEY, so an officer's report
    reads keyed events it cannot check. That is "verified; not fully checked", not a failure."""
    from pydantic import SecretStr

    from crisiscomms.adapters.store import open_store
    from crisiscomms.testing import append_audit

    w, _ = known
    service = open_store(f"sqlite:///{w.store.path}", audit_key=SecretStr("k" * 32))
    try:
        append_audit(service, actor="watcher", action="audit.sealed", subject="audit",
                     reason="sealed", now=w.clock.now())
    finally:
        service.close()
    r = build_incident_report(w.store, w.catalog, w.store.get_incident(1), w.clock.now())
    i = r["integrity"]
    assert i["audit_chain_ok"] is True and i["audit_fully_checked"] is False
    assert i["audit_unchecked_events"] == 1 and i["problem"] is None
    assert i["audit_not_fully_checked"] == [
        "1 keyed events not checked (CRISISCOMMS_AUDIT_KEY is not set here)"]
    for fmt in ("md", "html"):
        text = render(r, fmt)
        assert "DID NOT VERIFY" not in text and "None" not in text, fmt
        assert "integrity-warning" not in text and "WARNING" not in text, fmt
        assert "verified; not fully checked: 1 keyed events not checked" in text, fmt
    rows = list(csv.DictReader(io.StringIO(render(r, "csv"))))
    assert {row["audit_chain_ok"] for row in rows} == {"true"}
    assert {row["audit_fully_checked"] for row in rows} == {"false"}


def test_time_going_backwards_is_a_warning_in_the_report(known):
    from crisiscomms.adapters.store import open_store
    from crisiscomms.domain.clock import FixedClock
    from crisiscomms.testing import append_audit

    w, _ = known
    last = w.store.audit_events()[-1].recorded_at
    assert last is not None
    stepped = open_store(f"sqlite:///{w.store.path}",
                         wall_clock=FixedClock(last - timedelta(hours=1)))
    try:
        append_audit(stepped, actor="a", action="test.event", subject="s", reason="r",
                     now=w.clock.now())
    finally:
        stepped.close()
    r = build_incident_report(w.store, w.catalog, w.store.get_incident(1), w.clock.now())
    i = r["integrity"]
    assert i["audit_chain_ok"] is True and i["audit_fully_checked"] is True
    assert i["audit_time_backwards_at"] == [i["audit_events"]]
    md = render(r, "md")
    assert "DID NOT VERIFY" not in md and "not fully checked" not in md
    assert f"time went backwards at event {i['audit_events']}" in md


def test_csv_has_one_row_per_update_and_channel(known):
    _, r = known
    rows = list(csv.DictReader(io.StringIO(render(r, "csv"))))
    messages = [row for row in rows if not row["update"]]
    rows = [row for row in rows if row["update"]]
    assert len(messages) == 4 + 4  # the activation and stand-down messages on 4 channels
    assert len(rows) == 4 * 4
    failed = [row for row in rows if row["state"] == "failed"]
    assert len(failed) == 1 and failed[0]["channel"] == "facebook"
    assert all(row["incident"] == "1" for row in rows)


def test_period_report_counts_weeks_against_caps(tmp_path: Path, playbooks_dir: Path):
    w = make_world(tmp_path, playbooks_dir)
    w.clock.set(FRI_EVENING)
    w.poll()
    w.clock.advance(timedelta(minutes=5))
    w.sources["met-office-ee"].set_snapshot([update("met-office-ee", "m1",
                                                    at=w.clock.now())])
    w.poll()
    for it in w.store.items():
        operations.approve(w.store, w.catalog, w.clock, it.id, "alice", "fine")
    w.dispatcher().tick(w.clock.now())  # held: Friday evening
    w.clock.set(FRI_EVENING + timedelta(days=2, hours=15))  # Monday 09:00
    w.dispatcher().tick(w.clock.now())
    r = build_period_report(w.store, w.catalog, FRI_EVENING - timedelta(days=7),
                            w.clock.now() + timedelta(hours=1), w.clock.now())
    assert {(x["channel"], x["posts"], x["cap"]) for x in r["weeks"]} == {
        ("x", 1, 25), ("facebook", 1, 5)}
    assert {h["channel"] for h in r["held_outside_staffed_hours"]} == {"x", "facebook"}
    assert "Posts per channel per week" in render(r, "md")
    assert "<section id=\"weeks\">" in render(r, "html")


def test_report_cli(cli, home: Path):
    assert cli("report").code == 2
    cli("activate", "flooding", "--reason", "r")
    cli("deactivate", "--reason", "d")
    r = cli("report", "--last", "--format", "json")
    assert r.code == 0 and json.loads(r.out)["header"]["incident"] == 1
    out = home.parent / "out" / "r.html"
    out.parent.mkdir()  # --output never makes folders (a typo would go unnoticed)
    r = cli("report", "1", "--output", str(out))
    assert r.code == 0 and out.read_text().startswith("<!DOCTYPE html>")
    assert cli("report", "1", "--format", "pdf").code == 2
    assert cli("report", "7").code == 2
    r = cli("report", "--from", "2026-01-01T00:00:00Z", "--to", "2027-01-01T00:00:00Z")
    assert r.code == 0 and "Normal-mode report" in r.out
