"""The PostgreSQL store: several watchers on several machines against one database.

psycopg 3 with a connection pool. Outbox items and due sources are claimed with
``SELECT ... FOR UPDATE SKIP LOCKED`` (a watcher never waits for another's claim); the audit
chain is appended under a row lock on its head (one chain, no forks, no gaps); instants are
``timestamptz``; migrations run one transaction each, under an advisory lock, and are recorded.
The password in the URL is never printed: every message names the database by ``describe()``.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator, Sequence
from datetime import datetime
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from crisiscomms.adapters.store.migrations import POSTGRES_MIGRATIONS
from crisiscomms.adapters.store.queries import StoreQueries
from crisiscomms.adapters.store.sql import Dialect, Row, SqlUnitOfWork
from crisiscomms.domain.clock import SystemClock, utc
from crisiscomms.domain.errors import StoreCorruptError, StoreError, StoreLockedError
from crisiscomms.ports import Clock

MIGRATION_LOCK = 0x63726973  # pg_advisory_xact_lock key: "cris"


def _instant(value: datetime | None) -> datetime | None:
    return None if value is None else utc(value)


DIALECT = Dialect(name="postgresql", ts=_instant, for_update="FOR UPDATE",
                  skip_locked="FOR UPDATE SKIP LOCKED")


def mask_url(url: str) -> str:
    """The URL with any password replaced by ``***`` (for messages and logs)."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "postgresql://…"
    netloc = parts.netloc
    if "@" in netloc:
        creds, host = netloc.rsplit("@", 1)
        user = creds.split(":", 1)[0]
        netloc = f"{user}:***@{host}" if ":" in creds else f"{user}@{host}"
    query = re.sub(r"(?i)(password=)[^&]*", r"\1***", parts.query)
    return urlunsplit((parts.scheme, netloc, parts.path, query, ""))


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


class PostgresTx:
    """A pooled connection inside one transaction."""

    dialect = DIALECT

    def __init__(self, store: PostgresStore, conn: Any) -> None:
        self.store = store
        self.conn = conn

    def rows(self, sql: str, params: Sequence[Any] = ()) -> list[Row]:
        with self.store.mapped("query"):
            cur = self.conn.execute(sql.replace("?", "%s"), tuple(params))
            return list(cur.fetchall()) if cur.description is not None else []

    def run(self, sql: str, params: Sequence[Any] = ()) -> int:
        with self.store.mapped("write"):
            return int(self.conn.execute(sql.replace("?", "%s"), tuple(params)).rowcount)

    def is_unique_violation(self, exc: BaseException) -> bool:
        import psycopg.errors

        return isinstance(exc, psycopg.errors.UniqueViolation)

    @contextlib.contextmanager
    def savepoint(self) -> Iterator[None]:
        with self.conn.transaction():
            yield


class PostgresStore(StoreQueries):
    """Units of work on pooled connections; see the module docstring."""

    def __init__(self, url: str, *, pool_size: int = 4, connect_timeout: float = 10.0,
                 audit_key: bytes | None = None, wall_clock: Clock | None = None) -> None:
        self.audit_key = audit_key or None
        self.wall_clock: Clock = wall_clock or SystemClock()
        try:
            import psycopg
            from psycopg.rows import dict_row
            from psycopg_pool import ConnectionPool
        except ImportError:  # pragma: no cover - psycopg is a dependency
            raise StoreError("PostgreSQL needs psycopg 3: pip install 'psycopg[binary,pool]'") \
                from None
        self.url = url
        self.name = mask_url(url)
        self._psycopg = psycopg
        # Autocommit connections with explicit BEGIN/COMMIT: the unit of work owns the
        # transaction, never the driver's implicit one.
        kwargs: dict[str, Any] = {
            "row_factory": dict_row, "connect_timeout": max(1, int(connect_timeout)),
            "application_name": "crisiscomms", "autocommit": True}
        # One direct connection first: its error says why (refused, bad password, no such
        # database), where a pool would only time out.
        try:
            conn = psycopg.connect(url, **kwargs)
        except psycopg.Error as exc:
            raise StoreError(f"{self.name}: cannot connect: {_first_line(exc)}") from None
        except Exception as exc:  # a malformed URL (psycopg.ProgrammingError is covered above)
            raise StoreError(f"{self.name}: cannot connect: {_first_line(exc)}") from None
        try:
            self._migrate(conn)
        finally:
            conn.close()
        # No check on every checkout (an extra round trip per unit of work, 12% of dispatch
        # time): a connection that broke fails its unit of work, which is retried, and the pool
        # discards it when it comes back in a bad state.
        self.pool = ConnectionPool(url, min_size=1, max_size=max(1, pool_size), kwargs=kwargs,
                                   configure=self._configure, timeout=connect_timeout,
                                   open=False, name="crisiscomms")
        try:
            self.pool.open(wait=True, timeout=connect_timeout)
        except Exception as exc:
            raise StoreError(f"{self.name}: cannot open a connection pool: "
                             f"{_first_line(exc)}") from None

    @staticmethod
    def _configure(conn: Any) -> None:
        conn.execute("SET TIME ZONE 'UTC'")

    # -- the Store port ----------------------------------------------------------------
    def unit_of_work(self) -> SqlUnitOfWork:
        return SqlUnitOfWork(self)

    def reader(self) -> SqlUnitOfWork:
        return SqlUnitOfWork(self, readonly=True)

    def describe(self) -> str:
        return self.name

    def begin(self, *, readonly: bool) -> PostgresTx:
        with self.mapped("connect"):
            conn = self.pool.getconn()
        try:
            with self.mapped("begin"):
                conn.execute("BEGIN READ ONLY" if readonly else "BEGIN")
        except BaseException:
            self.pool.putconn(conn)
            raise
        return PostgresTx(self, conn)

    def commit(self, tx: Any) -> None:
        with self.mapped("commit"):
            tx.conn.execute("COMMIT")

    def rollback(self, tx: Any) -> None:
        with contextlib.suppress(Exception):
            tx.conn.execute("ROLLBACK")

    def release(self, tx: Any) -> None:
        self.pool.putconn(tx.conn)

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.pool.close()

    @contextlib.contextmanager
    def mapped(self, what: str) -> Iterator[None]:
        """Translate psycopg errors into the store's errors, naming the database."""
        pg = self._psycopg
        try:
            yield
        except pg.errors.UniqueViolation:
            raise
        except (pg.errors.DeadlockDetected, pg.errors.SerializationFailure,
                pg.errors.LockNotAvailable) as exc:
            raise StoreLockedError(f"{self.name}: {_first_line(exc)} during {what}; nothing "
                                   "was written") from None
        except pg.OperationalError as exc:
            raise StoreError(f"{self.name}: connection lost or refused during {what}: "
                             f"{_first_line(exc)}; nothing was written") from None
        except pg.Error as exc:
            raise StoreError(f"{self.name}: {_first_line(exc)} during {what}") from None
        except Exception as exc:
            if type(exc).__module__.startswith("psycopg_pool"):
                raise StoreError(f"{self.name}: no database connection during {what}: "
                                 f"{_first_line(exc)}") from None
            raise

    # -- migrations -----------------------------------------------------------------
    @property
    def schema_version(self) -> int:
        with self.reader() as r:
            (row,) = r._tx.rows("SELECT max(version) AS v FROM schema_migrations")  # type: ignore[union-attr]
        return int(row["v"] or 0)

    def _migrate(self, conn: Any) -> None:
        latest = max(v for v, _, _ in POSTGRES_MIGRATIONS)
        with self.mapped("migration"):
            # Two watchers starting together: one migrates, the other waits and finds it done.
            conn.execute("SELECT pg_advisory_lock(%s)", (MIGRATION_LOCK,))
        try:
            with self.mapped("migration"):
                conn.execute("CREATE TABLE IF NOT EXISTS schema_migrations (version INTEGER "
                             "PRIMARY KEY, name TEXT NOT NULL, applied_at TIMESTAMPTZ NOT NULL "
                             "DEFAULT now())")
                applied = {r["version"] for r in
                           conn.execute("SELECT version FROM schema_migrations").fetchall()}
            if applied and max(applied) > latest:
                raise StoreCorruptError(
                    f"{self.name}: database schema version {max(applied)} is newer than this "
                    f"crisiscomms understands ({latest}); upgrade crisiscomms")
            for version, name, sql in POSTGRES_MIGRATIONS:
                if version in applied:
                    continue
                # DDL is transactional in PostgreSQL: an interrupted migration leaves the
                # previous version intact and runs again, whole, on the next start.
                try:
                    with self.mapped(f"migration {version} ({name})"):
                        conn.execute("BEGIN")
                        for statement in (s.strip() for s in sql.split(";\n")):
                            if statement:
                                conn.execute(statement.rstrip(";"))
                        conn.execute("INSERT INTO schema_migrations (version, name) VALUES "
                                     "(%s, %s)", (version, name))
                        conn.execute("COMMIT")
                except BaseException:
                    with contextlib.suppress(Exception):
                        conn.execute("ROLLBACK")
                    raise
        finally:
            with contextlib.suppress(Exception):
                conn.execute("SELECT pg_advisory_unlock(%s)", (MIGRATION_LOCK,))
