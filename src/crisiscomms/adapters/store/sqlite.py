"""The SQLite store: the embedded default. One file, WAL, one writer at a time.

A write unit of work is ``BEGIN IMMEDIATE``: SQLite's database-wide writer lock is what
serialises writers here (the audit chain, claims, revisions). Every write is nonetheless
guarded like on PostgreSQL (versions, fencing tokens), so correctness does not rest on it.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import stat
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from crisiscomms.adapters.store import migrations as schema
from crisiscomms.adapters.store.queries import StoreQueries
from crisiscomms.adapters.store.records import ts
from crisiscomms.adapters.store.sql import Dialect, Row, SqlUnitOfWork
from crisiscomms.domain.clock import SystemClock
from crisiscomms.domain.errors import StoreCorruptError, StoreError, StoreLockedError
from crisiscomms.logs import get_logger
from crisiscomms.ports import Clock

log = get_logger(__name__)

BUSY_TIMEOUT_MS = 5000
DIALECT = Dialect(name="sqlite", ts=ts, for_update="", skip_locked="")


def sqlite_path(url: str) -> str:
    """``sqlite:///relative/or/absolute`` (or a bare path) to a filesystem path."""
    if url.startswith("sqlite:///"):
        return url[len("sqlite:///"):] if url != "sqlite:///:memory:" else ":memory:"
    if url.startswith("sqlite://"):
        return url[len("sqlite://"):]
    if "://" in url:
        raise StoreError(f"unsupported database URL scheme in {url.split('://')[0]}://…; "
                         "use sqlite:///PATH or postgresql://…")
    return url


class SQLiteTx:
    """The store's connection inside one transaction."""

    dialect = DIALECT

    def __init__(self, store: SQLiteStore) -> None:
        self.store = store
        self.conn = store._conn

    def rows(self, sql: str, params: Sequence[Any] = ()) -> list[Row]:
        with self.store._mapped("read" if sql.lstrip()[:6].upper() == "SELECT" else "write"):
            return self.conn.execute(sql, tuple(params)).fetchall()

    def run(self, sql: str, params: Sequence[Any] = ()) -> int:
        with self.store._mapped("write"):
            return self.conn.execute(sql, tuple(params)).rowcount

    def is_unique_violation(self, exc: BaseException) -> bool:
        return isinstance(exc, sqlite3.IntegrityError) and "UNIQUE" in str(exc)

    @contextlib.contextmanager
    def savepoint(self) -> Iterator[None]:
        self.conn.execute("SAVEPOINT sp")
        try:
            yield
        except BaseException:
            self.conn.execute("ROLLBACK TO sp")
            self.conn.execute("RELEASE sp")
            raise
        self.conn.execute("RELEASE sp")


class SQLiteStore(StoreQueries):
    """Owns the connection: WAL, busy timeout, foreign keys, migrations, transactions."""

    def __init__(self, path: str, *, audit_key: bytes | None = None,
                 wall_clock: Clock | None = None) -> None:
        self.path = path
        self.audit_key = audit_key or None
        self.wall_clock: Clock = wall_clock or SystemClock()
        self._lock = threading.RLock()
        self._depth = 0
        self._conn = self._connect(path)
        self._migrate()

    # -- the Store port ----------------------------------------------------------------
    def unit_of_work(self) -> SqlUnitOfWork:
        return SqlUnitOfWork(self)

    def reader(self) -> SqlUnitOfWork:
        return SqlUnitOfWork(self, readonly=True)

    def describe(self) -> str:
        return f"sqlite:///{self.path}"

    def begin(self, *, readonly: bool) -> SQLiteTx:
        self._lock.acquire()
        if self._depth:  # a unit of work opened inside another on this thread joins it
            self._depth += 1
            return SQLiteTx(self)
        try:
            with self._mapped("begin"):
                self._conn.execute("BEGIN" if readonly else "BEGIN IMMEDIATE")
        except BaseException:
            self._lock.release()
            raise
        self._depth = 1
        return SQLiteTx(self)

    def commit(self, tx: Any) -> None:
        if self._depth > 1:
            return
        try:
            with self._mapped("commit"):
                self._conn.execute("COMMIT")
        except BaseException:
            with contextlib.suppress(sqlite3.Error):
                self._conn.execute("ROLLBACK")
            raise

    def rollback(self, tx: Any) -> None:
        if self._depth > 1:
            return
        with contextlib.suppress(sqlite3.Error):
            self._conn.execute("ROLLBACK")

    def release(self, tx: Any) -> None:
        self._depth -= 1
        self._lock.release()

    # -- connection -----------------------------------------------------------------
    def _connect(self, path: str) -> sqlite3.Connection:
        if path != ":memory:":
            p = Path(path)
            try:
                p.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
                shared = _shared_dir(p.parent)
                if not p.exists():
                    # Create the file before SQLite does, so it is never world-readable: 0600,
                    # or 0660 in a team's data dir (setgid, group rwx: service and officers).
                    fd = os.open(p, os.O_CREAT | os.O_WRONLY | os.O_EXCL,
                                 0o660 if shared else 0o600)
                    os.close(fd)
                    os.chmod(p, 0o660 if shared else 0o600)  # whatever the umask
                elif p.stat().st_size == 0 and not self._fresh(p):
                    # An empty file where a database was (a truncated copy, a bad restore):
                    # starting a new empty database there would hide every incident.
                    raise StoreCorruptError(
                        f"{path}: database file is empty (0 bytes): restore it from a backup, "
                        "or remove it to start a new, empty database")
                elif shared:
                    _widen_for_the_team(p)
            except OSError as exc:
                raise StoreError(f"{path}: cannot create database: {exc.strerror}") from None
        # The -wal and -shm files too (SQLite gives them the database file's mode, less the
        # umask).
        old_umask = os.umask(0o007 if path != ":memory:" and _shared_dir(Path(path).parent)
                             else 0o077)
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

    @staticmethod
    def _fresh(p: Path) -> bool:
        """An empty file we may have just created ourselves (another process opening the same
        new database at the same moment): younger than a few seconds."""
        import time

        return time.time() - p.stat().st_mtime < 2

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    @contextlib.contextmanager
    def _mapped(self, what: str) -> Iterator[None]:
        """Translate sqlite3 errors into the store's errors, naming the file."""
        try:
            yield
        except sqlite3.IntegrityError:
            raise
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

    def query(self, sql: str, params: Any = ()) -> list[sqlite3.Row]:
        """Raw read access for tests and diagnostics (never used by the services)."""
        with self._lock, self._mapped("read"):
            return self._conn.execute(sql, params).fetchall()

    def query_one(self, sql: str, params: Any = ()) -> sqlite3.Row | None:
        rows = self.query(sql, params)
        return rows[0] if rows else None

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
        migrations = schema.SQLITE_MIGRATIONS
        latest = max(v for v, _, _ in migrations)
        if applied and max(applied) > latest:
            raise StoreCorruptError(
                f"{self.path}: database schema version {max(applied)} is newer than this "
                f"crisiscomms understands ({latest}); upgrade crisiscomms"
            )
        for version, name, sql in migrations:
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


def _widen_for_the_team(db: Path) -> None:
    """A database made before its folder became a team dir (an existing install) is 0600 and
    of its creator's group: the officers would get SQLite's "unable to open". The owner widens
    it, and its -wal/-shm, to 0660 in the folder's group (files of others are left alone: only
    their owner may change them)."""
    group = db.parent.stat().st_gid
    for f in (db, db.with_name(db.name + "-wal"), db.with_name(db.name + "-shm")):
        try:
            st = f.lstat()
        except FileNotFoundError:
            continue
        if not stat.S_ISREG(st.st_mode) or st.st_uid != os.geteuid():
            continue
        if st.st_gid != group:
            with contextlib.suppress(PermissionError):  # not a member of the folder's group
                os.chown(f, -1, group)
        if stat.S_IMODE(st.st_mode) != 0o660:
            os.chmod(f, 0o660)
            log.info("store.widened_for_team", file=str(f), mode="0660")


def _shared_dir(folder: Path) -> bool:
    """A team's data dir (setgid, group rwx), as ``bootstrap.ensure_home`` keeps it."""
    try:
        return folder.stat().st_mode & 0o2070 == 0o2070
    except OSError:
        return False
