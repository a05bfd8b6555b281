"""The watcher keeps running: one cycle over every hostile case at once, plus a good feed.

Each hostile case is its own catalogue source on its own host (so per-host limits do not
serialise them); the good source is the catalogue's Met Office feed. The cycle must not
raise, the good update must be queued, and every failure must be recorded in that source's
``SourceState`` (error class, message, failure count).
"""

from __future__ import annotations

import random
from dataclasses import replace
from datetime import datetime, timedelta
from pathlib import Path

import httpx
import pytest
import respx

from crisiscomms.adapters.playbooks import load_catalog
from crisiscomms.adapters.sources.http import FetchLimits, HttpFetcher
from crisiscomms.adapters.sources.parsing import FeedParserPool
from crisiscomms.adapters.sources.rss import RssSource
from crisiscomms.adapters.store import open_store
from crisiscomms.domain.models import SourceKind, SourceState
from crisiscomms.services.watch import Watcher
from crisiscomms.settings import PollingSettings
from crisiscomms.testing import save_source_state
from tests.sources.sources_helpers import NOW, FakeResolver

from .adapters import build, config_for, serve_case
from .cases import all_feed_cases, corpus_cases, fixture

ROOT = Path(__file__).resolve().parents[2]
GOOD_ID = "met-office-ee"
GOOD_URL = "https://good.metoffice.example/ee"
DEADLINE = PollingSettings().deadline_seconds


@pytest.mark.anyio
@pytest.mark.slow
async def test_watcher_survives_every_hostile_source_at_once(
    tmp_path: Path, client: httpx.AsyncClient, mock: respx.MockRouter,
    hostile_pool: FeedParserPool,
) -> None:
    base = load_catalog(ROOT / "playbooks")
    fetcher = HttpFetcher(client, FetchLimits(per_host=2, total=20), resolver=FakeResolver())
    cases = [*all_feed_cases(), *corpus_cases()]
    configs, sources = {}, []
    for i, case in enumerate(cases):
        kind = case.kinds[i % len(case.kinds)]  # spread multi-kind cases over their adapters
        sid, host = f"hostile-{i:03d}", f"h{i:03d}.example.gov.uk"
        config = config_for(kind, sid, host, watch="always")
        configs[sid] = config
        sources.append(build(kind, config, fetcher, hostile_pool, host))
        serve_case(mock, case, host=host)
    good = base.sources[GOOD_ID].model_copy(update={"url": GOOD_URL})
    configs[GOOD_ID] = good
    sources.append(RssSource(good, fetcher, hostile_pool))
    mock.get(GOOD_URL).mock(return_value=httpx.Response(
        200, content=fixture("metoffice.xml"), headers={"content-type": "application/rss+xml"}))
    catalog = replace(base, sources=configs)

    store = open_store(f"sqlite:///{tmp_path / 'w.db'}")
    try:
        # The good feed was seen before, so its items are new (not a silent baseline).
        save_source_state(store, SourceState(source_id=GOOD_ID, baseline_done=True))
        watcher = Watcher(store=store, catalog=catalog, sources=sources,
                          settings=PollingSettings(jitter_seconds=0), rng=random.Random(3))
        stats = await watcher.poll_cycle(NOW)  # must not raise

        assert stats.polled == len(sources)
        queued = [it for it in store.items() if it.source_id == GOOD_ID]
        assert queued, "the good source's update was not queued"
        states = {s.source_id: s for s in store.source_states()}
        # A poll that waited its turn behind the hostile ones (at most polling.concurrency run
        # at a time) is recorded from when it ran: within the cycle's deadline of NOW.
        def ran(at: datetime | None) -> bool:
            return at is not None and NOW <= at <= NOW + timedelta(seconds=DEADLINE)

        assert ran(states[GOOD_ID].last_ok_at) and states[GOOD_ID].failures == 0
        failed = 0
        for sid in configs:
            if sid == GOOD_ID:
                continue
            st = states[sid]
            assert ran(st.last_polled_at), sid
            if sid in stats.errors:
                failed += 1
                assert st.last_error_class == stats.errors[sid], sid
                assert st.last_error and sid in st.last_error, sid
                assert st.failures == 1 and st.error_count == 1, sid
                assert st.next_poll_at is not None and st.last_polled_at is not None \
                    and st.next_poll_at > st.last_polled_at, sid
                assert st.last_ok_at is None, sid
            else:
                assert ran(st.last_ok_at) and st.last_ok_at == st.last_polled_at, sid
                assert st.last_error_class is None, sid
        assert failed == stats.failed
        assert failed >= len(cases) // 2, "most hostile cases should fail"
        # Hostile sources were polled for the first time: a baseline, so nothing of theirs
        # was queued; and every adapter kind took part.
        assert all(it.source_id == GOOD_ID for it in store.items())
        kinds = {c.kind for c in configs.values()}
        assert {SourceKind.RSS, SourceKind.CAP, SourceKind.EA_FLOODS, SourceKind.MASTODON,
                SourceKind.BLUESKY} <= kinds
    finally:
        store.close()
