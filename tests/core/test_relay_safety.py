"""Never relay the wrong thing (issue 12): a CAP entry whose status or scope is unknown, a CAP
document without them, an alert past its ``expires``."""

from __future__ import annotations

from dataclasses import replace
from datetime import timedelta
from pathlib import Path

import pytest

from crisiscomms.adapters.sources.capxml import parse_cap_document
from crisiscomms.domain.matching import match
from crisiscomms.domain.models import CapInfo, RecordedUpdate, SourceKind
from crisiscomms.services import incidents
from tests.core.helpers import make_world, update

FIXTURES = Path(__file__).resolve().parents[1] / "sources" / "fixtures"


@pytest.fixture
def world(tmp_path: Path, playbooks_dir: Path):
    return make_world(tmp_path, playbooks_dir)


def activate(world):
    return incidents.activate(world.store, world.catalog, world.clock, playbook="flooding",
                              reason="test", operator="alice")


def test_a_cap_entry_rebuilt_from_the_index_without_status_is_not_relayed(world):
    """The linked CAP document could not be used (DTD, too large, 404): the entry is rebuilt
    from the index with no CAP fields. Unknown status means not relayed."""
    inc = activate(world)
    u = replace(update("ea-floods-essex", "exercise-1", title="EXERCISE EXERCISE flood"),
                kind=SourceKind.CAP, cap=None, id=1)
    m = match(RecordedUpdate(u, "new"), catalog=world.catalog, incidents=[inc])
    assert m.items == ()
    assert m.disposition.startswith("skipped: CAP status and scope unknown")


def test_a_cap_document_without_status_or_scope_is_not_relayed(world):
    inc = activate(world)
    xml = (FIXTURES / "cap_alert.xml").read_bytes()
    for tag in (b"status", b"scope"):
        start = xml.index(b"<" + tag + b">")
        end = xml.index(b"</" + tag + b">") + len(tag) + 3
        xml = xml[:start] + xml[end:]
    doc = parse_cap_document(xml, source_id="ea-floods-essex")
    assert (doc.cap.status, doc.cap.scope) == ("", "")
    u = replace(update("ea-floods-essex", doc.cap.identifier, cap=doc.cap),
                kind=SourceKind.CAP, id=1)
    m = match(RecordedUpdate(u, "new"), catalog=world.catalog, incidents=[inc])
    assert m.items == () and m.disposition.startswith("skipped: not Actual/Public")


def test_an_alert_already_expired_when_seen_is_not_queued(world):
    inc = activate(world)
    now = world.clock.now()
    cap = CapInfo(identifier="old", severity="Severe", expires=now - timedelta(minutes=1))
    u = replace(update("ea-floods-essex", "old", cap=cap), id=1)
    m = match(RecordedUpdate(u, "new"), catalog=world.catalog, incidents=[inc], now=now)
    assert m.items == () and m.disposition.startswith("skipped: expired at")


def test_an_alert_that_expires_before_it_is_sent_is_not_sent(world):
    activate(world)
    world.poll()  # baselines
    world.clock.advance(timedelta(minutes=6))
    expires = world.clock.now() + timedelta(minutes=10)
    cap = CapInfo(identifier="w1", severity="Severe", expires=expires)
    world.sources["ea-floods-essex"].set_snapshot([update("ea-floods-essex", "w1", cap=cap,
                                                          at=world.clock.now())])
    world.poll()
    queued = [i for i in world.store.items() if i.update_id]
    assert queued and all(i.expires_at == expires for i in queued)
    world.clock.advance(timedelta(minutes=11))  # nothing was sent in time (e.g. rate limits)
    world.dispatcher().tick(world.clock.now())
    after = [world.store.get_item(i.id) for i in queued]
    assert all(str(i.state) == "skipped" and i.reason.startswith("expired") for i in after)
    assert all(not p.posts or all(s.item_id not in {i.id for i in queued} for s in p.posts)
               for p in world.publishers.values())


def _lead_items(world, n: int):
    from crisiscomms.domain.models import ActionKind, NewOutboxItem
    from crisiscomms.testing import enqueue

    inc = activate(world)
    return inc, enqueue(world.store, [NewOutboxItem(
        dedupe_key=f"i{inc.id}:facebook:post:essex-police-x:{k}:r1", channel_id="facebook",
        action=ActionKind.POST, text=f"Police update {k}", incident_id=inc.id,
        source_id="essex-police-x", is_lead=True) for k in range(n)], now=world.clock.now())


def test_the_hourly_ceiling_never_holds_back_the_lead_agency(world):
    """40 lead updates in a burst at 02:10 all go out at once: the playbook's hourly ceiling
    (20 per channel by default) is against runaway loops, not the lead agency's own words."""
    from datetime import UTC, datetime

    world.clock.set(datetime(2026, 11, 28, 2, 10, tzinfo=UTC))
    _, ids = _lead_items(world, 40)
    world.dispatcher().tick(world.clock.now())
    states = [str(world.store.get_item(i).state) for i in ids]
    assert states == ["published"] * 40


def test_the_hourly_ceiling_still_holds_other_sources(world):
    from crisiscomms.domain.models import ActionKind, NewOutboxItem
    from crisiscomms.testing import enqueue

    inc = activate(world)
    ids = enqueue(world.store, [NewOutboxItem(
        dedupe_key=f"i{inc.id}:facebook:post:eeast-x:{k}:r1", channel_id="facebook",
        action=ActionKind.POST, text=f"Ambulance update {k}", incident_id=inc.id,
        source_id="eeast-x") for k in range(30)], now=world.clock.now())
    world.dispatcher().tick(world.clock.now())
    states = [str(world.store.get_item(i).state) for i in ids]
    # flooding.yaml caps facebook at 8 an hour; the activation message is one of them.
    assert states.count("published") == 7 and states.count("held") == 23


def test_editing_a_retweet_is_refused_with_a_clear_line(world):
    from crisiscomms.domain.errors import RefusedError
    from crisiscomms.services import queue as ops

    activate(world)
    world.poll()
    world.clock.advance(timedelta(seconds=40))
    world.sources["essex-police-x"].set_snapshot([update("essex-police-x", "1700",
                                                         at=world.clock.now())])
    world.poll()
    rt = next(i for i in world.store.items() if str(i.action) == "retweet")
    with pytest.raises(RefusedError) as exc:
        ops.edit(world.store, world.catalog, world.clock, rt.id, "alice", "new words")
    msg = str(exc.value)
    assert f"item {rt.id}" in msg and "retweet" in msg and "\n" not in msg
    assert world.store.get_item(rt.id).edited_text is None


def test_the_parser_worker_gets_no_secrets_in_its_environment(monkeypatch):
    from crisiscomms.adapters.sources.parsing import FeedParserPool

    monkeypatch.setenv("CRISISCOMMS_X_BEARER_TOKEN", "Zq9MARKsecretZq9")
    monkeypatch.setenv("CRISISCOMMS_FACEBOOK_PAGE_TOKEN", "Zq9MARKsecretZq9")
    monkeypatch.setenv("SOME_OTHER_TOKEN", "Zq9MARKsecretZq9")
    pool = FeedParserPool(workers=1)
    try:
        import asyncio

        asyncio.run(pool.parse(b"<rss version='2.0'><channel><title>t</title></channel></rss>"))
        pids = pool.worker_pids()
        assert pids, "no worker started"
        for pid in pids:
            environ = Path(f"/proc/{pid}/environ").read_bytes()
            assert b"Zq9MARKsecretZq9" not in environ
            assert b"CRISISCOMMS_" not in environ
    finally:
        pool.close()


class HangingSource:
    """A feed trickling one byte a second: its poll never finishes by itself."""

    def __init__(self, key: str) -> None:
        self.key = key
        self.source_ids = (key,)
        self.cancelled = False

    async def poll(self, state, now):  # type: ignore[no-untyped-def]
        import asyncio

        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            self.cancelled = True
            raise

    async def aclose(self) -> None:
        return None


def test_a_poll_has_a_total_deadline(world):
    import asyncio

    from crisiscomms.settings import PollingSettings

    watcher = world.watcher()
    watcher.settings = PollingSettings(jitter_seconds=0, deadline_seconds=1)
    hanging = HangingSource("met-office-ee")
    watcher.sources = [hanging]
    stats = asyncio.run(asyncio.wait_for(watcher.poll_cycle(world.clock.now()), timeout=20))
    assert stats.failed == 1 and stats.errors == {"met-office-ee": "deadline"}
    assert hanging.cancelled
    st = world.store.source_state("met-office-ee")
    assert st.failures == 1 and "1s" in (st.last_error or "")


def test_one_slow_feed_does_not_stop_posting(world):
    """Polling and dispatch do not wait on each other: an item queued while a feed hangs goes
    out at once, and stopping the loop does not wait for the feed."""
    import asyncio
    import time

    from crisiscomms.domain.models import ActionKind, NewOutboxItem, WatcherInfo
    from crisiscomms.services.runloop import RunLoop
    from crisiscomms.testing import enqueue

    inc = activate(world)
    (item_id,) = enqueue(world.store, [NewOutboxItem(
        dedupe_key="k", channel_id="facebook", action=ActionKind.POST, text="Road closed",
        incident_id=inc.id, is_lead=True)], now=world.clock.now())
    watcher = world.watcher()
    watcher.sources = [HangingSource("met-office-ee")]
    dispatcher = world.dispatcher()
    loop = RunLoop(store=world.store, clock=world.clock, watcher=watcher,
                   dispatcher=dispatcher,
                   identity=WatcherInfo("w", "h", 1, world.clock.now(), world.clock.now()))

    async def scenario() -> float:
        stop = asyncio.Event()
        runner = asyncio.create_task(loop.run(stop, tick_seconds=0.01))
        for _ in range(500):
            if str(world.store.get_item(item_id).state) == "published":
                break
            await asyncio.sleep(0.01)
        t0 = time.monotonic()
        stop.set()
        await asyncio.wait_for(runner, timeout=10)
        return time.monotonic() - t0

    stopped_in = asyncio.run(scenario())
    assert str(world.store.get_item(item_id).state) == "published"
    assert stopped_in < 5


def _cap_update(world, ext: str, msg_type: str, refs: tuple[str, ...] = (), **kw):
    cap = CapInfo(identifier=ext, severity="Severe", msg_type=msg_type, references=refs,
                  status="Actual", scope="Public")
    return replace(update("ea-floods-essex", ext, cap=cap, **kw), kind=SourceKind.CAP)


def test_a_cancel_for_an_alert_never_relayed_is_not_posted(world):
    inc = activate(world)
    cancel = replace(_cap_update(world, "c1", "Cancel",
                                 ("ea@gov.uk,never-seen,2026-11-27T10:00:00+00:00",)), id=5)
    m = match(RecordedUpdate(cancel, "new"), catalog=world.catalog, incidents=[inc],
              threads={})
    assert m.items == ()
    assert m.disposition.startswith("skipped: a Cancel of an alert we did not relay")


def test_an_update_goes_only_into_the_threads_of_the_alert_we_relayed(world):
    inc = activate(world)
    upd = replace(_cap_update(world, "u1", "Update",
                              ("ea@gov.uk,a1,2026-11-27T10:00:00+00:00",)), id=6)
    m = match(RecordedUpdate(upd, "new"), catalog=world.catalog, incidents=[inc],
              threads={"x": 17, "mastodon": 19})
    assert {(i.channel_id, i.reply_to_item) for i in m.items} == {("x", 17), ("mastodon", 19)}


def test_the_watcher_threads_a_cap_update_under_our_earlier_post(world):
    """End to end: the alert is queued, its Update comes in referencing it before the alert is
    out; the Update waits for the alert, then goes out as a reply to our own post of it, on
    each channel that carried the alert."""
    activate(world)
    world.poll()  # baselines
    world.clock.advance(timedelta(minutes=6))
    alert = CapInfo(identifier="a9", severity="Severe", status="Actual", scope="Public",
                    sender="ea@gov.uk")
    world.sources["ea-floods-essex"].set_snapshot([update("ea-floods-essex", "a9", cap=alert,
                                                          at=world.clock.now())])
    world.poll()
    originals = {i.channel_id: i.id for i in world.store.items() if i.update_id}
    assert originals
    world.clock.advance(timedelta(minutes=6))
    follow = CapInfo(identifier="a9-u1", severity="Severe", status="Actual", scope="Public",
                     msg_type="Update", references=("ea@gov.uk,a9,2026-11-27T18:00:00+00:00",))
    world.sources["ea-floods-essex"].set_snapshot([
        update("ea-floods-essex", "a9", cap=alert, at=world.clock.now()),
        update("ea-floods-essex", "a9-u1", cap=follow, at=world.clock.now())])
    world.poll()
    replies = {i.channel_id: i.reply_to_item for i in world.store.items()
               if i.update_id and "a9-u1" in i.dedupe_key}
    assert replies == originals
    world.dispatcher().tick(world.clock.now())
    for channel, pub in world.publishers.items():
        if channel not in originals:
            continue
        sent = {p.item_id: p for p in pub.posts}
        first = world.store.get_item(originals[channel])
        reply_item = next(i for i in world.store.items(channel_id=channel)
                          if i.reply_to_item == first.id)
        assert str(world.store.get_item(reply_item.id).state) == "published", channel
        assert sent[reply_item.id].reply_to == first.platform_post_id, channel


def test_an_update_whose_alert_never_went_out_is_not_sent(world):
    activate(world)
    world.poll()
    world.clock.advance(timedelta(minutes=6))
    alert = CapInfo(identifier="b1", severity="Severe", status="Actual", scope="Public")
    world.sources["ea-floods-essex"].set_snapshot([update("ea-floods-essex", "b1", cap=alert,
                                                          at=world.clock.now())])
    world.poll()
    from crisiscomms.services import queue as ops

    originals = [i for i in world.store.items() if i.update_id]
    for it in originals:
        ops.reject(world.store, world.catalog, world.clock, it.id, "alice", "not ours to say")
    world.clock.advance(timedelta(minutes=6))
    cancel = CapInfo(identifier="b1-c", severity="Minor", status="Actual", scope="Public",
                     msg_type="Cancel", references=("ea,b1,2026-11-27T18:00:00+00:00",))
    world.sources["ea-floods-essex"].set_snapshot([
        update("ea-floods-essex", "b1", cap=alert, at=world.clock.now()),
        update("ea-floods-essex", "b1-c", cap=cancel, at=world.clock.now())])
    world.poll()
    # Rejected originals are no thread: the Cancel is not queued anywhere.
    assert not [i for i in world.store.items() if "b1-c" in i.dedupe_key]


def test_the_flooding_playbook_relays_flood_warnings_not_flood_alerts(world):
    """Its own comment says warnings only; an EA flood alert (level 3) must not go out."""
    from crisiscomms.adapters.sources.ea_floods import SEVERITY_MAP

    inc = activate(world)
    outcomes = {}
    for level in (1, 2, 3):
        severity, urgency, certainty, _msg_type, label = SEVERITY_MAP[level]
        cap = CapInfo(identifier=f"ea-{level}", severity=severity, urgency=urgency,
                      certainty=certainty, event=label)
        u = replace(update("ea-floods-essex", f"ea-{level}", cap=cap), id=level)
        m = match(RecordedUpdate(u, "new"), catalog=world.catalog, incidents=[inc])
        outcomes[label] = bool(m.items)
    assert outcomes == {"Severe flood warning": True, "Flood warning": True,
                        "Flood alert": False}


def test_a_5xx_after_the_platform_accepted_the_post_is_looked_up_not_resent(world):
    """A 5xx on a create may come after the platform recorded the post: it is an unknown
    outcome (look first), never "not sent" (which resent it at once: 3 identical posts)."""
    fb = world.publishers["facebook"]
    fb.script.extend(["sent-then-5xx", "sent-then-5xx", "sent-then-5xx"])
    activate(world)  # the activation message is the first item on facebook
    world.dispatcher().tick(world.clock.now())
    (first,) = world.store.items(channel_id="facebook")
    assert [p.dedupe_key for p in fb.posts] == [first.dedupe_key]  # once, not three times
    assert str(world.store.get_item(first.id).state) == "published"
    assert any("found on platform" in e.reason for e in world.store.item_events(first.id))
