"""The store port's implementations. Only this package contains SQL."""

from __future__ import annotations

from pydantic import SecretStr

from crisiscomms.adapters.store.memory import MemoryStore
from crisiscomms.adapters.store.sqlite import SQLiteStore, sqlite_path
from crisiscomms.domain.audit import ChainReport
from crisiscomms.ports import Clock, Store

__all__ = ["ChainReport", "MemoryStore", "SQLiteStore", "open_store"]


def open_store(database_url: str, *, pool_size: int = 4,
               audit_key: SecretStr | None = None, wall_clock: Clock | None = None) -> Store:
    """Open (and migrate) the store named by a database URL: ``sqlite:///PATH`` (the default),
    ``postgresql://…`` (several watchers), or ``memory://`` (tests and what-if runs).

    ``audit_key`` (``CRISISCOMMS_AUDIT_KEY``) keys the audit chain with HMAC-SHA256: new events
    are keyed, and verify checks keyed events. ``wall_clock`` is the real clock each audit event
    records beside the time it claims (the system clock unless a test gives one)."""
    key = audit_key.get_secret_value().encode() if audit_key is not None else None
    if database_url.startswith(("postgresql://", "postgres://")):
        from crisiscomms.adapters.store.postgres import PostgresStore

        return PostgresStore(database_url, pool_size=pool_size, audit_key=key,
                             wall_clock=wall_clock)
    if database_url.startswith("memory://"):
        return MemoryStore(audit_key=key, wall_clock=wall_clock)
    return SQLiteStore(sqlite_path(database_url), audit_key=key, wall_clock=wall_clock)
