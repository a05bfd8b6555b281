"""The dispatcher with fake publishers: crisis bypass, pause, rate limits, failures,
unknown outcomes, crashes between sending and recording, two workers."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest

from crisiscomms.domain.errors import PermanentPublishError, RateLimitedError, TransientPublishError
from crisiscomms.domain.models import ActionKind, NewOutboxItem
from crisiscomms.services import incidents
from crisiscomms.services import queue as operations
from crisiscomms.testing import enqueue
from tests.core.helpers import FRI_EVENING, WED_MORNING, make_world, update


@pytest.fixture
def world(tmp_path: Path, playbooks_dir: Path):
    return make_world(tmp_path, playbooks_dir)


def activate(world, playbook="flooding"):
    return incidents.activate(world.store, world.catalog, world.clock, playbook=playbook,
                              reason="test", operator="alice")


def crisis_update(world, ext="100", source="essex-police-x"):
    world.poll()
    world.clock.advance(timedelta(seconds=31))
    world.sources[source].set_snapshot([update(source, ext, at=world.clock.now())])
    world.poll()


def states(world):
    return {i.id: (i.channel_id, str(i.state)) for i in world.store.items()}


def test_crisis_items_go_out_of_hours_and_are_flagged(world):
    activate(world)
    crisis_update(world)
    stats = world.dispatcher().tick(world.clock.now())
    # Activation message + the update, on 4 channels.
    assert stats.published == 8
    assert all(s == "published" for _, s in states(world).values())
    x_posts = world.publishers["x"].posts
    assert x_posts[0].text.startswith("We are sharing official updates")  # activation first
    assert x_posts[1].action == "retweet"
    assert all(i.out_of_hours for i in world.store.items())
    assert world.store.verify_audit().ok
    published = [e for e in world.store.audit_events() if e.action == "outbox.published"]
    assert len(published) == 8 and published[0].details["out_of_hours"] is True


def _rain_warning_queued_on_friday_evening(world):
    """A Met Office update seen on Friday at 18:02 (outside staffed hours), and a dispatcher."""
    world.clock.set(FRI_EVENING)
    world.poll()
    world.clock.advance(timedelta(minutes=2))
    world.sources["met-office-ee"].set_snapshot([update("met-office-ee", "rain1",
                                                        at=world.clock.now())])
    world.poll()
    return world.dispatcher()


def test_normal_items_need_approval_and_staffed_hours(world):
    d = _rain_warning_queued_on_friday_evening(world)
    d.tick(world.clock.now())
    items = world.store.items()
    assert {str(i.state) for i in items} == {"needs_approval"}
    for i in items:
        operations.approve(world.store, world.catalog, world.clock, i.id, "alice", "ok")
    d.tick(world.clock.now())
    held = world.store.items()
    assert {str(i.state) for i in held} == {"held"}
    assert "outside staffed hours" in held[0].reason and "Mon 30 Nov 08:00" in held[0].reason
    world.clock.set(FRI_EVENING + timedelta(days=2, hours=14))  # Monday 08:00
    d.tick(world.clock.now())
    assert {str(i.state) for i in world.store.items()} == {"published"}
    assert not any(i.out_of_hours for i in world.store.items())


def test_a_tick_that_changes_no_decision_opens_no_unit_of_work(world, monkeypatch):
    """Items that stay held for the same reason are decided again every tick, read once, and
    nothing is written (not even an empty write transaction); the stats still count them."""
    d = _rain_warning_queued_on_friday_evening(world)
    d.tick(world.clock.now())
    for i in world.store.items():
        operations.approve(world.store, world.catalog, world.clock, i.id, "alice", "ok")
    d.tick(world.clock.now())
    held = world.store.items()
    assert held and {str(i.state) for i in held} == {"held"}
    opened: list[object] = []
    real = world.store.unit_of_work

    def counted():  # type: ignore[no-untyped-def]
        opened.append(1)
        return real()

    monkeypatch.setattr(world.store, "unit_of_work", counted)
    world.clock.advance(timedelta(seconds=1))  # the reasons name the minute: still the same
    stats = d.tick(world.clock.now())
    assert opened == []
    assert stats.decided == len(held) and stats.held == len(held)
    assert [(i.id, i.version, i.reason) for i in world.store.items()] == \
        [(i.id, i.version, i.reason) for i in held]


def test_normal_items_pause_during_a_crisis_and_resume_after(world):
    world.clock.set(WED_MORNING)
    item = NewOutboxItem(dedupe_key="normal:x:post:manual:1", channel_id="x",
                         action=ActionKind.POST, text="Flu jab clinics this week")
    enqueue(world.store, [item], now=world.clock.now())
    (it,) = world.store.items()
    operations.approve(world.store, world.catalog, world.clock, it.id, "alice", "ok")
    inc = activate(world, "major-incident")
    d = world.dispatcher()
    d.tick(world.clock.now())
    assert world.store.get_item(it.id).reason == f"paused: incident {inc.id} active"
    assert world.publishers["x"].posts[0].text.startswith("A major incident")
    incidents.deactivate(world.store, world.catalog, world.clock, incident_id=inc.id,
                         reason="over", operator="alice")
    d.tick(world.clock.now())
    assert str(world.store.get_item(it.id).state) == "published"
    texts = [p.text for p in world.publishers["x"].posts]
    assert texts[-2:] == ["The major incident has been stood down. #EssexMajorIncident",
                          "Flu jab clinics this week"] or \
        sorted(texts[-2:]) == sorted(["The major incident has been stood down. "
                                      "#EssexMajorIncident", "Flu jab clinics this week"])


def test_rate_limit_pauses_the_channel_until_reset(world):
    activate(world)
    crisis_update(world)
    x = world.publishers["x"]
    reset = world.clock.now() + timedelta(minutes=15)
    x.script.append(RateLimitedError("429", reset_at=reset, channel_id="x"))
    d = world.dispatcher()
    stats = d.tick(world.clock.now())
    assert stats.rate_limited == 1
    calls = x.calls
    world.clock.advance(timedelta(minutes=14))
    d.tick(world.clock.now())
    assert x.calls == calls  # nothing sent before the reset
    # The other channels were not blocked.
    assert len(world.publishers["facebook"].posts) == 2
    world.clock.advance(timedelta(minutes=2))
    d.tick(world.clock.now())
    assert len(x.posts) == 2
    ch = world.store.channel_states()["x"]
    assert ch.rate_limit_waits == 1 and ch.rate_limit_wait_seconds == 900


def test_permanent_failure_is_recorded_and_not_retried(world):
    activate(world)
    fb = world.publishers["facebook"]
    fb.script.append(PermanentPublishError("(#200) permissions error", channel_id="facebook",
                                           status=403))
    world.dispatcher().tick(world.clock.now())
    (failed,) = world.store.items(states=["failed"])
    assert "permissions error" in failed.reason
    world.clock.advance(timedelta(hours=1))
    world.dispatcher().tick(world.clock.now())
    assert fb.calls == 1
    assert any(e.action == "outbox.failed" for e in world.store.audit_events())


def test_transient_errors_retry_with_backoff(world):
    """A request that certainly did not reach the platform (connection refused) is retried
    with backoff. (A 5xx did reach it: an unknown outcome, see test_relay_safety.)"""
    activate(world)
    m = world.publishers["mastodon"]
    for _ in range(3):  # one in-call retry budget of 3 attempts
        m.script.append(TransientPublishError("mastodon: request not sent (ConnectError)",
                                              channel_id="mastodon"))
    d = world.dispatcher()
    d.tick(world.clock.now())
    (item,) = world.store.items(channel_id="mastodon")
    assert str(item.state) == "queued" and item.not_before > world.clock.now()
    world.clock.advance(timedelta(hours=1))
    d.tick(world.clock.now())
    assert str(world.store.get_item(item.id).state) == "published"
    assert len(m.posts) == 1


def test_outcome_unknown_is_checked_on_the_platform(world):
    activate(world)
    x = world.publishers["x"]
    x.script.append("sent-then-unknown")
    world.dispatcher().tick(world.clock.now())
    assert len(x.posts) == 1  # no blind resend
    (item,) = world.store.items(channel_id="x")
    assert str(item.state) == "published"


def test_outcome_unknown_that_cannot_be_checked_goes_to_review(world):
    activate(world)
    x = world.publishers["x"]
    x.script.append("sent-then-unknown")
    x.find_fails = True
    d = world.dispatcher()
    d.tick(world.clock.now())
    (item,) = world.store.items(channel_id="x")
    # A platform that cannot answer is asked again later, a few times, before a person is.
    assert str(item.state) == "sending" and item.lookups == 1
    for _ in range(6):
        world.clock.advance(timedelta(minutes=20))
        d.tick(world.clock.now())
    item = world.store.get_item(item.id)
    assert str(item.state) == "needs_review" and item.lookups == 4
    # queue retry is safe: the platform is asked first; still unknown -> review again.
    operations.retry(world.store, world.catalog, world.clock, item.id, "alice")
    world.clock.advance(timedelta(seconds=1))
    d.tick(world.clock.now())
    assert str(world.store.get_item(item.id).state) == "needs_review"
    x.find_fails = False
    operations.retry(world.store, world.catalog, world.clock, item.id, "alice")
    world.clock.advance(timedelta(seconds=1))
    d.tick(world.clock.now())
    assert str(world.store.get_item(item.id).state) == "published"
    assert len(x.posts) == 1


class Crash(BaseException):
    """Stands in for SIGKILL between sending and recording."""


@pytest.mark.parametrize("reached_platform", [True, False])
def test_crash_between_sending_and_recording(world, reached_platform):
    activate(world)
    x = world.publishers["x"]

    def die(item):
        if reached_platform:
            x._record(item)
        raise Crash

    x.on_publish = die
    with pytest.raises(Crash):
        world.dispatcher("dead").tick(world.clock.now())
    (item,) = world.store.items(channel_id="x")
    assert str(item.state) == "sending"
    x.on_publish = None
    world.reopen()
    later = world.clock.now() + timedelta(minutes=5)  # past the lease
    world.clock.set(later)
    d = world.dispatcher("new")
    d.tick(world.clock.now())
    world.clock.advance(timedelta(minutes=2))  # a resend, if needed, waits for its backoff
    d.tick(world.clock.now())
    assert str(world.store.get_item(item.id).state) == "published"
    assert len(x.posts) == 1  # never duplicated, never lost


def test_two_dispatchers_never_duplicate(world, tmp_path):
    from crisiscomms.adapters.store import open_store

    activate(world)
    crisis_update(world)
    other = open_store(f"sqlite:///{world.store.path}")
    d1 = world.dispatcher("a")
    d2 = world.dispatcher("b")
    d2.store = other
    d1.tick(world.clock.now())
    d2.tick(world.clock.now())
    for pub in world.publishers.values():
        keys = [p.dedupe_key for p in pub.posts]
        assert len(keys) == len(set(keys)) == 2


def test_stood_down_items_are_skipped_but_the_stand_down_message_goes(world):
    inc = activate(world)
    crisis_update(world)
    incidents.deactivate(world.store, world.catalog, world.clock, incident_id=inc.id,
                         reason="over", operator="bob")
    world.dispatcher().tick(world.clock.now())
    x_texts = [p.text for p in world.publishers["x"].posts]
    assert x_texts == ["The flooding incident has been stood down. Thank you to everyone who "
                       "shared official advice. #EssexFloods"]
    skipped = world.store.items(states=["skipped"])
    assert len(skipped) == 8


def test_same_update_in_two_incidents_is_relayed_once_per_channel(world):
    activate(world, "flooding")
    activate(world, "major-incident")
    crisis_update(world)
    world.dispatcher().tick(world.clock.now())
    retweets = [p for p in world.publishers["x"].posts if p.action == "retweet"]
    assert len(retweets) == 1
    assert any("duplicate: update already relayed" in i.reason
               for i in world.store.items(states=["skipped"]))


def test_hourly_ceiling_holds_crisis_items(world, playbooks_dir):
    """The ceiling holds other sources' crisis items (the lead agency's own updates are never
    held by it: tests/core/test_relay_safety.py)."""
    activate(world)
    world.poll()
    world.clock.advance(timedelta(seconds=31))
    world.sources["eeast-x"].set_snapshot(
        [update("eeast-x", f"b{i}", at=world.clock.now()) for i in range(20)])
    world.poll()
    world.dispatcher().tick(world.clock.now())
    # flooding.yaml: x hourly_ceiling 15 (the activation message counts too).
    assert len(world.publishers["x"].posts) == 15
    held = world.store.items(channel_id="x", states=["held"])
    assert len(held) == 6 and "hourly safety ceiling 15" in held[0].reason


class _LookupCounter:
    """Wraps a publisher: counts lookups, answers the first with a 429."""

    def __init__(self, inner, reset):
        self.inner, self.reset, self.lookups = inner, reset, 0
        self.channel_id = inner.channel_id

    def publish(self, item, update):
        return self.inner.publish(item, update)

    def find_existing(self, item, update):
        self.lookups += 1
        if self.lookups == 1:
            raise RateLimitedError("429", reset_at=self.reset, channel_id=self.channel_id)
        return self.inner.find_existing(item, update)

    def close(self):
        return None


def test_a_429_to_a_recovery_lookup_stops_the_other_lookups_on_that_channel(world):
    """Recovering several crashed sends on one channel: once the platform answers 429 to one
    lookup, no other request (lookups included) reaches that channel before the reset."""
    activate(world)
    crisis_update(world, ext="100")
    crisis_update(world, ext="101")
    x = world.publishers["x"]

    def die(item):
        raise Crash

    x.on_publish = die
    for _ in range(3):  # activation message + two updates: each send dies mid-way
        with pytest.raises(Crash):
            world.dispatcher("dead").tick(world.clock.now())
    x.on_publish = None
    sending = [i for i in world.store.items(channel_id="x") if str(i.state) == "sending"]
    assert len(sending) >= 2
    world.clock.set(world.clock.now() + timedelta(minutes=5))  # past the lease and settling
    reset = world.clock.now() + timedelta(minutes=15)
    counter = _LookupCounter(x, reset)
    world.publishers["x"] = counter
    world.dispatcher("new").tick(world.clock.now())
    assert counter.lookups == 1, "a lookup went to a channel the platform had paused"
