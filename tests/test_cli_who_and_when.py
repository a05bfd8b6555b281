"""Issue 13, "honest time" and "who did what" through the CLI: times carry their zone and
naive input means the policy's zone (7); --at cannot write invented times into a live trail,
and every event records the real time (8); the operator is the real OS user, --operator only
for delegates (9); nobody approves their own text (10); a keyed chain and a witnessed head
(12); bulk approval, each item its own audited decision."""

from __future__ import annotations

import functools
import json
import sqlite3
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import SecretStr

from crisiscomms import bootstrap
from crisiscomms.adapters.store import open_store
from crisiscomms.domain.clock import FixedClock, parse_instant
from crisiscomms.domain.models import ActionKind, ItemState, NewOutboxItem, WatcherInfo
from crisiscomms.testing import append_audit, enqueue
from tests.identity_helpers import become

SUMMER = "2026-06-30T22:00:00Z"  # 23:00 BST
WINTER = "2026-11-27T18:00:00Z"  # 18:00 GMT


def set_policy(playbooks_dir: Path, **values: Any) -> None:
    path = playbooks_dir / "policy.yaml"
    policy = yaml.safe_load(path.read_text())
    policy.update(values)
    path.write_text(yaml.safe_dump(policy))


def db(home: Path) -> str:
    return f"sqlite:///{home / 'crisiscomms.db'}"


def waiting(cli: Any, home: Path, *sources: str, now: str = WINTER) -> list[int]:
    """Items waiting for approval, one per source given."""
    cli("status")  # creates the database
    store = open_store(db(home))
    try:
        return enqueue(store, [NewOutboxItem(
            dedupe_key=f"normal:x:{n}", channel_id="x", action=ActionKind.POST,
            text=f"Update {n} from {src}", state=ItemState.NEEDS_APPROVAL, source_id=src,
            approval="manual") for n, src in enumerate(sources)], now=parse_instant(now))
    finally:
        store.close()


def audit_log(cli: Any) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = json.loads(cli("audit", "log", "--json").out)
    return out


# -- 7: honest time ------------------------------------------------------------------------------
def test_a_naive_hold_until_means_the_policy_zone_and_is_shown_with_it(cli, home: Path):
    """A hold typed 01:00 on a summer night ends at 01:00 BST (00:00Z), not 02:00 BST."""
    (item,) = waiting(cli, home, "met-office-ee", now=SUMMER)
    r = cli("--at", SUMMER, "queue", "hold", str(item), "--reason", "check",
            "--until", "2026-07-01T01:00", "--json")
    assert r.code == 0, r.err
    assert json.loads(r.out)["not_before"] == "2026-07-01T00:00:00.000000Z"
    shown = cli("queue", "show", str(item)).out
    assert "not_before: 2026-07-01 01:00 BST" in shown
    assert "until 2026-07-01 01:00 BST" in shown
    # An offset or Z is honoured as typed.
    r = cli("--at", SUMMER, "queue", "hold", str(item), "--reason", "check",
            "--until", "2026-07-01T01:00Z", "--json")
    assert json.loads(r.out)["not_before"] == "2026-07-01T01:00:00.000000Z"


def test_windows_and_the_audit_log_show_times_with_their_zone(cli):
    r = cli("window", "add", "--from", "2026-07-01T09:00", "--to", "2026-07-01T10:00",
            "--reason", "Q&A")
    assert r.code == 0, r.err
    assert "2026-07-01 09:00 BST to 2026-07-01 10:00 BST" in r.out
    listed = cli("window", "list").out
    assert "2026-07-01 09:00 BST" in listed and "WINDOW" not in listed
    assert json.loads(cli("window", "list", "--json").out)[0]["from"] == \
        "2026-07-01T08:00:00.000000Z"
    r = cli("--at", WINTER, "activate", "flooding", "--reason", "r")
    assert "at 2026-11-27 18:00 GMT" in r.out
    log = cli("audit", "log").out
    assert "2026-11-27 18:00 GMT" in log and "18:00:00.000000Z" not in log
    # --since typed without an offset is London time too: 23:00 BST is 22:00Z.
    cli("--at", SUMMER, "lead", "ecfrs-x", "--reason", "r")
    assert "incident.lead_changed" in cli("audit", "log", "--since", "2026-06-30T23:00").out
    assert "incident.lead_changed" not in cli("audit", "log", "--since",
                                              "2026-06-30T23:01").out


def test_a_naive_at_means_the_policy_zone(cli):
    r = cli("--at", "2026-07-01T09:00", "activate", "flooding", "--reason", "r", "--json")
    assert json.loads(r.out)["activated_at"] == "2026-07-01T08:00:00.000000Z"


# -- 8: --at on a live database; the real time on every event -----------------------------------
def live(home: Path) -> None:
    store = open_store(db(home))
    try:
        with store.unit_of_work() as uow:
            now = datetime.now(UTC)
            uow.watchers.heartbeat(WatcherInfo("host:1", "host", 1, now, now))
            uow.commit()
    finally:
        store.close()


def test_at_is_refused_for_changes_on_a_database_a_watcher_uses(cli, home: Path):
    cli("status")
    live(home)
    r = cli("--at", WINTER, "activate", "flooding", "--reason", "drill")
    assert r.code == 3, r.err
    assert "--at" in r.err and "live database" in r.err and "--at-on-live-database" in r.err
    assert len(r.err.strip().splitlines()) == 1
    assert json.loads(cli("status", "--json").out)["crisis_flag"] is False
    assert audit_log(cli)[-1]["action"] == "incident.activate.refused"
    # Reading is allowed as of any time.
    assert cli("--at", WINTER, "status").code == 0
    assert cli("--at", WINTER, "queue", "list").code == 0
    # The explicit flag allows it, audited, and the real time is recorded beside the claimed.
    r = cli("--at", WINTER, "--at-on-live-database", "activate", "flooding", "--reason", "drill")
    assert r.code == 0, r.err
    log = audit_log(cli)
    assert [e["action"] for e in log[-2:]] == ["clock.at_on_live_database", "incident.activated"]
    last = log[-1]
    assert last["at"] == "2026-11-27T18:00:00.000000Z"
    assert abs(parse_instant(last["recorded_at"]) - datetime.now(UTC)) < timedelta(minutes=5)
    assert "[written " in cli("audit", "log").out


def test_a_database_whose_sources_a_watcher_polled_counts_as_live(cli, home: Path):
    from crisiscomms.domain.models import SourceState
    from crisiscomms.testing import save_source_state

    cli("status")
    store = open_store(db(home))
    save_source_state(store, SourceState("met-office-ee", last_polled_at=datetime.now(UTC)))
    store.close()
    assert cli("--at", WINTER, "window", "add", "--from", "2026-12-01T10:00",
               "--to", "2026-12-01T11:00", "--reason", "x").code == 3


def test_audit_verify_reports_time_going_backwards(cli, home: Path):
    cli("status")
    wall = FixedClock(datetime(2026, 11, 27, 18, 0, tzinfo=UTC))
    store = open_store(db(home), wall_clock=wall)
    for i in range(3):
        if i == 2:
            wall.set(datetime(2026, 11, 27, 17, 0, tzinfo=UTC))
        append_audit(store, actor="a", action="test.event", subject=f"s{i}", reason="r",
                     now=datetime(2026, 11, 27, 18, 0, tzinfo=UTC))
    store.close()
    r = cli("audit", "verify")
    # Reported (naming the event) but a warning: a clock stepped back must not fail verify
    # for ever (nothing could acknowledge it).
    assert r.code == 0 and "audit chain ok: 3 events" in r.out, r.err
    assert "time went backwards" in r.err and "of event 3 is" in r.err
    assert json.loads(cli("audit", "verify", "--json").out)["time_backwards_at"] == [3]


def test_audit_verify_names_old_format_events_after_newer_ones_without_failing(cli, home: Path):
    """Migration 8 while a watcher of the old version still runs: its INSERT leaves the scheme
    at 'sha256' (no wall time). A warning naming the events, not a broken chain."""
    from crisiscomms.domain.audit import GENESIS, LEGACY, event_hash

    cli("window", "add", "--from", "2026-12-01T10:00", "--to", "2026-12-01T11:00",
        "--reason", "w")
    conn = sqlite3.connect(home / "crisiscomms.db")
    seq, prev = conn.execute("SELECT seq, hash FROM audit_head").fetchone()
    at = "2026-11-27T18:00:00.000000Z"
    h = event_hash(seq + 1, at, "old-watcher", "watch.tick", "s", "r", "{}", prev or GENESIS,
                   scheme=LEGACY)
    conn.execute("INSERT INTO audit_events (seq, at, actor, action, subject, reason, details, "
                 "prev_hash, hash) VALUES (?,?,?,?,?,?,?,?,?)",
                 (seq + 1, at, "old-watcher", "watch.tick", "s", "r", "{}", prev, h))
    conn.execute("UPDATE audit_head SET seq = ?, hash = ?", (seq + 1, h))
    conn.commit()
    conn.close()
    r = cli("audit", "verify")
    assert "BROKEN" not in r.err and "NOT fully checked" in r.out, (r.out, r.err)
    assert f"event {seq + 1} is in the old format" in r.err and r.code == 1
    cli("window", "add", "--from", "2026-12-02T10:00", "--to", "2026-12-02T11:00",
        "--reason", "w")  # the new version writes after it: the upgrade is over
    r = cli("audit", "verify")
    assert r.code == 0 and "audit chain ok" in r.out, r.err


# -- 9: operator identity ------------------------------------------------------------------------
def test_the_operator_is_the_real_os_user_not_an_environment_variable(cli, monkeypatch):
    become(monkeypatch, "bob")
    monkeypatch.setenv("USER", "alice")
    monkeypatch.setenv("LOGNAME", "alice")
    r = cli("activate", "flooding", "--reason", "r", "--json")
    assert json.loads(r.out)["activated_by"] == "bob"
    assert audit_log(cli)[-1]["actor"] == "bob"


def test_operator_flag_without_a_delegation_is_refused_and_audited(cli, playbooks_dir: Path,
                                                                  monkeypatch):
    set_policy(playbooks_dir, operators=["alice"])
    become(monkeypatch, "bob")
    r = cli("activate", "flooding", "--reason", "r", "--operator", "alice")
    assert r.code == 3 and "'bob' may not act for 'alice'" in r.err
    assert len(r.err.strip().splitlines()) == 1
    last = audit_log(cli)[-1]
    assert last["action"] == "incident.activate.refused"
    assert last["actor"] == "bob" and last["acting_for"] == "alice"
    assert json.loads(cli("status", "--json").out)["crisis_flag"] is False


def test_sudo_user_is_ignored_unless_root_and_the_policy_trusts_it(cli, playbooks_dir: Path,
                                                                  monkeypatch):
    set_policy(playbooks_dir, operators=["alice"])
    monkeypatch.setenv("SUDO_USER", "alice")
    become(monkeypatch, "bob")  # not root: anyone can set SUDO_USER
    r = cli("activate", "flooding", "--reason", "r")
    assert r.code == 3 and "'bob'" in r.err
    become(monkeypatch, "root", uid=0)  # root, but the policy does not say so
    r = cli("activate", "flooding", "--reason", "r")
    assert r.code == 3 and "'root'" in r.err
    set_policy(playbooks_dir, operators=["alice"], trust_sudo_user=True)
    r = cli("activate", "flooding", "--reason", "r", "--json")
    assert r.code == 0, r.err
    assert json.loads(r.out)["activated_by"] == "alice"


def test_a_delegate_acts_for_someone_and_the_audit_shows_both(cli, playbooks_dir: Path,
                                                             monkeypatch):
    set_policy(playbooks_dir, operators=["alice"], delegates={"bob": ["alice"]})
    become(monkeypatch, "bob")
    r = cli("activate", "flooding", "--reason", "r", "--operator", "alice", "--json")
    assert r.code == 0, r.err
    assert json.loads(r.out)["activated_by"] == "bob acting for alice"
    last = audit_log(cli)[-1]
    assert last["actor"] == "bob" and last["details"]["acting_for"] == "alice"
    assert "bob acting for alice" in cli("audit", "log").out
    # The person acted for must still be an operator; and bob may act for alice only.
    set_policy(playbooks_dir, operators=["alice"], delegates={"bob": ["alice", "carol"]})
    r = cli("deactivate", "--reason", "x", "--operator", "carol")
    assert r.code == 3 and "'carol'" in r.err and "operators" in r.err
    r = cli("deactivate", "--reason", "x", "--operator", "dave")
    assert r.code == 3 and "'dave'" in r.err and "delegates" in r.err


# -- 10: self-approval ---------------------------------------------------------------------------
def test_approving_your_own_text_is_refused_and_audited(cli, home: Path, monkeypatch):
    (item,) = waiting(cli, home, "met-office-ee")
    become(monkeypatch, "alice")
    assert cli("queue", "edit", str(item), "--text", "Our own words").code == 0
    r = cli("queue", "approve", str(item))
    assert r.code == 3 and "alice last wrote its text" in r.err
    assert len(r.err.strip().splitlines()) == 1
    last = audit_log(cli)[-1]
    assert last["action"] == "queue.approve.refused" and last["actor"] == "alice"
    assert json.loads(cli("queue", "show", str(item), "--json").out)["state"] == \
        "needs_approval"
    become(monkeypatch, "bob")
    r = cli("queue", "approve", str(item), "--json")
    assert r.code == 0, r.err
    assert json.loads(r.out)["approved_by"] == "bob"


def test_a_delegate_cannot_approve_text_they_wrote_for_someone_else(
        cli, home: Path, playbooks_dir: Path, monkeypatch):
    set_policy(playbooks_dir, delegates={"bob": ["alice"]})
    (item,) = waiting(cli, home, "met-office-ee")
    become(monkeypatch, "bob")
    assert cli("queue", "edit", str(item), "--text", "Words", "--operator", "alice").code == 0
    become(monkeypatch, "alice")
    assert cli("queue", "approve", str(item)).code == 3


def test_an_on_call_role_may_self_approve_and_it_is_audited(cli, home: Path,
                                                            playbooks_dir: Path, monkeypatch):
    set_policy(playbooks_dir, roles={"oncall-lead": ["alice"]}, self_approval=["oncall-lead"])
    (item,) = waiting(cli, home, "met-office-ee")
    become(monkeypatch, "alice")
    assert cli("queue", "edit", str(item), "--text", "Our own words").code == 0
    r = cli("queue", "approve", str(item), "--reason", "2 a.m., nobody else on call")
    assert r.code == 0, r.err
    last = audit_log(cli)[-1]
    assert last["action"] == "queue.approve" and last["details"]["self_approval"] == \
        "oncall-lead"
    assert "self-approval" in last["reason"]


def test_a_self_approval_role_must_be_defined(cli, playbooks_dir: Path):
    set_policy(playbooks_dir, self_approval=["oncall-lead"])
    r = cli("activate", "flooding", "--reason", "r")
    assert r.code == 2 and "self_approval" in r.err and "oncall-lead" in r.err


# -- 12: a keyed chain and a witnessed head ------------------------------------------------------
KEY = "a long random audit key"


@pytest.fixture
def keyed(monkeypatch: pytest.MonkeyPatch) -> None:
    """CRISISCOMMS_AUDIT_KEY set, and the store opened with it (as App.store does)."""
    monkeypatch.setenv("CRISISCOMMS_AUDIT_KEY", KEY)
    monkeypatch.setattr(bootstrap, "open_store",
                        functools.partial(open_store, audit_key=SecretStr(KEY)))


def test_activation_and_stand_down_print_the_audit_head(cli):
    r = cli("activate", "flooding", "--reason", "r")
    head = json.loads(cli("audit", "verify", "--json").out)["head"]
    assert f"audit head {head}" in r.out
    r = cli("deactivate", "--reason", "r", "--json")
    assert json.loads(r.out)["audit_head"] == json.loads(
        cli("audit", "verify", "--json").out)["head"]


def test_truncation_is_caught_with_the_expected_head(cli, home: Path, keyed: None):
    for n in range(6):
        cli("window", "add", "--from", f"2026-12-0{n + 1}T10:00", "--to",
            f"2026-12-0{n + 1}T11:00", "--reason", f"w{n}")
    r = cli("audit", "verify")
    assert r.code == 0 and "audit chain ok: 6 events" in r.out, r.err
    head = json.loads(cli("audit", "verify", "--json").out)["head"]
    conn = sqlite3.connect(home / "crisiscomms.db")
    conn.execute("DELETE FROM audit_events WHERE seq > 3")
    conn.execute("UPDATE audit_head SET seq = 3, hash = (SELECT hash FROM audit_events "
                 "WHERE seq = 3)")
    conn.commit()
    conn.close()
    assert cli("audit", "verify").code == 0  # no witness: nothing to compare with
    for expect in (head, head.split(":")[1]):
        r = cli("audit", "verify", "--expect-head", expect)
        assert r.code == 1 and "deleted" in r.err, expect
    assert cli("audit", "verify", "--expect-head", "nonsense").code == 2


def test_a_keyed_trail_verified_without_the_key_is_not_reported_ok(cli, keyed: None,
                                                                   monkeypatch):
    cli("activate", "flooding", "--reason", "r")
    assert cli("audit", "verify").code == 0
    monkeypatch.delenv("CRISISCOMMS_AUDIT_KEY")
    monkeypatch.setattr(bootstrap, "open_store", open_store)
    r = cli("audit", "verify")
    assert r.code == 1 and "audit chain ok" not in r.out
    assert "NOT fully checked" in r.out and "CRISISCOMMS_AUDIT_KEY is not set" in r.err


def test_the_head_line_of_a_keyed_trail_seen_without_the_key_says_not_fully_checked(
        cli, keyed: None, monkeypatch):
    cli("window", "add", "--from", "2026-12-01T10:00", "--to", "2026-12-01T11:00",
        "--reason", "w")  # a keyed event, written by a holder of the key
    monkeypatch.delenv("CRISISCOMMS_AUDIT_KEY")
    monkeypatch.setattr(bootstrap, "open_store", open_store)
    r = cli("activate", "flooding", "--reason", "r")  # an officer's shell: no key
    line = next(x for x in r.out.splitlines() if x.startswith("audit head "))
    assert "chain ok" not in line and "BROKEN" not in line
    assert "verified; not fully checked: 1 keyed events not checked" in line


def test_an_unkeyed_trail_says_what_is_not_detected(cli):
    cli("activate", "flooding", "--reason", "r")
    r = cli("audit", "verify")
    assert r.code == 0 and "not keyed" in r.out


# -- bulk approve --------------------------------------------------------------------------------
def test_approve_several_ids_each_audited_refusals_reported(cli, home: Path, monkeypatch):
    ids = waiting(cli, home, "met-office-ee", "met-office-ee", "essex-police-x")
    become(monkeypatch, "alice")
    assert cli("queue", "reject", str(ids[1]), "--reason", "duplicate").code == 0
    r = cli("queue", "approve", *map(str, ids), "--reason", "checked")
    assert r.code == 3
    assert f"item {ids[1]}: not approved" in r.err
    assert "approved 2 of 3 items; 1 refused" in r.out
    approvals = [e for e in audit_log(cli) if e["action"] == "queue.approve"]
    assert [e["subject"] for e in approvals] == [f"item:{ids[0]}", f"item:{ids[2]}"]


def test_approve_all_from_a_source(cli, home: Path, monkeypatch):
    ids = waiting(cli, home, "met-office-ee", "essex-police-x", "met-office-ee")
    become(monkeypatch, "alice")
    r = cli("queue", "approve", "--all-from", "met-office-ee", "--json")
    assert r.code == 0, r.err
    assert sorted(i["id"] for i in json.loads(r.out)["approved"]) == [ids[0], ids[2]]
    states = {i["id"]: i["state"] for i in json.loads(cli("queue", "list", "--json").out)}
    assert states[ids[1]] == "needs_approval"
    r = cli("queue", "approve", "--all-from", "met-office-ee")
    assert r.code == 0 and "no items from met-office-ee" in r.out
    r = cli("queue", "approve", "--all-from", "nowhere")
    assert r.code == 2 and "unknown source 'nowhere'" in r.err
    assert cli("queue", "approve").code == 2


def test_approving_an_item_already_approved_is_refused_naming_who_approved_it(
        cli, home: Path, monkeypatch):
    """A second approval is not a decision: it would put a second approver (and reason) on the
    record the board reads."""
    (item,) = waiting(cli, home, "met-office-ee")
    become(monkeypatch, "alice")
    assert cli("queue", "approve", str(item), "--reason", "checked").code == 0
    become(monkeypatch, "bob")
    r = cli("queue", "approve", str(item), "--reason", "again")
    assert r.code == 3
    assert "already approved by alice" in r.err
    approvals = [e for e in audit_log(cli) if e["action"] == "queue.approve"]
    assert len(approvals) == 1


def test_editing_an_approved_item_needs_a_new_approval(cli, home: Path, monkeypatch):
    """Approval is of a text: an approved item edited afterwards must not go out under the
    approval of words the approver never saw."""
    (item,) = waiting(cli, home, "met-office-ee")
    become(monkeypatch, "alice")
    assert cli("queue", "approve", str(item), "--reason", "checked").code == 0
    become(monkeypatch, "bob")
    assert cli("queue", "edit", str(item), "--text", "Different words").code == 0
    shown = json.loads(cli("queue", "show", str(item), "--json").out)
    assert shown["approved_by"] is None and shown["state"] == "needs_approval", shown
    become(monkeypatch, "alice")
    r = cli("queue", "approve", str(item), "--reason", "checked the new words", "--json")
    assert r.code == 0, r.err
    assert json.loads(r.out)["approved_by"] == "alice"
