"""Data dir 0700, database (and its -wal/-shm) 0600, and ``audit verify`` catching an edited,
a deleted and a reordered audit row, in the library and through the CLI."""

from __future__ import annotations

import os
import sqlite3
import stat
from datetime import timedelta
from pathlib import Path

import pytest

from crisiscomms.adapters.store import open_store
from crisiscomms.bootstrap import ensure_home
from crisiscomms.testing import append_audit
from tests.sources.sources_helpers import NOW

ROOT = Path(__file__).resolve().parents[2]


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_data_dir_is_0700_even_if_it_existed_wider(tmp_path: Path) -> None:
    fresh = ensure_home(tmp_path / "fresh" / "crisiscomms")
    assert mode(fresh) == 0o700
    wide = tmp_path / "wide"
    wide.mkdir(mode=0o755)
    os.chmod(wide, 0o777)
    assert mode(ensure_home(wide)) == 0o700


def test_database_files_are_0600_whatever_the_umask(tmp_path: Path) -> None:
    old = os.umask(0o000)
    try:
        store = open_store(f"sqlite:///{tmp_path / 'home' / 'c.db'}")
        try:
            append_audit(store, actor="t", action="test.write", subject="s", reason="r", now=NOW)
            files = sorted((tmp_path / "home").glob("c.db*"))
            assert files, "no database file"
            for f in files:  # c.db, c.db-wal, c.db-shm
                assert mode(f) == 0o600, (f.name, oct(mode(f)))
        finally:
            store.close()
    finally:
        os.umask(old)
    assert mode(tmp_path / "home") == 0o700


def test_cli_creates_home_0700_and_database_0600(tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    from crisiscomms.cli import main

    home = tmp_path / "data"
    monkeypatch.delenv("CRISISCOMMS_DATABASE_URL", raising=False)
    old = os.umask(0o002)
    try:
        with pytest.raises(SystemExit) as info:
            main(["--home", str(home), "--playbooks-dir", str(ROOT / "playbooks"),
                  "status", "--json"])
    finally:
        os.umask(old)
    capsys.readouterr()
    assert info.value.code == 0
    assert mode(home) == 0o700
    assert mode(home / "crisiscomms.db") == 0o600


# ---------------------------------------------------------------------- audit tampering


def _store_with_events(path: Path, n: int = 6):  # type: ignore[no-untyped-def]
    store = open_store(f"sqlite:///{path}")
    for i in range(n):
        append_audit(store, actor=f"op{i}", action="incident.activated" if i % 2 else
                           "outbox.approved", subject=f"item:{i}", reason=f"reason {i}",
                           now=NOW + timedelta(minutes=i), details={"i": i})
    assert store.verify_audit().ok
    return store


def _tamper(path: Path, sql: str) -> None:
    conn = sqlite3.connect(path)
    try:
        conn.executescript(sql)
        conn.commit()
    finally:
        conn.close()


COLUMNS = ("at", "actor", "action", "subject", "reason", "details", "prev_hash", "hash")
# Swap the whole contents (hashes included) of rows 2 and 4: a reorder done by SQL.
SWAP = ("CREATE TEMP TABLE saved AS SELECT * FROM audit_events WHERE seq IN (2, 4);"
        "UPDATE audit_events SET " + ", ".join(
            f"{c} = (SELECT {c} FROM saved WHERE saved.seq = 6 - audit_events.seq)"
            for c in COLUMNS) + " WHERE seq IN (2, 4);")

TAMPERING = {
    "edited_reason": ("UPDATE audit_events SET reason = 'nothing to see' WHERE seq = 3", 3),
    "edited_details": ("UPDATE audit_events SET details = '{\"i\":99}' WHERE seq = 5", 5),
    "edited_and_rehashed_alone": (
        "UPDATE audit_events SET actor = 'mallory', hash = 'f' || substr(hash, 2) "
        "WHERE seq = 2", 2),
    "deleted_middle": ("DELETE FROM audit_events WHERE seq = 3", 3),
    "deleted_last": ("DELETE FROM audit_events WHERE seq = 6", 6),
    "deleted_first": ("DELETE FROM audit_events WHERE seq = 1", 1),
    "reordered_rows": (SWAP, 2),
    "renumbered": ("UPDATE audit_events SET seq = seq + 100 WHERE seq = 6", 6),
}


@pytest.mark.parametrize("name", sorted(TAMPERING))
def test_audit_verify_catches_tampering(tmp_path: Path, name: str) -> None:
    path = tmp_path / "a.db"
    store = _store_with_events(path)
    store.close()
    sql, bad_seq = TAMPERING[name]
    _tamper(path, sql)
    store = open_store(f"sqlite:///{path}")
    try:
        report = store.verify_audit()
    finally:
        store.close()
    assert not report.ok, name
    assert report.bad_seq == bad_seq, (name, report)
    assert report.problem


def test_reorder_really_swapped_the_rows(tmp_path: Path) -> None:
    """Guard for the test above: the SQL swap moves row 4's content to seq 2."""
    path = tmp_path / "a.db"
    _store_with_events(path).close()
    _tamper(path, TAMPERING["reordered_rows"][0])
    conn = sqlite3.connect(path)
    rows = dict(conn.execute("SELECT seq, actor FROM audit_events WHERE seq IN (2, 4)"))
    conn.close()
    assert rows == {2: "op3", 4: "op1"}


@pytest.mark.parametrize("name", ["edited_reason", "deleted_middle", "reordered_rows"])
def test_cli_audit_verify_exits_1_naming_the_event(
    tmp_path: Path, name: str, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    from crisiscomms.cli import main

    path = tmp_path / "a.db"
    _store_with_events(path).close()
    monkeypatch.setenv("CRISISCOMMS_DATABASE_URL", f"sqlite:///{path}")
    with pytest.raises(SystemExit) as ok:
        main(["--playbooks-dir", str(ROOT / "playbooks"), "audit", "verify"])
    assert ok.value.code == 0
    _tamper(path, TAMPERING[name][0])
    with pytest.raises(SystemExit) as broken:
        main(["--playbooks-dir", str(ROOT / "playbooks"), "audit", "verify", "--json"])
    out = capsys.readouterr().out
    assert broken.value.code == 1
    assert f'"bad_seq": {TAMPERING[name][1]}' in out and '"ok": false' in out


def test_a_team_data_dir_setgid_and_group_rwx_is_kept_and_shared_with_the_group(
        tmp_path: Path) -> None:
    """The service and the on-call officers share one database: a data dir made setgid and
    group-rwx (systemd StateDirectoryMode=2770) stays so (only "other" bits are removed), and
    the database files in it are group read-write (0660), whatever the umask."""
    team = tmp_path / "team"
    team.mkdir()
    os.chmod(team, 0o2777)
    assert mode(ensure_home(team)) == 0o2770
    old = os.umask(0o077)
    try:
        store = open_store(f"sqlite:///{team / 'c.db'}")
        try:
            append_audit(store, actor="t", action="test.write", subject="s", reason="r", now=NOW)
            files = sorted(team.glob("c.db*"))
            assert len(files) >= 2, files
            for f in files:
                assert mode(f) == 0o660, (f.name, oct(mode(f)))
        finally:
            store.close()
    finally:
        os.umask(old)


def test_a_data_dir_this_user_cannot_use_is_a_clear_error_naming_owner_and_group(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from crisiscomms.domain.errors import StoreError

    team = tmp_path / "team"
    team.mkdir()
    os.chmod(team, 0o2770)
    if os.getuid() == 0:
        os.chown(team, 65534, -1)  # someone else's (nobody)
    real_access = os.access
    monkeypatch.setattr(os, "access", lambda p, m, **k: False if Path(p) == team
                        else real_access(p, m, **k))
    monkeypatch.setattr(os, "getuid", lambda: 12345)
    with pytest.raises(StoreError) as exc:
        ensure_home(team)
    msg = str(exc.value)
    assert str(team) in msg and "group" in msg and "permission" in msg.lower()


def test_an_existing_database_is_widened_to_0660_once_its_folder_is_a_team_dir(
        tmp_path: Path) -> None:
    """An install from before the data dir was a team dir: its database (and -wal/-shm) are
    0600, so the officers get SQLite's "unable to open". Once the folder is a team dir
    (setgid, group rwx: ``ensure_home``), the owner's next open widens them to 0660."""
    home = tmp_path / "data"
    url = f"sqlite:///{home / 'crisiscomms.db'}"
    first = open_store(url)  # kept open: its -wal and -shm stay on disk
    try:
        append_audit(first, actor="t", action="test.write", subject="s", reason="r", now=NOW)
        files = sorted(home.glob("crisiscomms.db*"))
        assert len(files) == 3 and {mode(f) for f in files} == {0o600}
        os.chmod(home, 0o2770)  # what ensure_home does to a team's data dir
        again = open_store(url)
        try:
            append_audit(again, actor="t", action="test.write", subject="s", reason="r",
                         now=NOW)
            for f in files:
                assert mode(f) == 0o660, (f.name, oct(mode(f)))
                assert f.stat().st_gid == home.stat().st_gid
        finally:
            again.close()
    finally:
        first.close()


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to give the file another owner")
def test_a_database_of_another_owner_is_left_as_it_is(tmp_path: Path) -> None:
    home = tmp_path / "data"
    url = f"sqlite:///{home / 'crisiscomms.db'}"
    open_store(url).close()
    db = home / "crisiscomms.db"
    os.chown(db, 65534, 65534)
    os.chmod(db, 0o600)
    os.chmod(home, 0o2770)
    open_store(url).close()  # root may open it; only its owner may change its mode
    assert mode(db) == 0o600 and db.stat().st_uid == 65534
