"""Builders for core tests: a store, a catalog with pinned X ids, updates, fakes."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from crisiscomms.adapters.playbooks import load_catalog
from crisiscomms.adapters.store import SQLiteStore, open_store
from crisiscomms.domain.config import Catalog
from crisiscomms.domain.models import CapInfo, NativeRef, Platform, SourceKind, Update
from crisiscomms.services.watch import Watcher
from crisiscomms.settings import DispatchSettings, PollingSettings
from crisiscomms.testing import FakeClock, FakePublisher, FakeSource

# Friday 27 Nov 2026, 18:00 UTC = 18:00 Europe/London: outside staffed hours.
FRI_EVENING = datetime(2026, 11, 27, 18, 0, tzinfo=UTC)
# Wednesday 25 Nov 2026, 10:00 local: inside staffed hours.
WED_MORNING = datetime(2026, 11, 25, 10, 0, tzinfo=UTC)

AGENCY = {"essex-police-x": "Essex Police", "eeast-x": "East of England Ambulance Service",
          "ecfrs-x": "Essex County Fire and Rescue Service", "met-office-ee": "Met Office",
          "ea-floods-essex": "Environment Agency"}
KIND = {"essex-police-x": SourceKind.X, "eeast-x": SourceKind.X, "ecfrs-x": SourceKind.X,
        "met-office-ee": SourceKind.RSS, "ea-floods-essex": SourceKind.EA_FLOODS}


def update(source: str, ext: str, *, title: str | None = None, at: datetime = FRI_EVENING,
           cap: CapInfo | None = None, native: bool | None = None) -> Update:
    kind = KIND[source]
    ref = None
    if native if native is not None else kind is SourceKind.X:
        ref = NativeRef(platform=Platform.X, id=ext, url=f"https://x.com/a/status/{ext}")
    return Update(source_id=source, agency=AGENCY[source], kind=kind, external_id=ext,
                  url=f"https://example.org/{source}/{ext}", title=title or f"{source} {ext}",
                  text=f"text of {ext}", published_at=at, fetched_at=at, cap=cap,
                  native=ref).with_hash()


@dataclass
class World:
    """A store, the catalog, fake sources for every catalogued source and fake publishers."""

    store: SQLiteStore
    catalog: Catalog
    clock: FakeClock
    sources: dict[str, FakeSource]
    publishers: dict[str, FakePublisher] = field(default_factory=dict)

    def watcher(self) -> Watcher:
        import random

        return Watcher(store=self.store, catalog=self.catalog,
                       sources=list(self.sources.values()),
                       settings=PollingSettings(jitter_seconds=0), rng=random.Random(1))

    def dispatcher(self, worker: str = "w1"):
        import random

        from crisiscomms.services.dispatch import Dispatcher

        return Dispatcher(store=self.store, catalog=self.catalog, publishers=self.publishers,
                          settings=DispatchSettings(), worker_id=worker, rng=random.Random(1),
                          sleep=lambda s: None)

    def poll(self, watcher: Watcher | None = None):
        import asyncio

        return asyncio.run((watcher or self.watcher()).poll_cycle(self.clock.now()))

    def reopen(self) -> None:
        """A restart: a new connection to the same database."""
        path = self.store.path
        self.store.close()
        self.store = open_store(f"sqlite:///{path}")


def make_world(tmp_path: Path, playbooks_dir: Path, at: datetime = FRI_EVENING) -> World:
    catalog = load_catalog(playbooks_dir)
    store = open_store(f"sqlite:///{tmp_path / 'w.db'}")
    sources = {sid: FakeSource(sid) for sid in catalog.sources}
    pubs = {cid: FakePublisher(cid) for cid in catalog.channels}
    return World(store, catalog, FakeClock(at), sources, pubs)
