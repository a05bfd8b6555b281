"""PostgreSQL-specific bad input: a URL that cannot connect, wrong credentials, a database at a
newer schema, a migration interrupted half-way, a connection lost mid-transaction. Each gives one
clear line naming the database (never its password) and leaves nothing half-written."""

from __future__ import annotations

import socket
from collections.abc import Callable
from datetime import UTC, datetime

import pytest

from crisiscomms.adapters.store import migrations, open_store
from crisiscomms.adapters.store.postgres import mask_url
from crisiscomms.domain.errors import StoreCorruptError, StoreError
from crisiscomms.domain.models import ActionKind, NewOutboxItem

NOW = datetime(2026, 11, 27, 18, 0, tzinfo=UTC)
LATEST = max(v for v, _, _ in migrations.POSTGRES_MIGRATIONS)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_the_password_is_masked_in_every_name():
    assert mask_url("postgresql://relay:s3cret@db.example:5432/cc") == \
        "postgresql://relay:***@db.example:5432/cc"
    assert "s3cret" not in mask_url("postgresql://db/cc?password=s3cret&sslmode=require")


def test_a_server_that_is_not_there(pg_url: Callable[[], str]):
    pg_url()  # CI: the PostgreSQL tests must be able to run at all
    url = f"postgresql://relay:s3cret@127.0.0.1:{free_port()}/cc"
    with pytest.raises(StoreError) as exc:
        open_store(url)
    msg = str(exc.value)
    assert "\n" not in msg and "s3cret" not in msg
    assert msg.startswith("postgresql://relay:***@127.0.0.1:") and "cannot connect" in msg


def test_wrong_credentials_name_the_database_not_the_password(pg_url: Callable[[], str]):
    url = pg_url().replace("postgresql://crisis@", "postgresql://nobody:hunter2@")
    with pytest.raises(StoreError, match="cannot connect") as exc:
        open_store(url)
    assert "hunter2" not in str(exc.value) and "nobody:***@" in str(exc.value)
    assert "\n" not in str(exc.value)


def test_a_newer_schema_is_refused(pg_url: Callable[[], str]):
    url = pg_url()
    open_store(url).close()
    import psycopg

    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("INSERT INTO schema_migrations (version, name) VALUES (999, 'future')")
    with pytest.raises(StoreCorruptError, match="schema version 999 is newer"):
        open_store(url)


def test_a_migration_failing_half_way_leaves_the_previous_version(
        pg_url: Callable[[], str], monkeypatch: pytest.MonkeyPatch):
    url = pg_url()
    open_store(url).close()
    broken = (LATEST + 1, "half_done", "CREATE TABLE half_done (id INTEGER PRIMARY KEY);\n"
                              "INSERT INTO no_such_table VALUES (1);")
    monkeypatch.setattr(migrations, "POSTGRES_MIGRATIONS",
                        [*migrations.POSTGRES_MIGRATIONS, broken])
    from crisiscomms.adapters.store import postgres

    monkeypatch.setattr(postgres, "POSTGRES_MIGRATIONS", migrations.POSTGRES_MIGRATIONS)
    with pytest.raises(StoreError, match=rf"migration {LATEST + 1} \(half_done\)"):
        open_store(url)
    monkeypatch.undo()
    store = open_store(url)
    assert store.schema_version == LATEST
    with store.reader() as r:
        tables = {row["table_name"] for row in r._tx.rows(  # type: ignore[attr-defined]
            "SELECT table_name FROM information_schema.tables WHERE table_schema = 'public'")}
    assert "half_done" not in tables
    store.close()


def test_a_connection_lost_mid_transaction_writes_nothing_and_the_pool_recovers(
        pg_url: Callable[[], str]):
    url = pg_url()
    store = open_store(url, pool_size=2)
    import psycopg

    item = NewOutboxItem(dedupe_key="k1", channel_id="x", action=ActionKind.POST, text="hi")
    with pytest.raises(StoreError, match="connection lost") as exc, store.unit_of_work() as uow:
        uow.outbox.add([item], at=NOW)
        (pid,) = uow._tx.rows("SELECT pg_backend_pid() AS pid")  # type: ignore[attr-defined]
        with psycopg.connect(url, autocommit=True) as killer:
            killer.execute("SELECT pg_terminate_backend(%s)", (pid["pid"],))
        uow.commit()
    assert "\n" not in str(exc.value)
    assert store.items() == []  # nothing half-written, and the next unit of work works
    with store.unit_of_work() as uow:
        uow.outbox.add([item], at=NOW)
        uow.commit()
    assert len(store.items()) == 1
    store.close()
