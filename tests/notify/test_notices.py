"""What pages, how often, who pages: the notice chore on a store, with a recording notifier."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from types import SimpleNamespace
from typing import Any

import pytest

from crisiscomms.adapters.playbooks import load_catalog
from crisiscomms.domain.models import (
    ActionKind,
    ItemState,
    NewOutboxItem,
    SourceState,
    WatcherInfo,
)
from crisiscomms.services import incidents
from crisiscomms.services.notices import NoticeChore, is_leader, status_data, status_lines
from crisiscomms.settings import NotifySettings
from crisiscomms.testing import (
    FakeClock,
    MemoryStore,
    append_audit,
    enqueue,
    save_source_state,
)

# Friday 27 Nov 2026, 18:00 UTC (18:00 GMT in London).
T0 = datetime(2026, 11, 27, 18, 0, tzinfo=UTC)


@dataclass
class Recorder:
    """A notifier that keeps what it was asked to send; ``down`` makes every target fail."""

    sent: list[dict[str, str]] = field(default_factory=list)
    down: bool = False
    labels: list[str] = field(default_factory=lambda: ["1 (json)", "2 (mailto)"])

    def send(self, title: str, body: str, urgency: str) -> list[tuple[str, bool, str]]:
        if self.down:
            return [(lb, False, "A Connection error occurred sending JSON notification to "
                                "127.0.0.1.") for lb in self.labels]
        self.sent.append({"title": title, "body": body, "urgency": urgency})
        return [(lb, True, "") for lb in self.labels]


@dataclass
class Env:
    store: MemoryStore
    catalog: Any
    clock: FakeClock
    notifier: Recorder
    chore: NoticeChore
    me: WatcherInfo

    def loop(self, me: WatcherInfo | None = None) -> Any:
        return SimpleNamespace(store=self.store, clock=self.clock, identity=me or self.me,
                               watcher=SimpleNamespace(catalog=self.catalog))

    def run(self, chore: NoticeChore | None = None, me: WatcherInfo | None = None) -> None:
        me = me or self.me
        with self.store.unit_of_work() as uow:
            uow.watchers.heartbeat(replace(me, last_seen_at=self.clock.now()))
            uow.commit()
        asyncio.run((chore or self.chore).run(self.loop(me), self.clock.now()))

    def later(self, minutes: float) -> None:
        self.clock.advance(timedelta(minutes=minutes))


def make_chore(notifier: Recorder, **overrides: Any) -> NoticeChore:
    settings = NotifySettings(**overrides)
    return NoticeChore(notifier=notifier, settings=settings, failure_alert_after=5)


@pytest.fixture
def env(playbooks_dir) -> Env:
    store = MemoryStore()
    notifier = Recorder()
    me = WatcherInfo("w1", "host-a", 101, T0 - timedelta(hours=1), T0, pages=True)
    return Env(store, load_catalog(playbooks_dir), FakeClock(T0), notifier,
               make_chore(notifier), me)


def needs_approval(env: Env, n: int = 1) -> list[int]:
    return enqueue(env.store, [NewOutboxItem(
        dedupe_key=f"normal:x:{i}:{env.clock.now().timestamp()}", channel_id="x",
        action=ActionKind.POST, text=f"Flu clinic tonight ({i})",
        state=ItemState.NEEDS_APPROVAL, approval="manual") for i in range(n)],
        now=env.clock.now())


def failing_source(env: Env, failures: int, source: str = "met-office-ee") -> None:
    save_source_state(env.store, SourceState(
        source, failures=failures, last_error="timed out after 20 s", last_error_class="timeout",
        last_ok_at=T0 - timedelta(hours=2)))


def test_an_item_needing_approval_pages_once_with_the_approve_command(env: Env):
    [item] = needs_approval(env)
    env.run()
    assert len(env.notifier.sent) == 1
    page = env.notifier.sent[0]
    assert "1 item needs approval" in page["title"]
    assert f'crisiscomms queue approve {item} --reason "..."' in page["body"]
    assert f"crisiscomms queue reject {item}" in page["body"]
    assert "2026-11-27 18:00 GMT" in page["body"]  # times carry their zone
    assert page["urgency"] == "high" and page["body"].startswith("urgency: high")
    for _ in range(5):  # every 30 s for 2.5 minutes: still one page
        env.later(0.5)
        env.run()
    assert len(env.notifier.sent) == 1
    env.later(30)
    env.run()  # the reminder
    assert len(env.notifier.sent) == 2
    assert "still open" in env.notifier.sent[1]["title"]
    assert f"crisiscomms queue approve {item}" in env.notifier.sent[1]["body"]


def test_items_needing_review_page_with_the_safe_retry(env: Env):
    [item] = enqueue(env.store, [NewOutboxItem(
        dedupe_key="r:1", channel_id="facebook", action=ActionKind.POST, text="Roads closed",
        state=ItemState.NEEDS_REVIEW)], now=T0)
    env.run()
    body = env.notifier.sent[0]["body"]
    assert "1 item needs review" in env.notifier.sent[0]["title"]
    assert f"crisiscomms queue retry {item}" in body and "asks the platform" in body


def test_a_flapping_source_pages_once(env: Env):
    failing_source(env, 4)
    env.run()
    assert env.notifier.sent == []  # below failure_alert_after
    for _ in range(10):  # fails, recovers, fails again... every 30 s for 10 minutes
        failing_source(env, 5)
        env.run()
        env.later(0.5)
        failing_source(env, 0)
        env.run()
        env.later(0.5)
    titles = [p["title"] for p in env.notifier.sent]
    assert sum("source failing" in t for t in titles) == 1, titles
    assert sum("recovered" in t for t in titles) <= 1, titles
    first = env.notifier.sent[0]
    assert "met-office-ee" in first["body"] and "5 polls in a row" in first["body"]
    assert "crisiscomms status" in first["body"]


def test_a_failing_or_paused_channel_pages(env: Env):
    with env.store.unit_of_work() as uow:
        uow.channels.set_problem("facebook", "credentials missing for channel facebook "
                                             "(CRISISCOMMS_FACEBOOK_PAGE_TOKEN unset)")
        uow.channels.pause("x", until=T0 + timedelta(minutes=15), reason="429",
                           wait_seconds=900)
        uow.commit()
    env.run()
    body = "\n".join(p["body"] for p in env.notifier.sent)
    assert "channel facebook cannot post" in body and "CRISISCOMMS_FACEBOOK_PAGE_TOKEN" in body
    assert "channel x paused by its platform until 2026-11-27 18:15 GMT" in body
    assert "systemctl restart crisiscomms" in body


def test_activation_and_stand_down_page_with_the_audit_head(env: Env):
    inc = incidents.activate(env.store, env.catalog, env.clock, playbook="flooding",
                             reason="River Chelmer over the banks", operator="alice")
    head = env.store.verify_audit()  # as it stands when the page is written
    env.run()
    page = next(p for p in env.notifier.sent if "ACTIVATED" in p["title"])
    assert page["urgency"] == "urgent"
    assert f"incident {inc.id} ACTIVATED (flooding) by alice" in page["title"]
    assert "River Chelmer over the banks" in page["body"]
    assert "2026-11-27 18:00 GMT" in page["body"]
    assert f"audit head {head.count}:{head.head_hash} ({head.count} events" in page["body"]
    assert f"audit verify --expect-head {head.count}:{head.head_hash}" in page["body"]
    assert f'crisiscomms deactivate {inc.id} --reason "..."' in page["body"]
    env.later(1)
    incidents.deactivate(env.store, env.catalog, env.clock, incident_id=inc.id,
                         reason="water receding", operator="bob")
    head = env.store.verify_audit()
    env.run()
    page = next(p for p in env.notifier.sent if "STOOD DOWN" in p["title"])
    assert "by bob" in page["title"] and "water receding" in page["body"]
    assert f"audit head {head.count}:{head.head_hash}" in page["body"]
    assert f"crisiscomms report {inc.id}" in page["body"]
    n = len(env.notifier.sent)
    env.later(1)
    env.run()
    assert len(env.notifier.sent) == n  # each event paged once


@pytest.mark.parametrize(("report", "says", "never"), [
    (dict(unchecked=4), ["4 keyed events could not be checked",
                         "this watcher lacks CRISISCOMMS_AUDIT_KEY"], ["sealed", "backwards"]),
    (dict(keyed=9, unprotected=2), ["the last 2 events are not yet covered by the audit key",
                                    "seals them within 10 s"], ["lacks", "backwards"]),
    (dict(keyed=9, backwards=(7,)), ["time went backwards at event 7"],
     ["lacks", "not yet covered"]),
    (dict(keyed=9, old_tail=3), ["the last 3 events are in the old format"],
     ["lacks", "not yet covered", "backwards"]),
])
def test_an_activation_page_says_why_the_chain_is_not_fully_checked(
        env: Env, monkeypatch: pytest.MonkeyPatch, report: dict[str, Any], says: list[str],
        never: list[str]):
    """A page that blames the watcher's key when the key is there (the officers' events are
    only waiting for their seal) sends the on-call officer after the wrong problem."""
    from crisiscomms.domain.audit import ChainReport

    incidents.activate(env.store, env.catalog, env.clock, playbook="flooding",
                       reason="River Chelmer over the banks", operator="alice")
    monkeypatch.setattr(env.store, "verify_audit",
                        lambda **_: ChainReport(True, 12, "ab" * 32, **report))
    env.run()
    page = next(p for p in env.notifier.sent if "ACTIVATED" in p["title"])
    assert "audit head 12:" + "ab" * 32 in page["body"]
    for text in says:
        assert text in page["body"], page["body"]
    for text in never:
        assert text not in page["body"], page["body"]


def test_a_refused_playbook_change_pages_with_file_line_and_key(env: Env):
    append_audit(env.store, actor="watcher", action="playbooks.reload_refused",
                 subject="playbooks", reason="invalid change", now=T0,
                 details={"file": "sources.yaml", "line": 12, "key": "sources[3].url",
                          "error": "not an http(s) URL"})
    env.run()
    [page] = env.notifier.sent
    assert "playbook change refused" in page["title"]
    for text in ("sources.yaml", "line 12", "sources[3].url", "not an http(s) URL",
                 "last good configuration", "crisiscomms playbooks validate"):
        assert text in page["body"], text


def test_the_cap_sends_a_digest_of_the_rest(env: Env):
    chore = make_chore(env.notifier, max_per_window=3, window_minutes=15)
    for i in range(6):
        append_audit(env.store, actor="watcher", action="playbooks.reload_refused",
                     subject="playbooks", reason="bad", now=T0,
                     details={"file": f"f{i}.yaml", "line": i + 1, "key": "k", "error": "e"})
    env.run(chore)
    assert len(env.notifier.sent) == 3
    digest = env.notifier.sent[-1]
    assert "digest of 4 more notices" in digest["title"]
    for i in range(2, 6):
        assert f"f{i}.yaml" in digest["body"]
    needs_approval(env)
    env.later(1)
    env.run(chore)
    assert len(env.notifier.sent) == 3  # the window is full
    env.later(15)
    env.run(chore)
    assert len(env.notifier.sent) == 4 and "needs approval" in env.notifier.sent[-1]["title"]


def test_only_the_first_started_live_watcher_pages(env: Env):
    other = WatcherInfo("w0", "host-b", 7, T0 - timedelta(hours=2), T0, pages=True)
    second = make_chore(env.notifier)
    needs_approval(env)
    env.run(second, me=other)  # w0 started first: it pages
    env.run()  # w1 stays quiet
    assert len(env.notifier.sent) == 1
    assert is_leader(env.store.watchers(), other, env.clock.now())
    assert not is_leader(env.store.watchers(), env.me, env.clock.now())
    # w0 dies (no heartbeat for over a minute): w1 takes over, without paging again what w0
    # paged (it reads the audit trail), and pages what is new.
    env.later(2)
    env.run()
    assert len(env.notifier.sent) == 1
    needs_approval(env)
    env.run()
    assert len(env.notifier.sent) == 2


def test_a_newcomer_does_not_take_over_from_a_live_leader():
    t = T0
    old = WatcherInfo("zz-old", "a", 1, t - timedelta(hours=5), t, pages=True)
    new = WatcherInfo("aa-new", "b", 2, t - timedelta(minutes=1), t, pages=True)
    assert is_leader([old, new], old, t) and not is_leader([old, new], new, t)
    stale = replace(old, last_seen_at=t - timedelta(minutes=5))
    assert is_leader([stale, new], new, t)


def test_a_watcher_that_cannot_page_is_not_elected(env: Env):
    """An officer runs 'crisiscomms watch' from their own shell (no notify URLs: only the
    service has them) before the service restarts: the officer's watcher is the oldest, but
    it cannot page, so the service pages."""
    officer = WatcherInfo("officer:9", "host-a", 9, T0 - timedelta(hours=3), T0)
    assert officer.pages is False  # the default, as for heartbeats of older versions
    with env.store.unit_of_work() as uow:
        uow.watchers.heartbeat(officer)
        uow.commit()
    needs_approval(env)
    env.run()
    assert len(env.notifier.sent) == 1
    assert is_leader(env.store.watchers(), env.me, env.clock.now())
    off_clock = replace(officer, worker_id="drill:3", started_at=T0 - timedelta(hours=4))
    assert is_leader([officer, off_clock, env.me], env.me, env.clock.now())


def test_a_restarted_watcher_does_not_page_again(env: Env):
    needs_approval(env)
    env.run()
    assert len(env.notifier.sent) == 1
    env.later(1)
    restarted = make_chore(env.notifier)  # a new process: nothing in memory
    env.run(restarted)
    assert len(env.notifier.sent) == 1


def test_a_failure_to_notify_is_recorded_retried_and_shown_in_status(env: Env):
    env.notifier.down = True
    needs_approval(env)
    env.run()
    failed = env.store.audit_events(action_prefix="notice.failed")
    assert len(failed) == 1
    assert failed[0].details["targets_failed"][0]["target"] == "1 (json)"
    lines = status_lines(env.store, env.catalog, env.clock.now())
    assert any("notifications FAILING: 2026-11-27 18:00 GMT" in ln for ln in lines), lines
    assert any("target 1 (json): A Connection error" in ln for ln in lines), lines
    data = status_data(env.store, env.clock.now())
    assert data["failing"] is True and data["last_failure_at"] == "2026-11-27T18:00:00.000000Z"
    assert data["last_failure_targets"][0]["target"] == "1 (json)"
    env.later(0.5)
    env.run()  # within retry_seconds: not tried again
    assert len(env.store.audit_events(action_prefix="notice.failed")) == 1
    env.notifier.down = False
    env.later(2)
    env.run()
    assert len(env.notifier.sent) == 1
    lines = status_lines(env.store, env.catalog, env.clock.now())
    assert lines[0].startswith("notifications: last page 2026-11-27 18:02 GMT to target(s) "
                               "1 (json), 2 (mailto): [HIGH] crisiscomms: 1 item needs approval")
    assert not any("FAILING" in ln for ln in lines)
    assert any("last failure 2026-11-27 18:00 GMT" in ln for ln in lines)
    data = status_data(env.store, env.clock.now())
    assert data["failing"] is False and data["pages_last_24h"] == 1


def test_status_without_any_page(env: Env):
    assert status_lines(env.store, env.catalog, T0) == [
        "notifications: no page in the last 7 days (the watcher pages the on-call team when "
        "CRISISCOMMS_NOTIFY_URLS is set)"]


def test_the_audit_trail_records_who_was_told_what_without_urls(env: Env):
    needs_approval(env)
    env.run()
    [ev] = env.store.audit_events(action_prefix="notice.")
    assert ev.action == "notice.sent" and ev.actor == "watcher"
    assert ev.details["targets_ok"] == ["1 (json)", "2 (mailto)"]
    assert "crisiscomms queue approve" in ev.details["body"]
    assert "://" not in str(ev.details)
    assert env.store.verify_audit().ok


def test_the_pager_asks_the_store_only_for_failing_sources(env: Env):
    # Every 10 s on 1,000 sources: building every state to keep the failing few cost ~6 ms a
    # run on SQLite; the store answers the question itself.
    failing_source(env, 5)
    calls: list[str] = []
    inner = env.store

    class Counting:
        def __getattr__(self, name: str) -> Any:
            if name in ("source_states", "failing_sources"):
                calls.append(name)
            return getattr(inner, name)

    env.store = Counting()  # type: ignore[assignment]
    env.run()
    assert calls == ["failing_sources"]
    assert any("source failing" in p["title"] for p in env.notifier.sent)
