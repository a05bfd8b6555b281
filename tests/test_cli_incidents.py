"""The crisis flag through the CLI: activate, status, deactivate, refusals, --at."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import yaml

from tests.identity_helpers import become


def test_activate_status_deactivate_round_trip(cli, monkeypatch):
    become(monkeypatch, "alice")
    r = cli("--at", "2026-11-27T18:00:00Z", "activate", "flooding", "--reason", "River Chelmer",
            "--json")
    assert r.code == 0, r.err
    inc = json.loads(r.out)
    assert inc["id"] == 1 and inc["lead"] == "essex-police-x"
    assert inc["hashtags"] == ["#EssexFloods"]
    assert inc["activated_at"] == "2026-11-27T18:00:00.000000Z"
    assert inc["activated_by"] == "alice"

    r = cli("status", "--json")
    data = json.loads(r.out)
    assert data["crisis_flag"] is True
    assert data["incidents"][0]["reason"] == "River Chelmer"
    # The activation message is queued for each channel of the playbook.
    assert data["queue"] == {"queued": 4}

    r = cli("status")
    assert "crisis flag: ON" in r.out and "River Chelmer" in r.out

    become(monkeypatch, "bob")
    r = cli("deactivate", "--reason", "levels falling")
    assert r.code == 0, r.err
    assert "crisis flag off" in r.out
    assert json.loads(cli("status", "--json").out)["crisis_flag"] is False

    r = cli("audit", "verify")
    assert r.code == 0 and "3 events" not in r.err
    log = json.loads(cli("audit", "log", "--json").out)
    assert [e["action"] for e in log] == ["incident.activated", "incident.deactivated"]
    assert log[0]["actor"] == "alice" and log[1]["actor"] == "bob"


def test_custom_hashtag_and_lead(cli):
    r = cli("activate", "flooding", "--reason", "r", "--hashtag", "ChelmsfordFlood",
            "--lead", "ecfrs-x", "--json")
    assert r.code == 0, r.err
    inc = json.loads(r.out)
    assert inc["hashtags"] == ["#ChelmsfordFlood"] and inc["lead"] == "ecfrs-x"


def test_invalid_hashtag_is_a_usage_error(cli):
    r = cli("activate", "flooding", "--reason", "r", "--hashtag", "#not valid")
    assert r.code == 2
    assert "--hashtag" in r.err and "invalid hashtag" in r.err
    assert len(r.err.strip().splitlines()) == 1
    assert json.loads(cli("status", "--json").out)["crisis_flag"] is False


def test_unknown_playbook_lead_and_missing_reason(cli):
    r = cli("activate", "volcano", "--reason", "r")
    assert r.code == 2 and "unknown playbook 'volcano'" in r.err
    r = cli("activate", "flooding", "--reason", "r", "--lead", "met-office-ee")
    assert r.code == 2 and "not an allowed lead" in r.err
    r = cli("activate", "flooding", "--reason", "  ")
    assert r.code == 2 and "reason" in r.err
    r = cli("activate", "flooding")
    assert r.code == 2 and "--reason" in r.err


def test_second_activation_of_same_playbook_is_refused(cli):
    assert cli("activate", "flooding", "--reason", "r").code == 0
    r = cli("activate", "flooding", "--reason", "again")
    assert r.code == 3 and "already active as incident 1" in r.err
    # A different playbook may run alongside.
    assert cli("activate", "major-incident", "--reason", "r").code == 0
    r = cli("deactivate", "--reason", "x")
    assert r.code == 2 and "several incidents are active (1, 2)" in r.err
    assert cli("deactivate", "2", "--reason", "x").code == 0
    r = cli("deactivate", "2", "--reason", "x")
    assert r.code == 3 and "already stood down" in r.err


def test_deactivate_without_active_incident(cli):
    r = cli("deactivate", "--reason", "x")
    assert r.code == 2 and "no incident is active" in r.err
    r = cli("deactivate", "99", "--reason", "x")
    assert r.code == 2 and "unknown incident 99" in r.err


def test_unpinned_x_source_refuses_activation_and_is_audited(cli, playbooks_dir: Path,
                                                             monkeypatch):
    become(monkeypatch, "alice")
    data = yaml.safe_load((playbooks_dir / "sources.yaml").read_text())
    for s in data["sources"]:
        if s["id"] == "ecfrs-x":
            s["x_user_id"] = ""
    (playbooks_dir / "sources.yaml").write_text(yaml.safe_dump(data))
    r = cli("activate", "flooding", "--reason", "r")
    assert r.code == 3
    assert "ecfrs-x (@ECFRS)" in r.err and "pinned" in r.err
    log = json.loads(cli("audit", "log", "--json").out)
    assert log[-1]["action"] == "incident.activate.refused" and log[-1]["actor"] == "alice"
    assert json.loads(cli("status", "--json").out)["crisis_flag"] is False


def test_unlisted_operator_is_refused_and_audited(cli, playbooks_dir: Path, monkeypatch):
    policy = yaml.safe_load((playbooks_dir / "policy.yaml").read_text())
    policy["operators"] = ["alice"]
    (playbooks_dir / "policy.yaml").write_text(yaml.safe_dump(policy))
    become(monkeypatch, "mallory")
    r = cli("activate", "flooding", "--reason", "r")
    assert r.code == 3 and "mallory" in r.err
    log = json.loads(cli("audit", "log", "--json").out)
    assert log[-1]["action"] == "incident.activate.refused"
    become(monkeypatch, "alice")
    assert cli("activate", "flooding", "--reason", "r").code == 0


def test_bad_at_is_a_usage_error(cli):
    r = cli("--at", "yesterday", "status")
    assert r.code == 2 and "--at" in r.err


def test_tampered_audit_row_is_named(cli, home: Path):
    cli("activate", "flooding", "--reason", "r")
    cli("deactivate", "--reason", "done")
    cli("activate", "major-incident", "--reason", "r2")
    db = sqlite3.connect(home / "crisiscomms.db")
    db.execute("UPDATE audit_events SET reason = 'forged' WHERE seq = 2")
    db.commit()
    db.close()
    r = cli("audit", "verify")
    assert r.code == 1
    assert "event 2" in r.err and "does not match its hash" in r.err


def test_deleted_and_reordered_audit_rows_are_caught(cli, home: Path):
    for i in range(3):
        cli("activate", "flooding", "--reason", f"r{i}")
        cli("deactivate", "--reason", "done")
    db = sqlite3.connect(home / "crisiscomms.db")
    db.execute("DELETE FROM audit_events WHERE seq = 3")
    db.commit()
    r = cli("audit", "verify")
    assert r.code == 1 and "event 3 is missing" in r.err
    # Put it back in the wrong place: swap the contents of two rows.
    db.execute("DELETE FROM audit_events")
    db.commit()
    db.close()
    r = cli("audit", "verify")
    assert r.code == 1 and "deleted" in r.err


def test_deleting_the_last_audit_row_is_caught(cli, home: Path):
    cli("activate", "flooding", "--reason", "r")
    cli("deactivate", "--reason", "done")
    db = sqlite3.connect(home / "crisiscomms.db")
    db.execute("DELETE FROM audit_events WHERE seq = 2")
    db.commit()
    db.close()
    r = cli("audit", "verify")
    assert r.code == 1 and "deleted" in r.err


def test_data_dir_and_database_permissions(cli, home: Path):
    cli("status")
    assert (home.stat().st_mode & 0o777) == 0o700
    assert ((home / "crisiscomms.db").stat().st_mode & 0o777) == 0o600


def test_status_shows_a_source_that_moved_for_good(cli, home):
    """A permanent redirect's new URL, recorded by the adapter in the source state
    (PollResult.extra["moved_to"]), is shown by `status` so sources.yaml can be updated."""
    from crisiscomms.adapters.store import open_store
    from crisiscomms.domain.models import SourceState

    assert cli("status").code == 0  # creates the database
    new = "https://weather.metoffice.gov.uk/public/data/PWSCache/WarningsRSS/Region/ee"
    store = open_store(f"sqlite:///{home / 'crisiscomms.db'}")
    try:
        with store.unit_of_work() as uow:
            uow.sources.save(SourceState("met-office-ee", extra={"moved_to": new}))
            uow.sources.save(SourceState("ea-floods-essex", extra={"moved_to": None}))
            uow.commit()
    finally:
        store.close()
    data = json.loads(cli("status", "--json").out)
    moved = {s["source"]: s["moved_to"] for s in data["sources"]}
    assert moved == {"met-office-ee": new, "ea-floods-essex": None}
    out = cli("status").out
    assert f"source met-office-ee moved permanently to {new}" in out
    assert "ea-floods-essex moved" not in out
