"""The report the board reads (issue 13, finding 13): every item with its final state and how
it got there, approvals linked to the update, each section scoped to its incident, the lead
count agreeing with the drill, the period report's caps and held lines, charts that mean
something, the audit head in every format, and every time with its zone."""

from __future__ import annotations

import csv
import io
import json
import re
from datetime import timedelta
from pathlib import Path

import pytest

from crisiscomms.report import build_incident_report, build_period_report, render
from crisiscomms.services import incidents
from crisiscomms.services import queue as operations
from crisiscomms.testing import MemoryStore
from tests.core.helpers import FRI_EVENING, make_world, update

MET = "met-office-ee"
POLICE = "essex-police-x"


def _tick_minutes(w, start, minutes: int) -> None:
    for m in range(minutes):
        w.clock.set(start + timedelta(minutes=m))
        w.dispatcher().tick(w.clock.now())


def build_two_incidents(tmp_path: Path, playbooks_dir: Path, store: str = "sqlite"):
    """Friday 27 Nov 2026 (GMT).

    16:30 baseline poll. 16:45 a Met Office flood warning becomes two normal-mode items that
    need approval; 17:05 alice approves them; they are held (outside staffed hours) at every
    dispatcher tick 17:05-17:09. 17:15 a police post (before the incident). 18:00 alice
    activates flooding (incident 1): the police post is backfilled. 18:10 a second police post.
    18:20 carol activates major-incident (incident 2). 18:25 a third police post (queued for
    both). 18:30 bob rejects the held Met Office items. 18:40 carol stands incident 2 down,
    19:00 bob stands incident 1 down.
    """
    w = make_world(tmp_path, playbooks_dir, at=FRI_EVENING - timedelta(minutes=90))
    if store == "memory":
        w.store.close()
        w.store = MemoryStore()  # type: ignore[assignment]
    w.poll()
    w.clock.set(FRI_EVENING - timedelta(minutes=75))
    met = update(MET, "m1", at=w.clock.now(), title="Flood warning for the River Chelmer")
    w.sources[MET].set_snapshot([met])
    w.poll()
    normal = [it.id for it in w.store.items()]
    assert len(normal) == 2
    w.clock.set(FRI_EVENING - timedelta(minutes=55))
    for item_id in normal:
        operations.approve(w.store, w.catalog, w.clock, item_id, "alice",
                           "warning for Chelmsford")
    _tick_minutes(w, FRI_EVENING - timedelta(minutes=55), 5)
    police = [update(POLICE, "p0", at=FRI_EVENING - timedelta(minutes=45),
                     title="Police: A12 surface water")]
    w.sources[POLICE].set_snapshot(list(police))
    w.clock.set(FRI_EVENING)
    inc1 = incidents.activate(w.store, w.catalog, w.clock, playbook="flooding",
                              reason="River Chelmer over its banks", operator="alice")
    w.poll()
    _tick_minutes(w, FRI_EVENING + timedelta(minutes=1), 3)
    w.clock.set(FRI_EVENING + timedelta(minutes=10))
    police.append(update(POLICE, "p1", at=w.clock.now(), title="Police: roads closed"))
    w.sources[POLICE].set_snapshot(list(police))
    w.poll()
    _tick_minutes(w, FRI_EVENING + timedelta(minutes=11), 3)
    w.clock.set(FRI_EVENING + timedelta(minutes=20))
    inc2 = incidents.activate(w.store, w.catalog, w.clock, playbook="major-incident",
                              reason="cyber attack on the hospital", operator="carol")
    _tick_minutes(w, FRI_EVENING + timedelta(minutes=21), 2)
    w.clock.set(FRI_EVENING + timedelta(minutes=25))
    police.append(update(POLICE, "p2", at=w.clock.now(), title="Police: rest centre open"))
    w.sources[POLICE].set_snapshot(list(police))
    w.poll()
    _tick_minutes(w, FRI_EVENING + timedelta(minutes=26), 3)
    w.clock.set(FRI_EVENING + timedelta(minutes=30))
    for item_id in normal:
        operations.reject(w.store, w.catalog, w.clock, item_id, "bob",
                          "superseded by incident coverage")
    w.clock.set(FRI_EVENING + timedelta(minutes=40))
    incidents.deactivate(w.store, w.catalog, w.clock, incident_id=inc2.id,
                         reason="systems restored", operator="carol")
    _tick_minutes(w, FRI_EVENING + timedelta(minutes=41), 2)
    w.clock.set(FRI_EVENING + timedelta(hours=1))
    incidents.deactivate(w.store, w.catalog, w.clock, incident_id=inc1.id,
                         reason="levels falling", operator="bob")
    _tick_minutes(w, FRI_EVENING + timedelta(hours=1), 2)
    return w, inc1, inc2, normal


@pytest.fixture(params=["sqlite", "memory"])
def two(request, tmp_path: Path, playbooks_dir: Path):
    w, inc1, inc2, normal = build_two_incidents(tmp_path, playbooks_dir, request.param)
    r1 = build_incident_report(w.store, w.catalog, w.store.get_incident(inc1.id), w.clock.now())
    r2 = build_incident_report(w.store, w.catalog, w.store.get_incident(inc2.id), w.clock.now())
    return w, r1, r2, normal


def _entry(report, external_id):
    return next(u for u in report["timeline"] if u["external_id"] == external_id)


def test_held_then_rejected_items_appear_with_final_state_and_how(two):
    _, r1, _, normal = two
    met = _entry(r1, "m1")
    states = {o["item"]: o["state"] for o in met["outcomes"]}
    assert states == {normal[0]: "rejected", normal[1]: "rejected"}
    o = met["outcomes"][0]
    assert o["mode"] == "normal"
    assert [(d["action"], d["by"], d["reason"]) for d in o["decisions"]] == [
        ("approve", "alice", "warning for Chelmsford"),
        ("reject", "bob", "superseded by incident coverage")]
    # How it got there: held once (re-held at every dispatcher tick), not one line per tick.
    held = [h for h in o["history"] if h["state"] == "held"]
    assert len(held) == 1 and held[0]["times"] >= 5
    assert held[0]["first_at"] < held[0]["last_at"]
    md = render(r1, "md")
    block = md[md.index("Flood warning for the River Chelmer"):]
    block = block[:block.index("\n### ")] if "\n### " in block else block
    assert "not relayed" not in block and "rejected" in block and "bob" in block
    assert r1["figures"]["items_by_state"]["rejected"] == 2


def test_approvals_show_the_update_who_when_and_why(two):
    _, r1, _, _ = two
    approvals = [e for e in r1["operators"] if e["action"] == "queue.approve"]
    assert len(approvals) == 2
    about = approvals[0]["about"]
    assert about["source"] == MET and about["title"] == "Flood warning for the River Chelmer"
    assert about["text"] == "text of m1" and about["channel"] in ("x", "facebook")
    assert approvals[0]["actor"] == "alice" and approvals[0]["reason"].endswith(
        "warning for Chelmsford")
    md = render(r1, "md")
    line = next(ln for ln in md.splitlines() if "queue.approve" in ln)
    assert "Flood warning for the River Chelmer" in line and "2026-11-27 17:05 GMT" in line
    html = render(r1, "html")
    assert "https://example.org/met-office-ee/m1" in html


def test_each_incident_report_keeps_to_its_own_incident(two):
    _, r1, r2, _ = two
    subjects1 = {e["subject"] for e in r1["operators"]}
    actors1 = {e["actor"] for e in r1["operators"]}
    assert "incident:2" not in subjects1 and "carol" not in actors1
    assert {"incident:1"} <= subjects1
    assert all(o.get("incident") in (1, None) for u in r1["timeline"] for o in u["outcomes"])
    subjects2 = {e["subject"] for e in r2["operators"]}
    assert "incident:1" not in subjects2 and "alice" not in {e["actor"] for e in r2["operators"]}
    assert all(o.get("incident") in (2, None) for u in r2["timeline"] for o in u["outcomes"])
    assert all(m["incident"] == 2 for m in r2["messages"])


def test_a_backfilled_lead_update_counts_as_the_drill_counts_it(two):
    _, r1, _, _ = two
    p0 = _entry(r1, "p0")
    assert p0["baseline"] is True and p0["disposition"].startswith("queued")
    cov = r1["figures"]["lead_coverage"]
    assert cov["lead_updates"] == 3 and cov["amplified_on_every_channel"] == 3


def test_period_report_counts_crisis_posts_apart_and_one_line_per_held_item(two):
    w, _, _, normal = two
    start, end = FRI_EVENING - timedelta(hours=3), FRI_EVENING + timedelta(hours=3)
    r = build_period_report(w.store, w.catalog, start, end, w.clock.now())
    rows = {x["channel"]: x for x in r["weeks"]}
    assert rows["x"]["posts"] == 0 and rows["x"]["crisis_posts"] > 0
    assert rows["x"]["over_cap"] is False
    held = r["held_outside_staffed_hours"]
    assert sorted(h["item"] for h in held) == sorted(normal)
    assert all(h["times"] >= 5 and h["state_now"] == "rejected" for h in held)
    md = render(r, "md")
    assert "crisis" in md.lower() and "section 11" in md.lower()


def test_every_format_of_both_reports_carries_the_audit_head(two):
    w, r1, _, _ = two
    chain = w.store.verify_audit()
    period = build_period_report(w.store, w.catalog, FRI_EVENING - timedelta(hours=3),
                                 FRI_EVENING + timedelta(hours=3), w.clock.now())
    for r in (r1, period):
        for fmt in ("md", "html", "json", "csv"):
            text = render(r, fmt)
            assert chain.head_hash in text, (r["kind"], fmt)
            assert str(chain.count) in text
        rows = list(csv.DictReader(io.StringIO(render(r, "csv"))))
        assert rows and all(row["audit_head_hash"] == chain.head_hash
                            and row["audit_events"] == str(chain.count)
                            and row["audit_chain_ok"] == "true" for row in rows)


def test_per_item_what_was_seen_decided_and_sent(two):
    _, r1, _, _ = two
    p1 = _entry(r1, "p1")
    assert p1["text"] == "text of p1" and p1["seen_at"].endswith("Z")
    x = next(o for o in p1["outcomes"] if o["channel"] == "x")
    assert x["state"] == "published" and x["post_url"]
    html = render(r1, "html")
    assert f'href="{x["post_url"]}"' in html
    assert "text of p1" in html


def test_every_time_shown_carries_its_zone(two):
    _, r1, _, _ = two
    md = render(r1, "md")
    assert "2026-11-27 18:00 GMT" in md
    assert not re.search(r"\d\d:\d\d:\d\d\.\d{6}Z", md)
    html = render(r1, "html")
    assert not re.search(r">[^<]*\d\d:\d\d:\d\d\.\d{6}Z", html)
    data = json.loads(render(r1, "json"))
    assert data["header"]["activated_at"] == "2026-11-27T18:00:00.000000Z"
    assert data["header"]["time_zone"] == "Europe/London"


def test_naive_from_to_mean_the_policy_zone(cli, home: Path):
    r = cli("report", "--from", "2026-07-01T00:00", "--to", "2026-07-02T00:00",
            "--format", "json")
    assert r.code == 0, r.err
    header = json.loads(r.out)["header"]
    assert header["from"] == "2026-06-30T23:00:00.000000Z"
    assert header["to"] == "2026-07-01T23:00:00.000000Z"


def test_an_empty_report_draws_no_chart(cli, home: Path):
    cli("activate", "flooding", "--reason", "r")
    cli("deactivate", "--reason", "d")
    r = cli("report", "--last", "--format", "html")
    assert r.code == 0
    assert "<svg" not in r.out and "Nothing to chart" in r.out


def test_wide_tables_wrap_for_print_and_screen(two):
    _, r1, _, _ = two
    html = render(r1, "html")
    assert "table-layout: fixed" in html and "overflow-wrap: anywhere" in html


def test_chart_legends_do_not_cover_the_data(two):
    import matplotlib.pyplot as plt

    from crisiscomms.report.charts import timeline_figure, tta_figure

    _, r1, _, _ = two
    for build in (timeline_figure, tta_figure):
        fig = build(r1)
        assert fig is not None
        try:
            fig.canvas.draw()
            legends = [*fig.legends, *[ax.get_legend() for ax in fig.axes if ax.get_legend()]]
            assert legends, build
            for ax in fig.axes:
                for leg in legends:
                    assert not leg.get_window_extent().overlaps(ax.get_window_extent()), build
        finally:
            plt.close(fig)


def test_to_without_from_is_an_error_naming_it(cli, home: Path):
    cli("activate", "flooding", "--reason", "r")
    r = cli("report", "--last", "--to", "2026-07-01T00:00", "--format", "json")
    assert r.code == 2 and "--to" in r.err and "--from" in r.err
    r = cli("report", "--from", "2026-07-01T25:00")
    assert r.code == 2 and "--from" in r.err and "2026-07-01T25:00" in r.err


def test_a_decision_keeps_its_words_when_there_is_no_reason_after_the_name():
    from crisiscomms.services.reports import _why

    assert _why("approved by alice: warning for Chelmsford") == "warning for Chelmsford"
    assert _why("approved by bob acting for alice: ok: go") == "ok: go"
    assert _why("retry by alice (forced resend)") == "retry by alice (forced resend)"


def test_a_self_approval_shows_in_the_reports_decisions(tmp_path: Path, playbooks_dir: Path):
    """The queue writes the self-approval marker to the audit event, not the item's history:
    the report's decisions must still say so, not show an ordinary approval."""
    import yaml

    path = playbooks_dir / "policy.yaml"
    policy = yaml.safe_load(path.read_text())
    policy.update(roles={"oncall-lead": ["alice"]}, self_approval=["oncall-lead"])
    path.write_text(yaml.safe_dump(policy))
    w = make_world(tmp_path, playbooks_dir, at=FRI_EVENING - timedelta(minutes=90))
    w.poll()
    w.clock.set(FRI_EVENING - timedelta(minutes=75))
    w.sources[MET].set_snapshot([update(MET, "m1", at=w.clock.now(), title="Flood warning")])
    w.poll()
    item, other = (it.id for it in w.store.items())
    w.clock.set(FRI_EVENING - timedelta(minutes=60))
    operations.edit(w.store, w.catalog, w.clock, item, "alice", "Our own words")
    operations.approve(w.store, w.catalog, w.clock, item, "alice", "nobody else on call")
    operations.approve(w.store, w.catalog, w.clock, other, "alice", "checked")
    _tick_minutes(w, FRI_EVENING - timedelta(minutes=59), 3)
    r = build_period_report(w.store, w.catalog, FRI_EVENING - timedelta(hours=3),
                            FRI_EVENING + timedelta(hours=1), w.clock.now())
    held = {h["item"]: h for h in r["held_outside_staffed_hours"]}
    (mine,) = [d for d in held[item]["decisions"] if d["action"] == "approve"]
    assert mine["self_approval"] == "oncall-lead" and mine["reason"] == "nobody else on call"
    (plain,) = [d for d in held[other]["decisions"] if d["action"] == "approve"]
    assert plain["self_approval"] is None
    md, html = render(r, "md"), render(r, "html")
    csv_text = render(r, "csv")
    for text in (md, html, csv_text):
        assert text.count("self-approval (role oncall-lead)") == 1, text


def test_a_self_approval_is_found_on_the_audit_trail_when_the_history_lacks_it():
    from datetime import UTC, datetime

    from crisiscomms.domain.clock import isoformat
    from crisiscomms.domain.models import ItemEvent
    from crisiscomms.services.reports import _decisions

    at = datetime(2026, 11, 27, 17, 0, tzinfo=UTC)
    e = ItemEvent(at, "approved", "approved by alice: 2 a.m.", "alice", {"action": "approve"})
    marks = {("item:7", isoformat(at)): "oncall-lead"}
    assert _decisions(7, [e], marks)[0]["self_approval"] == "oncall-lead"
    assert _decisions(8, [e], marks)[0]["self_approval"] is None
