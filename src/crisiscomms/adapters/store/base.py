"""Connection handling, migrations and error mapping for the SQLite store."""

from __future__ import annotations

import contextlib
import json
import os
import sqlite3
import threading
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

from crisiscomms.adapters.store.migrations import MIGRATIONS
from crisiscomms.domain.clock import isoformat, parse_instant
from crisiscomms.domain.errors import StoreCorruptError, StoreError, StoreLockedError

BUSY_TIMEOUT_MS = 5000


def ts(dt: datetime | None) -> str | None:
    """Datetime to the stored text form (sortable UTC ISO-8601)."""
    return None if dt is None else isoformat(dt)


def dt(text: str | None) -> datetime | None:
    """Stored text back to an aware UTC datetime."""
    return None if text is None else parse_instant(text)


def dumps(value: Any) -> str:
    return json.dumps(value, sort_keys=True, ensure_ascii=False, separators=(",", ":"))


def sqlite_path(url: str) -> str:
    """``sqlite:///relative/or/absolute`` (or a bare path) to a filesystem path."""
    if url.startswith("sqlite:///"):
        return url[len("sqlite:///"):] if url != "sqlite:///:memory:" else ":memory:"
    if url.startswith("sqlite://"):
        return url[len("sqlite://"):]
    if "://" in url:
        raise StoreError(f"unsupported database URL scheme in {url.split('://')[0]}://…; "
                         "only sqlite:/// is built in")
    return url


class SQLiteBase:
    """Owns the connection: WAL, busy timeout, foreign keys, one transaction per change."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._lock = threading.RLock()
        self._depth = 0
        self._conn = self._connect(path)
        self._migrate()

    # -- connection -----------------------------------------------------------------
    def _connect(self, path: str) -> sqlite3.Connection:
        if path != ":memory:":
            p = Path(path)
            try:
                p.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
                if not p.exists():
                    # Create the file 0600 before SQLite does, so it is never world-readable.
                    fd = os.open(p, os.O_CREAT | os.O_WRONLY, 0o600)
                    os.close(fd)
            except OSError as exc:
                raise StoreError(f"{path}: cannot create database: {exc.strerror}") from None
        old_umask = os.umask(0o077)  # the -wal and -shm files too
        try:
            conn = sqlite3.connect(
                path, timeout=BUSY_TIMEOUT_MS / 1000, isolation_level=None,
                check_same_thread=False,
            )
            conn.row_factory = sqlite3.Row
            with self._mapped("open"):
                conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
                conn.execute("PRAGMA foreign_keys = ON")
                if path != ":memory:":
                    mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
                    if mode.lower() != "wal":
                        conn.execute("PRAGMA journal_mode = DELETE")
                conn.execute("PRAGMA synchronous = NORMAL")
                conn.execute("SELECT count(*) FROM sqlite_master").fetchone()
        finally:
            os.umask(old_umask)
        return conn

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    @contextlib.contextmanager
    def _mapped(self, what: str) -> Iterator[None]:
        """Translate sqlite3 errors into the store's errors, naming the file."""
        try:
            yield
        except sqlite3.OperationalError as exc:
            msg = str(exc)
            if "locked" in msg or "busy" in msg:
                raise StoreLockedError(
                    f"{self.path}: database is locked by another process "
                    f"(waited {BUSY_TIMEOUT_MS / 1000:.0f}s during {what})"
                ) from None
            if "readonly" in msg or "read-only" in msg:
                raise StoreError(f"{self.path}: database is read-only ({what})") from None
            if ("disk" in msg and "full" in msg) or "disk I/O" in msg:
                raise StoreError(f"{self.path}: {msg} during {what}; nothing was written") \
                    from None
            if "unable to open" in msg:
                raise StoreError(f"{self.path}: cannot open database file") from None
            raise StoreError(f"{self.path}: {msg} during {what}") from None
        except sqlite3.DatabaseError as exc:
            msg = str(exc)
            if "not a database" in msg or "malformed" in msg or "corrupt" in msg:
                raise StoreCorruptError(f"{self.path}: database is corrupt or not a "
                                        f"crisiscomms database ({msg})") from None
            if "full" in msg:
                raise StoreError(f"{self.path}: disk full during {what}; nothing was written") \
                    from None
            raise StoreError(f"{self.path}: {msg} during {what}") from None

    @contextlib.contextmanager
    def tx(self, what: str = "write") -> Iterator[sqlite3.Connection]:
        """One write transaction (BEGIN IMMEDIATE), nested calls join the outer one."""
        with self._lock:
            if self._depth:
                self._depth += 1
                try:
                    yield self._conn
                finally:
                    self._depth -= 1
                return
            with self._mapped(what):
                self._conn.execute("BEGIN IMMEDIATE")
            self._depth = 1
            try:
                yield self._conn
            except BaseException:
                self._depth = 0
                with contextlib.suppress(sqlite3.Error):
                    self._conn.execute("ROLLBACK")
                raise
            self._depth = 0
            try:
                with self._mapped(what):
                    self._conn.execute("COMMIT")
            except BaseException:
                with contextlib.suppress(sqlite3.Error):
                    self._conn.execute("ROLLBACK")
                raise

    def query(self, sql: str, params: Any = (), what: str = "read") -> list[sqlite3.Row]:
        with self._lock, self._mapped(what):
            return self._conn.execute(sql, params).fetchall()

    def query_one(self, sql: str, params: Any = (), what: str = "read") -> sqlite3.Row | None:
        rows = self.query(sql, params, what)
        return rows[0] if rows else None

    def execute(self, conn: sqlite3.Connection, sql: str, params: Any = ()) -> sqlite3.Cursor:
        with self._mapped("write"):
            return conn.execute(sql, params)

    # -- migrations -----------------------------------------------------------------
    @property
    def schema_version(self) -> int:
        row = self.query_one("SELECT max(version) AS v FROM schema_migrations")
        return int(row["v"] or 0) if row else 0

    def _migrate(self) -> None:
        with self._lock, self._mapped("migration"):
            self._conn.execute(
                "CREATE TABLE IF NOT EXISTS schema_migrations ("
                "version INTEGER PRIMARY KEY, name TEXT NOT NULL, applied_at TEXT NOT NULL)"
            )
            applied = {r[0] for r in self._conn.execute("SELECT version FROM schema_migrations")}
        latest = max(v for v, _, _ in MIGRATIONS)
        if applied and max(applied) > latest:
            raise StoreCorruptError(
                f"{self.path}: database schema version {max(applied)} is newer than this "
                f"crisiscomms understands ({latest}); upgrade crisiscomms"
            )
        for version, name, sql in MIGRATIONS:
            if version in applied:
                continue
            # One script, one transaction: DDL is transactional in SQLite, so an interrupted
            # migration rolls back and is re-run whole on the next start.
            script = (
                "BEGIN IMMEDIATE;\n" + sql + "\nINSERT INTO schema_migrations VALUES "
                f"({version}, '{name}', strftime('%Y-%m-%dT%H:%M:%fZ','now'));\nCOMMIT;"
            )
            with self._lock:
                try:
                    with self._mapped(f"migration {version} ({name})"):
                        self._conn.executescript(script)
                except BaseException:
                    with contextlib.suppress(sqlite3.Error):
                        self._conn.execute("ROLLBACK")
                    raise
