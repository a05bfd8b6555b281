"""The store: migrations, faults (locked, read-only, corrupt, too new), races, audit chain."""

from __future__ import annotations

import sqlite3
import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from crisiscomms.adapters.store import base as store_base
from crisiscomms.adapters.store import open_store
from crisiscomms.adapters.store.migrations import MIGRATIONS
from crisiscomms.domain.errors import RefusedError, StoreCorruptError, StoreError, StoreLockedError
from crisiscomms.domain.models import ActionKind, ItemState, NewOutboxItem

NOW = datetime(2026, 11, 27, 18, 0, tzinfo=UTC)


def test_migrations_are_recorded_and_idempotent(tmp_path: Path):
    url = f"sqlite:///{tmp_path / 'a.db'}"
    s = open_store(url)
    assert s.schema_version == max(v for v, _, _ in MIGRATIONS)
    s.create_incident(playbook="p", hashtags=["#A"], lead="l", reason="r", operator="o", now=NOW)
    s.close()
    s2 = open_store(url)  # re-opening applies nothing and loses nothing
    assert [i.playbook for i in s2.incidents()] == ["p"]
    rows = s2.query("SELECT version, name FROM schema_migrations")
    assert [(r["version"], r["name"]) for r in rows] == [(v, n) for v, n, _ in MIGRATIONS]


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
    monkeypatch.setattr(store_base, "BUSY_TIMEOUT_MS", 100)
    s = open_store(f"sqlite:///{path}")
    other = sqlite3.connect(path, isolation_level=None)
    other.execute("BEGIN EXCLUSIVE")
    try:
        with pytest.raises(StoreLockedError, match="locked by another process"):
            s.create_incident(playbook="p", hashtags=["#A"], lead="l", reason="r",
                              operator="o", now=NOW)
    finally:
        other.execute("ROLLBACK")
        other.close()
    # Nothing half-written; the store works again once the lock is gone.
    assert s.incidents() == []
    assert s.verify_audit().ok


def test_read_only_connection_gives_a_clear_error(tmp_path: Path):
    path = tmp_path / "a.db"
    open_store(f"sqlite:///{path}").close()
    s = open_store(f"sqlite:///{path}")
    s._conn.execute("PRAGMA query_only = ON")
    with pytest.raises(StoreError, match=r"read-only|readonly"):
        s.create_incident(playbook="p", hashtags=[], lead="l", reason="r", operator="o", now=NOW)


def test_unsupported_url():
    with pytest.raises(StoreError, match="only sqlite"):
        open_store("postgresql://u@h/db")


def test_racing_activations_leave_one_incident(tmp_path: Path):
    url = f"sqlite:///{tmp_path / 'a.db'}"
    open_store(url).close()
    results: list[str] = []

    def go() -> None:
        s = open_store(url)
        try:
            s.create_incident(playbook="flooding", hashtags=["#A"], lead="l", reason="r",
                              operator="o", now=NOW)
            results.append("ok")
        except RefusedError:
            results.append("refused")
        finally:
            s.close()

    threads = [threading.Thread(target=go) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(results) == ["ok"] + ["refused"] * 7
    s = open_store(url)
    assert len(s.active_incidents()) == 1
    assert s.verify_audit().count == 1


def test_enqueue_is_idempotent_and_claim_is_exclusive(tmp_path: Path):
    url = f"sqlite:///{tmp_path / 'a.db'}"
    a, b = open_store(url), open_store(url)
    item = NewOutboxItem(dedupe_key="k1", channel_id="x", action=ActionKind.POST, text="hi")
    assert len(a.enqueue([item], now=NOW)) == 1
    assert b.enqueue([item], now=NOW) == []
    (only,) = a.items()
    lease = timedelta(minutes=1)
    got_a = a.claim(only.id, worker="a", now=NOW, lease=lease, out_of_hours=False,
                    over_cap=False)
    got_b = b.claim(only.id, worker="b", now=NOW, lease=lease, out_of_hours=False,
                    over_cap=False)
    assert got_a is not None and got_b is None
    assert a.get_item(only.id).state is ItemState.LEASED


def test_audit_chain_detects_edits_via_sql(tmp_path: Path):
    path = tmp_path / "a.db"
    s = open_store(f"sqlite:///{path}")
    for i in range(5):
        s.append_audit(actor="a", action="test.event", subject=f"s{i}", reason="r", now=NOW,
                       details={"i": i})
    report = s.verify_audit()
    assert report.ok and report.count == 5 and len(report.head_hash) == 64
    s._conn.execute("UPDATE audit_events SET details = '{\"i\":99}' WHERE seq = 4")
    bad = s.verify_audit()
    assert not bad.ok and bad.bad_seq == 4 and "event 4" in bad.problem
