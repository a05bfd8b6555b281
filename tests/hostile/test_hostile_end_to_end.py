"""The hostile corpus end to end: source -> matching -> dispatch -> what would be posted.

Every hostile case is a source of an active incident that has already been seen (so its items
are new, not a silent baseline), with one post action on each of our four platforms. After one
poll and one dispatch, what the fake publishers received is checked, post by post: no markup or
script, no dangerous link scheme, no control characters, within the platform's limit, no
exercise or test alert, and the well-formed control case does go out. A clean error is not
enough: the test asserts what is posted.
"""

from __future__ import annotations

import random
import re
from dataclasses import replace
from pathlib import Path

import httpx
import pytest
import respx

from crisiscomms.adapters.playbooks import load_catalog
from crisiscomms.adapters.sources.http import FetchLimits, HttpFetcher
from crisiscomms.adapters.sources.parsing import FeedParserPool
from crisiscomms.adapters.sources.rss import RssSource
from crisiscomms.adapters.store import MemoryStore
from crisiscomms.domain.clock import FixedClock
from crisiscomms.domain.config import Playbook
from crisiscomms.domain.models import SourceState
from crisiscomms.domain.posttext import fits
from crisiscomms.services import incidents
from crisiscomms.services.dispatch import Dispatcher
from crisiscomms.services.watch import Watcher
from crisiscomms.settings import DispatchSettings, PollingSettings
from crisiscomms.testing import FakePublisher, save_source_state
from tests.sources.sources_helpers import NOW, FakeResolver

from .adapters import build, config_for, serve_case
from .cases import all_feed_cases, corpus_cases, fixture

ROOT = Path(__file__).resolve().parents[2]
GOOD_ID = "met-office-ee"
GOOD_URL = "https://good.metoffice.example/ee"
MARKUP = re.compile(r"<\s*/?\s*(script|img|iframe|svg|style|a|object|embed|link|meta)\b", re.I)
SCHEMES = re.compile(r"\b(javascript|vbscript|data|file):", re.I)
CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")
NOT_ACTUAL = re.compile(r"\bEXERCISE\b|\bTEST ALERT\b", re.I)


@pytest.mark.anyio
@pytest.mark.slow
async def test_what_the_hostile_corpus_would_post(
    tmp_path: Path, client: httpx.AsyncClient, mock: respx.MockRouter,
    hostile_pool: FeedParserPool,
) -> None:
    base = load_catalog(ROOT / "playbooks")
    fetcher = HttpFetcher(client, FetchLimits(per_host=2, total=20), resolver=FakeResolver())
    cases = [c for c in (*all_feed_cases(), *corpus_cases()) if not c.big]
    configs, sources, case_of = {}, [], {}
    for i, case in enumerate(cases):
        kind = case.kinds[i % len(case.kinds)]
        sid, host = f"hostile-{i:03d}", f"h{i:03d}.example.gov.uk"
        config = config_for(kind, sid, host, watch="crisis")
        configs[sid] = config
        case_of[sid] = case.id
        sources.append(build(kind, config, fetcher, hostile_pool, host))
        serve_case(mock, case, host=host)
    good = base.sources[GOOD_ID].model_copy(update={"url": GOOD_URL})
    configs[GOOD_ID] = good
    sources.append(RssSource(good, fetcher, hostile_pool))
    mock.get(GOOD_URL).mock(return_value=httpx.Response(
        200, content=fixture("metoffice.xml"), headers={"content-type": "application/rss+xml"}))
    playbook = Playbook.model_validate({
        "name": "hostile", "description": "every hostile case as an incident source",
        "hashtags": ["#HostileDrill"], "default_lead": GOOD_ID, "allowed_leads": [GOOD_ID],
        "backfill_minutes": 0, "hourly_ceiling": 100_000,
        "approval": {"lead": "auto", "others": "auto"},
        "sources": [{"source": sid} for sid in configs],
        "channels": [{"channel": ch, "action": "post",
                      "template": "{agency}: {title}\n\n{text}\n\n{url} {hashtags}"}
                     for ch in ("x", "facebook", "mastodon", "bluesky")],
    })
    catalog = replace(base, sources=configs, playbooks={"hostile": playbook})
    store = MemoryStore()
    clock = FixedClock(NOW)
    for sid in configs:  # seen before: what they serve now is new
        save_source_state(store, SourceState(source_id=sid, baseline_done=True))
    incidents.activate(store, catalog, clock, playbook="hostile", reason="hostile corpus",
                       operator="test")
    watcher = Watcher(store=store, catalog=catalog, sources=sources,
                      settings=PollingSettings(jitter_seconds=0), rng=random.Random(3))
    await watcher.poll_cycle(NOW)
    publishers = {ch: FakePublisher(ch) for ch in catalog.channels}
    Dispatcher(store=store, catalog=catalog, publishers=publishers,
               settings=DispatchSettings(), worker_id="t", rng=random.Random(1),
               sleep=lambda _s: None).tick(NOW)

    posted = [(ch, post) for ch, pub in publishers.items() for post in pub.posts]
    source_of = {it.id: it.source_id for it in store.items()}
    problems = []
    for ch, post in posted:
        origin = case_of.get(source_of.get(post.item_id, ""), GOOD_ID)
        where = f"{ch}: item {post.item_id} from {origin}"
        platform = catalog.channels[ch].platform
        if MARKUP.search(post.text):
            problems.append(f"{where}: markup in the post: {post.text[:120]!r}")
        if SCHEMES.search(post.text):
            problems.append(f"{where}: dangerous link scheme: {post.text[:120]!r}")
        if CONTROL.search(post.text):
            problems.append(f"{where}: control characters: {post.text[:120]!r}")
        if not fits(post.text, platform):
            problems.append(f"{where}: too long for {platform} ({len(post.text)} chars)")
        if NOT_ACTUAL.search(post.text):
            problems.append(f"{where}: an exercise/test alert went out: {post.text[:120]!r}")
    assert not problems, "\n".join(problems[:30])
    good_posts = [p for _, p in posted if source_of.get(p.item_id) == GOOD_ID]
    assert len(good_posts) >= 4, "the control case (a good feed) was not relayed everywhere"
    hostile_posts = [p for _, p in posted if source_of.get(p.item_id) != GOOD_ID
                     and "activation" not in p.dedupe_key]
    assert hostile_posts, "no hostile case reached a post: the checks above saw nothing"
