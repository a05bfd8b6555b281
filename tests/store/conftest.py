"""One store fixture over every backend: memory, SQLite and PostgreSQL (a throw-away cluster
started by ``tests/pgserver.py``, or ``CRISISCOMMS_TEST_DATABASE_URL``). Under ``CI=true`` a
PostgreSQL test that cannot run fails instead of skipping."""

from __future__ import annotations

import itertools
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from crisiscomms.adapters.store import MemoryStore, open_store
from crisiscomms.ports import Store
from tests.pgserver import session_cluster

_db_names = itertools.count(1)


@dataclass
class Backend:
    """A fresh database of one backend, and a way to open it again (another connection)."""

    name: str
    url: str
    opened: list[Store] = field(default_factory=list)
    memory: MemoryStore | None = None

    def open(self) -> Store:
        store: Store = self.memory if self.memory is not None else open_store(self.url)
        self.opened.append(store)
        return store

    def close(self) -> None:
        for s in self.opened:
            s.close()


def postgres_url() -> str:
    """A new, empty database on the session's PostgreSQL server."""
    cluster = session_cluster()
    return cluster.create_database(f"contract_{next(_db_names)}_{uuid.uuid4().hex[:10]}")


@pytest.fixture(params=["memory", "sqlite", "postgres"])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Backend]:
    if request.param == "memory":
        b = Backend("memory", "memory://", memory=MemoryStore())
    elif request.param == "sqlite":
        b = Backend("sqlite", f"sqlite:///{tmp_path / 'contract.db'}")
    else:
        b = Backend("postgres", postgres_url())
    yield b
    b.close()


@pytest.fixture
def store(backend: Backend) -> Store:
    return backend.open()


@pytest.fixture
def pg_url() -> Callable[[], str]:
    return postgres_url
