"""The store port's implementations. Only this package contains SQL."""

from __future__ import annotations

from crisiscomms.adapters.store.audit import ChainReport
from crisiscomms.adapters.store.base import sqlite_path
from crisiscomms.adapters.store.sqlite import SQLiteStore

__all__ = ["ChainReport", "SQLiteStore", "open_store"]


def open_store(database_url: str) -> SQLiteStore:
    """Open (and migrate) the store named by a database URL."""
    return SQLiteStore(sqlite_path(database_url))
