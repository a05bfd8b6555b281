"""The watcher with fake sources: baselines, matching, revisions, backfill, failures."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest

from crisiscomms.domain.errors import PermanentSourceError, TransientSourceError
from crisiscomms.domain.models import CapInfo
from crisiscomms.services import incidents
from crisiscomms.testing import record_updates
from tests.core.helpers import FRI_EVENING, make_world, update


@pytest.fixture
def world(tmp_path: Path, playbooks_dir: Path):
    return make_world(tmp_path, playbooks_dir)


def activate(world, playbook="flooding", **kw):
    return incidents.activate(world.store, world.catalog, world.clock, playbook=playbook,
                              reason="test", operator="alice", **kw)


def test_first_sight_is_a_baseline_and_floods_nothing(world):
    world.sources["met-office-ee"].set_snapshot([update("met-office-ee", f"m{i}")
                                                 for i in range(5)])
    stats = world.poll()
    assert stats.new_updates == 5 and stats.queued == 0
    assert world.store.items() == []
    world.clock.advance(timedelta(minutes=2))
    world.sources["met-office-ee"].set_snapshot(
        [update("met-office-ee", "m5"), *(update("met-office-ee", f"m{i}") for i in range(5))])
    stats = world.poll()
    assert stats.new_updates == 1
    # Normal mode: watch-always source -> policy.normal_channels (x and facebook).
    items = world.store.items()
    assert sorted(i.channel_id for i in items) == ["facebook", "x"]
    assert all(i.incident_id is None and i.approval == "manual" for i in items)


def test_incident_items_carry_hashtags_and_native_refs(world):
    activate(world)
    world.sources["essex-police-x"].set_snapshot([])
    world.poll()  # baseline (empty)
    world.clock.advance(timedelta(seconds=40))
    world.sources["essex-police-x"].set_snapshot([update("essex-police-x", "1700")])
    world.poll()
    items = {i.channel_id: i for i in world.store.items() if i.update_id}
    assert set(items) == {"x", "facebook", "mastodon", "bluesky"}
    assert str(items["x"].action) == "retweet" and items["x"].native.id == "1700"
    # Not a Mastodon post: the boost falls back to a post with the hashtag.
    assert str(items["mastodon"].action) == "post" and "#EssexFloods" in items["mastodon"].text
    assert all(i.is_lead for i in items.values())


def test_filters_and_not_actual_cap_are_recorded(world):
    activate(world)
    world.poll()
    world.clock.advance(timedelta(minutes=6))
    minor = CapInfo(identifier="a1", severity="Minor")
    test_msg = CapInfo(identifier="a2", severity="Severe", status="Test")
    severe = CapInfo(identifier="a3", severity="Severe", area="Chelmsford")
    world.sources["ea-floods-essex"].set_snapshot([
        update("ea-floods-essex", "a1", cap=minor), update("ea-floods-essex", "a2", cap=test_msg),
        update("ea-floods-essex", "a3", cap=severe)])
    world.clock.advance(timedelta(minutes=6))
    world.poll()
    rows = {u.external_id: disp for u, disp, _ in world.store.updates()}
    assert rows["a1"].startswith("filtered: severity Minor below Severe")
    assert rows["a2"].startswith("skipped: not Actual/Public")
    assert rows["a3"] == "queued for incident 1"
    assert {i.dedupe_key.split(":")[4] for i in world.store.items() if i.update_id} == {"a3"}


def test_backfill_queues_lead_updates_from_before_activation(world):
    src = world.sources["essex-police-x"]
    # The watcher already knows the lead's recent posts (e.g. via another playbook).
    record_updates(
        world.store,
        [update("essex-police-x", "old", at=FRI_EVENING - timedelta(hours=3)),
         update("essex-police-x", "recent", at=FRI_EVENING - timedelta(minutes=30))],
        baseline=True)
    del src
    inc = activate(world)
    keys = {i.dedupe_key for i in world.store.items(incident_id=inc.id) if i.update_id}
    assert {k.split(":")[4] for k in keys} == {"recent"}


def test_baseline_during_incident_still_catches_the_opening_minutes(world):
    activate(world)
    world.sources["essex-police-x"].set_snapshot([
        update("essex-police-x", "before-window", at=FRI_EVENING - timedelta(hours=5)),
        update("essex-police-x", "just-before", at=FRI_EVENING - timedelta(minutes=10))])
    world.sources["ecfrs-x"].set_snapshot([
        update("ecfrs-x", "fire-old", at=FRI_EVENING - timedelta(minutes=10))])
    world.poll()
    ext = {i.dedupe_key.split(":")[4] for i in world.store.items() if i.update_id}
    assert ext == {"just-before"}  # lead only, and only inside the window


def test_edits_are_revisions_requeued_only_for_cap_updates(world):
    activate(world)
    world.poll()
    world.clock.advance(timedelta(minutes=10))
    plain = update("essex-police-x", "p1")
    cap = update("ea-floods-essex", "c1", cap=CapInfo(identifier="c1", severity="Severe"))
    world.sources["essex-police-x"].set_snapshot([plain])
    world.sources["ea-floods-essex"].set_snapshot([cap])
    world.poll()
    before = len(world.store.items())
    world.clock.advance(timedelta(minutes=10))
    world.sources["essex-police-x"].set_snapshot([update("essex-police-x", "p1",
                                                         title="typo fixed")])
    world.sources["ea-floods-essex"].set_snapshot([update(
        "ea-floods-essex", "c1", title="upgraded",
        cap=CapInfo(identifier="c1", severity="Extreme", msg_type="Update"))])
    world.poll()
    revs = [(u.external_id, u.revision) for u, _, _ in world.store.updates()]
    assert ("p1", 2) in revs and ("c1", 2) in revs
    new = world.store.items()[before:]
    assert {tuple(i.dedupe_key.split(":")[4:]) for i in new} == {("c1", "r2")}


def test_a_failing_source_backs_off_alone_and_is_audited(world):
    activate(world)
    bad = world.sources["ecfrs-x"]
    for _ in range(6):
        bad.fail_next(TransientSourceError("ecfrs-x: http 503", source_id="ecfrs-x",
                                           error_class="http_503"))
    world.poll()
    world.sources["essex-police-x"].set_snapshot([update("essex-police-x", "ok1")])
    for _ in range(12):
        world.clock.advance(timedelta(hours=1))
        world.poll()
    states = {s.source_id: s for s in world.store.source_states()}
    assert states["essex-police-x"].failures == 0
    assert states["ecfrs-x"].error_count == 6 and states["ecfrs-x"].failures == 0
    actions = [e.action for e in world.store.audit_events()]
    assert "source.failing" in actions and "source.recovered" in actions
    # The healthy source kept flowing while the other failed.
    assert any(i.source_id == "essex-police-x" for i in world.store.items())


def test_crisis_only_sources_are_not_polled_outside_a_crisis(world):
    world.poll()
    assert world.sources["essex-police-x"].polls == 0
    assert world.sources["met-office-ee"].polls == 1


def test_security_refusals_are_audited_at_once_and_once(world):
    src = world.sources["met-office-ee"]
    for _ in range(2):
        src.fail_next(PermanentSourceError("met-office-ee: redirect to evil.example refused",
                                           source_id="met-office-ee",
                                           error_class="redirect_refused"))
    world.poll()
    world.clock.advance(timedelta(hours=2))
    world.poll()
    refusals = [e for e in world.store.audit_events() if e.action == "source.refused"]
    assert len(refusals) == 1 and refusals[0].reason == "redirect_refused"
    assert refusals[0].subject == "source:met-office-ee"


def test_refused_items_are_audited_once(world):
    activate(world)
    x = world.sources["essex-police-x"]
    x.refused = ("tweet 9 by unpinned author id 666",)
    world.poll()
    world.clock.advance(timedelta(minutes=1))
    world.poll()
    events = [e for e in world.store.audit_events() if e.action == "source.refused_item"]
    assert [e.reason for e in events] == ["tweet 9 by unpinned author id 666"]
