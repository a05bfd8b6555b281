"""Two watchers sharing sources on one PostgreSQL database (issue 14: "two watchers on
PostgreSQL share 20,000"): a source polled by one watcher is not polled by the other before
its interval has passed.

Found by ``benchmarks/shared_pg.py``. A watcher whose claim fails because another watcher
holds the source's lease reads the row (the lease, and the fence as it is during that poll)
and tries again when the lease ends, or after an interval if that is sooner. The other
watcher's poll then finishes and records the source's next poll; the fence, which only a
claim moves, stays as it was. So when the lease ends, the claim with the copy read during the
lease succeeds, and the source is polled again, although the store says it is not due: for a
source whose interval is longer than the lease (the Environment Agency's, at most every
300 s, against a 90 s lease), one poll in 90 s instead of one in 300 s.

Before the fix b polled EA 90 s after a did; a claim now also requires that no poll was
recorded since the copy was read (``SourceRepository.claim``).
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable
from datetime import datetime, timedelta
from pathlib import Path

from crisiscomms.adapters.playbooks import load_catalog
from crisiscomms.adapters.store import open_store
from crisiscomms.domain.models import PollResult, SourceState
from crisiscomms.services.watch import Watcher
from crisiscomms.settings import PollingSettings
from tests.core.helpers import FRI_EVENING

EA = "ea-floods-essex"  # min_interval_seconds: 300 in the bundled sources.yaml


class CountedSource:
    """A quiet source that notes when it is polled; while ``hold`` is set a poll waits for
    ``release``."""

    def __init__(self, key: str, polls: list[tuple[str, datetime]], who: str) -> None:
        self.key, self.source_ids = key, (key,)
        self.polls, self.who = polls, who
        self.hold = False
        self.release = asyncio.Event()

    async def poll(self, state: SourceState, now: datetime) -> PollResult:
        self.polls.append((self.who, now))
        if self.hold:
            await self.release.wait()
        return PollResult(not_modified=True)

    async def aclose(self) -> None:
        return None


async def _settle(w: Watcher) -> None:
    for _ in range(200):
        if not w.running():
            break
        await asyncio.sleep(0)
    for _ in range(20):
        await asyncio.sleep(0)
    w.flush()


def test_a_source_another_watcher_polled_while_we_looked_is_not_polled_again_early(
        pg_url: Callable[[], str], playbooks_dir: Path) -> None:
    catalog = load_catalog(playbooks_dir)
    url = pg_url()
    stores = [open_store(url), open_store(url)]
    polls: list[tuple[str, datetime]] = []
    held = CountedSource(EA, polls, "a")
    held.hold = True
    watchers = {
        name: Watcher(store=store, catalog=catalog, sources=[src],
                      settings=PollingSettings(jitter_seconds=0), rng=random.Random(1),
                      owner=name)
        for name, store, src in (("a", stores[0], held),
                                 ("b", stores[1], CountedSource(EA, polls, "b")))}
    a, b = watchers["a"], watchers["b"]
    now = FRI_EVENING

    async def run() -> None:
        await a.poll_cycle(now, wait=False)  # a claims EA; its poll is in progress
        for _ in range(50):
            if polls:
                break
            await asyncio.sleep(0)
        assert polls == [("a", now)] and a.running() == 1
        # b, one tick later, finds EA leased to a: it polls nothing, it only looks.
        assert (await b.poll_cycle(now + timedelta(seconds=2))).polled == 0
        held.release.set()
        await _settle(a)  # a's poll is recorded: EA is next due 300 s after it
        (state,) = [s for s in stores[0].source_states() if s.source_id == EA]
        assert state.last_polled_at == now and state.lease_owner is None
        assert state.next_poll_at == now + timedelta(seconds=300)
        # Two watchers ticking every 2 s until EA is due again: nobody polls it before.
        for t in range(4, 300, 2):
            at = now + timedelta(seconds=t)
            for w in (a, b):
                await w.poll_cycle(at, wait=False)
                await _settle(w)

    try:
        asyncio.run(run())
    finally:
        for store in stores:
            store.close()
    early = [(who, (at - now).total_seconds()) for who, at in polls[1:]]
    assert early == [], f"EA polled again before its 300 s were up: {early} (watcher, s)"
