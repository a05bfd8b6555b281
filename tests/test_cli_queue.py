"""queue, policy explain, window and lead through the CLI; watch --once against the simulator."""

from __future__ import annotations

import json
from pathlib import Path

import yaml

from crisiscomms.domain.clock import FixedClock, parse_instant
from crisiscomms.simulator import World, serve
from crisiscomms.testing import enqueue
from tests.identity_helpers import become

FRI_EVENING = "2026-11-27T18:00:00Z"  # outside staffed hours
MON_MORNING = "2026-11-30T09:00:00Z"


def _items(cli, *args):
    return json.loads(cli("queue", "list", "--json", *args).out)


def test_queue_actions_are_audited_and_explained(cli, monkeypatch):
    become(monkeypatch, "alice")
    assert cli("--at", FRI_EVENING, "activate", "major-incident", "--reason", "r").code == 0
    items = _items(cli)
    assert len(items) == 2 and {i["state"] for i in items} == {"queued"}
    x_item = next(i for i in items if i["channel"] == "x")

    become(monkeypatch, "bob")
    r = cli("--at", FRI_EVENING, "queue", "edit", str(x_item["id"]), "--text",
            "A major incident has been declared. #EssexMajorIncident")
    assert r.code == 0, r.err
    shown = json.loads(cli("queue", "show", str(x_item["id"]), "--json").out)
    assert shown["edited_text"].startswith("A major incident has been declared.")
    assert shown["text"].startswith("A major incident has been declared in Essex")  # original kept
    assert shown["history"][-1]["actor"] == "bob"

    r = cli("--at", FRI_EVENING, "queue", "hold", str(x_item["id"]), "--reason", "check wording")
    assert r.code == 0 and json.loads(cli("queue", "show", str(x_item["id"]), "--json").out)[
        "state"] == "held"
    r = cli("--at", FRI_EVENING, "policy", "explain", str(x_item["id"]), "--json")
    info = json.loads(r.out)
    assert info["decision"] == "hold" and "scheduled" in info["reason"]
    r = cli("--at", FRI_EVENING, "queue", "retry", str(x_item["id"]))
    assert r.code == 0
    r = cli("--at", FRI_EVENING, "policy", "explain", str(x_item["id"]))
    assert r.code == 0 and "publish" in r.out and "crisis bypass" in r.out

    fb = next(i for i in items if i["channel"] == "facebook")
    assert cli("queue", "reject", str(fb["id"]), "--reason", "not for facebook").code == 0
    r = cli("queue", "approve", str(fb["id"]))
    assert r.code == 3 and "is rejected" in r.err
    assert cli("queue", "show", "999").code == 2

    actions = [e["action"] for e in json.loads(cli("audit", "log", "--json").out)]
    assert actions == ["incident.activated", "queue.edit", "queue.hold", "queue.retry",
                       "queue.reject"]
    assert cli("audit", "verify").code == 0


def test_edit_too_long_for_x_is_refused(cli):
    cli("activate", "major-incident", "--reason", "r")
    x_item = next(i for i in _items(cli) if i["channel"] == "x")
    r = cli("queue", "edit", str(x_item["id"]), "--text", "word " * 100)
    assert r.code == 2 and "too long for x" in r.err


def test_windows_and_explain_for_normal_items(cli, home: Path):
    from crisiscomms.adapters.store import open_store
    from crisiscomms.domain.models import ActionKind, NewOutboxItem

    cli("status")  # creates the database
    store = open_store(f"sqlite:///{home / 'crisiscomms.db'}")
    enqueue(store, [NewOutboxItem(dedupe_key="normal:x:1", channel_id="x",
                                 action=ActionKind.POST, text="Flu clinic tonight")],
                  now=parse_instant(FRI_EVENING))
    store.close()
    r = cli("--at", FRI_EVENING, "policy", "explain", "1", "--json")
    assert json.loads(r.out)["decision"] == "needs_approval"
    assert cli("--at", FRI_EVENING, "queue", "approve", "1").code == 0
    info = json.loads(cli("--at", FRI_EVENING, "policy", "explain", "1", "--json").out)
    assert info["decision"] == "hold" and "outside staffed hours" in info["reason"]
    assert info["would_go_at"] == "2026-11-30T08:00:00.000000Z"
    r = cli("--at", FRI_EVENING, "window", "add", "--from", "2026-11-27T17:30:00Z", "--to",
            "2026-11-27T20:00:00Z", "--reason", "live Q&A on flu jabs")
    assert r.code == 0 and "window 1" in r.out
    info = json.loads(cli("--at", FRI_EVENING, "policy", "explain", "1", "--json").out)
    assert info["decision"] == "publish"
    assert json.loads(cli("window", "list", "--json").out)[0]["reason"] == "live Q&A on flu jabs"
    assert cli("window", "add", "--from", "2026-11-27T20:00:00Z", "--to", "2026-11-27T19:00:00Z",
               "--reason", "x").code == 2
    assert cli("window", "remove", "1").code == 0
    assert cli("window", "remove", "1").code == 2


def test_lead_change_is_audited_and_reported(cli, monkeypatch):
    cli("activate", "flooding", "--reason", "r")
    become(monkeypatch, "alice")
    r = cli("lead", "ecfrs-x", "--reason", "fire service takes the lead")
    assert r.code == 0 and "lead is now ecfrs-x" in r.out
    assert cli("lead", "met-office-ee", "--reason", "x").code == 2
    assert cli("lead", "ecfrs-x", "--reason", "x").code == 3
    rep = json.loads(cli("report", "--last", "--format", "json").out)
    assert rep["header"]["lead"] == "ecfrs-x"
    assert rep["header"]["lead_changes"][0]["from"] == "essex-police-x"
    assert rep["header"]["lead_changes"][0]["by"] == "alice"


def test_watch_once_dry_run_against_the_simulator(cli, playbooks_dir: Path, monkeypatch):
    world = World(FixedClock(parse_instant(MON_MORNING)))
    with serve(world) as sim:
        data = yaml.safe_load((playbooks_dir / "sources.yaml").read_text())
        for s in data["sources"]:
            if s["kind"] == "rss":
                s["url"] = sim.url_for("rss", s["id"])
            elif s["kind"] == "ea-floods":
                s["url"] = sim.url_for("ea-floods")
        (playbooks_dir / "sources.yaml").write_text(yaml.safe_dump(data))
        monkeypatch.setenv("CRISISCOMMS_ALLOW_PRIVATE_SOURCES", "true")
        r = cli("--at", MON_MORNING, "watch", "--once", "--dry-run", "--json")
        assert r.code == 0, r.err
        first = json.loads(r.out)
        assert first["polled"] == 2 and first["failed"] == 0  # the watch-always sources
        world.add_item("met-office-ee", "rss", parse_instant(MON_MORNING), {
            "guid": "w1", "title": "Yellow warning of wind affecting East of England",
            "link": "https://www.metoffice.gov.uk/w1", "description": "Gusts of 60 mph."})
        # The first run made this database live (its sources were polled): a second what-if
        # run on it says so explicitly.
        r = cli("--at", "2026-11-30T09:10:00Z", "--at-on-live-database", "watch", "--once",
                "--dry-run", "--json")
        out = json.loads(r.out)
        assert out["new_updates"] == 1 and out["queued"] == 2
    assert {i["state"] for i in _items(cli)} == {"needs_approval"}
    r = cli("status", "--json")
    assert json.loads(r.out)["queue"] == {"needs_approval": 2}
