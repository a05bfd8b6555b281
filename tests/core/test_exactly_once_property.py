"""Property: for any sequence of feed snapshots (reordered, repeated, items dropped and
re-added, restarts between, two watchers), each distinct update is queued exactly once per
channel action; what the baseline saw is never queued."""

from __future__ import annotations

import asyncio
import shutil
import tempfile
from collections import Counter
from datetime import timedelta
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from crisiscomms.adapters.store import open_store
from crisiscomms.services import incidents
from tests.core.helpers import make_world, update

POOL = [f"u{i}" for i in range(12)]

snapshots = st.lists(
    st.tuples(st.lists(st.sampled_from(POOL), unique=True, max_size=8),
              st.booleans(),  # restart before this snapshot
              st.booleans()),  # poll with two watchers at once
    min_size=1, max_size=8)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                 HealthCheck.function_scoped_fixture])
@given(seq=snapshots)
def test_each_update_queued_exactly_once_per_channel_action(seq, playbooks_dir: Path):
    tmp = Path(tempfile.mkdtemp())
    try:
        world = make_world(tmp, playbooks_dir)
        incidents.activate(world.store, world.catalog, world.clock, playbook="flooding",
                           reason="p", operator="t")
        actions = len(world.catalog.playbook("flooding").channels)
        src = world.sources["ecfrs-x"]  # not the lead: no backfill at baseline
        baseline_ids: set[str] = set()
        seen_after: set[str] = set()
        first = True
        for ids, restart, twice in seq:
            if restart:
                world.reopen()
            src.set_snapshot([update("ecfrs-x", i) for i in ids])
            if twice:
                # A second watcher started by mistake: its own connection to the database.
                other = open_store(f"sqlite:///{world.store.path}")
                w1, w2 = world.watcher(), world.watcher()
                w2.store = other
                now = world.clock.now()

                async def both(w1=w1, w2=w2, now=now):
                    await asyncio.gather(w1.poll_cycle(now), w2.poll_cycle(now))

                asyncio.run(both())
                other.close()
            else:
                world.poll()
            if first:
                baseline_ids = set(ids)
                first = False
            else:
                seen_after |= set(ids) - baseline_ids
            world.clock.advance(timedelta(minutes=5))
        per_update = Counter(i.dedupe_key.split(":")[4] for i in world.store.items()
                             if i.source_id == "ecfrs-x")
        assert set(per_update) == seen_after
        assert all(n == actions for n in per_update.values())
        keys = [i.dedupe_key for i in world.store.items()]
        assert len(keys) == len(set(keys))
        world.store.close()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
