"""Two playbook reloads before one poll cycle: the later one is merged into the earlier one
without losing an adapter the earlier one built (a rebuilt adapter has the same key as the one
it replaces: the source id, or "x" for every X source)."""

from __future__ import annotations

import asyncio

from crisiscomms.services.watch import Watcher
from crisiscomms.settings import PollingSettings
from crisiscomms.testing import FakeSource, MemoryStore


class Closing(FakeSource):
    closed = False

    async def aclose(self) -> None:
        self.closed = True


def _watcher(*keys: str) -> Watcher:
    from crisiscomms.adapters.playbooks import load_catalog
    from tests.conftest import REPO

    catalog = load_catalog(REPO / "playbooks")
    return Watcher(store=MemoryStore(), catalog=catalog, sources=[Closing(k) for k in keys],
                   settings=PollingSettings())


def test_two_reloads_before_a_cycle_keep_both_rebuilt_adapters() -> None:
    w = _watcher("s", "t", "u")
    old = {s.key: s for s in w.sources}
    s2, t2 = Closing("s"), Closing("t")
    w.reconfigure(w.catalog, [s2], {"s"})  # the first reload rebuilt s
    w.reconfigure(w.catalog, [t2], {"t"})  # the second (planned on the old list) rebuilt t
    asyncio.run(w._apply_pending())
    assert {s.key: s for s in w.sources} == {"s": s2, "t": t2, "u": old["u"]}
    assert old["s"].closed and old["t"].closed and not old["u"].closed  # type: ignore[attr-defined]


def test_a_second_rebuild_of_the_same_source_wins_and_the_first_is_closed() -> None:
    w = _watcher("s", "u")
    old_s = w.sources[0]
    s2, s3 = Closing("s"), Closing("s")
    w.reconfigure(w.catalog, [s2], {"s"})
    w.reconfigure(w.catalog, [s3], {"s"})
    asyncio.run(w._apply_pending())
    assert [s for s in w.sources if s.key == "s"] == [s3]
    assert s2.closed and old_s.closed  # type: ignore[attr-defined]
