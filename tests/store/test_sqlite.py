"""SQLite-specific store behaviour: migrations in place, faults (locked, read-only, corrupt,
too new), and tampering with the audit chain by SQL."""

from __future__ import annotations

import sqlite3
from datetime import UTC, datetime
from pathlib import Path

import pytest

from crisiscomms.adapters.store import open_store
from crisiscomms.adapters.store import sqlite as sqlite_store
from crisiscomms.adapters.store.migrations import SQLITE_MIGRATIONS
from crisiscomms.domain import outbox
from crisiscomms.domain.errors import StoreCorruptError, StoreError, StoreLockedError
from crisiscomms.domain.models import ActionKind, ItemEvent, NewAuditEvent, NewOutboxItem

NOW = datetime(2026, 11, 27, 18, 0, tzinfo=UTC)
LATEST = max(v for v, _, _ in SQLITE_MIGRATIONS)


def add_incident(store, playbook: str = "p") -> None:
    with store.unit_of_work() as uow:
        uow.incidents.add(playbook=playbook, hashtags=["#A"], lead="l", reason="r",
                          operator="o", at=NOW)
        uow.commit()


def test_migrations_are_recorded_and_idempotent(tmp_path: Path):
    url = f"sqlite:///{tmp_path / 'a.db'}"
    s = open_store(url)
    assert s.schema_version == LATEST
    add_incident(s)
    s.close()
    s2 = open_store(url)  # re-opening applies nothing and loses nothing
    assert [i.playbook for i in s2.incidents()] == ["p"]
    rows = s2.query("SELECT version, name FROM schema_migrations")
    assert [(r["version"], r["name"]) for r in rows] == [(v, n) for v, n, _ in SQLITE_MIGRATIONS]


def test_a_database_of_the_previous_schema_upgrades_in_place_with_nothing_lost(tmp_path: Path):
    """A database written by crisiscomms 0.1.0 (schema 3, with data in it) opens, upgrades to
    fencing, and its pending item can be claimed; its audit chain still verifies."""
    path = tmp_path / "old.db"
    db = sqlite3.connect(path, isolation_level=None)
    db.execute("CREATE TABLE schema_migrations (version INTEGER PRIMARY KEY, name TEXT NOT "
               "NULL, applied_at TEXT NOT NULL)")
    for version, name, sql in SQLITE_MIGRATIONS[:3]:
        db.executescript(sql)
        db.execute("INSERT INTO schema_migrations VALUES (?, ?, '2026-11-25T00:00:00Z')",
                   (version, name))
    db.execute("INSERT INTO incidents (playbook, hashtags, lead, activated_at, activated_by, "
               "reason) VALUES ('flooding', '[\"#A\"]', 'ea', '2026-11-25T10:00:00.000000Z', "
               "'alice', 'flood')")
    db.execute("INSERT INTO outbox (dedupe_key, channel_id, action, text, state, created_at) "
               "VALUES ('k1', 'x', 'post', 'hello', 'queued', '2026-11-25T10:00:00.000000Z')")
    db.execute("INSERT INTO source_state (key, cursor) VALUES ('ea', 'c1')")
    db.close()
    old = open_store(f"sqlite:///{path}")
    assert old.schema_version == LATEST
    (inc,) = old.incidents()
    assert inc.playbook == "flooding" and inc.activated_by == "alice"
    assert old.source_state("ea").cursor == "c1"
    (item,) = old.items()
    assert item.text == "hello" and item.version == 0 and item.fence == 0
    with old.unit_of_work() as uow:
        leased = outbox.claim(item, owner="w", until=NOW, out_of_hours=False, over_cap=False)
        uow.outbox.save(item, leased, ItemEvent(NOW, "leased", "t"))
        uow.audit.append(NewAuditEvent("w", "test.event", "s", "r", NOW))
        uow.commit()
    assert old.get_item(item.id).fence == 1
    assert old.verify_audit().ok and old.verify_audit().count == 1


def test_newer_schema_is_refused(tmp_path: Path):
    path = tmp_path / "a.db"
    open_store(f"sqlite:///{path}").close()
    db = sqlite3.connect(path)
    db.execute("INSERT INTO schema_migrations VALUES (999, 'future', 'x')")
    db.commit()
    db.close()
    with pytest.raises(StoreCorruptError, match="schema version 999 is newer"):
        open_store(f"sqlite:///{path}")


def test_corrupt_file_is_named(tmp_path: Path):
    path = tmp_path / "a.db"
    path.write_bytes(b"this is not a database at all" * 100)
    with pytest.raises(StoreCorruptError, match=r"a\.db: database is corrupt"):
        open_store(f"sqlite:///{path}")


def test_locked_database(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    path = tmp_path / "a.db"
    open_store(f"sqlite:///{path}").close()
    monkeypatch.setattr(sqlite_store, "BUSY_TIMEOUT_MS", 100)
    s = open_store(f"sqlite:///{path}")
    other = sqlite3.connect(path, isolation_level=None)
    other.execute("BEGIN EXCLUSIVE")
    try:
        with pytest.raises(StoreLockedError, match="locked by another process"):
            add_incident(s)
    finally:
        other.execute("ROLLBACK")
        other.close()
    # Nothing half-written; the store works again once the lock is gone.
    assert s.incidents() == []
    assert s.verify_audit().ok
    add_incident(s)
    assert len(s.incidents()) == 1


def test_read_only_connection_gives_a_clear_error(tmp_path: Path):
    path = tmp_path / "a.db"
    open_store(f"sqlite:///{path}").close()
    s = open_store(f"sqlite:///{path}")
    s._conn.execute("PRAGMA query_only = ON")
    with pytest.raises(StoreError, match=r"read-only|readonly"):
        add_incident(s)


def test_unsupported_url():
    with pytest.raises(StoreError, match="use sqlite:///PATH or postgresql://"):
        open_store("mysql://u@h/db")


def test_enqueue_is_idempotent_across_connections(tmp_path: Path):
    url = f"sqlite:///{tmp_path / 'a.db'}"
    a, b = open_store(url), open_store(url)
    item = NewOutboxItem(dedupe_key="k1", channel_id="x", action=ActionKind.POST, text="hi")
    for s, n in ((a, 1), (b, 0)):
        with s.unit_of_work() as uow:
            assert len(uow.outbox.add([item], at=NOW)) == n
            uow.commit()


def test_audit_chain_detects_edits_via_sql(tmp_path: Path):
    path = tmp_path / "a.db"
    s = open_store(f"sqlite:///{path}")
    with s.unit_of_work() as uow:
        for i in range(5):
            uow.audit.append(NewAuditEvent("a", "test.event", f"s{i}", "r", NOW, {"i": i}))
        uow.commit()
    report = s.verify_audit()
    assert report.ok and report.count == 5 and len(report.head_hash) == 64
    s._conn.execute("UPDATE audit_events SET details = '{\"i\":99}' WHERE seq = 4")
    bad = s.verify_audit()
    assert not bad.ok and bad.bad_seq == 4 and "event 4" in bad.problem
