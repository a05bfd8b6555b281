"""The on-call path (issue 13): typos are errors, not "no items"; every change goes through the
operator check; the log level is accepted in capitals."""

from __future__ import annotations

import json

import yaml

from tests.identity_helpers import become


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


def test_window_remove_goes_through_the_operator_check(cli, playbooks_dir, monkeypatch):
    policy = yaml.safe_load((playbooks_dir / "policy.yaml").read_text())
    policy["operators"] = ["alice"]
    (playbooks_dir / "policy.yaml").write_text(yaml.safe_dump(policy))
    become(monkeypatch, "alice")
    r = cli("window", "add", "--from", "2026-12-02T10:00:00Z", "--to", "2026-12-02T11:00:00Z",
            "--reason", "Q&A")
    assert r.code == 0, r.err
    become(monkeypatch, "mallory")
    r = cli("window", "remove", "1", "--reason", "oops")
    assert r.code == 3 and "mallory" in r.err
    assert len(json.loads(cli("window", "list", "--json").out)) == 1
    log = json.loads(cli("audit", "log", "--json").out)
    assert any(e["action"] == "window.remove.refused" and e["actor"] == "mallory" for e in log)


def test_the_log_level_may_be_written_in_capitals(cli, monkeypatch):
    monkeypatch.setenv("CRISISCOMMS_LOG_LEVEL", "DEBUG")
    assert cli("status").code == 0


def test_report_output_into_a_missing_folder_is_an_error(cli, tmp_path):
    cli("activate", "flooding", "--reason", "r")
    target = tmp_path / "no" / "such" / "dir" / "r.md"
    r = cli("report", "--last", "--output", str(target))
    assert r.code == 2 and "does not exist" in r.err and str(target.parent) in r.err
    assert not (tmp_path / "no").exists()


def test_an_empty_database_file_is_not_silently_recreated(cli, home):
    home.mkdir(parents=True, exist_ok=True)
    db = home / "crisiscomms.db"
    db.write_bytes(b"")
    import os
    import time

    os.utime(db, (time.time() - 3600, time.time() - 3600))  # an old, truncated file
    r = cli("status")
    assert r.code == 1 and "empty" in r.err and "crisiscomms.db" in r.err
    assert (home / "crisiscomms.db").stat().st_size == 0  # left as found


def test_ctrl_c_on_watch_exits_130(tmp_path, playbooks_dir):
    """SIGINT (Ctrl-C) is an interruption: exit 130; SIGTERM is a clean stop: exit 0."""
    import os
    import signal
    import subprocess
    import sys
    import time

    env = {k: v for k, v in os.environ.items() if not k.startswith("CRISISCOMMS_")}
    env.update(CRISISCOMMS_HOME=str(tmp_path / "h"), CRISISCOMMS_PLAYBOOKS_DIR=str(playbooks_dir),
               CRISISCOMMS_LOG_LEVEL="warning")
    codes = {}
    for sig in (signal.SIGINT, signal.SIGTERM):
        proc = subprocess.Popen([sys.executable, "-m", "crisiscomms", "watch", "--dry-run",
                                 "--tick", "0.2"], env=env, cwd=tmp_path,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        import sqlite3

        def running() -> bool:  # its heartbeat is in: the loop (and its handlers) are up
            db = tmp_path / "h" / "crisiscomms.db"
            try:
                with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as conn:
                    return bool(conn.execute("SELECT count(*) FROM watchers").fetchone()[0])
            except sqlite3.Error:
                return False

        deadline = time.monotonic() + 30
        while not running() and time.monotonic() < deadline:
            time.sleep(0.1)
        proc.send_signal(sig)
        codes[sig.name] = proc.wait(timeout=30)
    assert codes == {"SIGINT": 130, "SIGTERM": 0}


def test_validate_says_which_playbooks_cannot_be_activated(cli, tmp_path):
    """With the bundled (unpinned) sources.yaml, validate must not say a bare "ok": it names
    each playbook that cannot be activated and why, and --strict exits non-zero."""
    from pathlib import Path

    bundled = Path(__file__).resolve().parents[1] / "playbooks"
    r = cli("playbooks", "validate", str(bundled))
    assert r.code == 0
    assert "cannot be activated: flooding" in r.err or "flooding cannot be activated" in r.err
    r = cli("playbooks", "validate", "--strict", str(bundled))
    assert r.code == 3 and "flooding" in r.err


def test_validate_strict_passes_when_every_playbook_can_be_activated(cli, playbooks_dir):
    r = cli("playbooks", "validate", "--strict", str(playbooks_dir))
    assert r.code == 0 and r.out.startswith("ok:")


def test_activate_warns_loudly_when_no_watcher_uses_this_database(cli, home):
    r = cli("activate", "flooding", "--reason", "r")
    assert r.code == 0
    assert "no watcher has been seen on this database" in r.err
    assert str(home / "crisiscomms.db") in r.err
    cli("deactivate", "--reason", "done")
    from crisiscomms.adapters.store import open_store
    from crisiscomms.domain.clock import SystemClock
    from crisiscomms.domain.models import WatcherInfo

    store = open_store(f"sqlite:///{home / 'crisiscomms.db'}")
    now = SystemClock().now()
    with store.unit_of_work() as uow:
        uow.watchers.heartbeat(WatcherInfo("relay:1", "relay", 1, now, now))
        uow.commit()
    r = cli("activate", "flooding", "--reason", "again")
    assert r.code == 0 and "no watcher has been seen" not in r.err


def test_status_shows_times_in_the_policy_zone_and_what_needs_the_officer(cli, home):
    from crisiscomms.adapters.store import open_store
    from crisiscomms.domain.clock import SystemClock
    from crisiscomms.domain.models import ActionKind, NewOutboxItem, WatcherInfo
    from crisiscomms.testing import enqueue

    assert cli("activate", "flooding", "--reason", "r").code == 0
    store = open_store(f"sqlite:///{home / 'crisiscomms.db'}")
    now = SystemClock().now()
    with store.unit_of_work() as uow:
        uow.watchers.heartbeat(WatcherInfo("relay:1", "relay", 1, now, now))
        uow.commit()
    enqueue(store, [NewOutboxItem(dedupe_key="t:1", channel_id="x", action=ActionKind.POST,
                                  text="needs a look", approval="manual")], now=now)
    store.close()
    import sqlite3  # the dispatcher's decision, written directly: this test is about the display

    with sqlite3.connect(home / "crisiscomms.db") as db:
        db.execute("UPDATE outbox SET state = 'needs_approval'")
    r = cli("status")
    assert r.code == 0, r.err
    zone = now.astimezone(__import__("zoneinfo").ZoneInfo("Europe/London")).strftime("%Z")
    for line in r.out.splitlines():
        if "since" in line or "heartbeat" in line or line.startswith("crisis flag"):
            assert line.rstrip(")").endswith(zone) or f" {zone}" in line, line
    assert "need approval: crisiscomms queue list --state needs_approval" in r.out


def test_notify_is_a_command(cli):
    r = cli("notify", "--help")
    assert r.code == 0 and "test" in r.out


def test_watch_with_at_is_refused_while_a_watcher_runs_on_the_database(cli, home):
    """--at would date the live watcher's sources and items at an invented time."""
    from crisiscomms.adapters.store import open_store
    from crisiscomms.domain.clock import SystemClock
    from crisiscomms.domain.models import WatcherInfo

    assert cli("status").code == 0  # creates the database
    store = open_store(f"sqlite:///{home / 'crisiscomms.db'}")
    now = SystemClock().now()
    with store.unit_of_work() as uow:
        uow.watchers.heartbeat(WatcherInfo("relay:1", "relay", 1, now, now))
        uow.commit()
    store.close()
    r = cli("--at", "2026-11-30T09:00:00Z", "watch", "--once", "--dry-run")
    assert r.code == 3, (r.code, r.out, r.err)
    assert "--at" in r.err and "relay:1" in r.err


def test_watch_with_at_is_refused_on_a_database_a_stopped_service_uses(cli, home):
    """The service stopped for maintenance: its database is still the live one."""
    from crisiscomms.adapters.store import open_store
    from crisiscomms.domain.clock import SystemClock
    from crisiscomms.domain.models import SourceState
    from crisiscomms.testing import save_source_state

    assert cli("status").code == 0
    store = open_store(f"sqlite:///{home / 'crisiscomms.db'}")
    save_source_state(store, SourceState("met-office-ee", last_polled_at=SystemClock().now()))
    store.close()
    r = cli("--at", "2026-11-30T09:00:00Z", "watch", "--once", "--dry-run")
    assert r.code == 3 and "--at-on-live-database" in r.err, (r.code, r.err)


def test_status_says_which_watchers_page_and_warns_when_none_can(cli, home):
    from crisiscomms.adapters.store import open_store
    from crisiscomms.domain.clock import SystemClock
    from crisiscomms.domain.models import WatcherInfo

    assert cli("status").code == 0
    store = open_store(f"sqlite:///{home / 'crisiscomms.db'}")
    now = SystemClock().now()
    with store.unit_of_work() as uow:
        uow.watchers.heartbeat(WatcherInfo("alice-shell:7", "desk", 7, now, now, pages=False))
        uow.commit()
    r = cli("status")
    assert "desk pid 7" in r.out and "cannot page" in r.out
    assert "no live watcher can page the on-call team" in r.out
    with store.unit_of_work() as uow:
        uow.watchers.heartbeat(WatcherInfo("relay:1", "relay", 1, now, now, pages=True))
        uow.commit()
    store.close()
    r = cli("status")
    assert "relay pid 1" in r.out and "pages the on-call team" in r.out
    assert "no live watcher can page" not in r.out
    data = json.loads(cli("status", "--json").out)
    assert {w["worker"]: w["pages"] for w in data["watchers"]} == {"alice-shell:7": False,
                                                                   "relay:1": True}


def test_a_watcher_with_test_only_short_leases_says_so_at_start(cli, home, monkeypatch):
    """The setting is for test suites and drills: an operator who finds it set on a real
    watcher sees it in the first lines of the log (the lease and the reason)."""
    monkeypatch.setenv("CRISISCOMMS_DISPATCH__TEST_ONLY_SHORT_LEASES", "true")
    monkeypatch.setenv("CRISISCOMMS_DISPATCH__LEASE_SECONDS", "2")
    r = cli("watch", "--once", "--dry-run")
    assert r.code == 0, (r.code, r.err)
    warned = [line for line in r.err.splitlines() if "settings.test_only_short_leases" in line]
    assert warned and "never in production" in warned[0] and '"lease_seconds": 2' in \
        warned[0].replace("2.0", "2"), r.err[-2000:]


def test_a_watcher_without_it_does_not_warn(cli, home):
    r = cli("watch", "--once", "--dry-run")
    assert r.code == 0, (r.code, r.err)
    assert "test_only_short_leases" not in r.err
