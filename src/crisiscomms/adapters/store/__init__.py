"""The store port's implementations. Only this package contains SQL."""

from __future__ import annotations

from crisiscomms.adapters.store.memory import MemoryStore
from crisiscomms.adapters.store.sqlite import SQLiteStore, sqlite_path
from crisiscomms.domain.audit import ChainReport
from crisiscomms.ports import Store

__all__ = ["ChainReport", "MemoryStore", "SQLiteStore", "open_store"]


def open_store(database_url: str, *, pool_size: int = 4) -> Store:
    """Open (and migrate) the store named by a database URL: ``sqlite:///PATH`` (the default),
    ``postgresql://…`` (several watchers), or ``memory://`` (tests and what-if runs)."""
    if database_url.startswith(("postgresql://", "postgres://")):
        from crisiscomms.adapters.store.postgres import PostgresStore

        return PostgresStore(database_url, pool_size=pool_size)
    if database_url.startswith("memory://"):
        return MemoryStore()
    return SQLiteStore(sqlite_path(database_url))
