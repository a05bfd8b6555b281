"""End to end: a real watcher (the bootstrap ``App`` and its run loop) pages real local
receivers; a receiver that is down is recorded and shown, and polling and dispatch go on."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import pytest
from pydantic import SecretStr

from crisiscomms.bootstrap import App
from crisiscomms.domain.clock import SystemClock
from crisiscomms.domain.models import ActionKind, ItemState, NewOutboxItem
from crisiscomms.services.notices import build_notice_chores, status_lines
from crisiscomms.settings import NotifySettings, PollingSettings, Settings
from crisiscomms.testing import FakeSource, enqueue
from tests.notify.receivers import black_hole, closed_port, json_receiver, smtp_server

pytestmark = pytest.mark.slow


def make_app(tmp_path: Path, playbooks_dir: Path, urls: list[str], **notify: Any
             ) -> tuple[App, FakeSource]:
    settings = Settings(
        home=tmp_path / "home", playbooks_dir=playbooks_dir, worker_id="e2e-watcher",
        notify_urls=SecretStr(",\n ".join(urls)),
        notify=NotifySettings(**{"check_seconds": 1, "timeout_seconds": 2, **notify}),
        polling=PollingSettings(interval_seconds=1, incident_interval_seconds=1,
                                jitter_seconds=0))
    app = App(settings=settings, clock=SystemClock())
    source = FakeSource("met-office-ee")

    async def close() -> None:
        return None

    app.build_sources = lambda **_: ([source], close)  # type: ignore[method-assign]
    return app, source


async def run_until(app: App, done: Any, *, timeout: float, tick: float = 0.5) -> Any:
    """Run the watcher's loop until ``done()`` is true (or the timeout); returns the loop."""
    async with app.run_loop(dry_run=True) as loop:
        stop = asyncio.Event()
        task = asyncio.ensure_future(loop.run(stop, tick_seconds=tick))
        deadline = time.monotonic() + timeout
        while not done(loop) and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
        stop.set()
        await asyncio.wait_for(task, 15)
        return loop


def normal_item(app: App) -> int:
    [item] = enqueue(app.store, [NewOutboxItem(
        dedupe_key="normal:x:e2e", channel_id="x", action=ActionKind.POST,
        text="Flu clinics open late tonight")], now=app.clock.now())
    return item


def test_an_item_needing_approval_pages_json_and_mailto_within_one_cycle(tmp_path,
                                                                         playbooks_dir):
    with json_receiver() as rx, smtp_server() as box:
        mailto = (f"mailto://127.0.0.1:{box.port}?smtp=127.0.0.1&mode=insecure"
                  "&from=crisiscomms@example.test&to=oncall@example.test")
        app, _ = make_app(tmp_path, playbooks_dir, [rx.url("/page"), mailto])
        item = normal_item(app)  # normal mode: the dispatcher decides it needs approval
        waited: dict[str, float] = {}

        def paged(loop: Any) -> bool:
            if "approval" not in waited and app.store.get_item(item).state == \
                    ItemState.NEEDS_APPROVAL:
                waited["approval"] = time.monotonic()
            return bool(rx.posts) and bool(box.messages)

        asyncio.run(run_until(app, paged, timeout=20))
        assert "approval" in waited, "the dispatcher never decided the item"
        assert rx.posts, "no page reached the json:// receiver"
        got = rx.posts[0]["body"]
        assert f'crisiscomms queue approve {item} --reason "..."' in got["message"]
        assert "1 item needs approval" in got["title"]
        assert box.messages and "needs approval" in box.messages[0]["data"]
        # within one cycle of the pager (check_seconds=1) after the dispatcher's decision,
        # with a second of slack for a loaded machine
        assert rx.posts[0]["at"] - waited["approval"] <= 2.0
        assert len(rx.posts) == 1
    lines = status_lines(app.store, app.catalog, app.clock.now())
    assert "notifications: last page" in lines[0] and "1 (json), 2 (mailto)" in lines[0]
    app.close()


def test_a_receiver_that_is_down_is_recorded_and_polling_and_dispatch_go_on(tmp_path,
                                                                           playbooks_dir):
    app, source = make_app(tmp_path, playbooks_dir,
                           [f"json://127.0.0.1:{closed_port()}/tok-DownDown1234"])
    item = normal_item(app)

    def failed_and_polled(loop: Any) -> bool:
        return bool(app.store.audit_events(action_prefix="notice.failed")) and source.polls >= 3

    asyncio.run(run_until(app, failed_and_polled, timeout=20))
    [ev, *_] = app.store.audit_events(action_prefix="notice.failed")
    assert ev.details["targets_failed"][0]["target"] == "1 (json)"
    assert "tok-DownDown1234" not in str(ev.details)
    assert app.store.get_item(item).state == ItemState.NEEDS_APPROVAL  # dispatch ran
    assert source.polls >= 3  # polling went on
    lines = status_lines(app.store, app.catalog, app.clock.now())
    assert any(ln.startswith("notifications FAILING") for ln in lines), lines
    assert any("target 1 (json)" in ln for ln in lines), lines
    assert "tok-DownDown1234" not in "\n".join(lines)
    app.close()


def test_a_receiver_that_never_answers_does_not_hold_up_polling(tmp_path, playbooks_dir):
    with black_hole() as port:
        app, source = make_app(tmp_path, playbooks_dir, [f"json://127.0.0.1:{port}/hook"],
                               timeout_seconds=4)
        normal_item(app)
        marks: dict[str, int] = {}

        def polled_while_hanging(loop: Any) -> bool:
            if "start" not in marks and app.store.get_item(1).state == \
                    ItemState.NEEDS_APPROVAL:
                marks["start"] = source.polls
            return bool(app.store.audit_events(action_prefix="notice.failed"))

        t0 = time.monotonic()
        asyncio.run(run_until(app, polled_while_hanging, timeout=25))
        assert app.store.audit_events(action_prefix="notice.failed")
        # the send hung for its timeout (4 s, per connect/read); polls went on meanwhile
        assert time.monotonic() - t0 >= 3
        assert source.polls - marks["start"] >= 2, (source.polls, marks)
        app.close()


def test_no_page_off_the_real_clock_or_without_targets(tmp_path, playbooks_dir):
    """A drill (simulated clock) or an --at watch never pages; nor does a watcher without
    CRISISCOMMS_NOTIFY_URLS."""
    from crisiscomms.domain.clock import FixedClock

    app, _ = make_app(tmp_path, playbooks_dir, ["json://127.0.0.1:9/hook"])
    assert len(build_notice_chores(app)) == 1
    app.clock = FixedClock(app.clock.now())
    assert build_notice_chores(app) == []
    app, _ = make_app(tmp_path, playbooks_dir, [" "])
    assert build_notice_chores(app) == []


def test_two_watchers_on_one_database_page_once(tmp_path, playbooks_dir):
    """Two real watchers share one SQLite database: the item needing approval is paged once,
    by the watcher that started first."""
    with json_receiver() as rx:
        first, _ = make_app(tmp_path, playbooks_dir, [rx.url("/page")])
        second, _ = make_app(tmp_path, playbooks_dir, [rx.url("/page")])
        second.settings = second.settings.model_copy(update={"worker_id": "e2e-second"})
        item = normal_item(first)

        async def both() -> None:
            async with first.run_loop(dry_run=True) as a:
                await asyncio.sleep(0.2)  # a starts first
                async with second.run_loop(dry_run=True) as b:
                    stop = asyncio.Event()
                    tasks = [asyncio.ensure_future(loop.run(stop, tick_seconds=0.5))
                             for loop in (a, b)]
                    deadline = time.monotonic() + 15
                    while not rx.posts and time.monotonic() < deadline:
                        await asyncio.sleep(0.1)
                    await asyncio.sleep(3)  # several more checks of both watchers
                    stop.set()
                    await asyncio.wait_for(asyncio.gather(*tasks), 15)

        asyncio.run(both())
        assert len(rx.posts) == 1, [p["body"]["title"] for p in rx.posts]
        assert f"crisiscomms queue approve {item}" in rx.posts[0]["body"]["message"]
    [ev] = first.store.audit_events(action_prefix="notice.sent")
    assert ev.actor == "watcher"
    first.close()
    second.close()


def test_an_officers_watcher_without_notify_urls_does_not_silence_the_service(
        tmp_path, playbooks_dir):
    """An officer runs 'crisiscomms watch' from their own shell (no CRISISCOMMS_NOTIFY_URLS:
    only the service has them, through LoadCredential=), then the service restarts: the
    officer's watcher is now the oldest, yet the service pages."""
    with json_receiver() as rx:
        officer, _ = make_app(tmp_path, playbooks_dir, [" "])
        officer.settings = officer.settings.model_copy(update={"worker_id": "laptop:officer"})
        service, _ = make_app(tmp_path, playbooks_dir, [rx.url("/page")])
        item = normal_item(service)

        async def both() -> None:
            async with officer.run_loop(dry_run=True) as a:
                await asyncio.sleep(0.2)  # the officer's watcher starts first
                async with service.run_loop(dry_run=True) as b:
                    assert (a.identity.pages, b.identity.pages) == (False, True)
                    stop = asyncio.Event()
                    tasks = [asyncio.ensure_future(loop.run(stop, tick_seconds=0.5))
                             for loop in (a, b)]
                    deadline = time.monotonic() + 15
                    while not rx.posts and time.monotonic() < deadline:
                        await asyncio.sleep(0.1)
                    stop.set()
                    await asyncio.wait_for(asyncio.gather(*tasks), 15)

        asyncio.run(both())
        assert rx.posts, "nobody was paged: the officer's watcher was elected"
        assert f"crisiscomms queue approve {item}" in rx.posts[0]["body"]["message"]
    officer.close()
    service.close()


def test_an_invalid_playbook_change_pages_with_its_file_and_line(tmp_path, playbooks_dir):
    """The running watcher refuses a broken sources.yaml (keeping the last good one) and the
    on-call team is paged with the file and the line."""
    with json_receiver() as rx:
        app, _ = make_app(tmp_path, playbooks_dir, [rx.url("/page")])
        sources = playbooks_dir / "sources.yaml"

        async def go() -> None:
            async with app.run_loop(dry_run=True, reload_seconds=1) as loop:
                stop = asyncio.Event()
                task = asyncio.ensure_future(loop.run(stop, tick_seconds=0.5))
                await asyncio.sleep(1.5)
                sources.write_text(sources.read_text() + "  - id: [broken\n")
                deadline = time.monotonic() + 20
                while not rx.posts and time.monotonic() < deadline:
                    await asyncio.sleep(0.1)
                stop.set()
                await asyncio.wait_for(task, 15)

        asyncio.run(go())
        assert rx.posts, "no page for the refused change"
        page = rx.posts[0]["body"]
    assert "playbook change refused" in page["title"]
    assert "sources.yaml" in page["message"] and "line " in page["message"]
    assert "last good configuration" in page["message"]
    assert "crisiscomms playbooks validate" in page["message"]
    app.close()
