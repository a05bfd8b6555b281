"""The on-call path (issue 13): typos are errors, not "no items"; every change goes through the
operator check; the log level is accepted in capitals."""

from __future__ import annotations

import json

import yaml


def test_an_unknown_state_is_an_error_listing_the_valid_ones(cli):
    cli("activate", "flooding", "--reason", "r")
    r = cli("queue", "list", "--state", "needs-approval")
    assert r.code == 2
    assert "needs-approval" in r.err and "needs_approval" in r.err
    assert len(r.err.strip().splitlines()) == 1


def test_an_unknown_channel_or_incident_is_an_error(cli):
    cli("activate", "flooding", "--reason", "r")
    r = cli("queue", "list", "--channel", "twitter")
    assert r.code == 2 and "twitter" in r.err and "x" in r.err
    r = cli("queue", "list", "--incident", "99")
    assert r.code == 2 and "unknown incident 99" in r.err


def test_queue_list_has_column_headers(cli):
    cli("activate", "flooding", "--reason", "r")
    first = cli("queue", "list").out.splitlines()[0]
    assert first.split()[:4] == ["ID", "STATE", "CHANNEL", "ACTION"]


def test_window_remove_goes_through_the_operator_check(cli, playbooks_dir):
    policy = yaml.safe_load((playbooks_dir / "policy.yaml").read_text())
    policy["operators"] = ["alice"]
    (playbooks_dir / "policy.yaml").write_text(yaml.safe_dump(policy))
    r = cli("window", "add", "--from", "2026-12-02T10:00:00Z", "--to", "2026-12-02T11:00:00Z",
            "--reason", "Q&A", "--operator", "alice")
    assert r.code == 0, r.err
    r = cli("window", "remove", "1", "--reason", "oops", "--operator", "mallory")
    assert r.code == 3 and "mallory" in r.err
    assert len(json.loads(cli("window", "list", "--json").out)) == 1
    log = json.loads(cli("audit", "log", "--json").out)
    assert any(e["action"] == "window.remove.refused" and e["actor"] == "mallory" for e in log)


def test_the_log_level_may_be_written_in_capitals(cli, monkeypatch):
    monkeypatch.setenv("CRISISCOMMS_LOG_LEVEL", "DEBUG")
    assert cli("status").code == 0
